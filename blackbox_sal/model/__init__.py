"""Model folders: safe reading (:mod:`.files`), sessions (:mod:`.session`), loading
(:mod:`.loading`) into a :class:`~blackbox_sal.model.text_model.TextModel`, probe runs."""
