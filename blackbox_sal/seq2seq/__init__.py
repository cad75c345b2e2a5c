"""Encoder/decoder models (T5, BART, Marian in optimum's layout): greedy generation, and each
output token explained through the chained gradient graphs (``explaining``). The pair is loaded
by :mod:`blackbox_sal.model.encoder_decoder`; its graphs are cut by
:mod:`blackbox_sal.surgery.encoder_decoder`."""
