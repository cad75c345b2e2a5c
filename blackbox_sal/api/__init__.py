"""The explain API: a text explained (:mod:`.explaining`), and the tasks built on single
explanations: generation, similarity, choices (:mod:`.tasks`)."""
