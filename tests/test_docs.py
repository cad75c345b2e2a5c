"""The docs cannot go stale: every example of README.md and docs/*.md that is quick and has
its data is rerun (docs/examples.py, the script that wrote its output) and must print what the
docs show; numbers to a relative 1e-3 (other CPUs round last digits differently)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_examples", ROOT / "docs" / "examples.py")
    if spec is None or spec.loader is None or not (ROOT / "docs" / "examples.py").is_file():
        pytest.skip("needs the source checkout's docs/")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


examples = _script()
ALL = [ex for file in examples.FILES for ex in examples.examples(file)]
QUICK = [ex for ex in ALL if not ex.slow]


def test_the_docs_hold_examples_and_their_names_are_unique() -> None:
    names = [ex.name for ex in ALL]
    assert len(names) == len(set(names))
    assert {"readme-first", "readme-python", "python-arrays", "saliency", "swaps"} <= set(names)
    assert all(ex.shown.strip() for ex in ALL if ex.runnable), "an example was never written: python docs/examples.py"


@pytest.mark.parametrize("example", QUICK, ids=[f"{ex.file.name}:{ex.name}" for ex in QUICK])
def test_an_example_prints_what_the_docs_show(example: Any) -> None:
    if not example.runnable:
        pytest.skip(f"needs {example.needs} (python docs/examples.py --data)")
    with examples.scratch_folder() as folder:
        now = examples.run(example, Path(folder))
    assert examples.same(example.shown, now), (
        f"stale: rerun python docs/examples.py --only {example.name}\n--- docs\n{example.shown}--- now\n{now}")


def test_same_allows_last_digits_only() -> None:
    shown = "f(x) = 5.989 (logit)\n  An  +0.454  ++\n1,000 rows, 12%\n"
    assert examples.same(shown, "f(x) = 5.9891 (logit)\n  An  +0.454  ++\n1,000 rows, 12%\n")
    assert not examples.same(shown, "f(x) = 5.989 (logit)\n  An  +0.554  ++\n1,000 rows, 12%\n")  # a digit
    assert not examples.same(shown, "f(x) = 5.989 (logit)\n  An  +0.454  +++\n1,000 rows, 12%\n")  # a bar
    assert not examples.same(shown, "f(x) = 5.989 (logits)\n  An  +0.454  ++\n1,000 rows, 12%\n")  # a word
    assert not examples.same(shown, "f(x) = 5.989 (logit)\n  An  +0.454  ++\n1,000 rows, 13%\n")
