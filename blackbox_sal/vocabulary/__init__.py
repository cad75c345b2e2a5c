"""The words every layer speaks: the error tree (:mod:`.errors`), run requests (:mod:`.runs`),
the explained scalar (:mod:`.scores`), finite-difference formulas (:mod:`.differences`),
frozen results (:mod:`.result`) and the one configuration object (:mod:`.config`)."""
