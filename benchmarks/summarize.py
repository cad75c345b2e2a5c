"""The goal rows of gpu.jsonl and batch.jsonl, compactly (gpu_device.sh prints this last).

    python benchmarks/summarize.py OUT/gpu/gpu.jsonl OUT/batch/batch.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[dict]:  # type: ignore[type-arg]
    if not path.is_file():
        print(f"{path}: missing")
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}: a partial line (the run was killed while writing)")
    return out


def f(v: object, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def main() -> None:
    for arg in sys.argv[1:]:
        for r in rows(Path(arg)):
            s = r["section"]
            if "error" in r:
                print(f"ERROR {s} {r.get('model', '')} {r.get('tokens', '')}: {r['error']}")
            elif s == "env":
                print(f"env: {r.get('gpu') or r.get('nvidia_smi')}; onnxruntime {r.get('onnxruntime')} CUDA "
                      f"{r.get('onnxruntime_cuda')}; torch {r.get('torch')} CUDA {r.get('torch_cuda')}; "
                      f"{r.get('date')}")
            elif s == "build":
                print(f"build {r['model']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.endswith("_s")))
            elif s == "agreement":
                print(f"agreement {r['model']} {r['method']} {r['tokens']} tok: backend {r['backend_gpu']}, "
                      f"rel diff {f(r['rel_diff'], '.1e')} ok={r['ok']}")
            elif s == "ig":
                print(f"ig {r['model']} {r['tokens']} tok: ours {f(r['ours_ms'], '.1f')} ms, Captum "
                      f"{f(r['captum_ms'], '.1f')} ms, Captum/ours {f(r['captum_over_ours'], '.2f')} "
                      f"(goal {r['goal']}) "
                      f"|delta| {f(r['ours_abs_delta'], '.1e')} / {f(r['captum_abs_delta'], '.1e')}")
            elif s == "ig_equal_accuracy":
                print(f"ig equal accuracy {r['model']} {r['tokens']} tok {r['setting']}: reached={r['reached']} "
                      f"ours {f(r['ours_ms'], '.1f')} ms, Captum/ours {f(r['captum_over_ours'], '.2f')} (goal 1.5)")
            elif s == "fd":
                print(f"fd {r['model']} {r['tokens']} tok: graph {f(r['graph_ms'], '.1f')} ms, "
                      f"fd {f(r['fd_ms'], '.1f')} ms, fd/graph {f(r['fd_over_graph'], '.2f')} (goal <= 2)")
            elif s == "raw":
                print(f"raw {r['model']} {r['batch']}x{r['tokens']}: forward {f(r['forward_ms'], '.2f')} "
                      f"graph {f(r['graph_ms'], '.2f')} ({f(r['graph_iobinding_ms'], '.2f')} bound) path "
                      f"{f(r['path_ms'], '.2f')} ms; graph/forward {f(r['graph_over_forward'], '.2f')}; torch fwd+bwd "
                      f"{f(r.get('torch_forward_backward_ms'), '.2f')} ms")
            elif s == "placement":
                print(f"placement {r['form']}: " + ", ".join(f"{p} {100 * v:.1f} %" for p, v in r["share"].items()))
            elif s == "throughput":
                print(f"throughput {r['device']} {r['model']} {r['texts']}x{r['tokens']} ({r.get('lanes')} lanes, "
                      f"tokens/run {r.get('tokens_per_run') or 'default'}): texts/s "
                      + " ".join(f"{k} {v:.1f}" for k, v in r["texts_per_s"].items())
                      + f"; engine/loop {r['engine_over_loop']:.2f}, engine/replay time "
                      f"{r['engine_time_over_replay_time']:.2f}, engine/Captum {f(r['engine_over_captum'], '.2f')}")
            elif s == "done":
                print(f"{r['script']} done in {r['seconds']:.0f} s, {len(r['errors'])} failed section(s)")


if __name__ == "__main__":
    main()
