"""Issue 22, outside the server: hostile model folders, runaway graphs, a tampered cache and
quietly accepted input, each ending with one line and its exit code (or an error of the tree
from the API), never a traceback, a hang or an unbounded allocation.

The CLI cases run in one subprocess (crafted.drive); their folders are crafted.py's.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crafted
import numpy as np
import pytest
from onnx import numpy_helper

from blackbox_sal import ExplainConfig, InputError, ModelError, UsageError, explain, load_model
from blackbox_sal.api.explaining import prediction_work
from blackbox_sal.model.session import DEFAULT_TIMEOUT, RUN_TIMEOUT, time_limit
from blackbox_sal.text.normalization import MAX_EXPANSION, expansion
from blackbox_sal.vocabulary.errors import DeadlineError, TooLongError

LONG_SENTENCE = "the film was good " * 12 + "!"


def _build(root: Path, name: str, builder: Any) -> Path:
    (root / name).mkdir()
    folder: Path = builder(root / name)
    return folder


def _cases(root: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (CLI arguments, working directory), every folder built under ``root``."""
    def explain_on(name: str, builder: Any, text: str = crafted.TEXT, *extra: str) -> tuple[list[str], Path]:
        folder = _build(root, name, builder)
        return ["explain", text, "--model", str(folder), "--method", "occlusion", *extra], root / name

    valid = _build(root, "valid", lambda r: crafted.write(r, crafted.mlp()))
    rows = root / "rows"
    rows.mkdir()
    (rows / "bad.jsonl").write_bytes(b'{"text": "the film was good"}\n{"text": "bad \xff\xfe film"}\n'
                                     b'{"text": "the plot was bad"}\n')
    (rows / "bad.csv").write_bytes(b"text,id\nthe film was good,a\nbad \xc3\x28 film,b\nthe plot,c\n")
    (rows / "twice.csv").write_text("text,text\nthe film,the plot\n")

    def config(name: str, cfg: dict[str, object]) -> tuple[list[str], Path]:
        return explain_on(name, lambda r: crafted.write(r, crafted.mlp(), cfg))

    def batch(name: str, source: str, *extra: str) -> tuple[list[str], Path]:
        return (["batch", str(rows / source), "-o", str(rows / f"{name}.jsonl"), "--model", str(valid),
                 "--method", "grad-x-input", *extra], rows)

    return {  # first: the cache is cold for the MLP only until a case builds its graph
        "log-escapes": (["explain", crafted.TEXT, "--model", str(_build(root, "log-escapes", lambda r: crafted.write(
            r, crafted.mlp(), {"name": "evil\x1b]0;pwned\x07\x1b[2J"}))), "--method", "grad-x-input",
                         "--backend", "graph"], root / "log-escapes"),
        "panic-explain": explain_on("panic-explain", crafted.panicking_pretokenizer, crafted.PANIC_TEXT),
        "panic-probe": explain_on("panic-probe", crafted.panicking_probe),
        "panic-probe-long": explain_on("panic-probe-long", crafted.panicking_probe, LONG_SENTENCE),
        "normalizer-expanding": explain_on("normalizer-expanding", crafted.expanding_normalizer),
        "normalizer-widening": explain_on("normalizer-widening", crafted.widening_normalizer, "e" * 90_000),
        "normalizer-widening-short": explain_on("normalizer-widening-short", crafted.widening_normalizer),
        "no-unk-explain": explain_on("no-unk-explain", crafted.no_unknown_token, "the film was zzz"),
        "no-unk-probe": explain_on("no-unk-probe", crafted.no_unknown_token_probe),
        "loop-forever": explain_on("loop-forever", crafted.loop_forever, crafted.TEXT, "--timeout", "1"),
        "loop-forever-batch": (["batch", str(rows / "bad.jsonl"), "-o", str(rows / "loop.jsonl"), "--model",
                                str(_build(root, "loop-batch", crafted.loop_forever)), "--timeout", "1"], rows),
        "timeout-zero": explain_on("timeout-zero", lambda r: crafted.write(r, crafted.mlp()), crafted.TEXT,
                                   "--timeout", "0"),
        "huge-static-input": explain_on("huge-static-input", crafted.huge_static_input),
        "huge-features": explain_on("huge-features", crafted.huge_features, "1"),
        "max-length-zero": config("max-length-zero", {"max_length": 0}),
        "max-length-negative": config("max-length-negative", {"max_position_embeddings": -5}),
        "labels-duplicate": config("labels-duplicate", {"id2label": {"0": "pos", "1": "pos"}}),
        "labels-spaces": config("labels-spaces", {"id2label": {"0": "pos", "1": " pos "}}),
        "batch-utf8-jsonl": batch("utf8-jsonl", "bad.jsonl"),
        "batch-utf8-csv": batch("utf8-csv", "bad.csv", "--id-column", "id"),
        "batch-csv-twice": batch("twice", "twice.csv"),
        "batch-text-column-empty": batch("empty-column", "bad.jsonl", "--text-column", ""),
        "fd-step-underflow": (["explain", crafted.TEXT, "--model", str(valid), "--method", "grad-x-input",
                               "--backend", "fd", "--fd-step", "1e-320"], root),
    }


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """Every CLI case run once (one interpreter), with a cold gradient-graph cache of its own."""
    root = tmp_path_factory.mktemp("hostile")
    cases = _cases(root)
    prelude = f"import os; os.environ['BLACKBOX_SAL_CACHE'] = {str(root / 'cache')!r}"
    started = time.monotonic()
    results = crafted.drive(list(cases.values()), root / "results.json", prelude=prelude)
    elapsed = time.monotonic() - started
    out = dict(zip(cases, results, strict=True))
    out["_elapsed"] = {"rc": 0, "stderr": f"{elapsed}"}
    out["_rows"] = {"rc": 0, "stderr": str(root / "rows")}
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _error(result: dict[str, Any], code: int) -> str:
    """The one error line of a case that must end with exit ``code``: no traceback, and the
    error the last line (the Rust library prints its own panic note before it, on a panic)."""
    stderr = result["stderr"]
    assert result["rc"] == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("blackbox-sal: error: "), stderr
    assert sum(line.startswith("blackbox-sal: error: ") for line in lines) == 1, stderr
    return str(lines[-1])


# --- item 2: panics -------------------------------------------------------------------------


def test_a_tokenizer_that_panics_on_a_text_is_one_input_error(driven: dict[str, dict[str, Any]]) -> None:
    line = _error(driven["panic-explain"], 2)
    assert "the tokenizer failed on the text (a panic in the tokenizers library: Onig: Regex search error: " \
           "retry-limit-in-match over)" in line


def test_a_tokenizer_that_panics_on_the_probe_sentence_still_loads(driven: dict[str, dict[str, Any]]) -> None:
    """The loader probes with vocabulary tokens instead; texts it panics on are refused one by one."""
    assert driven["panic-probe"]["rc"] == 0, driven["panic-probe"]["stderr"]
    assert "a panic in the tokenizers library" in _error(driven["panic-probe-long"], 2)


def test_the_api_raises_an_error_of_the_tree_for_a_panic_not_a_base_exception(tmp_path: Path) -> None:
    model = load_model(crafted.panicking_pretokenizer(tmp_path), verify=False)
    with pytest.raises(InputError, match="a panic in the tokenizers library"):
        explain(model, crafted.PANIC_TEXT, ExplainConfig(method="occlusion"))
    assert explain(model, crafted.TEXT, ExplainConfig(method="occlusion")).tokens  # the model still works


# --- item 3: limits where they bite ---------------------------------------------------------


def test_a_normalizer_that_multiplies_text_is_refused_at_load(driven: dict[str, dict[str, Any]]) -> None:
    line = _error(driven["normalizer-expanding"], 3)
    assert ("the tokenizer's normalizer can make up to 1,000,000,000 characters of one (Replace or Prepend "
            f"steps); at most {MAX_EXPANSION} are accepted") in line


def test_the_character_cap_holds_after_normalization(driven: dict[str, dict[str, Any]]) -> None:
    """A Replace of 'e' by 50 e's: 90,000 characters as written would be 4.5 million once normalized."""
    line = _error(driven["normalizer-widening"], 2)  # two pieces of 1,024 e's are 102,400 characters: no further
    assert line.endswith("the text would have over 100,000 characters once the tokenizer normalizes it (90,000 as "
                         "written, 102,400 from its first 2,048)")
    assert driven["normalizer-widening-short"]["rc"] == 0, driven["normalizer-widening-short"]["stderr"]


@pytest.mark.parametrize(("spec", "factor"), [
    ({"type": "Replace", "pattern": {"String": "ab"}, "content": "x" * 10}, 5.0),
    ({"type": "Replace", "pattern": {"String": "abc"}, "content": "x"}, 1.0),
    ({"type": "Replace", "pattern": {"Regex": "a*"}, "content": "xyz"}, 4.0),
    ({"type": "Prepend", "prepend": "\u2581"}, 2.0),
    ({"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Replace", "pattern": {"String": "a"},
                                                                "content": "aaa"}] * 2}, 9.0),
    ({"type": "Lowercase"}, 1.0),
])
def test_the_static_expansion_factor(spec: dict[str, Any], factor: float) -> None:
    assert expansion(spec) == factor


def test_huge_static_input_dimensions_are_refused_before_allocating(driven: dict[str, dict[str, Any]]) -> None:
    line = _error(driven["huge-static-input"], 3)
    assert "has static shape [1, 1000000000, 8]: 29.8 GiB per run, at most 1 GiB are accepted" in line
    assert "input 'x' has 1,000,000,000 features; blackbox-sal takes 1 to 1,000,000" in _error(
        driven["huge-features"], 3)


# --- item 4: deadlines ----------------------------------------------------------------------


def test_a_loop_of_2_to_the_62_steps_ends_at_the_timeout(driven: dict[str, dict[str, Any]]) -> None:
    """The load-time check runs it; --timeout 1 stops it (exit 5) for explain and batch alike."""
    for case in ("loop-forever", "loop-forever-batch"):
        assert _error(driven[case], 5).endswith(
            "the model ran longer than 1 s and was stopped (raise the limit with --timeout SECONDS)")
    assert "--timeout must be in (0, 86,400], got 0.0" in _error(driven["timeout-zero"], 2)


def test_the_api_stops_a_runaway_model_within_its_time_limit(tmp_path: Path) -> None:
    assert RUN_TIMEOUT.get() == DEFAULT_TIMEOUT == 600.0
    folder = crafted.loop_forever(tmp_path)
    start = time.monotonic()
    with time_limit(0.5), pytest.raises(DeadlineError, match="ran longer than 0.5 s") as caught:
        load_model(folder)
    assert time.monotonic() - start < 20
    assert caught.value.exit_code == 5 and not isinstance(caught.value, ModelError)
    model = load_model(crafted.write(tmp_path, crafted.mlp(), name="fine"))
    with time_limit(30):  # a limit that is not reached changes nothing
        assert explain(model, crafted.TEXT, ExplainConfig(method="occlusion")).tokens
    with pytest.raises(UsageError):
        with time_limit(-1):
            pass


def test_the_watchdog_fires_late_runs_only_and_forgets_finished_ones() -> None:
    """One alarm past its time terminates its options (and only those); 10,000 disarmed alarms
    do not pile up in its heap (a batch makes millions of runs within one default limit)."""
    import onnxruntime as ort

    from blackbox_sal.model.session import _Watchdog

    dog = _Watchdog()
    late, kept = ort.RunOptions(), ort.RunOptions()
    fired, spared = dog.arm(late, 0.05), dog.arm(kept, 0.2)
    dog.disarm(spared)
    for _ in range(10_000):
        dog.disarm(dog.arm(ort.RunOptions(), 600.0))
    assert len(dog.heap) < 200
    time.sleep(0.5)
    assert fired.fired and late.terminate and not spared.fired and not kept.terminate
    dog.disarm(fired)  # after firing: a no-op, not a miscount
    assert dog.cancelled >= 0 and all(not e[2].fired for e in dog.heap)


# --- item 5: the cache as untrusted ---------------------------------------------------------


def _scores(model: Any, cfg: ExplainConfig) -> np.ndarray:
    e = explain(model, crafted.TEXT, cfg)
    assert e.backend == "graph"
    return np.array([span.score for span in e.tokens])


def _scaled_cache(cache: Path, factor: float) -> Path:
    """The one cached graph with every float initializer of more than one value scaled."""
    import onnx

    path = next(cache.glob("grad-*.onnx"))
    proto = onnx.load_from_string(path.read_bytes())
    for k, tensor in enumerate(proto.graph.initializer):
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and value.size > 1:
            proto.graph.initializer[k].CopyFrom(numpy_helper.from_array(value * np.float32(factor), tensor.name))
    path.write_bytes(proto.SerializeToString())
    return path


def test_a_tampered_cached_graph_is_rebuilt_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Edited alone (digest mismatch) or with its digest rewritten to match (it fails the check
    against finite differences): logged, rebuilt, and the scores are the true ones."""
    from blackbox_sal.gradient_graph import store

    cache = tmp_path / "cache"
    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(cache))
    folder = crafted.write(tmp_path, crafted.mlp())
    cfg = ExplainConfig(method="grad-x-input", backend="graph")
    want = _scores(load_model(folder), cfg)
    true_graph = next(cache.glob("grad-*.onnx")).read_bytes()
    assert json.loads(next(cache.glob("grad-*.digest")).read_text())["graph"]
    for rewrite_digest in (False, True):
        path = _scaled_cache(cache, 3.0)
        if rewrite_digest:
            model = load_model(folder)
            path.with_suffix(".digest").write_text(store._digest(model, path.read_bytes()))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="blackbox_sal"):
            got = _scores(load_model(folder), cfg)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        said = " ".join(r.getMessage() for r in caplog.records)
        assert ("fails its check" if rewrite_digest else "does not match its digest") in said, said
        assert path.read_bytes() == true_graph  # rebuilt in place


def test_an_intact_cached_graph_is_used_without_rebuilding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blackbox_sal.gradient_graph import store

    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path / "cache"))
    folder = crafted.write(tmp_path, crafted.mlp())
    cfg = ExplainConfig(method="grad-x-input", backend="graph")
    want = _scores(load_model(folder), cfg)

    def no_build(model: Any) -> Any:
        raise AssertionError("built again instead of using the cache")

    monkeypatch.setattr(store, "build_gradient", no_build)
    np.testing.assert_allclose(_scores(load_model(folder), cfg), want, rtol=1e-6)


# --- item 6: tracebacks ---------------------------------------------------------------------


def test_a_tokenizer_without_an_unknown_token(driven: dict[str, dict[str, Any]]) -> None:
    """At explain time one InputError; in the loader's probe, the vocabulary's tokens instead."""
    line = _error(driven["no-unk-explain"], 2)
    assert "the tokenizer cannot encode the text: WordLevel error: Missing [UNK] token from the vocabulary" in line
    assert driven["no-unk-probe"]["rc"] == 0, driven["no-unk-probe"]["stderr"]


@pytest.mark.parametrize(("text", "message"), [
    ("1 2 \udc00", "not valid Unicode"), (5, "must be a string, not int"), (b"1 2 3", "must be a string, not bytes"),
    ("", "the text is empty"), ("1 " * 60, "characters; at most 100 are accepted")])
def test_a_feature_model_predicting_checks_its_text(tmp_path: Path, text: Any, message: str) -> None:
    model = load_model(crafted.features_model(tmp_path))
    cfg = ExplainConfig(method="grad-x-input", max_chars=100)
    work = prediction_work(model, text, cfg)
    with pytest.raises((InputError, TooLongError), match=message):
        next(work)
    assert isinstance(next(prediction_work(model, "1 2 3", cfg)), object)  # a good text asks for its run


def test_featurize_refuses_what_is_not_text(tmp_path: Path) -> None:
    model = load_model(crafted.features_model(tmp_path))
    assert model.features is not None
    with pytest.raises(InputError, match="lone surrogate"):
        model.features.featurize("1 \ud800 2")
    np.testing.assert_array_equal(model.features.featurize("1, 2, 3")[0], [1.0, 2.0, 3.0])


# --- item 7: quiet acceptance ---------------------------------------------------------------


def test_config_token_limits_of_zero_or_less_are_refused(driven: dict[str, dict[str, Any]]) -> None:
    assert "config.json max_length must be a positive number of tokens, not 0" in _error(
        driven["max-length-zero"], 3)
    assert "config.json max_position_embeddings must be a positive number of tokens, not -5" in _error(
        driven["max-length-negative"], 3)


def test_labels_a_target_could_not_tell_apart_are_refused_naming_them(driven: dict[str, dict[str, Any]]) -> None:
    assert ("config.json labels 0 and 1 are both 'pos': a target label could not tell them apart; give each class "
            "its own name") in _error(driven["labels-duplicate"], 3)
    assert "labels 0 and 1 are 'pos' and ' pos ', the same up to spaces: a target label" in _error(
        driven["labels-spaces"], 3)


def test_batch_refuses_rows_that_are_not_utf8_instead_of_replacing(driven: dict[str, dict[str, Any]]) -> None:
    rows = Path(driven["_rows"]["stderr"])
    for name, reason in (("utf8-jsonl", "not valid UTF-8 (byte 0xff at byte 14 of the line)"),
                         ("utf8-csv", "column 'text' is not valid UTF-8 (byte 0xc3 at character 4)")):
        assert driven[f"batch-{name}"]["rc"] == 0, driven[f"batch-{name}"]["stderr"]
        out = [json.loads(line) for line in (rows / f"{name}.jsonl").read_text().splitlines()]
        assert [("tokens" in r, r.get("error")) for r in out] == [(True, None), (False, reason), (True, None)], out
        assert all("\ufffd" not in json.dumps(r, ensure_ascii=False) for r in out)


def test_csv_columns_named_twice_and_empty_column_names_are_refused(driven: dict[str, dict[str, Any]]) -> None:
    assert "has the column name 'text' more than once" in _error(driven["batch-csv-twice"], 2)
    assert "a column name cannot be empty" in _error(driven["batch-text-column-empty"], 2)


def test_a_finite_difference_step_below_float32_resolution_is_refused(driven: dict[str, dict[str, Any]]) -> None:
    assert "fd_step must be in [1e-06, 1), got 1e-320" in _error(driven["fd-step-underflow"], 2)
    with pytest.raises(UsageError, match=r"fd_step must be in \[1e-06, 1\), got 1e-07"):
        ExplainConfig(fd_step=1e-7).validated()
    assert ExplainConfig(fd_step=1e-6).validated().fd_step == 1e-6


# --- item 8: logs escape --------------------------------------------------------------------


def test_log_lines_escape_what_comes_from_the_model_folder(driven: dict[str, dict[str, Any]]) -> None:
    result = driven["log-escapes"]
    assert result["rc"] == 0, result["stderr"]
    assert "building the gradient graph of evil\\x1b]0;pwned\\x07\\x1b[2J" in result["stderr"]
    assert "\x1b" not in result["stderr"] and "\x07" not in result["stderr"]


def test_the_cli_cases_take_seconds(driven: dict[str, dict[str, Any]]) -> None:
    """No case hangs: all of them, two runaway loops included, in one bounded run."""
    assert float(driven["_elapsed"]["stderr"]) < 240


# --- item 9: the fuzz harness, a short draw ------------------------------------------------


def test_fuzzed_model_folders_end_as_documented(tmp_path: Path) -> None:
    """Hypothesis draws 12 folders (configs, tokenizers, graphs) and texts; one worker under a
    3 GiB address-space limit runs each through the CLI and the API (tests/fuzz_models.py):
    exit 0/2/3/4/5 with one error line, errors of the tree only, nothing killed or hung."""
    pytest.importorskip("hypothesis", reason="the fuzz harness needs hypothesis (the test extra)")
    import fuzz_models
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    tally: Counter[str] = Counter()

    @seed(22)
    @settings(max_examples=1, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(fuzz_models.CASES, min_size=12, max_size=12))
    def draw(cases: list[dict[str, Any]]) -> None:
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        assert fuzz_models.run_cases(cases, root, timeout=120, tally=tally) == []

    draw()
    assert sum(v for k, v in tally.items() if k.startswith("exit")) == 12


def test_a_normalizer_panic_is_one_printable_line() -> None:
    """A panic inside the normalizer (a BaseException, several lines, text from the model
    folder in it) ends as one InputError line, escaped, as one in the tokenizer does; before,
    the normalization check passed the message on whole."""
    from types import SimpleNamespace

    from blackbox_sal.text.normalization import normalized_length
    from blackbox_sal.vocabulary.errors import InputError

    class Panic(BaseException):
        pass

    def normalize_str(text: str) -> str:
        raise Panic("Onig: retry-limit \x1b[2J\nnote: run with `RUST_BACKTRACE=1`")

    fake = SimpleNamespace(normalizer=SimpleNamespace(normalize_str=normalize_str))
    with pytest.raises(InputError) as caught:
        normalized_length(fake, "some text")  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith("the tokenizer's normalizer failed on the text (a panic in the tokenizers library: "
                              "Onig: retry-limit")
