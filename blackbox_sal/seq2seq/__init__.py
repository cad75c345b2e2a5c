"""Encoder/decoder models (T5, BART, Marian in optimum's layout): the pair loaded, greedy
generation, and each output token explained through the chained gradient graphs."""
