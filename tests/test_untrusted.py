"""Hostile and broken model folders through the command line (issue 9, items 1, 2, 4, 8).

Each case of tests/crafted.py runs as ``blackbox-sal explain "the film was good" --model DIR``
with the case's tmp dir as the working directory, and must end in exit code 3 with one line
on stderr, ``blackbox-sal: error: ...``, and no traceback.

The current-directory leaks run as a user runs them, ``python -m blackbox_sal`` in a
subprocess each. The other cases run the CLI's ``main`` one after the other in a single
subprocess (crafted.drive: an interpreter start costs ~0.4 s, and there are ~60 cases), with
file descriptor 2 captured per case; ``-m heavy`` runs every case in its own process too. A
fuzz test runs 50 mutated copies of a valid model folder and finds no exit 1 and no traceback.

Before this file (main at 68ca072), 39 of these tests failed: the sparse and function-body
leaks loaded leak.bin from the working directory with exit 0; NUL and 300-character
locations, negative or non-numeric offsets, a 1e9-row embeddings.npy and a deeply nested
config.json ended in tracebacks (exit 1); links out of the folder were followed (exit 0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crafted
import numpy as np
import onnx
import pytest
import tiny
from onnx import numpy_helper

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.model import files

POSIX = os.name == "posix"
OCCLUSION = ExplainConfig(method="occlusion")
#: every case but the leaks, which run in a process each below
DRIVEN = {**crafted.EXTERNAL_ENTRIES, **crafted.TENSORS, **crafted.DOMAINS, **crafted.SIDE_FILES}


def method(case: str) -> str:
    """A gradient method where the case is about the gradient model, else occlusion (cheapest)."""
    return "grad-x-input" if "gradient-model" in case else "occlusion"


def cli(model: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blackbox_sal", *crafted.explain_args(model, *extra)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, "NO_COLOR": "1"})


def assert_refused(rc: int, stderr: str) -> str:
    """Exit 3, and stderr is exactly one line ``blackbox-sal: error: ...``; returns it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert rc == 3, (rc, stderr)
    assert len(lines) == 1 and lines[0].startswith("blackbox-sal: error: "), stderr
    return lines[0]


def skip_unless_possible(case: str) -> None:
    if case in crafted.POSIX_ONLY and not POSIX:
        pytest.skip("needs POSIX links and pipes")


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Every case of DRIVEN built in its own tmp dir and run once; its result by name. The
    folders (sparse multi-GiB files among them) are deleted afterwards."""
    root = tmp_path_factory.mktemp("crafted")
    names, calls = [], []
    for name, build in DRIVEN.items():
        if name in crafted.POSIX_ONLY and not POSIX:
            continue
        case_root = root / name
        case_root.mkdir()
        calls.append((crafted.explain_args(build(case_root), method(name)), case_root))
        names.append(name)
    results = crafted.drive(calls, root / "results.json")
    yield dict(zip(names, results, strict=True))
    shutil.rmtree(root, ignore_errors=True)


def test_the_base_models_are_valid(tmp_path: Path) -> None:
    """The crafted cases are broken only where they say: their base folders load and explain."""
    r = cli(crafted.write(tmp_path, crafted.mlp()), tmp_path, "occlusion", "-q")
    assert r.returncode == 0, r.stderr
    emb = crafted.write(tmp_path, crafted.embeds_model(), name="embeds")
    np.save(emb / "embeddings.npy", crafted.TABLE)
    r = cli(emb, tmp_path, "occlusion", "-q")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", sorted(crafted.LEAKS))
def test_external_data_is_never_read_from_the_working_directory(case: str, tmp_path: Path) -> None:
    """Issue 9 item 1: a tensor whose external data names leak.bin, with leak.bin in the
    working directory and not in the model folder, is refused (the sparse ones used to be
    read from the working directory, exit 0)."""
    folder = crafted.LEAKS[case](tmp_path)
    assert (tmp_path / "leak.bin").is_file() and not (folder / "leak.bin").exists()
    r = cli(folder, tmp_path)
    assert "leak.bin" in assert_refused(r.returncode, r.stderr)


@pytest.mark.parametrize("case", sorted(crafted.LEAKS))
def test_the_same_tensors_inside_the_folder_are_read_from_it(case: str, tmp_path: Path) -> None:
    """With leak.bin moved into the model folder, each leak case loads, and its scores are
    those of the model with b1 = leak.bin's values inline: every kind of tensor (sparse, in a
    function, in a subgraph) is resolved, against the folder."""
    folder = crafted.LEAKS[case](tmp_path)
    (tmp_path / "leak.bin").rename(folder / "leak.bin")
    inline = crafted.mlp()
    crafted.initializer(inline, "b1").CopyFrom(numpy_helper.from_array(crafted.LEAK, "b1"))
    expected = explain(load_model(crafted.write(tmp_path, inline, name="inline")), crafted.TEXT, OCCLUSION)
    got = explain(load_model(folder), crafted.TEXT, OCCLUSION)
    assert got.prediction.scores == pytest.approx(expected.prediction.scores, rel=1e-6)
    assert [t.score for t in got.tokens] == pytest.approx([t.score for t in expected.tokens], rel=1e-5, abs=1e-6)


def test_a_sparse_constant_in_a_function_does_not_crash_onnxruntime(tmp_path: Path) -> None:
    """Loading a plain model and then one whose function body holds a sparse Constant, five
    times in one process, segfaulted onnxruntime every time (exit -11) before sparse tensors
    were made dense at load. In a subprocess, so a crash fails this test only."""
    plain = crafted.write(tmp_path, crafted.mlp(), name="plain")
    sparse = crafted.function_sparse_constant_inline(tmp_path)
    script = ("import sys\nfrom blackbox_sal import ExplainConfig, explain, load_model\n"
              "for _ in range(5):\n"
              "    for d in sys.argv[1:]:\n"
              "        explain(load_model(d), 'the film was good', ExplainConfig(method='occlusion'))\n")
    r = subprocess.run([sys.executable, "-c", script, str(plain), str(sparse)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


def test_external_data_in_a_subfolder_loads_inline(tmp_path: Path) -> None:
    """onnx.save's own external data (every tensor, in data/weights.bin) loads, inline, and
    explains as the model saved whole does."""
    folder = tmp_path / "ext"
    (folder / "data").mkdir(parents=True)
    onnx.save(crafted.mlp(), str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="data/weights.bin", size_threshold=0)
    tiny.tokenizer().save(str(folder / "tokenizer.json"))
    proto = files.read_onnx(folder / "model.onnx")
    assert all(t.data_location == onnx.TensorProto.DEFAULT and t.HasField("raw_data") for t in proto.graph.initializer)
    whole = explain(load_model(crafted.write(tmp_path, crafted.mlp(), name="whole")), crafted.TEXT, OCCLUSION)
    got = explain(load_model(folder), crafted.TEXT, OCCLUSION)
    assert [t.score for t in got.tokens] == pytest.approx([t.score for t in whole.tokens], rel=1e-6)


@pytest.mark.parametrize("case", sorted(crafted.EXTERNAL_ENTRIES))
def test_bad_external_data_entries_are_refused(case: str, driven: dict[str, dict[str, Any]]) -> None:
    """Paths out of the folder, links, pipes, bad offsets and lengths (a pipe is never opened,
    so nothing blocks)."""
    skip_unless_possible(case)
    assert_refused(driven[case]["rc"], driven[case]["stderr"])


@pytest.mark.parametrize("case", sorted(crafted.TENSORS))
def test_tensors_that_do_not_match_their_shape_or_exceed_the_caps_are_refused(
        case: str, driven: dict[str, dict[str, Any]]) -> None:
    line = assert_refused(driven[case]["rc"], driven[case]["stderr"])
    if case in ("aliased-external-over-cap", "3-GiB-external", "sparse-dense-over-cap", "overflowing-dims"):
        assert "GiB" in line


@pytest.mark.parametrize("case", sorted(crafted.DOMAINS))
def test_operator_domains_are_checked_in_function_bodies_and_subgraphs(
        case: str, driven: dict[str, dict[str, Any]]) -> None:
    assert "com.evil" in assert_refused(driven[case]["rc"], driven[case]["stderr"])


@pytest.mark.parametrize("case", sorted(crafted.SIDE_FILES))
def test_bad_side_files_are_refused(case: str, driven: dict[str, dict[str, Any]]) -> None:
    """embeddings.npy, tokenizer.json, config.json, model.onnx and the gradient model."""
    skip_unless_possible(case)
    line = assert_refused(driven[case]["rc"], driven[case]["stderr"])
    assert SAYS.get(case, "") in line


@pytest.mark.parametrize("text", ['{"pooling_mode_mean_tokens": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
                                  '{"a": "\\ud800"', b"\xff\xfe"])
def test_a_bad_json_side_file_is_one_model_error(tmp_path: Path, text: str | bytes) -> None:
    """1_Pooling/config.json and friends: an integer over Python's 4,300 digits (a plain
    ValueError, which escaped as a traceback), nesting past the recursion limit, broken JSON,
    bytes that are not UTF-8: each is one ModelError naming the file."""
    from blackbox_sal.model.files import read_side_json
    from blackbox_sal.vocabulary.errors import ModelError

    side = tmp_path / "1_Pooling"
    side.mkdir()
    (side / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelError, match="is not valid JSON"):
        read_side_json(tmp_path, "1_Pooling/config.json")


#: what some refusals must say (the file was refused for the right reason, not by luck)
SAYS = {"tokenizer-over-cap": "larger than 64 MiB", "npy-wrong-width": "do not belong together",
        "npy-1e9-rows-sparse": "over the 4 GiB limit", "npy-1e9-rows-header": "more data than the file holds",
        "tokenizer-symlink-outside": "outside the model folder", "model-symlink-outside": "outside the model folder",
        "gradient-model-symlink-outside": "outside the model folder"}


@pytest.mark.heavy
@pytest.mark.parametrize("case", sorted(crafted.ALL))
def test_every_case_in_a_process_of_its_own(case: str, tmp_path: Path) -> None:
    """The same cases, each as ``python -m blackbox_sal`` (about 30 s for all)."""
    skip_unless_possible(case)
    try:
        r = cli(crafted.ALL[case](tmp_path), tmp_path, method(case))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # sparse multi-GiB files among them
    assert_refused(r.returncode, r.stderr)


def test_mutated_model_files_never_crash(tmp_path: Path) -> None:
    """50 copies of a valid folder with model.onnx truncated and/or byte-flipped (seeded):
    every run ends in 0 or 3 (never 1) and prints no traceback."""
    folders = crafted.mutations(tmp_path, 50, seed=2026)
    calls = [(crafted.explain_args(f, m, "--backend", "fd", "-q"), tmp_path)
             for f, m in zip(folders, ["occlusion", "grad-x-input"] * 25, strict=True)]
    start = time.monotonic()
    results = crafted.drive(calls, tmp_path / "results.json")
    assert time.monotonic() - start < 60
    bad = [(str(f), r) for f, r in zip(folders, results, strict=True)
           if r["rc"] not in (0, 3) or "Traceback" in r["stderr"]]
    assert not bad, bad[:3]
    assert {r["rc"] for r in results} == {0, 3}  # the mutations break some models, not all
