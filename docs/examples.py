"""Run every example of the docs and write its output into the docs, so they cannot go stale.

An example is a fenced block between two markers; its first line(s) are the command, after
``$ `` (a line ending in a backslash continues it), the rest is what the command printed:

    <!-- example: NAME [needs=PATH] [stderr] [head=N] [slow] -->
    ```
    $ blackbox-sal explain "A dull, lifeless remake."
    model sentiment-cnn | method ig (sum) | backend graph
    ...
    ```
    <!-- end example -->

``needs=PATH``: the example reads PATH (a data set built by ``--data``); without it the
example is left as it is. ``stderr``: what the command writes to standard error is shown too
(before its standard output, where a terminal shows it). ``head=N``: only the first N lines are kept, then ``...``.
A command may also be a here-document (``$ python - <<'EOF'`` ... ``EOF``).
``slow``: the test leaves it out (it runs for more than a few seconds); this script still
runs it. Each command runs in bash from a scratch folder of its own (no file of another
example is there) holding links to ``models/`` and ``docs/`` of this checkout, with
``blackbox-sal`` this checkout's command, ``NO_COLOR`` set and a gradient-graph cache of its
own (each example builds its graph as a first run does).

    python docs/examples.py                 # rewrite the examples of README.md and docs/*.md
    python docs/examples.py --check         # compare only; exit 1 naming each stale example
    python docs/examples.py --data          # first write models/.cache/rotten-tomatoes/*.jsonl
                                            # (and models/.cache/digits/test.csv with scikit-learn)
    python docs/examples.py --only NAME     # one example

``tests/test_docs.py`` runs the examples that are neither slow nor missing their data and
compares them with the text, numbers to a relative 1e-3 (other CPUs round the last digits
differently), everything else exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
DATA = ROOT / "models" / ".cache" / "rotten-tomatoes"

_BLOCK = re.compile(r"<!-- example: (?P<head>[^>]*?) -->\n```[a-z]*\n(?P<body>.*?)```\n<!-- end example -->",
                    re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?%?")


@dataclass(frozen=True)
class Example:
    """One example of one file: where it is, its options, its command and the output shown."""

    file: Path
    name: str
    needs: Path | None
    stderr: bool
    head: int | None
    slow: bool
    command: str
    shown: str
    span: tuple[int, int]

    @property
    def runnable(self) -> bool:
        return self.needs is None or self.needs.exists()


def examples(file: Path) -> Iterator[Example]:
    text = file.read_text("utf-8")
    for m in _BLOCK.finditer(text):
        words = m["head"].split()
        options = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
        lines = m["body"].splitlines()
        k = 0
        while lines[k].endswith("\\"):
            k += 1
        if lines[k].endswith("<<'EOF'"):  # a here-document: the command runs to its EOF line
            k = lines.index("EOF", k)
        command = "\n".join(lines[: k + 1])
        if not command.startswith("$ "):
            raise SystemExit(f"{file.name}: example {words[0]}: the block must start with '$ COMMAND'")
        yield Example(file, words[0], ROOT / options["needs"] if "needs" in options else None, "stderr" in options,
                      int(options["head"]) if "head" in options else None, "slow" in options,
                      command[2:], "\n".join(lines[k + 1:]) + "\n", m.span("body"))


def run(example: Example, scratch: Path) -> str:
    """What the command prints now, as the docs show it."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2",
           "BLACKBOX_SAL_CACHE": str(scratch / f"cache-{example.name}"), "PYTHONHASHSEED": "0"}
    env["PATH"] = f"{scratch / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    script = f"set -o pipefail\n{example.command}\n"  # bash joins the backslash-continued lines
    r = subprocess.run(["bash", "-c", script], cwd=scratch, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 and "exit" not in example.name:
        raise SystemExit(f"{example.file.name}: example {example.name} failed ({r.returncode}):\n{r.stderr}")
    out = (r.stderr if example.stderr else "") + r.stdout  # the command's notes come before its result
    lines = out.rstrip("\n").splitlines()
    if example.head is not None and len(lines) > example.head:
        lines = [*lines[: example.head], "..."]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def scratch_folder() -> tempfile.TemporaryDirectory[str]:
    """A folder to run in, with links to this checkout's models/ and docs/."""
    folder = tempfile.TemporaryDirectory(prefix="sal-docs-")
    for name in ("models", "docs"):
        os.symlink(ROOT / name, Path(folder.name) / name)
    # blackbox-sal and python: this interpreter, as programs (a server started with & is then the
    # process that kill %1 stops)
    bin_dir = Path(folder.name) / "bin"
    bin_dir.mkdir()
    for name, args in (("blackbox-sal", ' -m blackbox_sal "$@"'), ("python", ' "$@"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{args}\n')
        (bin_dir / name).chmod(0o755)
    return folder


def same(shown: str, now: str, rel: float = 1e-3) -> bool:
    """Equal but for the last digits of numbers: the words exactly, numbers to ``rel``."""
    if _NUMBER.sub("#", shown) != _NUMBER.sub("#", now):
        return False
    for a, b in zip(_NUMBER.findall(shown), _NUMBER.findall(now), strict=True):
        x, y = (float(v.replace(",", "").rstrip("%")) for v in (a, b))
        if not math.isclose(x, y, rel_tol=rel, abs_tol=rel * 1e-3):
            return False
    return True


def write_data() -> None:
    """The Rotten Tomatoes split of the default model (models/train_sentiment_cnn.py) as JSONL."""
    sys.path.insert(0, str(ROOT / "models"))
    from train_sentiment_cnn import LABELS, find_wheel, read_snippets, split  # type: ignore[import-not-found]

    DATA.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(("train", "validation", "test"), split(read_snippets(find_wheel(None))), strict=True):
        with open(DATA / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": t, "label": LABELS[y]}) + "\n" for t, y in rows)
    print(f"wrote {DATA}/{{train,validation,test}}.jsonl")
    try:  # the digits test split (models/train_digits.py's), where scikit-learn can load the digits
        from sklearn.datasets import load_digits  # type: ignore[import-not-found]
    except ImportError:
        print("scikit-learn is not installed: models/.cache/digits/test.csv not written")
        return
    digits = load_digits()
    indices = json.loads((ROOT / "models" / "digits-logreg" / "reference.json").read_text())["test_indices"]
    out = ROOT / "models" / ".cache" / "digits" / "test.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        fh.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
        fh.writelines(",".join(str(int(v)) for v in digits.data[i]) + f",{digits.target[i]}\n" for i in indices)
    print(f"wrote {out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 when an example is stale")
    p.add_argument("--data", action="store_true", help="first write the Rotten Tomatoes split the examples read")
    p.add_argument("--only", metavar="NAME", action="append", help="run only these examples")
    a = p.parse_args()
    if a.data:
        write_data()
    stale = 0
    for file in FILES:
        text = original = file.read_text("utf-8")
        found = list(examples(file))
        for ex in reversed(found):  # from the end, so the spans stay valid
            if a.only and ex.name not in a.only:
                continue
            if not ex.runnable:
                print(f"{file.name}: {ex.name}: left as it is ({ex.needs} is missing: --data writes it)")
                continue
            with scratch_folder() as folder:  # each example alone, as the test runs it
                now = run(ex, Path(folder))
            if a.check:
                if not same(ex.shown, now):
                    stale += 1
                    print(f"{file.name}: {ex.name}: stale")
                continue
            text = text[: ex.span[0]] + f"$ {ex.command}\n{now}" + text[ex.span[1]:]
            print(f"{file.name}: {ex.name}: written")
        if not a.check and text != original:
            file.write_text(text, "utf-8")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
