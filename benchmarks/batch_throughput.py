"""Texts per second for many explanations (issue 15): the engine (explain_many) against
explain() in a loop, against onnxruntime alone running the same packed rows, and against
Captum's per-text loop at its best. CPU always, the GPU when one is usable.

    python benchmarks/batch_throughput.py --out OUT                 # CPU, and the GPU if present
    python benchmarks/batch_throughput.py --allow-cpu --quick       # tiny, to test the script

IG with 50 Gauss-Legendre nodes, backend graph, the device's default run sizes. Models: a
MiniLM-shaped random-weight BERT (benchmarks/bert_models.py; the same as gpu.py's) and, on
the CPU, the bundled default model. Texts: 64 of ~33 tokens and 16 of ~233 tokens (random
words of the model's vocabulary, seeded). For each device, model and text set, in
interleaved rounds (median of --repeats, with the range):

- loop: bs.explain on each text;
- engine: bs.explain_many over all texts (rows of many texts packed into shared runs);
- engine_Nlane: the engine with the other number of lanes than the device's default (2 on
  CUDA, where one lane's host work overlaps the other's runs; 1 on the CPU);
- replay: onnxruntime alone running the same packed rows: every session.run call the engine
  made in one pass (output names and feeds, recorded by wrapping the sessions' run method)
  replayed on the raw sessions; engine time / replay time is the engine's overhead
  (goal on the CPU: <= 1.2);
- captum: Captum's IntegratedGradients per text at its best (SDPA attention, frozen weights,
  eval, TF32 off, Gauss-Legendre, internal_batch_size=50, same baseline and target), on the
  same device (MiniLM only: the default model has no torch twin).

Wall time and process CPU time (time.process_time, all threads) are recorded; the load
average is read before and after. Every measurement is printed and appended to
OUT/batch.jsonl as it is taken; a failed part is recorded and the others go on.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bert_models import (  # noqa: E402
    CaptumIG,
    Recorder,
    build,
    detect_devices,
    random_texts,
    rel_diff,
    scores_of,
    sdpa_twin,
    setup_torch,
    sync,
)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def capture(sessions: list[Any]) -> Iterator[list[tuple[Any, list[str], dict[str, Any]]]]:
    """Record every run(output_names, feeds) call made on ``sessions`` (each call still runs)."""
    calls: list[tuple[Any, list[str], dict[str, Any]]] = []
    for session in sessions:
        def wrapped(outputs: Any, feeds: Any, *rest: Any, _s: Any = session, **kw: Any) -> Any:
            calls.append((_s, list(outputs), dict(feeds)))
            return type(_s).run(_s, outputs, feeds, *rest, **kw)
        session.run = wrapped
    try:
        yield calls
    finally:
        for session in sessions:
            del session.run


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(rec: Recorder, device: str, torch_device: str | None, name: str, model: Any, twin: Any,
            texts: list[str], tokens: int, repeats: int, tokens_per_run: int | None = None) -> None:
    import blackbox_sal as bs
    from blackbox_sal.api.explaining import runner as runner_of
    from blackbox_sal.api.explaining import text_explanation
    from blackbox_sal.engine.drive import drive_many, lanes_for
    from blackbox_sal.gradient_graph.store import gradient_session

    cfg = bs.ExplainConfig(method="ig", steps=50, backend="graph", progress=False, tokens_per_run=tokens_per_run)
    load_before = uptime()
    first = bs.explain(model, texts[0], cfg)  # builds or loads the gradient graph; warms the sessions
    graph = gradient_session(model)
    with capture([model.session, graph.session]) as calls:
        engine_results = list(bs.explain_many(model, texts, cfg))
    errors = [str(r) for r in engine_results if not isinstance(r, bs.Explanation)]
    if errors:
        raise RuntimeError(f"the engine failed on {len(errors)} text(s): {errors[0]}")
    rows_per_call = [int((f.get("inputs_embeds") if "inputs_embeds" in f else f["path_row"]).shape[0])
                     for _, _, f in calls]
    lengths = sorted({int((f.get("inputs_embeds") if "inputs_embeds" in f else f["path_anchor"]).shape[1])
                      for _, _, f in calls})

    def loop() -> None:
        for text in texts:
            bs.explain(model, text, cfg)

    def engine() -> None:
        for r in bs.explain_many(model, texts, cfg):
            if not isinstance(r, bs.Explanation):
                raise RuntimeError(str(r))

    lanes = lanes_for(runner_of(model, cfg))
    other = 3 - lanes

    def engine_other() -> None:  # the engine with the other number of lanes (drive.py)
        for r in drive_many((text_explanation(model, t, cfg) for t in texts), runner_of(model, cfg), lanes=other):
            if not isinstance(r, bs.Explanation):
                raise RuntimeError(str(r))

    def replay() -> None:
        for session, outputs, feeds in calls:
            type(session).run(session, outputs, feeds)

    runs: dict[str, Callable[[], Any]] = {"loop": loop, "engine": engine, f"engine_{other}lane": engine_other,
                                          "replay": replay}
    cap = None
    if twin is not None:
        cap = CaptumIG(twin, model.tokenizer, torch_device or "cpu")
        cap.explain(texts[0])

        def captum() -> None:
            for text in texts:
                cap.explain(text)
            sync(torch_device)
        runs["captum"] = captum
    replay()  # warm
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            w, c = timed(run)
            wall[key].append(w)
            cpu[key].append(c)
    loop_results = [bs.explain(model, t, cfg) for t in texts[:4]]
    agree = max(rel_diff(scores_of(a), scores_of(b)) for a, b in zip(engine_results, loop_results, strict=False))
    n = len(texts)
    med = {k: statistics.median(v) for k, v in wall.items()}
    tps = {k: n / v for k, v in med.items()}
    row: dict[str, Any] = {
        "device": device, "model": name, "texts": n, "tokens": tokens, "repeats": repeats, "steps": 50,
        "lanes": lanes, "tokens_per_run": tokens_per_run,
        "texts_per_s": tps,
        "texts_per_s_range": {k: [n / max(v), n / min(v)] for k, v in wall.items()},
        "wall_s": med, "wall_s_all": wall, "cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "cpu_s_all": cpu,
        "engine_over_loop": med["loop"] / med["engine"],
        f"engine_{other}lane_over_loop": med["loop"] / med[f"engine_{other}lane"],
        "engine_time_over_replay_time": med["engine"] / med["replay"],
        # process CPU time is steadier than wall time on a shared machine
        "engine_cpu_over_replay_cpu": statistics.median(cpu["engine"]) / max(statistics.median(cpu["replay"]), 1e-9),
        "loop_cpu_over_engine_cpu": statistics.median(cpu["loop"]) / max(statistics.median(cpu["engine"]), 1e-9),
        "engine_over_captum": (med["captum"] / med["engine"]) if "captum" in med else None,
        "loop_over_captum": (med["captum"] / med["loop"]) if "captum" in med else None,
        "runs_per_pass": len(calls), "rows_per_run": [min(rows_per_call), max(rows_per_call)],
        "run_lengths": lengths, "engine_vs_loop_scores_rel_diff": agree,
        "batch_size": first.settings.get("batch_size"), "threads": model.threads,
        "load_before": load_before, "load_after": uptime(), "max_rss_mb": _rss_mb(),
        "captum_stubbed": cap.stubbed if cap else None,
    }
    if device == "cpu":
        row["goals"] = {"engine_time_over_replay_time <= 1.2": row["engine_time_over_replay_time"] <= 1.2,
                        "engine faster than loop (short texts)": row["engine_over_loop"] > 1.0}
    else:
        row["goals"] = {"engine >= 3.5x loop (short)": row["engine_over_loop"] >= 3.5,
                        "engine >= 3x Captum (short), >= 1.5x (long)": (row["engine_over_captum"] or 0)
                        >= (3.0 if tokens < 100 else 1.5)}
    rec.record("throughput", **row)
    print(f"{device:<4} {name:<8} {n:>3} texts x {tokens:>3} tokens ({lanes} lane(s), tokens/run "
          f"{tokens_per_run or 'default'})  texts/s: " + "  ".join(
        f"{k} {v:.1f} [{row['texts_per_s_range'][k][0]:.1f}-{row['texts_per_s_range'][k][1]:.1f}]"
        for k, v in tps.items()) + f"\n     engine/loop {row['engine_over_loop']:.2f}x  engine time/replay time "
        f"{row['engine_time_over_replay_time']:.2f}" + (f"  engine/Captum {row['engine_over_captum']:.2f}x  "
                                                       f"loop/Captum {row['loop_over_captum']:.2f}x"
                                                       if "captum" in med else "")
        + "  cpu s: " + " ".join(f"{k} {v:.1f}" for k, v in row["cpu_s"].items())
        + f" (engine/replay {row['engine_cpu_over_replay_cpu']:.2f}, loop/engine {row['loop_cpu_over_engine_cpu']:.2f})"
        + f"  ({len(calls)} runs of {row['rows_per_run'][0]}-{row['rows_per_run'][1]} rows; "
        f"engine vs loop scores {agree:.1e})", flush=True)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / ".cache" / "batch-run"), help="folder for batch.jsonl")
    ap.add_argument("--work", default=None, help="folder for the built models and the graph cache (default: temp)")
    ap.add_argument("--allow-cpu", action="store_true", help="without a GPU, run the CPU part only (no exit 2)")
    ap.add_argument("--quick", action="store_true", help="tiny model and few texts (to test the script)")
    ap.add_argument("--devices", default="gpu,cpu", help="gpu, cpu or both (the GPU part runs first)")
    ap.add_argument("--cpu-models", default="minilm,default", help="models on the CPU: minilm, default")
    ap.add_argument("--gpu-models", default="minilm", help="models on the GPU: minilm, default")
    ap.add_argument("--sets", default="short,long")
    ap.add_argument("--short", type=int, default=None, help="short texts (default 64; quick 8)")
    ap.add_argument("--long", type=int, default=None, help="long texts (default 16; quick 4)")
    ap.add_argument("--cpu-short", type=int, default=None, help="short texts on the CPU (default: --short)")
    ap.add_argument("--cpu-long", type=int, default=None, help="long texts on the CPU (default: --long)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds, median taken (default 3; quick 2)")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--tokens-per-run", default="", help="comma-separated rows x tokens budgets to measure on the "
                    "GPU, e.g. 16384,65536 (default: the device's own)")
    args = ap.parse_args()

    dev = detect_devices(args.allow_cpu)
    wanted = args.devices.split(",")
    gpu_ort = dev.ort if dev.ort == "cuda" else None
    if "gpu" in wanted and gpu_ort is None and not args.allow_cpu:
        print(f"batch_throughput.py: no usable GPU here (onnxruntime providers {dev.info.get('providers')}); "
              f"--allow-cpu measures the CPU only", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bs-batch-"))
    os.environ.setdefault("BLACKBOX_SAL_CACHE", str(work / "graph-cache"))
    rec = Recorder(Path(args.out) / "batch.jsonl", "batch_throughput")
    sets = {"short": (args.short or (8 if args.quick else 64), 12 if args.quick else 33),
            "long": (args.long or (4 if args.quick else 16), 40 if args.quick else 233)}
    repeats = args.repeats or (2 if args.quick else 3)
    started = time.perf_counter()
    with rec.section("env"):
        info = dict(dev.info, quick=args.quick, uptime=uptime(), work=str(work),
                    graph_cache=os.environ["BLACKBOX_SAL_CACHE"])
        if dev.torch is not None or not args.no_captum:
            info.update(setup_torch(dev.torch or "cpu"))
        rec.record("env", **info)
        print(f"env: onnxruntime {info.get('onnxruntime')} {info.get('providers')}, torch {info.get('torch')}, "
              f"GPU {info.get('gpu', '-')}, {info['cpu_count']} CPUs; {info['uptime']}", flush=True)

    plan = []
    if "gpu" in wanted and gpu_ort is not None:
        plan += [("cuda", m) for m in args.gpu_models.split(",") if m]
    if "cpu" in wanted:
        plan += [("cpu", m) for m in args.cpu_models.split(",") if m]
    built = None
    for device, name in plan:
        model = twin = None
        with rec.section("load", device=device, model=name):
            import blackbox_sal as bs

            start = time.perf_counter()
            if name == "minilm":
                built = built or build("minilm", work, quick=args.quick)
                model = bs.load_model(built.folder, device=device)
                torch_device = "cuda" if device == "cuda" else "cpu"
                if not args.no_captum and (device == "cpu" or dev.torch == "cuda"):
                    twin = sdpa_twin(built, torch_device)
            else:
                model = bs.load_model(bs.default_model_path(), device=device)
            rec.record("load", device=device, model=name, seconds=time.perf_counter() - start,
                       model_device=model.device)
        if model is None:
            continue
        budgets = [int(b) if b else None for b in args.tokens_per_run.split(",")] if device == "cuda" else [None]
        for key in args.sets.split(","):
            n, tokens = sets[key]
            if device == "cpu":
                n = (args.cpu_short if key == "short" else args.cpu_long) or n
            for budget in budgets:
                with rec.section("throughput", device=device, model=name, tokens=tokens, tokens_per_run=budget):
                    texts = random_texts(model.tokenizer, n, tokens, seed=tokens)
                    measure(rec, device, "cuda" if device == "cuda" else "cpu", name, model, twin, texts, tokens,
                            repeats, budget)
        del model, twin
    total = time.perf_counter() - started
    rec.record("done", seconds=total, errors=rec.errors, uptime=uptime())
    print(f"\nbatch_throughput.py done in {total:.0f} s; {len(rec.errors)} part(s) failed" +
          "".join(f"\n  {e}" for e in rec.errors), flush=True)
    return 1 if rec.errors else 0


if __name__ == "__main__":
    sys.exit(main())
