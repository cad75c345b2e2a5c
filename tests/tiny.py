"""Tiny ONNX text models built with onnx.helper, whose gradients are known in closed form.

Every model takes ``input_ids`` [batch, seq] (and sometimes ``attention_mask`` /
``token_type_ids``), looks the ids up in a float32 table and returns ``logits`` [batch, C].
``write_model_dir`` saves one beside a word-level tokenizer, as a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = ["the", "film", "was", "good", "bad", "great", "awful", "plot", "and", "<b>"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
OPSET = 17


def tokenizer(with_cls: bool = False) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    if with_cls:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])])
    return tok


def table(dim: int, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).normal(0, 0.5, (len(VOCAB), dim)).astype(np.float32)
    t[0] = 0.0  # PAD row is zero, as with padding_idx
    return t


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], inputs: list[onnx.ValueInfoProto],
           n_out: int | str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _ids_input(name: str = "input_ids") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])


def linear_sum(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """logits = (sum_s E_s) @ W: every token has the same gradient W[:, c] (degenerate)."""
    axes = np.array([1], np.int64)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("ReduceSum", ["E", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    return _model(nodes, {"table": emb, "W": w, "axes": axes}, [_ids_input()], w.shape[1])


def quadratic(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """logits_c = sum_s (E_s . W[:, c])^2, grad_i = 2 (x_i . W_c) W_c."""
    axes = np.array([1], np.int64)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("MatMul", ["E", "W"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("ReduceSum", ["z2", "axes"], ["logits"], keepdims=0),
    ]
    return _model(nodes, {"table": emb, "W": w, "axes": axes}, [_ids_input()], w.shape[1])


def tanh_mlp(emb: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
             cast_ids: bool = False) -> onnx.ModelProto:
    """logits = (sum_s tanh(E_s W1 + b1)) W2, with an attention mask zeroing padded tokens.

    With cast_ids the ids pass through Cast(int32) before the lookup, as some exporters do."""
    axes = np.array([1], np.int64)
    ids = "ids32" if cast_ids else "input_ids"
    nodes = ([helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32)] if cast_ids else []) + [
        helper.make_node("Gather", ["table", ids], ["E"]),
        helper.make_node("MatMul", ["E", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "neg1"], ["mask3"]),
        helper.make_node("Mul", ["h", "mask3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W2"], ["logits"]),
    ]
    inits = {"table": emb, "W1": w1, "b1": b1, "W2": w2, "axes": axes, "neg1": np.array([-1], np.int64)}
    inputs = [_ids_input(), _ids_input("attention_mask")]
    return _model(nodes, inits, inputs, w2.shape[1])


def tanh_mlp_grad(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, c: int) -> np.ndarray:
    """Closed-form d logits_c / d x for :func:`tanh_mlp`, x [S, D] -> [S, D]."""
    h = np.tanh(x.astype(np.float64) @ w1 + b1)
    return ((1 - h**2) * w2[:, c]) @ w1.T


def bert_like(emb: np.ndarray, pos: np.ndarray, types: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """A BERT-style front end: word + position (from Shape(input_ids)) + token-type embeddings,
    LayerNorm, masked mean pooling, linear head. input_ids feeds Shape too."""
    d = emb.shape[1]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq_len"], axis=0),
        helper.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),
        helper.make_node("Gather", ["pos_table", "positions"], ["P"]),
        helper.make_node("Gather", ["type_table", "token_type_ids"], ["T"]),
        helper.make_node("Add", ["E", "P"], ["EP"]),
        helper.make_node("Add", ["EP", "T"], ["EPT"]),
        helper.make_node("LayerNormalization", ["EPT", "gamma", "beta"], ["H"], axis=-1),
        helper.make_node("Tanh", ["H"], ["Ht"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "neg1"], ["mask3"]),
        helper.make_node("Mul", ["Ht", "mask3"], ["Hm"]),
        helper.make_node("ReduceSum", ["Hm", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    rng = np.random.default_rng(1)
    inits = {
        "table": emb, "pos_table": pos, "type_table": types, "W": w,
        "gamma": (1 + 0.1 * rng.normal(size=(d,))).astype(np.float32),
        "beta": (0.1 * rng.normal(size=(d,))).astype(np.float32),
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
        "axes": np.array([1], np.int64), "neg1": np.array([-1], np.int64),
    }
    inputs = [_ids_input(), _ids_input("attention_mask"), _ids_input("token_type_ids")]
    return _model(nodes, inits, inputs, w.shape[1])


def no_lookup(dim: int) -> onnx.ModelProto:
    """Takes input_ids but never looks them up in a table: cannot be split."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["s"], keepdims=1),
        helper.make_node("Tile", ["s", "reps"], ["logits"]),
    ]
    inits = {"axes": np.array([1], np.int64), "reps": np.array([1, 2], np.int64)}
    return _model(nodes, inits, [_ids_input()], 2)


def write_model_dir(path: Path, model: onnx.ModelProto, labels: list[str] | None = None,
                    with_cls: bool = False, config: dict[str, object] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    tokenizer(with_cls).save(str(path / "tokenizer.json"))
    cfg = dict(config or {})
    if labels:
        cfg["id2label"] = {str(i): name for i, name in enumerate(labels)}
    if cfg:
        (path / "config.json").write_text(json.dumps(cfg))
    return path


def strided_cnn(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """A Conv with stride 2 over a dynamic length (its adjoint's remainder depends on the length)."""
    d = emb.shape[1]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("Transpose", ["E"], ["Et"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["Et", "K"], ["c"], strides=[2], pads=[1, 1], kernel_shape=[3]),
        helper.make_node("Tanh", ["c"], ["ct"]),
        helper.make_node("ReduceSum", ["ct", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    k = np.random.default_rng(4).normal(0, 0.5, (4, d, 3)).astype(np.float32)
    inits = {"table": emb, "K": k, "W": w, "axes": np.array([2], np.int64)}
    return _model(nodes, inits, [_ids_input()], w.shape[1])


def unsupported_op(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """An Atan on the path: no gradient rule, so no gradient graph (finite differences work)."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("Atan", ["E"], ["s"]),
        helper.make_node("ReduceSum", ["s", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    return _model(nodes, {"table": emb, "W": w, "axes": np.array([1], np.int64)}, [_ids_input()], w.shape[1])


def causal_lm(emb: np.ndarray) -> onnx.ModelProto:
    """A causal LM in miniature: h_s = tanh(E_1 + ... + E_s), logits [batch, seq, vocab] =
    h @ table^T (the head tied to the embedding table)."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("CumSum", ["E", "axis1"], ["c"]),
        helper.make_node("Tanh", ["c"], ["h"]),
        helper.make_node("Transpose", ["table"], ["tt"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "tt"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_lm", [_ids_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", emb.shape[0]])],
        [numpy_helper.from_array(emb, "table"), numpy_helper.from_array(np.array(1, np.int64), "axis1")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def causal_lm_grad(x: np.ndarray, emb: np.ndarray, token: int) -> np.ndarray:
    """d logits[-1, token] / d x [S, D] of causal_lm: the same row for every position."""
    h = np.tanh(x.astype(np.float64).sum(0))
    return np.broadcast_to((1 - h**2) * emb[token], x.shape)


def conv_tanh(emb: np.ndarray, w: np.ndarray, kernel: int = 5) -> onnx.ModelProto:
    """A smooth text CNN: Conv (stride 1, 'same' pads, dynamic length) -> tanh -> sum over
    time -> linear. No kinks, so finite differences can check its gradient tightly."""
    d = emb.shape[1]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("Transpose", ["E"], ["Et"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["Et", "K", "kb"], ["c"], pads=[kernel // 2] * 2, kernel_shape=[kernel]),
        helper.make_node("Tanh", ["c"], ["ct"]),
        helper.make_node("ReduceSum", ["ct", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    rng = np.random.default_rng(6)
    inits = {"table": emb, "K": rng.normal(0, 0.4, (w.shape[0], d, kernel)).astype(np.float32),
             "kb": rng.normal(0, 0.1, (w.shape[0],)).astype(np.float32), "W": w, "axes": np.array([2], np.int64)}
    return _model(nodes, inits, [_ids_input()], w.shape[1])


def regression(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """A single regression output [batch]: f = sum_s tanh(E_s . w)."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("MatMul", ["E", "w"], ["z"]),
        helper.make_node("Tanh", ["z"], ["t"]),
        helper.make_node("ReduceSum", ["t", "axes"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "regression", [_ids_input()], [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(emb, "table"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


TEXT = "the film was good and the plot great"


def mlp_weights(dim: int, hidden: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W1 [dim, hidden], b1 [hidden], W2 [hidden, classes] for :func:`tanh_mlp`."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.6, (dim, hidden)).astype(np.float32), rng.normal(0, 0.2, hidden).astype(np.float32),
            rng.normal(0, 0.6, (hidden, classes)).astype(np.float32))
