"""What reading a cached gradient graph costs now (digest + re-verification against finite
differences on every read, commit bdb2eb3) against reading it as 97e77ab did on the CPU
(create the session, check its interface). Same process, same warm cache, interleaved;
wall and process CPU per read, median and range of the rounds.

    BLACKBOX_SAL_CACHE=DIR PYTHONPATH=. python benchmarks/results/cpu-2026-12-06/cache_read.py [MODEL_DIR]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from blackbox_sal import default_model_path, load_model
from blackbox_sal.gradient_graph import store
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.verify import verify


def timed(f: Callable[[], Any], reps: int) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        f()
    return (time.perf_counter() - w) / reps, (time.process_time() - c) / reps


def main() -> None:
    print("load before:", os.getloadavg())
    model = load_model(sys.argv[1] if len(sys.argv) > 1 else default_model_path(), device="cpu")
    store.gradient_session(model)  # built and stored if the cache is cold
    path = store._cache_path(model)
    data = path.read_bytes()

    def now() -> Any:
        return store._trusted(model, path)

    def before() -> Any:
        g = GradientSession.create(path.read_bytes(), model)
        store._check_interface(model, g)
        return g

    g = before()
    parts: dict[str, Callable[[], Any]] = {
        "read now (digest + verify)": now, "read as before (create + interface)": before,
        "  of which digest": lambda: store._digest(model, data), "  of which verify": lambda: verify(model, g)}
    now(), before()
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in parts}
    for _ in range(5):
        for k, f in parts.items():
            rows[k].append(timed(f, 5))
    print(f"model {model.name}, graph {len(data):,} bytes; ms per read, median [range] of 5 rounds of 5")
    for k, xs in rows.items():
        w, c = [x[0] * 1e3 for x in xs], [x[1] * 1e3 for x in xs]
        print(f"{k:<38} wall {statistics.median(w):8.2f} [{min(w):.2f}-{max(w):.2f}]"
              f"  cpu {statistics.median(c):8.2f} [{min(c):.2f}-{max(c):.2f}]")
    print("load after:", os.getloadavg())


if __name__ == "__main__":
    main()
