"""The engine: attribution work (generators of run requests, :mod:`blackbox_sal.vocabulary.runs`) from one
or many texts, packed into shared onnxruntime runs (:mod:`.runner`) and driven to the end
(:mod:`.drive`)."""
