"""The docs cannot go stale: every example of README.md and docs/*.md that is quick and has
its data is rerun (docs/examples.py, the script that wrote its output) and must print what the
docs show; numbers to a relative 1e-3 (other CPUs round last digits differently)."""

from __future__ import annotations

import importlib.util
import re
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


_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(file: Path) -> list[str]:
    """Each relative link of ``file`` (outside code) whose file, or whose heading anchor in a
    Markdown file, does not exist."""
    text = file.read_text("utf-8")
    broken = []
    for target in _LINK.findall(_CODE.sub("", _FENCE.sub("", text))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file
            continue
        path, _, anchor = target.partition("#")
        resolved = (file.parent / path).resolve() if path else file
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text("utf-8")):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


@pytest.mark.parametrize("file", examples.FILES, ids=[f.name for f in examples.FILES])
def test_every_relative_link_resolves(file: Path) -> None:
    assert broken_links(file) == []


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Exit codes and HTTP statuses\n\n## Exit codes and HTTP statuses\n")
    page = tmp_path / "page.md"
    page.write_text("# Top\n[a](other.md) [b](other.md#exit-codes-and-http-statuses-1) [c](#top) "
                    "[d](https://example.org/x) ![e](missing.png) [f](other.md#nowhere) [g](#gone)\n"
                    "`[h](inline-code.md)`\n```\n[i](fenced.md)\n```\n")
    assert broken_links(page) == [f"missing.png (no file {tmp_path / 'missing.png'})",
                                  "other.md#nowhere (no heading #nowhere in other.md)",
                                  "#gone (no heading #gone in page.md)"]
