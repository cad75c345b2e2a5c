"""A fuzz harness for model folders (issue 22): Hypothesis draws folders (config.json variants,
tokenizer.json variants, small ONNX graphs) and texts; a worker process, under a memory limit,
runs each through the CLI's ``main`` and through the API (``load_model`` + ``explain``), and
the documented outcome is asserted:

- the CLI exits 0, 2, 3, 4 or 5, never 1, with no traceback; a failure is one
  ``blackbox-sal: error:`` line, the last one written;
- the API raises only errors of the tree (:class:`~blackbox_sal.vocabulary.errors.SalError`);
- nothing allocates without bound: the worker runs under ``RLIMIT_AS`` (MEMORY_LIMIT), where an
  unbounded allocation is a MemoryError (a traceback, exit 1) or the worker's death, both
  failures here; nothing hangs: every run is under ``--timeout`` / ``time_limit``, and the
  worker under a wall-clock limit.

``tests/test_hostile.py`` runs a short draw in the default suite. A long run::

    PYTHONPATH=. python tests/fuzz_models.py --minutes 5

prints how many cases it tried and exits 1 with the first failing case (its folder kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import crafted
import tiny

#: the worker's address-space limit: a crafted folder may not make it allocate more
MEMORY_LIMIT = 3 * 1024**3
#: seconds per model run in the worker (--timeout, time_limit)
RUN_LIMIT = 2.0
#: exit codes the CLI may end with (1 is a bug)
DOCUMENTED = {0, 2, 3, 4, 5}

# --- what is drawn --------------------------------------------------------------------------
# Each part of a folder is valid three times in four, so that most cases reach the explaining
# paths (where panics, normalized lengths and deadlines bite) and not only the loader's refusals.


def _mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Hypothesis favours the first of sampled values (and small integers): valid comes first
    return st.sampled_from([0, 1, 2, 3]).flatmap(lambda k: hostile if k == 3 else valid)


_CHARS = st.characters(codec="utf-8") | st.sampled_from("ae \x00\x1b\u202e\t\n\ufeff😀İﬃ")
_WORDS = st.lists(st.sampled_from([*tiny.WORDS, "zzz", "É", "[CLS]"]), min_size=1, max_size=12).map(" ".join)
TEXTS = _mostly(_WORDS, st.text(_CHARS, max_size=60) | st.sampled_from(
    [crafted.PANIC_TEXT, "the film " * 8 + "!", "e" * 3000, " ", ""]))
REGEXES = [r"(a|aa)+$", r"(\w+\s*)+$", r"\s+", r"", r"(", r"[", r"(?<=a)b", r"\p{L}+", r"(a*)*b", r"."]


def _replace() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda p, c, regex: {"type": "Replace", "pattern": {"Regex" if regex else "String": p},
                                          "content": c},
                     st.sampled_from(["e", "a", "", " ", "ab", ".", "\\w"]),
                     st.sampled_from(["", "x", "e" * 10, "e" * 60, "ee" * 500]), st.booleans())


NORMALIZERS = _mostly(st.sampled_from([None, {"type": "Lowercase"}, {"type": "NFKC"}]), st.one_of(
    st.just({"type": "NFD"}),
    st.builds(lambda p: {"type": "Prepend", "prepend": p}, st.sampled_from(["\u2581", "", "x" * 200])),
    _replace(), st.builds(lambda steps: {"type": "Sequence", "normalizers": steps}, st.lists(_replace(), max_size=4)),
    st.just({"type": "Nonsense"})))
PRE_TOKENIZERS = _mostly(st.sampled_from([{"type": "WhitespaceSplit"}, {"type": "Whitespace"}]), st.one_of(
    st.just({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}),
    st.builds(lambda r, b: {"type": "Split", "pattern": {"Regex": r}, "behavior": b, "invert": False},
              st.sampled_from(REGEXES), st.sampled_from(["Isolated", "Removed", "MergedWithNext", "Bogus"]))))
LABELS = _mostly(st.sampled_from([None, ["neg", "pos"]]), st.lists(
    st.sampled_from(["neg", "pos", " pos", "1", "0", "", "\x1b[2J", "\u202eneg"]), max_size=3))
CONFIGS = st.fixed_dictionaries({"labels": LABELS}, optional={
    "max_length": _mostly(st.integers(4, 70), st.integers(-3, 3) | st.sampled_from([10**12, True, "7"])),
    "name": st.text(_CHARS, max_size=12),
    "input_kind": _mostly(st.just("text"), st.sampled_from(["features", "bag-of-words", "??"])),
    "pooling": st.sampled_from(["mean", "cls", "max", "sum"]),
})
GRAPHS = _mostly(st.just(("mlp", 0)), st.one_of(
    st.tuples(st.just("static"), st.sampled_from([1, 4, 64, 10**5, 10**9, 2**40])),
    st.tuples(st.just("loop"), st.sampled_from([0, 3, 2**62])), st.tuples(st.just("flip"), st.integers(0, 2**31))))
CASES = st.fixed_dictionaries({
    "config": CONFIGS, "normalizer": NORMALIZERS, "pre_tokenizer": PRE_TOKENIZERS,
    "unk": _mostly(st.just(True), st.just(False)), "graph": GRAPHS, "text": TEXTS,
    "method": st.sampled_from(["occlusion", "grad-x-input"]),
    "truncate_tokenizer": st.sampled_from([False] * 15 + [True])})


# --- building a drawn folder ----------------------------------------------------------------


def _graph(kind: str, value: int) -> Any:
    if kind == "static":
        m = crafted.mlp()
        for inp in m.graph.input:
            dims = inp.type.tensor_type.shape.dim
            dims[0].dim_value, dims[1].dim_value = 1, value
        return m
    if kind == "loop":
        folder = crafted.loop_forever(Path(tempfile.mkdtemp()))
        import onnx

        m = onnx.load_from_string((folder / "model.onnx").read_bytes())
        shutil.rmtree(folder.parent, ignore_errors=True)
        for t in m.graph.initializer:
            if t.name == "trips":
                t.CopyFrom(onnx.numpy_helper.from_array(np.array(value, np.int64), "trips"))
        return m
    m = crafted.mlp()
    if kind == "flip":
        crafted._field_flip(m, np.random.default_rng(value))
    return m


def build(case: dict[str, Any], root: Path) -> Path:
    """The model folder of a drawn case under ``root``."""
    cfg = dict(case["config"])
    labels = cfg.pop("labels", None)
    if labels is not None:
        cfg["id2label"] = {str(i): label for i, label in enumerate(labels)}
    folder = crafted.write(root, _graph(*case["graph"]), cfg)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = case["normalizer"]
    spec["pre_tokenizer"] = case["pre_tokenizer"]
    if not case["unk"]:
        spec["model"]["unk_token"] = "<not in the vocabulary>"
    data = json.dumps(spec)
    (folder / "tokenizer.json").write_text(data[: len(data) // 2] if case["truncate_tokenizer"] else data)
    return folder


# --- the worker -----------------------------------------------------------------------------

WORKER = r"""
import json, os, resource, sys, tempfile, traceback
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
from blackbox_sal.cli import main
from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.vocabulary.errors import SalError
from blackbox_sal.model.session import time_limit
calls = json.load(open(sys.argv[1]))
progress = open(sys.argv[2] + ".progress", "w")
results = []
for k, call in enumerate(calls):
    progress.write(f"{k}\n"); progress.flush()
    with tempfile.TemporaryFile() as err:
        sys.stdout.flush(); sys.stderr.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1); os.dup2(err.fileno(), 2)
        api = "ok"
        try:
            try:
                rc = main(call["args"])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stdout.flush(); sys.stderr.flush()
            err.seek(0)
            cli_err = err.read().decode("utf-8", "replace")
            os.dup2(devnull, 2)  # the API's own output (a panic's note) is not the CLI's
            try:
                with time_limit(float(sys.argv[4])):
                    explain(load_model(call["folder"]), call["text"], ExplainConfig(method=call["method"]))
            except SalError as exc:
                api = type(exc).__name__
            except BaseException:
                api = "bug: " + traceback.format_exc()
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os.dup2(saved_out, 1); os.dup2(saved_err, 2)
            for fd in (saved_out, saved_err, devnull):
                os.close(fd)
        results.append({"rc": rc, "stderr": cli_err, "api": api})
json.dump(results, open(sys.argv[2], "w"))
"""


def run_cases(cases: list[dict[str, Any]], root: Path, timeout: float = 600,
              tally: Counter[str] | None = None) -> list[str]:
    """Build and run ``cases`` in one worker; the problems found (empty: all as documented).
    ``tally`` counts the outcomes (``exit N``, and the API's error class)."""
    calls = []
    for k, case in enumerate(cases):
        where = root / f"case{k}"
        where.mkdir(parents=True)
        folder = build(case, where)
        calls.append({"args": ["explain", case["text"], "--model", str(folder), "--method", case["method"],
                               "--timeout", str(RUN_LIMIT), "-q"],
                      "folder": str(folder), "text": case["text"], "method": case["method"]})
    payload, out = root / "calls.json", root / "results.json"
    payload.write_text(json.dumps(calls))
    env = {**os.environ, "NO_COLOR": "1", "BLACKBOX_SAL_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    try:
        worker = subprocess.run([sys.executable, "-c", WORKER, str(payload), str(out), str(MEMORY_LIMIT),
                                 str(RUN_LIMIT)], cwd=root, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [f"the worker hung (over {timeout:g} s) at case {_progress(out)}: {cases[_progress(out)]!r}"]
    if worker.returncode != 0:
        k = _progress(out)
        return [f"the worker died (exit {worker.returncode}) at case {k}: {cases[k]!r}\n{worker.stderr[-2000:]}"]
    problems = []
    for case, result in zip(cases, json.loads(out.read_text()), strict=True):
        if tally is not None:
            tally.update([f"exit {result['rc']}", f"api {result['api'][:20]}"])
        stderr = result["stderr"]
        lines = [line for line in stderr.splitlines() if line.strip()]
        if result["rc"] not in DOCUMENTED or "Traceback" in stderr:
            problems.append(f"exit {result['rc']} for {case!r}:\n{stderr[-3000:]}")
        elif result["rc"] != 0 and not (lines and lines[-1].startswith("blackbox-sal: error: ")):
            problems.append(f"exit {result['rc']} without an error line last for {case!r}:\n{stderr[-2000:]}")
        if result["api"].startswith("bug"):
            problems.append(f"the API raised outside the tree for {case!r}:\n{result['api'][-3000:]}")
    return problems


def _progress(out: Path) -> int:
    marks = out.with_name(out.name + ".progress").read_text().split() if out.with_name(
        out.name + ".progress").exists() else []
    return int(marks[-1]) if marks else 0


class TimeUp(BaseException):
    """Raised through Hypothesis (which lets BaseExceptions pass) when a long run's time is up."""


def fuzz(minutes: float, per_worker: int = 12, seed: int | None = None,
         tally: Counter[str] | None = None) -> tuple[int, list[str]]:
    """Draw and run cases for ``minutes``; (cases tried, problems of the first failing draw)."""
    end = time.monotonic() + 60 * minutes
    tried = [0]
    problems: list[str] = []

    @settings(max_examples=10**6, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(CASES, min_size=per_worker, max_size=per_worker))
    def draw(cases: list[dict[str, Any]]) -> None:
        if time.monotonic() > end:
            raise TimeUp
        root = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
        found = run_cases(cases, root, tally=tally)
        tried[0] += len(cases)
        if found:
            problems.extend(found)
            print(f"kept the failing draw in {root}", file=sys.stderr)
            raise TimeUp
        shutil.rmtree(root, ignore_errors=True)
        print(f"{tried[0]} cases tried, none failed", file=sys.stderr, flush=True)

    if seed is not None:
        import hypothesis

        draw = hypothesis.seed(seed)(draw)
    try:
        draw()
    except TimeUp:
        pass
    return tried[0], problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    a = p.parse_args()
    started = time.monotonic()
    tally: Counter[str] = Counter()
    tried, problems = fuzz(a.minutes, seed=a.seed, tally=tally)
    print(f"fuzz_models: {tried} cases in {time.monotonic() - started:.0f} s, {len(problems)} problems")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
