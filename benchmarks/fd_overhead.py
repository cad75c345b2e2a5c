"""Overhead of the finite-difference backend over onnxruntime alone.

For the bundled default model and a text of about 60 tokens, times ``explain()`` with
gradient x input and with integrated gradients (50 Gauss-Legendre nodes), and next to each,
onnxruntime alone running the same number of forward passes at the same batch size (same
session, same shapes, inputs prepared in advance). The ratio is the price of everything
blackbox-sal does around the model: building perturbed copies, bookkeeping, reductions.
Goal: at most 1.15. Runs are interleaved and repeated; medians are reported.

    python benchmarks/fd_overhead.py [--repeats 7] [--batch-size 64] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from blackbox_sal import ExplainConfig, default_model_path, explain, load_model
from blackbox_sal.surgery.names import EMBEDS

TEXT = ("I went in expecting a dull, lifeless remake, but this film surprised me at every turn: "
        "the performances are warm and funny, the script is sharp, and although the last act drags "
        "a little, the director keeps the story moving with real energy and a good deal of heart.")


def ort_alone(model, n_tokens: int, passes: int, batch_size: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds onnxruntime takes for ``passes`` rows in batches of ``batch_size``."""
    rng = np.random.default_rng(0)
    full = rng.normal(size=(batch_size, n_tokens, model.dim)).astype(np.float32)
    feeds_full = {EMBEDS: full}
    feeds_full.update({name: np.ones((batch_size, n_tokens), dt) for name, dt in model.int_inputs.items()})
    rest = passes % batch_size
    feeds_rest = {k: v[:rest] for k, v in feeds_full.items()}
    start = time.perf_counter()
    for _ in range(passes // batch_size):
        model.session.run([model.output], feeds_full)
    if rest:
        model.session.run([model.output], feeds_rest)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    args = ap.parse_args()

    model = load_model(default_model_path(), device="cpu", threads=args.threads)
    n_tokens = len(model.tokenizer.encode(TEXT).ids)
    print(f"model {model.name}, {n_tokens} tokens, dim {model.dim}, batch size {args.batch_size}, "
          f"{args.repeats} repeats (medians)")
    print(f"{'method':<28}{'forward passes':>15}{'blackbox-sal s':>16}{'onnxruntime s':>15}{'ratio':>8}")
    for label, cfg in (
        ("grad-x-input (fd)", ExplainConfig(method="grad-x-input", backend="fd", batch_size=args.batch_size,
                                            progress=False)),
        ("ig, 50 GL nodes (fd)", ExplainConfig(method="ig", backend="fd", steps=50, batch_size=args.batch_size,
                                               progress=False)),
    ):
        explain(model, TEXT, cfg)  # warm-up
        ours, theirs, ratios = [], [], []
        passes = 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = explain(model, TEXT, cfg)
            ours.append(time.perf_counter() - start)
            passes = int(result.settings["forward_passes"])  # the prediction included
            theirs.append(ort_alone(model, n_tokens, passes, args.batch_size))
            ratios.append(ours[-1] / theirs[-1])
        print(f"{label:<28}{passes:>15,}{statistics.median(ours):>16.3f}"
              f"{statistics.median(theirs):>15.3f}{statistics.median(ratios):>8.3f}")


if __name__ == "__main__":
    main()
