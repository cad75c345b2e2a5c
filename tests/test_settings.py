"""The settings spec and what is derived from it: config validation, the command line, the
server's parameter checks, the OpenAPI schema and docs/cli.md agree with the spec and with each
other; registries agree with the names the spec offers; the backend is decided in one place;
usage errors name the subcommand; batch output formats follow the suffix."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import jsonschema
import pytest
import tiny

from blackbox_sal.vocabulary import choices
from blackbox_sal.vocabulary.config import SETTINGS, ExplainConfig, Limits, reference
from blackbox_sal.vocabulary.errors import Interrupted, ModelError, UnavailableError, UsageError
from blackbox_sal.vocabulary.settings import (
    Integer,
    Number,
    Setting,
    add_options,
    fields_of,
    markdown,
    request_value,
    setting,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


# -- the registries and the names the spec offers ------------------------------------------

def test_every_registry_holds_exactly_the_names_the_spec_offers() -> None:
    from blackbox_sal.gradients.backend import BACKENDS
    from blackbox_sal.gradients.finite_differences import SCHEMES
    from blackbox_sal.methods import METHODS
    from blackbox_sal.methods.quadrature import QUADRATURES
    from blackbox_sal.model.session import DEVICES
    from blackbox_sal.reductions import REDUCTIONS
    from blackbox_sal.render import FORMATS
    from blackbox_sal.surgery.names import POOLINGS
    from blackbox_sal.vocabulary.scores import SCORES

    assert {n: (m.summary, m.default_reduce) for n, m in METHODS.items()} == {
        n: (c.summary, c.default_reduce) for n, c in choices.METHODS.items()}
    assert {n: b.summary for n, b in BACKENDS.items()} == {n: c.summary for n, c in choices.BACKENDS.items()}
    assert tuple(SCORES) == choices.SCORES
    assert tuple(REDUCTIONS) == choices.REDUCTIONS
    assert tuple(QUADRATURES) == choices.QUADRATURES
    assert set(choices.AUTO_QUADRATURES) | set(choices.TWO_NODE_QUADRATURES) <= set(QUADRATURES)
    assert tuple(SCHEMES) == choices.FD_SCHEMES
    assert tuple(DEVICES) == choices.DEVICES
    assert tuple(POOLINGS) == choices.POOLINGS
    assert tuple(FORMATS) == choices.FORMATS


def test_the_spec_names_each_setting_once_per_place() -> None:
    """Entry names are unique per owner; an option appears once per command; a request
    parameter once."""
    keys = [(e.owner, e.name) for e in SETTINGS]
    assert len(keys) == len(set(keys))
    per_command = [(c, e.option) for e in SETTINGS for c in e.commands]
    assert len(per_command) == len(set(per_command))
    request = [e.name for e in SETTINGS if e.request]
    assert len(request) == len(set(request))
    assert [e.name for e in SETTINGS if e.owner == "ExplainConfig"] == [f.name for f in
                                                                        dataclasses.fields(ExplainConfig)]
    assert [e.name for e in SETTINGS if e.owner == "Limits"] == [f.name for f in dataclasses.fields(Limits)]


# -- config validation == the spec ----------------------------------------------------------

def _bounds(entry: Setting) -> Iterator[tuple[Any, bool]]:
    """Values at and just beyond each bound of a numeric entry, with whether each is valid."""
    kind = entry.kind
    if isinstance(kind, Integer):
        yield kind.low, True
        yield kind.low - 1, False
        if kind.high is not None:
            yield kind.high, True
            yield kind.high + 1, False
    elif isinstance(kind, Number):
        for bound, is_open, outward in ((kind.low, kind.low_open, -math.inf), (kind.high, kind.high_open, math.inf)):
            if bound is None:
                continue
            inward = -outward
            yield bound, not is_open
            yield math.nextafter(bound, inward), True
            yield math.nextafter(bound, outward), False
        yield math.nan, False
        yield math.inf, False
    yield True, False  # a bool is not a number


NUMERIC = [e for e in SETTINGS if e.owner and isinstance(e.kind, Integer | Number)]


@pytest.mark.parametrize("entry", NUMERIC, ids=lambda e: f"{e.owner}.{e.name}")
def test_config_objects_accept_exactly_the_spec_range(entry: Setting) -> None:
    cls = ExplainConfig if entry.owner == "ExplainConfig" else Limits
    for value, valid in _bounds(entry):
        obj = cls(**{entry.name: value})
        if valid:
            assert obj.validated() is obj
        else:
            with pytest.raises(UsageError, match=f"^{entry.name if cls is ExplainConfig else entry.option} must be"):
                obj.validated()


@pytest.mark.parametrize("config,message", [
    (ExplainConfig(steps=0), "steps must be an integer from 1 to 1,024 or 'auto', got 0"),
    (ExplainConfig(tolerance=1.0), "tolerance must be in (0, 1), got 1.0"),
    (ExplainConfig(noise=-0.1), "noise must be a finite number >= 0, got -0.1"),
    (ExplainConfig(window_overlap=-1), "window_overlap must be an integer >= 0, got -1"),
    (ExplainConfig(samples=10_001), "samples must be an integer from 1 to 10,000, got 10001"),
    (ExplainConfig(method="salency"), "unknown method 'salency'; did you mean 'saliency'? "
                                      "(choose from: grad-x-input, ig, kernel-shap, lime, lrp-attn, lrp-cp, occlusion, "
                                      "owen, permutation, saliency, shapley, smoothgrad)"),
    (ExplainConfig(reduce="sums"),
     "unknown reduction 'sums'; did you mean 'sum'? (choose from: l1, l2, max, mean, sum)"),
    (ExplainConfig(baseline=" "), "baseline must be pad, zero, unk, mask or a token"),
    (ExplainConfig(steps="auto", quadrature="trapezoid"),
     "steps 'auto' adds nested Clenshaw-Curtis nodes; it does not combine with the trapezoid rule "
     "(give a number of steps instead)"),
    (ExplainConfig(steps=1, quadrature="clenshaw-curtis"), "the clenshaw-curtis rule needs steps >= 2"),
    (ExplainConfig(richardson=True, fd_scheme="forward"),
     "--richardson extrapolates central differences: it does not combine with --fd-scheme forward"),
    (Limits(queue_size=0), "--queue must be an integer from 1 to 1,000,000, got 0"),
    (Limits(deadline=0.0), "--deadline must be from 0.001 to 3,600, got 0.0"),
])
def test_bad_settings_are_one_exact_line(config: ExplainConfig | Limits, message: str) -> None:
    with pytest.raises(UsageError) as info:
        config.validated()
    assert str(info.value) == message


def test_a_path_may_hold_undecodable_bytes_and_a_text_may_not() -> None:
    from blackbox_sal.vocabulary.settings import FilePath, Text

    name = "\udcff.onnx"  # a POSIX file name with a byte that is not UTF-8, as argv delivers it
    assert FilePath().check("--model", name) == name
    with pytest.raises(UsageError, match=r"^--choice is not valid Unicode \(a lone surrogate\)$"):
        Text().check("--choice", name)


def test_the_reduction_default_is_the_methods_own() -> None:
    assert [ExplainConfig(method=m).reduction() for m in choices.METHODS] == [
        "l2", "sum", "sum", "l2", None, "sum", "sum", None, None, None, None, None]
    assert ExplainConfig(method="saliency", reduce="sum").reduction() == "sum"


# -- the command line == the spec -----------------------------------------------------------

def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from blackbox_sal.cli import _parser

    return _parser()


def test_every_command_line_option_is_a_spec_entry_and_every_entry_an_option() -> None:
    _, commands = _parsers()
    for name, parser in commands.items():
        have = {s for action in parser._actions for s in action.option_strings} - {"-h", "--help"}
        want = set()
        for e in SETTINGS:
            if name in e.commands:
                want |= {e.option, *([e.short] if e.short else [])}
                if type(e.kind).__name__ == "Switch":
                    want.add("--no-" + e.option[2:])
        assert have == want, name


def test_the_command_lines_defaults_are_the_config_objects_defaults() -> None:
    from blackbox_sal.cli import _config

    parser, _ = _parsers()
    for argv in (["explain", "x"], ["batch", "in.jsonl", "-o", "out.jsonl"], ["swaps", "x"], ["serve"],
                 ["eval", "d.jsonl"]):
        assert _config(parser.parse_args(argv)) == ExplainConfig()
    a = parser.parse_args(["serve"])
    from blackbox_sal.vocabulary.settings import dest_of
    assert Limits(**{e.name: getattr(a, dest_of(e)) for e in SETTINGS
                     if e.owner == "Limits" and "serve" in e.commands}) == Limits()


def test_a_config_option_reaches_the_config() -> None:
    from blackbox_sal.cli import _config

    parser, _ = _parsers()
    cfg = _config(parser.parse_args(["explain", "x", "--steps", "auto", "--quadrature", "clenshaw-curtis",
                                     "--reduce", "l1", "--words", "--seed", "7", "--fd-step", "0.05", "-q"]))
    assert cfg == ExplainConfig(steps="auto", quadrature="clenshaw-curtis", reduce="l1", words=True, seed=7,
                                fd_step=0.05, progress=False)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from blackbox_sal.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,last", [
    (["explain", "good", "--bogus"], "blackbox-sal explain: error: unrecognized arguments: --bogus"),
    (["serve", "--max-bodies", "3"], "blackbox-sal serve: error: unrecognized arguments: --max-bodies"),
    (["grad", "-o", "a.onnx", "--folder", "b"],
     "blackbox-sal grad: error: argument --folder: not allowed with argument --output/-o"),
    (["explain", "good", "--steps", "many"],
     "blackbox-sal explain: error: argument --steps: expected a number of nodes or 'auto', got 'many'"),
    (["batch", "in.jsonl"], "blackbox-sal batch: error: the following arguments are required: --output/-o"),
])
def test_a_bad_option_shows_its_commands_usage(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                last: str) -> None:
    code, out, err = _main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: blackbox-sal {argv[0]} [-h]")
    assert err.splitlines()[-1] == last


@pytest.mark.parametrize("argv,message", [
    (["swaps", "good", "--top", "0"], "blackbox-sal: error: --top must be an integer from 1 to 100, got 0"),
    (["eval", "d.jsonl", "--limit", "0"], "blackbox-sal: error: --limit must be an integer from 1 to 10,000,000, "
                                          "got 0"),
    (["serve", "--port", "70000"], "blackbox-sal: error: --port must be an integer from 1 to 65,535, got 70000"),
    (["serve", "--queue", "0"], "blackbox-sal: error: --queue must be an integer from 1 to 1,000,000, got 0"),
    (["explain", "good", "--tolerance", "2"], "blackbox-sal: error: tolerance must be in (0, 1), got 2.0"),
])
def test_an_option_out_of_its_range_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                message: str) -> None:
    assert _main(capsys, *argv) == (2, "", message + "\n")


def test_docs_cli_md_is_the_specs_rendering() -> None:
    """Regenerate with: python -m blackbox_sal.vocabulary.config --markdown > docs/cli.md"""
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == reference()


# -- the server == the spec -----------------------------------------------------------------

def test_the_openapi_parameters_are_the_request_entries_and_accept_what_the_server_accepts() -> None:
    """Each request entry is one property; at and beyond every bound, the schema and the
    server's check say the same (two faces derived from one entry)."""
    from blackbox_sal.server.openapi import parameters_schema
    from blackbox_sal.server.protocol import REQUEST, HttpError, settings_of

    limits = Limits(deadline=20.0)
    schema = parameters_schema(ExplainConfig(), limits)
    assert set(schema["properties"]) == set(REQUEST) == {e.name for e in SETTINGS if e.request}
    assert schema["properties"]["method"]["default"] == "ig"
    assert schema["properties"]["deadline"]["maximum"] == 20.0
    checked = 0
    for name, entry in REQUEST.items():
        if name == "deadline":
            entry = dataclasses.replace(entry, kind=Number(0, 20.0, low_open=True))
        for value, _ in _bounds(entry) if isinstance(entry.kind, Integer | Number) else ():
            if isinstance(value, float) and not math.isfinite(value):
                continue  # not JSON
            by_schema = jsonschema.Draft202012Validator(schema).is_valid({name: value})
            try:
                settings_of({name: value}, ExplainConfig(), limits)
                by_server = True
            except HttpError as exc:
                assert exc.status == 400
                by_server = False
            assert by_schema == by_server, (name, value)
            checked += 1
    assert checked >= 38


@pytest.mark.parametrize("parameters,message", [
    ({"steps": True}, "parameter steps must be an integer or 'auto', got true"),
    ({"noise": "NaN"}, "parameter noise must be a number, got \"NaN\""),
    ({"reduce": 3}, "parameter reduce must be a string or null, got 3"),
    ({"target": True}, "parameter target must be a label, an index or null, got true"),
    ({"words": 1}, "parameter words must be true or false, got 1"),
    ({"direction": [1, True]}, "direction must be a list of numbers"),
    ({"deadline": 31}, "deadline must be a number of seconds above 0 and at most 30"),
    ({"batch_size": 8}, "unknown parameter 'batch_size' (known: answer, at, backend, baseline, contrast, deadline, "
                        "direction, fd_scheme, fd_step, long, max_answer_tokens, method, noise, players, quadrature, "
                        "reduce, richardson, samples, score, seed, steps, target, tolerance, window_overlap, words)"),
])
def test_a_bad_request_parameter_is_one_exact_400(parameters: dict[str, Any], message: str) -> None:
    from blackbox_sal.server.protocol import HttpError, settings_of

    with pytest.raises(HttpError) as info:
        settings_of(parameters, ExplainConfig(), Limits())
    assert (info.value.status, info.value.message) == (400, message)


def test_request_parameters_become_the_config() -> None:
    from blackbox_sal.server.protocol import settings_of

    cfg, deadline = settings_of({"method": "smoothgrad", "samples": 3, "direction": [1, 0.5], "deadline": 2},
                                ExplainConfig(words=True), Limits(max_chars=77))
    assert cfg == ExplainConfig(method="smoothgrad", samples=3, direction=(1, 0.5), words=True, max_chars=77)
    assert deadline == 2.0
    assert settings_of(None, ExplainConfig(), Limits(deadline=9.0)) == (ExplainConfig(), 9.0)


# -- adding a setting is one entry ----------------------------------------------------------

@dataclass(frozen=True)
class _Dummy:
    width: int = setting(3, Integer(1, 9), "how wide", commands=("explain",), request=True, metavar="W")


def test_one_entry_gives_every_face() -> None:
    """A config object with one new field: its check, option, JSON check, schema and reference
    row all follow from that one line."""
    (entry,) = fields_of(_Dummy)
    assert (entry.name, entry.owner, entry.option) == ("width", "_Dummy", "--width")
    validate(_Dummy(width=9))
    with pytest.raises(UsageError, match=r"^width must be an integer from 1 to 9, got 10$"):
        validate(_Dummy(width=10))
    parser = argparse.ArgumentParser(prog="x")
    add_options(parser, "explain", [entry])
    assert parser.parse_args([]).width == 3 and parser.parse_args(["--width", "4"]).width == 4
    assert "--width W   how wide (default: 3)" in parser.format_help()
    assert request_value(entry, 4) == 4
    with pytest.raises(UsageError, match="parameter width must be an integer"):
        request_value(entry, "4")
    assert entry.json_schema(3) == {"type": "integer", "minimum": 1, "maximum": 9, "description": "how wide",
                                    "default": 3}
    doc = markdown([entry], {"explain": "Explain."}, [])
    assert "| `--width` | integer 1 .. 9 | 3 | how wide |" in doc
    assert "| `width` | integer 1 .. 9 | how wide |" in doc


# -- one function decides the backend -------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = tiny.table(6, seed=5)
    w1, b1, w2 = tiny.mlp_weights(6, 5, 2, seed=5)
    return tiny.write_model_dir(tmp_path_factory.mktemp("m"), tiny.tanh_mlp(table, w1, b1, w2), ["a", "b"])


def test_the_backend_is_decided_in_one_place(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """explain, the evaluation analyses and the server's warm-up all follow choose_backend: when
    it can build no graph, every one of them uses finite differences, and says why."""
    pytest.importorskip("starlette")
    from blackbox_sal import explain, load_model
    from blackbox_sal.evaluation.common import graph_unavailable
    from blackbox_sal.gradients import backend
    from blackbox_sal.server.app import _warm

    model = load_model(model_dir)
    cfg = ExplainConfig(method="grad-x-input")
    assert explain(model, "good bad", cfg).backend == "graph"
    assert graph_unavailable(model, "auto") is None and _warm(model, cfg)
    assert graph_unavailable(model, "fd") == "finite differences were asked for"

    def no_graph(m: object) -> None:
        raise ModelError("no graph here")

    monkeypatch.setattr(backend, "gradient_session", no_graph)
    result = explain(load_model(model_dir), "good bad", cfg)
    assert result.backend == "fd" and "finite differences were used: no graph here" in result.notes
    assert graph_unavailable(model, "auto") == "no graph here" and not _warm(model, cfg)
    for ask in (lambda: explain(model, "good bad", dataclasses.replace(cfg, backend="graph")),
                lambda: graph_unavailable(model, "graph")):
        with pytest.raises(UnavailableError, match=r"^--backend graph: no graph here$"):
            ask()


def test_a_quantized_model_gets_finite_differences() -> None:
    from blackbox_sal.gradients.backend import Decision, choose_backend

    model = cast(Any, SimpleNamespace(quantized=("MatMulInteger",)))
    assert choose_backend("auto", model) == Decision("fd", "the model is quantized (MatMulInteger)")
    with pytest.raises(UnavailableError) as info:
        choose_backend("graph", model)
    assert str(info.value) == ("--backend graph: the model is quantized (MatMulInteger); integer ops have no "
                               "gradients: use --backend fd")


# -- batch: the suffix picks the format; an interrupt says how to go on ----------------------

def _rows(tmp_path: Path, n: int) -> Path:
    words = ["good", "bad", "film", "plot"]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{k}", "text": " ".join(words[: 1 + k % 4])}) + "\n"
                            for k in range(n)))
    return path


def test_batch_refuses_an_output_suffix_that_names_no_format(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    code, stdout, err = _main(capsys, "batch", str(_rows(tmp_path, 2)), "-o", str(out), "--model", "/no/model")
    assert (code, stdout) == (2, "")
    assert err == (f"blackbox-sal: error: {str(out)!r}: the output's suffix picks its format: .jsonl, .csv, .parquet "
                   f"(got '.txt')\n")
    assert not out.exists()


def test_batch_writes_csv_when_asked_for_csv(model_dir: Path, tmp_path: Path) -> None:
    import csv

    from blackbox_sal import load_model
    from blackbox_sal.jobs.batch import run_batch
    from blackbox_sal.jobs.datasets import Columns

    model, source = load_model(model_dir), _rows(tmp_path, 5)
    cfg = ExplainConfig(method="grad-x-input")
    run_batch(model, source, tmp_path / "out.jsonl", cfg, Columns(id="id"))
    run_batch(model, source, tmp_path / "out.csv", cfg, Columns(id="id"))
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "row", "error", "exit_code", "result"]
    assert [r[:4] for r in table[1:]] == [[f"r{k}", str(k), "", ""] for k in range(5)]
    assert [json.loads(r[4]) for r in table[1:]] == [{k: v for k, v in rec.items() if k not in ("id", "row")}
                                                     for rec in records]


def test_an_interrupted_batch_says_what_is_saved_and_the_same_command_resumes(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_sal.jobs import batch

    source = _rows(tmp_path, 7)
    argv = ["batch", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", str(model_dir), "--id-column", "id",
            "--method", "grad-x-input", "-q"]
    real = batch.drive_many  # type: ignore[attr-defined]

    def three_then_ctrl_c(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for k, result in enumerate(real(*args, **kwargs)):
            if k == 3:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(batch, "drive_many", three_then_ctrl_c)
    assert _main(capsys, *argv) == (130, "", f"blackbox-sal: interrupted: 3 rows are saved ({tmp_path / 'out.jsonl'}); "
                                             f"run the same command again to resume from row 3\n")
    monkeypatch.setattr(batch, "drive_many", real)
    code, _, err = _main(capsys, *argv)
    assert code == 0 and "7 rows" not in err and "4 rows: 4 explained" in err and "3 rows were already there" in err
    assert _main(capsys, *[a if a != str(tmp_path / "out.jsonl") else str(tmp_path / "clean.jsonl")
                           for a in argv])[0] == 0
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "clean.jsonl").read_text()
    assert issubclass(Interrupted, KeyboardInterrupt)


def test_the_evaluation_package_exports_what_the_readme_documents() -> None:
    import blackbox_sal.evaluation as ev

    assert ev.__all__ == ["faithfulness", "global_analysis", "sanity", "swaps"]
    assert callable(ev.faithfulness.faithfulness) and callable(ev.swaps.swaps)
    assert callable(ev.global_analysis.word_importance) and callable(ev.sanity.sanity)


def test_the_openapi_document_does_not_import_the_app_nor_config_the_registries() -> None:
    """app -> openapi and registries -> config are one-way arrows, typing imports included."""
    import ast

    import blackbox_sal

    package = Path(blackbox_sal.__file__).resolve().parent

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert not any(m.startswith("blackbox_sal.server.app") for m in imported(package / "server" / "openapi.py"))
    for low in ("config.py", "settings.py", "choices.py"):
        assert not {m for m in imported(package / "vocabulary" / low)
                    if m.startswith(("blackbox_sal.methods", "blackbox_sal.gradients", "blackbox_sal.vocabulary.scores",
                                     "blackbox_sal.reductions", "blackbox_sal.model"))}, low
