"""Batch jobs: the engine's results equal one-at-a-time explanations, bad rows are recorded,
and a job killed at any point resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.jobs.batch import run_batch
from blackbox_sal.jobs.datasets import Columns

D = 6
TABLE = tiny.table(D, seed=31)
W1, B1, W2 = tiny.mlp_weights(D, 6, 3, seed=31)
WORDS = [w for w in tiny.WORDS if w != "<b>"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("m"), tiny.tanh_mlp(TABLE, W1, B1, W2), ["a", "b", "c"],
                                with_cls=True, config={"max_length": 12})


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_job_equals_one_at_a_time_and_records_bad_rows(model_dir: Path, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"id": f"r{k}", "text": t, "target": ["a", "b", "c", None][k % 4]}
                                     for k, t in enumerate(texts(30))]
    rows[3]["text"] = ""                                   # empty
    rows[7]["text"] = " ".join(["good"] * 20)              # too long for 12 tokens
    rows[11]["target"] = "nope"                            # unknown label
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with open(source, "a") as fh:
        fh.write("{not json\n")                            # a malformed line: row 30
        fh.write('{"text": "good", "id": ' + "9" * 5000 + "}\n")  # over Python's int digits: row 31
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")    # nested past the recursion limit: row 32
    model = load_model(model_dir)
    cfg = ExplainConfig(method="ig", steps=10)
    summary = run_batch(model, source, tmp_path / "out.jsonl", cfg, Columns(id="id", target="target"), window=7)
    assert (summary.rows, summary.explained, summary.failed, summary.resumed) == (33, 27, 6, 0)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["row"] for r in out] == list(range(33))
    errors = {r["row"]: (r["error"], r["exit_code"]) for r in out if "error" in r}
    assert errors[3] == ("the text is empty", 2)
    assert "takes at most 12" in str(errors[7][0]) and errors[7][1] == 2
    assert "unknown target label 'nope'" in str(errors[11][0]) and "not a JSON object" in str(errors[30][0])
    assert errors[31] == ("not a JSON object: it holds an integer of more than 4,300 digits", 2)
    assert errors[32] == ("not a JSON object: nested too deeply", 2)
    for r in out:
        if "error" in r:
            continue
        k = int(r["row"])  # type: ignore[call-overload]
        target = rows[k]["target"]
        alone = explain(model, str(rows[k]["text"]), ExplainConfig(method="ig", steps=10,
                                                                   target=None if target is None else str(target)))
        record: dict[str, Any] = r
        assert record["id"] == f"r{k}" and record["target"]["index"] == alone.target.index
        np.testing.assert_allclose(np.array([t["score"] for t in record["tokens"]]),
                                   np.array([t.score for t in alone.tokens]), rtol=1e-6, atol=1e-7)


def test_csv_with_choices_and_pairs(model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text('text,options,other\n"the film","good|bad",\n"the plot was",,"great film"\n')
    model = load_model(model_dir)
    summary = run_batch(model, source, tmp_path / "out.jsonl", ExplainConfig(method="grad-x-input", target="b"),
                        Columns(choices="options", pair="other"))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert summary.failed == 0 and "choices" in out[0] and "similarity" in out[1]
    assert [c["label"] for c in out[0]["choices"]["choices"]] == ["good", "bad"]  # type: ignore[index]


def test_odd_rows_are_rows_with_errors_and_a_tampered_output_resumes_from_its_last_good_row(
        model_dir: Path, tmp_path: Path) -> None:
    """A CSV field over csv's default 128 KiB (counting the rows raised csv.Error), lone
    surrogates in the text and in the id (the output could not be encoded), then an output
    whose last line is not the next row (1e999, a row far ahead): the job resumes after the
    last good row, not past every input."""
    model = load_model(model_dir)
    cfg = ExplainConfig(method="grad-x-input")
    big = tmp_path / "big.csv"
    big.write_text('text,id\n"' + "good " * 40_000 + '",a\ngood bad,b\n')
    run_batch(model, big, tmp_path / "big.jsonl", cfg, Columns(id="id"))
    out = read_jsonl(tmp_path / "big.jsonl")
    assert "at most 100,000 are accepted" in str(out[0]["error"]) and "tokens" in out[1]
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "good \udc00", "id": "x"}, {"text": "good", "id": "\udc00"},
                                               {"text": "bad", "id": "z"}])
    run_batch(model, odd, tmp_path / "odd-out.jsonl", cfg, Columns(id="id"))
    out = read_jsonl(tmp_path / "odd-out.jsonl")
    assert "lone surrogate" in str(out[0]["error"]) and out[1]["id"] == "\udc00" and "tokens" in out[1]
    for tail in ('{"row": 1e999}', '{"row": 1' + "0" * 400 + "}"):
        lines = (tmp_path / "odd-out.jsonl").read_text().splitlines()
        (tmp_path / "odd-out.jsonl").write_text(lines[0] + "\n" + tail + "\n")
        summary = run_batch(model, odd, tmp_path / "odd-out.jsonl", cfg, Columns(id="id"))
        assert (summary.resumed, summary.rows) == (1, 2)
        assert [r["row"] for r in read_jsonl(tmp_path / "odd-out.jsonl")] == [0, 1, 2]


def test_files_that_start_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    """Spreadsheets and Windows editors write UTF-8 with a BOM: the CSV's first column was
    named '\ufefftext' (no column 'text'), the JSONL's first line was not JSON."""
    from blackbox_sal.jobs.datasets import read_rows

    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbftext,id\ngood film,1\n")
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "good film", "id": 1}\n')
    for name in ("a.csv", "a.jsonl"):
        rows = list(read_rows(tmp_path / name, Columns(id="id")))
        assert [(getattr(r, "text", None), r.id) for r in rows] == [("good film", "1")], name


def test_a_choices_field_that_is_not_json_after_all_is_split_on_bars(tmp_path: Path) -> None:
    """A field starting with "[" is read as a JSON list; one Python cannot parse (an integer
    of 5,000 digits raised a ValueError out of the reader) is split on "|" like any other."""
    from blackbox_sal.jobs.datasets import read_rows

    source = tmp_path / "in.csv"
    source.write_text('text,options\n"the film","[' + "9" * 5000 + '|bad"\n"a plot","[""x"", ""y""]"\n')
    rows = list(read_rows(source, Columns(choices="options")))
    assert [getattr(r, "choices", None) for r in rows] == [("[" + "9" * 5000, "bad"), ("x", "y")]


def test_a_changed_job_does_not_append_to_another_jobs_output(model_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts(5)])
    model = load_model(model_dir)
    run_batch(model, source, tmp_path / "out.jsonl", ExplainConfig(method="grad-x-input"))
    from blackbox_sal.vocabulary.errors import UsageError

    with pytest.raises(UsageError, match="was written with another settings"):
        run_batch(model, source, tmp_path / "out.jsonl", ExplainConfig(method="ig"))


def test_another_input_at_the_same_path_is_not_resumed_into_the_first_ones_rows(model_dir: Path,
                                                                                tmp_path: Path) -> None:
    """The input is known by its path, size and modification time: a file replaced at the
    same path (found by the docs' examples, where two jobs wrote reviews.jsonl) is refused
    instead of resumed, so no output mixes rows of two inputs."""
    from blackbox_sal.vocabulary.errors import UsageError

    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts(3)])
    model = load_model(model_dir)
    config = ExplainConfig(method="grad-x-input")
    run_batch(model, source, tmp_path / "out.jsonl", config, limit=2)
    write_jsonl(source, [{"text": t} for t in texts(6)])
    with pytest.raises(UsageError, match="was written with another input_file"):
        run_batch(model, source, tmp_path / "out.jsonl", config)


def cli(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "blackbox_sal", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ})


def finish(job: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    """Wait for a job and close its pipe: (exit code, stderr)."""
    _, err = job.communicate(timeout=timeout)
    return job.returncode, err.decode()


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_at_any_point_and_run_again_it_resumes_exactly(model_dir: Path, tmp_path: Path, seed: int) -> None:
    """SIGKILL while lines are being written, then the same command again: every row exactly
    once, in order, each line valid JSON, and the same records as a run never killed."""
    n = 400
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": k, "text": t} for k, t in enumerate(texts(n, seed))])
    args = ["batch", str(source), "--model", str(model_dir), "--method", "ig", "--steps", "30", "--window", "4",
            "--id-column", "id", "--quiet"]
    clean = tmp_path / "clean.jsonl"
    code, err = finish(cli(*args, "-o", str(clean), cwd=tmp_path))
    assert code == 0, err
    out = tmp_path / "out.jsonl"
    rng = np.random.default_rng(seed)
    kept = []
    for _ in range(2):  # killed twice, at random points
        job = cli(*args, "-o", str(out), cwd=tmp_path)
        wanted = int(rng.integers(20, n // 2)) * 300  # bytes written before the kill
        deadline = time.monotonic() + 120
        while job.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > wanted:
                job.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        finish(job, 60)
        kept.append(out.read_bytes().count(b"\n"))
    assert 0 < kept[0] < n and kept[0] <= kept[1] < n, kept  # the kills came while rows were being written
    code, err = finish(cli(*args, "-o", str(out), cwd=tmp_path))
    assert code == 0 and "already there from an earlier run" in err, err
    lines = out.read_text().splitlines()
    got = [json.loads(line) for line in lines]
    assert [r["row"] for r in got] == list(range(n)) and [r["id"] for r in got] == [str(k) for k in range(n)]
    assert got == read_jsonl(clean)
