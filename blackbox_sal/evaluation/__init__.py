"""Is an explanation any good, and what does the model rely on across a dataset: global
analysis (the paper's sections 5.2 and 5.3), faithfulness, sanity checks, and the one-hot view
of token substitutions."""
