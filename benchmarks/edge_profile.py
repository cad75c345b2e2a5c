"""The edge profile against the default install: installed size, peak resident memory and
cold-start time of ``blackbox-sal explain`` (issue 12, item 5).

Makes two fresh virtual environments under a temporary folder (or ``--work DIR``):

- edge: ``pip install --no-deps onnxruntime numpy tokenizers`` (the CPU build, pinned to the
  versions this interpreter runs) and ``pip install --no-deps CHECKOUT``;
- full: ``pip install CHECKOUT`` (onnxruntime-gpu, scipy, onnx and their dependencies);

prepares the bundled default model with this interpreter (``prepare``), then for each install
reports the size of site-packages and of each distribution (the files its RECORD lists), and
runs ``blackbox-sal explain TEXT --model FOLDER`` ``--repeats`` times, each a new process: wall
time from start to exit, and the child's peak RSS (``os.wait4``). The full install runs both
the prepared folder and the original (its gradient graph cached after the first run).

    python benchmarks/edge_profile.py [--repeats 5] [--work DIR] [--keep]

Needs the package index (the full install downloads about 400 MB the first time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import tokenizers

from blackbox_sal import default_model_path, load_model, prepare

CHECKOUT = Path(__file__).resolve().parents[1]
TEXT = "An absolute masterpiece, I loved every minute of it."
SIZES = r"""
import json, sys, sysconfig
from importlib import metadata
site = sysconfig.get_paths()["purelib"]
out = {}
for dist in metadata.distributions():
    total = 0
    for f in dist.files or []:
        try:
            total += f.locate().stat().st_size
        except OSError:
            pass
    out[dist.metadata["Name"]] = total
print(json.dumps({"site": site, "dists": out}))
"""


def venv(path: Path, *installs: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    for args in installs:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                       check=True)
    return python


def sizes(python: Path) -> tuple[int, dict[str, int]]:
    out = json.loads(subprocess.run([str(python), "-c", SIZES], capture_output=True, text=True,
                                    check=True).stdout)
    site = Path(out["site"])
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    return total, dict(sorted(out["dists"].items(), key=lambda kv: -kv[1]))


#: starts one command and reports its wall time and peak RSS. It runs in a bare interpreter (-S):
#: Linux counts a forked child's peak RSS from its parent's, so the parent must be small
LAUNCH = r"""
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
if code:
    sys.exit(child.stderr.read().decode(errors="replace"))
print(wall, usage.ru_maxrss / 1024)
"""


def run(python: Path, folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one ``blackbox-sal explain`` process."""
    r = subprocess.run([sys.executable, "-S", "-c", LAUNCH, str(python), "-m", "blackbox_sal", "explain", TEXT,
                        "--model", str(folder), "-q"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{python} explain failed: {r.stderr}")
    wall, rss = r.stdout.split()
    return float(wall), float(rss)  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, help="where the environments go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the environments")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="edge-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pins = [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}",
                f"tokenizers=={tokenizers.__version__}"]
        edge = venv(work / "edge", ["--no-deps", *pins], ["--no-deps", str(CHECKOUT)])
        full = venv(work / "full", [str(CHECKOUT)])
        folder = prepare(load_model(default_model_path()), work / "prepared")
        env = {**os.environ, "BLACKBOX_SAL_CACHE": str(work / "cache"), "NO_COLOR": "1"}
        with open("/proc/loadavg") as fh:
            print(f"load average at the start: {fh.read().split()[:3]}")
        for name, python in (("edge", edge), ("full", full)):
            total, dists = sizes(python)
            print(f"\n{name}: site-packages {total / 1e6:.1f} MB")
            for dist, n in dists.items():
                print(f"  {dist:<28} {n / 1e6:8.1f} MB")
        runs = [("edge", edge, folder), ("full", full, folder), ("full", full, default_model_path())]
        results: dict[str, list[tuple[float, float]]] = {}
        for _name, python, model in runs:
            run(python, model, env)  # warm-up: page cache, the gradient-graph cache for the original
        for _ in range(a.repeats):  # interleaved, so drift hits every row alike
            for name, python, model in runs:
                results.setdefault(f"{name} install, {'prepared' if model == folder else 'original'} folder",
                                   []).append(run(python, model, env))
        print(f"\nblackbox-sal explain (ig, default model), {a.repeats} runs each, new process each:")
        for label, values in results.items():
            walls, rss = [w for w, _ in values], [r for _, r in values]
            print(f"  {label:<34} wall {min(walls):.2f}-{max(walls):.2f} s (median {statistics.median(walls):.2f})"
                  f"   peak RSS {min(rss):.0f}-{max(rss):.0f} MiB")
        with open("/proc/loadavg") as fh:
            print(f"load average at the end: {fh.read().split()[:3]}")
    finally:
        if not a.keep and a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
