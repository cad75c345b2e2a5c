"""Building a gradient graph for big graphs: time, process CPU time and peak memory by phase
(the probe runs, the reverse pass) on synthetic chains of N nodes (MatMul + Tanh pairs over an
8-wide embedding). Each size runs in its own process, so peak RSS is that size's own.

    python benchmarks/big_graph.py 20000 50000 100000
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def chain(n: int, d: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, prev = [], "inputs_embeds"
    for k in range(n // 2):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{k}"]))
        nodes.append(helper.make_node("Tanh", [f"m{k}"], [f"t{k}"]))
        prev = f"t{k}"
    nodes.append(helper.make_node("ReduceSum", [prev, "axes"], ["logits"], keepdims=0))
    inits = [numpy_helper.from_array((rng.normal(size=(d, d)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                                                             ["b", "s", d])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def one(n: int) -> dict[str, float]:
    from blackbox_sal.model.probe import probe
    from blackbox_sal.surgery.gradient import gradient_model

    model = chain(n)
    feeds = [{"inputs_embeds": np.ones((b, s, 8), np.float32)} for b, s in ((2, 5), (3, 7))]
    t0, c0 = time.perf_counter(), time.process_time()
    facts = probe(model, feeds)
    t1, c1 = time.perf_counter(), time.process_time()
    gradient_model(model, "logits", facts)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"nodes": n, "probe_s": t1 - t0, "probe_cpu_s": c1 - c0, "reverse_s": t2 - t1, "reverse_cpu_s": c2 - c1,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 50_000, 100_000]
    print(f"load average {os.getloadavg()[0]:.2f} (2-core machines are shared: read wall beside CPU)")
    print(f"{'nodes':>8}  {'probe s':>8}  {'(cpu)':>6}  {'reverse s':>9}  {'(cpu)':>6}  {'peak RSS':>9}")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>8,}  {r['probe_s']:>8.2f}  {r['probe_cpu_s']:>6.2f}  {r['reverse_s']:>9.2f}  "
              f"{r['reverse_cpu_s']:>6.2f}  {r['peak_rss_mb']:>6.0f} MB")


if __name__ == "__main__":
    main()
