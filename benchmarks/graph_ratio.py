"""Forward+gradient over forward: what an exported gradient graph costs.

For each model directory, times the gradient graph (outputs and d target / d inputs_embeds in
one run) against the forward model alone, on the same inputs (batch 8, sequence 64 by
default), same onnxruntime settings, runs interleaved; prints medians and the ratio.
Goal (issue 3): at most 2.0 on BERT-style models and MiniLM.

    python benchmarks/build_models.py                  # mlp, cnn, bert, gpt2, minilm into benchmarks/.cache
    python benchmarks/graph_ratio.py [DIR ...] [--batch 8] [--seq 64] [--threads 1] [--breakdown]

--breakdown also profiles both graphs (onnxruntime's per-kernel times, summed per run) and
splits them into matrix products (MatMul, Gemm, Conv, ConvTranspose and their fused forms) and the
rest. Its "floor" is the ratio the gradient graph would have if everything it adds besides
matrix products were free: (gradient graph's products + forward's rest) / forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from timing import median_time

from blackbox_sal import load_model
from blackbox_sal.gradient_graph.build import build_gradient
from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.model.session import create_session
from blackbox_sal.surgery.names import GRAD, WEIGHTS

HERE = Path(__file__).resolve().parent
PRODUCTS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "ConvTranspose", "NchwcConv"}


def kernel_ms(proto: onnx.ModelProto, fetch: str, feeds: Mapping[str, np.ndarray], threads: int,
              runs: int = 10) -> tuple[float, float]:
    """onnxruntime's profiled kernel time per run, split into (matrix products, the rest), ms.
    The profile goes to a temporary directory (never the working directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(3 + runs):
            session.run([fetch], dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run = [0.0, 0.0]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_run[e["args"]["op_name"] not in PRODUCTS] += e["dur"]
    total_runs = 3 + runs  # warm-up runs are profiled too; the sums are averaged over all of them
    return per_run[0] / total_runs / 1e3, per_run[1] / total_runs / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="model directories (default: benchmarks/.cache/*)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--breakdown", action="store_true",
                    help="also profile matrix products against the rest, and print the floor ratio")
    args = ap.parse_args()
    dirs = [Path(m) for m in args.models] or sorted(p.parent for p in (HERE / ".cache").glob("*/model.onnx"))
    print(f"batch {args.batch}, sequence {args.seq}, {args.threads} thread(s), medians of {args.repeats} "
          f"x 3 interleaved rounds")
    print(f"{'model':<12}{'dim':>5}{'graph nodes':>13}{'forward ms':>12}{'fwd+grad ms':>13}{'ratio':>8}")
    rng = np.random.default_rng(0)
    for d in dirs:
        model = load_model(d, device="cpu", threads=args.threads)
        if model.quantized:  # integer ops: no gradient graph to time
            print(f"{model.name:<12} skipped: quantized ({', '.join(model.quantized)})")
            continue
        gradient_session(model)  # built (or found) and verified
        shipped = model.config.gradient_model  # e.g. from export_torch
        graph = onnx.load(str(d / shipped)) if shipped else build_gradient(model)
        session = create_session(graph.SerializeToString(), "cpu", args.threads)  # the plain interface
        ids = rng.integers(4, model.table.shape[0], args.seq)
        x = np.repeat(model.embed(ids)[None], args.batch, axis=0)
        x = (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)
        feeds = model.feeds(x, ids, np.zeros_like(ids))
        classes = model.run(x[:1], ids, np.zeros_like(ids), 1).shape[1]
        weights = np.zeros((args.batch, classes), np.float32)
        weights[:, 0] = 1.0
        gfeeds = {**feeds, WEIGHTS: weights}
        fwd = partial(model.session.run, [model.output], feeds)
        both = partial(session.run, [GRAD], gfeeds)
        for _ in range(3):
            fwd(), both()
        ratios, tf, tg = [], [], []
        for _ in range(3):
            tf.append(median_time(fwd, args.repeats))
            tg.append(median_time(both, args.repeats))
            ratios.append(tg[-1] / tf[-1])
        nodes = len(graph.graph.node)
        print(f"{model.name:<12}{model.dim:>5}{nodes:>13}{statistics.median(tf) * 1e3:>12.2f}"
              f"{statistics.median(tg) * 1e3:>13.2f}{statistics.median(ratios):>8.2f}")
        if args.breakdown:
            assert model.body is not None
            f_mm, f_rest = kernel_ms(model.body, model.output, feeds, args.threads)
            g_mm, g_rest = kernel_ms(graph, GRAD, gfeeds, args.threads)
            print(f"{'':<12}kernel ms: forward products {f_mm:.2f} + rest {f_rest:.2f}; gradient graph "
                  f"products {g_mm:.2f} + rest {g_rest:.2f}; products alone {g_mm / (f_mm + f_rest):.2f} x "
                  f"forward; floor {(g_mm + f_rest) / (f_mm + f_rest):.2f}")


if __name__ == "__main__":
    main()
