"""This round's two new per-run costs, each against itself without it, in one process.

1. The watchdog: every onnxruntime run arms a time limit (``--timeout``; a RunOptions, a
   heap entry, a lock). Timed: ``explain()`` on the bundled model with the default limit
   against ``time_limit(None)`` (no alarm armed), grad-x-input and ig-50 (graph); and the raw
   ``session.run`` helper on one row, per call.
2. Dynamic activation quantization run one row at a time: ``explain()`` on a dynamically
   quantized copy of the bundled model (``fixed_batch=1``, as loaded) against the same model
   with ``fixed_batch=None`` (rows batched, as before this round; their outputs then depend
   on each other, which is why the round changed it); a 17-token text, IG with 16 nodes and
   occlusion, 3 rounds.

Rounds interleaved; wall (perf_counter) and process CPU (process_time, all threads); median
and range of the rounds; load average printed before and after.

    PYTHONPATH=. python benchmarks/results/cpu-2026-12-06/overheads.py --quantized DIR
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from blackbox_sal import ExplainConfig, default_model_path, explain, load_model
from blackbox_sal.model.session import run, time_limit

TEXT = ("I went in expecting a dull, lifeless remake, but this film surprised me at every turn: "
        "the performances are warm and funny, the script is sharp, and although the last act drags "
        "a little, the director keeps the story moving with real energy and a good deal of heart.")
SHORT = "the film was warm and funny but the last act drags a little and the script is dull"


def timed(f: Callable[[], Any], reps: int) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        f()
    return (time.perf_counter() - w) / reps, (time.process_time() - c) / reps


def no_limit(f: Callable[[], Any]) -> Callable[[], Any]:
    def g() -> Any:
        with time_limit(None):
            return f()
    return g


def compare(label: str, a: Callable[[], Any], b: Callable[[], Any], rounds: int, reps: int, unit: float,
            uname: str) -> None:
    a(), b()  # warm-up
    rows: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for _ in range(rounds):
        rows["a"].append(timed(a, reps))
        rows["b"].append(timed(b, reps))
    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs) * unit:9.3f} [{min(xs) * unit:.3f}-{max(xs) * unit:.3f}]"
    ra = [x[0] / y[0] for x, y in zip(rows["a"], rows["b"], strict=True)]
    rc = [x[1] / y[1] for x, y in zip(rows["a"], rows["b"], strict=True)]
    wa, ca = [w for w, _ in rows["a"]], [c for _, c in rows["a"]]
    wb, cb = [w for w, _ in rows["b"]], [c for _, c in rows["b"]]
    print(f"{label}\n  with    wall {fmt(wa)} {uname}  cpu {fmt(ca)} {uname}"
          f"\n  without wall {fmt(wb)} {uname}  cpu {fmt(cb)} {uname}"
          f"\n  ratio   wall {statistics.median(ra):.3f} [{min(ra):.3f}-{max(ra):.3f}]"
          f"  cpu {statistics.median(rc):.3f} [{min(rc):.3f}-{max(rc):.3f}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantized", help="a dynamically quantized model directory")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("load before:", os.getloadavg(), flush=True)
    model = load_model(default_model_path(), device="cpu")
    print("1. watchdog (with = default --timeout armed on every run; without = time_limit(None))")
    ids = model.tokenizer.encode(TEXT).ids
    x = model.embed(np.asarray(ids))[None].astype(np.float32)
    feeds = model.feeds(x, np.asarray(ids), np.zeros(len(ids), np.int64))
    one = lambda: run(model.session, [model.output], feeds)  # noqa: E731
    compare(f"session run, 1 row x {len(ids)} tokens (us per run)", one, no_limit(one), args.rounds, 2000, 1e6, "us")
    for name, cfg in (("grad-x-input (graph)", ExplainConfig(method="grad-x-input", backend="graph", progress=False)),
                      ("ig-50 (graph)", ExplainConfig(method="ig", steps=50, backend="graph", progress=False))):
        f = lambda cfg=cfg: explain(model, TEXT, cfg)  # noqa: E731
        compare(f"explain {name} (ms per text)", f, no_limit(f), args.rounds, 3, 1e3, "ms")
    if args.quantized:
        q = load_model(args.quantized, device="cpu")
        print(f"2. quantized {q.quantized}: with = one row a run (fixed_batch={q.fixed_batch}); "
              f"without = rows batched (fixed_batch=None)")
        batched = replace(q, fixed_batch=None)
        for name, cfg in (("ig-16 (fd)", ExplainConfig(method="ig", steps=16, progress=False)),
                          ("occlusion", ExplainConfig(method="occlusion", progress=False))):
            compare(f"explain {name}, {len(q.tokenizer.encode(SHORT).ids)} tokens (ms per text)",
                    lambda cfg=cfg: explain(q, SHORT, cfg), lambda cfg=cfg: explain(batched, SHORT, cfg),
                    min(args.rounds, 3), 1, 1e3, "ms")
    print("load after:", os.getloadavg(), flush=True)


if __name__ == "__main__":
    main()
