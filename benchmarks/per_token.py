"""Per-token targets: every entity of a 64-token text explained together (their rows packed into
shared runs) against the same k targets explained one at a time, side by side in one run.

    python benchmarks/per_token.py [--repeats 5] [--methods grad-x-input ig] [--backend fd]

Model: ``models/tiny-tagger`` (built by ``models/build_tagger.py``). Text: 62 words (64 tokens
with [CLS] and [SEP]) in which the tagger finds k >= 8 entities. "separate" drives each
target's explanation alone (the same targets, each a :class:`PerTokenQuestion`, each
its own forward and gradient runs); "packed" is :func:`explain_tokens`; "packed, plain" is
the same with the engine's sharing of repeated points turned off (no fan form of the gradient
graph, repeated prediction rows run again: the engine as it was before them), measured in the
same process so the machine's load is the same. All include tokenizing. Printed: ``uptime``
first (the machine is shared), then per method the wall and process CPU time of each (median and
range over the repeats), the ratios, and a check that packed and separate give the same matrix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from blackbox_sal.api.explaining import PerTokenQuestion, explanation, runner  # noqa: E402
from blackbox_sal.api.per_token import explain_tokens  # noqa: E402
from blackbox_sal.engine.drive import drive_one  # noqa: E402
from blackbox_sal.model.loading import load_model  # noqa: E402
from blackbox_sal.model.text_model import TextModel  # noqa: E402
from blackbox_sal.targets.per_token import Target, find_targets  # noqa: E402
from blackbox_sal.text.tokenization import tokenize  # noqa: E402
from blackbox_sal.vocabulary.config import ExplainConfig  # noqa: E402
from blackbox_sal.vocabulary.result import TokenTargets  # noqa: E402

TEXT = ("ada lovelace met alan turing in london and grace hopper visited new york . marie curie went to paris "
        "with ada and alan . it rained in oslo today . grace said that rome was good and london was good . "
        "alan turing went from buenos aires to oslo with marie curie and ada lovelace yesterday . "
        "paris and new york .")


def timed(run: Callable[[], object], repeats: int) -> tuple[list[float], list[float], object]:
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = run()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus, out


def separate(model: TextModel, cfg: ExplainConfig, targets: list[Target], text: str) -> list[np.ndarray]:
    """Each target explained alone: its own engine drive, forward and gradient runs."""
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    return [np.array([s.score for s in drive_one(explanation(model, tokens, cfg, PerTokenQuestion(tokens, t)),
                                                 runner(model, cfg)).tokens]) for t in targets]


@contextmanager
def plain_engine() -> Iterator[None]:
    """The engine without its sharing of repeated points: no fan form, no shared prediction rows."""
    from blackbox_sal.engine import runner as runner_module

    def no_fan(*_: Any) -> None:
        return None

    with (mock.patch.object(runner_module, "fan_session", no_fan),
          mock.patch.object(runner_module, "_twins", lambda group: list(range(len(group))))):
        yield


def span(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:7.1f} ms [{min(values) * 1e3:.1f}-{max(values) * 1e3:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["grad-x-input", "ig"])
    parser.add_argument("--model", type=Path, default=HERE.parent / "models" / "tiny-tagger",
                        help="another per-token model folder (a third-party one: see third_party.py)")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--backend", default="auto", help="auto (the gradient graph) or fd (finite differences)")
    args = parser.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    model = load_model(args.model, threads=1)
    tokens = tokenize(model.tokenizer, args.text, None, 10_000)
    print(f"model {model.name}, {len(tokens)} tokens, cpus {os.cpu_count()}, onnxruntime threads 1")
    for method in args.methods:
        cfg = ExplainConfig(method=method, backend=args.backend, steps=32, progress=False).validated()
        explain_tokens(model, args.text, cfg)  # warm: the gradient graph is built and cached once
        pw, pc, out = timed(partial(explain_tokens, model, args.text, cfg), args.repeats)
        packed = cast(TokenTargets, out)
        k = len(packed.targets)
        ids, _, _ = model.pad(tokens.ids, tokens.type_ids)
        scores = model.forward(model.embed(ids)[None], ids, tokens.type_ids)[0].reshape(len(ids), -1)
        targets = find_targets(scores, tokens, model.labels, None, None, None)
        with plain_engine():
            explain_tokens(model, args.text, cfg)
            bw, bc, _ = timed(partial(explain_tokens, model, args.text, cfg), args.repeats)
        sw, sc, out = timed(partial(separate, model, cfg, targets, args.text), args.repeats)
        single = cast(list[np.ndarray], out)
        gap = max(float(np.max(np.abs(np.array(row) - s)) / max(np.max(np.abs(s)), 1e-30))
                  for row, s in zip(packed.matrix, single, strict=True))
        print(f"{method}, backend {args.backend} (k = {k} targets{', steps 32' if method == 'ig' else ''}):")
        print(f"  packed        wall {span(pw)}  cpu {span(pc)}")
        print(f"  packed, plain wall {span(bw)}  cpu {span(bc)}")
        print(f"  separate      wall {span(sw)}  cpu {span(sc)}")
        print(f"  separate / packed: wall {statistics.median(sw) / statistics.median(pw):.2f}x, "
              f"cpu {statistics.median(sc) / statistics.median(pc):.2f}x; largest difference of the two matrices "
              f"(relative to the row's peak): {gap:.1e}")
        print(f"  packed, plain / packed: wall {statistics.median(bw) / statistics.median(pw):.2f}x, "
              f"cpu {statistics.median(bc) / statistics.median(pc):.2f}x")


if __name__ == "__main__":
    main()
