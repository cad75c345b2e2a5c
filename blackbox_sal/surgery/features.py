"""Models whose input is a vector of features: bag-of-words and tabular models (pure).

A feature model explains like a text model whose tokens are its features, each with a
one-dimensional "embedding", its value: :func:`embeds_input` gives the body an
``inputs_embeds`` [batch, F, 1] input reshaped to the model's [batch, F] one, so gradient
graphs, finite differences and the methods run unchanged.

A scikit-learn text pipeline exported by skl2onnx takes a string and vectorizes it inside
(StringNormalizer, Tokenizer, TfIdfVectorizer). :func:`split_pipeline` cuts it where the
features are made: the front (string -> features) runs as it is, the body (features ->
probabilities) is explained. The cut is the TfIdfVectorizer's output, or, where the
pipeline binarizes it (Cast to bool, Cast back to float: a binary CountVectorizer), the binary
vector, which the paper's section 5.2 treats as the model's differentiable input::

    text -> StringNormalizer -> Tokenizer -> TfIdfVectorizer -> [Cast(bool) -> Cast(float)] | -> body
    \\________________________ front ____________________________________________________/ cut
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import GraphIndex, attr_int
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.surgery.prune import clear_shapes, prune
from blackbox_sal.vocabulary.errors import ModelError


@dataclass(frozen=True)
class Pipeline:
    """A text pipeline cut at its features. front: string input -> ``features`` [N, F];
    body: ``features`` -> the outputs; vectorizer: the TfIdfVectorizer node (its vocabulary);
    tokenizer: the com.microsoft Tokenizer node, normalizer: the StringNormalizer (None if absent)."""

    front: onnx.ModelProto
    body: onnx.ModelProto
    features: str
    size: int
    vectorizer: onnx.NodeProto
    tokenizer: onnx.NodeProto | None
    normalizer: onnx.NodeProto | None


def split_pipeline(model: onnx.ModelProto) -> Pipeline:
    """Cut a string-input text pipeline where its feature vector is made (see the module
    docstring). ModelError when it has no TfIdfVectorizer on a string input."""
    graph = model.graph
    index = GraphIndex.of(graph)
    vectorizers = [n for n in graph.node if n.op_type == "TfIdfVectorizer"]
    if len(vectorizers) != 1:
        raise ModelError(f"a model with a string input is explained through its TfIdfVectorizer's output; this one "
                         f"has {len(vectorizers)} TfIdfVectorizer nodes")
    vectorizer = vectorizers[0]
    cut = vectorizer.output[0]
    first = index.only_user(cut, "Cast")  # a binary vectorizer: Cast(bool) then Cast(float)
    if first is not None and attr_int(first, "to", 0) == onnx.TensorProto.BOOL:
        back = index.only_user(first.output[0], "Cast")
        if back is not None and attr_int(back, "to", 0) == onnx.TensorProto.FLOAT:
            cut = back.output[0]
    size = _vocabulary_size(vectorizer)
    front = onnx.ModelProto()
    front.CopyFrom(model)
    del front.graph.output[:]
    front.graph.output.append(helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
    prune(front.graph, keep_inputs=frozenset(i.name for i in graph.input))
    clear_shapes(front.graph)
    body = onnx.ModelProto()
    body.CopyFrom(model)
    kept = [n for n in body.graph.node if cut not in n.output]
    del body.graph.node[:]
    body.graph.node.extend(kept)
    del body.graph.input[:]
    body.graph.input.append(helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, ["batch", size]))
    float_outputs = [o for o in body.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    del body.graph.output[:]
    body.graph.output.extend(float_outputs)
    prune(body.graph, keep_inputs=frozenset({cut}))
    clear_shapes(body.graph)
    if not float_outputs or not body.graph.node:
        raise ModelError("the pipeline has no float output after its features (probabilities, scores)")
    tokenizers = [n for n in front.graph.node if n.op_type == "Tokenizer"]
    normalizers = [n for n in front.graph.node if n.op_type == "StringNormalizer"]
    return Pipeline(front, body, cut, size, vectorizer, tokenizers[0] if tokenizers else None,
                    normalizers[0] if normalizers else None)


def _vocabulary_size(vectorizer: onnx.NodeProto) -> int:
    for a in vectorizer.attribute:
        if a.name == "ngram_indexes":
            return int(max(a.ints)) + 1 if a.ints else 0
    raise ModelError("the TfIdfVectorizer has no ngram_indexes")


def vocabulary(vectorizer: onnx.NodeProto) -> dict[str, int]:
    """Word -> feature index of a unigram TfIdfVectorizer (pool_strings, ngram_indexes);
    ModelError for n-grams longer than one word (their features are not single words)."""
    attrs = {a.name: a for a in vectorizer.attribute}
    if attr_int(vectorizer, "max_gram_length", 1) != 1 or "pool_strings" not in attrs:
        raise ModelError("the pipeline's vectorizer counts n-grams or integer tokens: blackbox-sal explains "
                         "unigram string vocabularies (one word, one feature)")
    words = [s.decode("utf-8", "replace") for s in attrs["pool_strings"].strings]
    return dict(zip(words, (int(i) for i in attrs["ngram_indexes"].ints), strict=True))


def embeds_input(body: onnx.ModelProto, name: str, size: int) -> onnx.ModelProto:
    """``body`` (taking features ``name`` [batch, size]) taking ``inputs_embeds`` [batch, size,
    1] instead: each feature a token with its value as a one-dimensional embedding."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    g = out.graph
    kept = [i for i in g.input if i.name != name]
    if len(kept) == len(g.input):
        raise ModelError(f"the model has no input {name!r}")
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(EMBEDS, onnx.TensorProto.FLOAT, ["batch", size, 1]), *kept])
    shape = numpy_helper.from_array(np.array([-1, size], np.int64), "bbs_features_shape")
    g.initializer.append(shape)
    g.node.insert(0, helper.make_node("Reshape", [EMBEDS, shape.name], [name], name="bbs_features"))
    clear_shapes(g)
    return out
