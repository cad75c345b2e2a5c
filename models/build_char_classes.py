"""Build ``char-classes``: a character model with a second id channel, for docs/model-formats-shipped.md.

The model reads two inputs, ``chars`` (each character's id) and ``kinds`` (its class: letter,
digit, space, punctuation), each through its own embedding lookup, as character taggers with
character-class features do; it says whether the text holds a digit. config.json carries the
documented ``"channels"`` form (the class of each character in ``classes.json``), so
blackbox-sal computes ``kinds`` from the characters and explains both channels::

    E = [chars_table[chars], kinds_table[kinds]]  ->  tanh(E W1 + b1)  ->  mean over positions  ->  W2  ->  logits

Trained with torch (seeded, CPU, a few seconds), written with onnx.helper.

    python models/build_char_classes.py [OUT]     # default: models/.cache/char-classes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
PUNCT = ".,!?"
CHARS = ["<pad>", "<unk>", *LETTERS, *DIGITS, " ", *PUNCT]
#: 0: padding and unknown characters, 1: letters, 2: digits, 3: space, 4: punctuation
CLASSES = {**dict.fromkeys(LETTERS, 1), **dict.fromkeys(DIGITS, 2), " ": 3, **dict.fromkeys(PUNCT, 4)}
D1, D2, H = 12, 4, 16


def _texts(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    plain = LETTERS * 3 + " " * 12 + PUNCT
    for _ in range(n):
        text = list(rng.choice(list(plain), size=int(rng.integers(8, 25))))
        digit = bool(rng.random() < 0.5)
        if digit:
            for _ in range(int(rng.integers(1, 4))):
                text[int(rng.integers(len(text)))] = str(rng.choice(list(DIGITS)))
        texts.append("".join(text))
        labels.append(int(digit))
    return texts, np.array(labels)


def _ids(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    index = {c: i for i, c in enumerate(CHARS)}
    width = max(map(len, texts))
    chars = np.zeros((len(texts), width), np.int64)
    kinds = np.zeros((len(texts), width), np.int64)
    for row, text in enumerate(texts):
        for col, ch in enumerate(text):
            chars[row, col] = index.get(ch, 1)
            kinds[row, col] = CLASSES.get(ch, 0)
    return torch.from_numpy(chars), torch.from_numpy(kinds)


def train() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    chars_table = torch.nn.Embedding(len(CHARS), D1, padding_idx=0)
    kinds_table = torch.nn.Embedding(5, D2, padding_idx=0)
    hidden, out = torch.nn.Linear(D1 + D2, H), torch.nn.Linear(H, 2)
    params = [*chars_table.parameters(), *kinds_table.parameters(), *hidden.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)

    def forward(chars: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        e = torch.cat([chars_table(chars), kinds_table(kinds)], dim=-1)
        return out(torch.tanh(hidden(e)).mean(dim=1))

    for _ in range(1000):
        texts, labels = _texts(rng, 64)
        loss = torch.nn.functional.cross_entropy(forward(*_ids(texts)), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    texts, labels = _texts(np.random.default_rng(1), 1000)
    with torch.no_grad():
        accuracy = float((forward(*_ids(texts)).argmax(-1).numpy() == labels).mean())
    print(f"held-out accuracy {accuracy:.3f} on 1,000 generated texts")
    return {"chars_table": chars_table.weight.detach().numpy(), "kinds_table": kinds_table.weight.detach().numpy(),
            "W1": hidden.weight.detach().numpy().T.copy(), "b1": hidden.bias.detach().numpy(),
            "W2": out.weight.detach().numpy().T.copy(), "b2": out.bias.detach().numpy()}


def export(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [helper.make_node("Gather", ["chars_table", "chars"], ["E1"]),
             helper.make_node("Gather", ["kinds_table", "kinds"], ["E2"]),
             helper.make_node("Concat", ["E1", "E2"], ["E"], axis=-1),
             helper.make_node("MatMul", ["E", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W2"], ["l0"]), helper.make_node("Add", ["l0", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "char-classes",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("chars", "kinds")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / ".cache" / "char-classes")
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(export(train()), str(folder / "model.onnx"))
    (folder / "classes.json").write_text(json.dumps(CLASSES, indent=1))
    (folder / "config.json").write_text(json.dumps({
        "name": "char-classes", "id2label": {"0": "no digit", "1": "digit"},
        "tokenizer": {"characters": CHARS, "unk": "<unk>", "pad": "<pad>"},
        "channels": {"kinds": {"input": "kinds", "file": "classes.json", "default": 0}}}, indent=1))
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
