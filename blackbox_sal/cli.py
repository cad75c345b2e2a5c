"""The ``blackbox-sal`` command line. Exit codes are documented in :mod:`blackbox_sal.vocabulary.errors`."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal import __version__  # the one place the version is written
from blackbox_sal.api.explaining import explain
from blackbox_sal.api.per_token import explain_tokens
from blackbox_sal.api.spans import explain_answer
from blackbox_sal.api.tasks import explain_choices, explain_generation, explain_similarity
from blackbox_sal.gradient_graph.store import export_gradient, prepare
from blackbox_sal.jobs.batch import Summary, output_format, run_batch
from blackbox_sal.jobs.datasets import BadRow, Columns, Row, read_rows, sniff_columns
from blackbox_sal.methods import METHODS
from blackbox_sal.model.files import default_model_path, read_side_json
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.session import DEFAULT_TIMEOUT, time_limit
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render import render_html, render_json, render_terminal
from blackbox_sal.text.printable import printable
from blackbox_sal.vocabulary.config import COMMANDS, SETTINGS, ExplainConfig, Limits
from blackbox_sal.vocabulary.errors import InputError, Interrupted, SalError, UnavailableError, UsageError
from blackbox_sal.vocabulary.settings import add_options, check_options, conflict, dest_of

EPILOG = """exit codes: 0 ok, 2 bad usage or input, 3 model cannot be loaded or used,
4 backend or device not available, 5 a model run passed --timeout, 1 internal error (a bug),
130 interrupted.
Environment: NO_COLOR disables colour in the terminal format."""
SERVE_EPILOG = """
HTTP statuses: 400 bad request, 404 unknown model or route, 408 body too slow, 413 too large, 415 not JSON,
422 the model cannot explain the text, 429 queue full, 503 not ready or stopping, 504 deadline passed.
In a request of several instances, one that fails is answered in its place ({"error", "status"}) while the
others succeed."""


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's (its options all come from the settings spec)."""
    p = argparse.ArgumentParser(
        prog="blackbox-sal",
        description="Explain predictions of ONNX text models: which tokens drove the output.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"blackbox-sal {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, command in COMMANDS.items():
        epilog = EPILOG + (SERVE_EPILOG if name == "serve" else "")
        commands[name] = sub.add_parser(name, help=command.help, description=command.description, epilog=epilog,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("explain", "swaps"):
        commands[name].add_argument("text", metavar="TEXT", help="the text to explain ('-' reads standard input)")
    commands["batch"].add_argument("input", metavar="INPUT", help="the dataset: .jsonl, .csv or .parquet")
    for name in ("global", "eval", "sanity"):
        commands[name].add_argument("data", metavar="DATA", help="the dataset: .jsonl, .csv or .parquet")
    commands["serve"].add_argument("models", metavar="MODEL", nargs="*",
                                   help="PATH or NAME=PATH (default: the bundled model)")
    commands["grad"].add_argument("model", metavar="MODEL", nargs="?",
                                  help="model directory or .onnx file (default: the bundled model)")
    for name, parser in commands.items():
        add_options(parser, name, SETTINGS)
    return p, commands


def _config(a: argparse.Namespace) -> ExplainConfig:
    """The command's ExplainConfig: every config setting it takes, from its options."""
    values = {e.name: getattr(a, dest_of(e)) for e in SETTINGS
              if e.owner == ExplainConfig.__name__ and a.command in e.commands}
    if values.get("direction") is not None:
        values["direction"] = _direction(values["direction"])
    return ExplainConfig(**values, progress=False if a.quiet else None).validated()


def _direction(path: str) -> tuple[float, ...]:
    """A direction vector from a .npy file or a text file of numbers; UsageError otherwise."""
    try:
        if path.endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as fh:
                values = np.array([float(v) for v in fh.read(64 * 1024**2).replace(",", " ").split()])
    except (OSError, ValueError, EOFError) as exc:  # UnicodeDecodeError is a ValueError; EOFError: an empty .npy
        message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"cannot read a direction from {path!r}: {message}") from exc
    if values.ndim != 1 or values.dtype.kind not in "fiu":
        raise UsageError(f"{path!r} must hold one vector of numbers, got {values.dtype} {list(values.shape)}")
    return tuple(float(v) for v in values)


def _render(fmt: str, result: object, to_terminal: bool) -> str:
    if fmt == "json":
        return render_json(result)
    if fmt == "html":
        return render_html(result)
    color = to_terminal and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return render_terminal(result, color=color)


def _text(arg: str, what: str = "TEXT") -> str:
    """A text argument (``-``: standard input) as valid Unicode; InputError otherwise."""
    if arg == "-":
        try:
            return sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"standard input is not valid UTF-8 (byte {exc.start})") from exc
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError as exc:  # undecodable bytes in argv arrive as lone surrogates
        raise InputError(f"{what} is not valid UTF-8 (character {exc.start})") from exc
    return arg


def _load(a: argparse.Namespace) -> TextModel:
    """The model the options name (the bundled one by default)."""
    return load_model(a.model or default_model_path(), device=a.device, output=a.model_output,
                      verify=not a.no_verify, dequantize=a.dequantize, pooling=a.pooling, normalize=a.normalize)


def _columns(a: argparse.Namespace) -> Columns:
    features = tuple(c.strip() for c in a.feature_columns.split(",") if c.strip()) if a.feature_columns else None
    return Columns(text=a.text_column, id=a.id_column, label=a.label_column, target=a.target_column,
                   pair=a.pair_column, choices=a.choices_column, features=features, question=a.question_column,
                   # batch's alone: the other commands explain each text with the command's settings
                   at=getattr(a, "at_column", None), contrast=getattr(a, "contrast_column", None),
                   answer=getattr(a, "answer_column", None))


def _batch(a: argparse.Namespace) -> None:
    config = _config(a)
    output_format(Path(a.output))  # a suffix that names no format is refused before any work
    if a.model and _encoder_decoder(Path(a.model)):
        summary = _batch_pairs(a, config)
    else:
        summary = _batch_text(a, config)
    resumed = f"; {summary.resumed:,} rows were already there from an earlier run" if summary.resumed else ""
    failed = f", {summary.failed:,} failed (see their error field)" if summary.failed else ""
    print(f"blackbox-sal: batch: {summary.rows:,} rows: {summary.explained:,} explained{failed}, "
          f"{summary.seconds:.1f} s, {summary.texts_per_second:.1f} texts/s{resumed}; written to {summary.output}",
          file=sys.stderr)


def _batch_pairs(a: argparse.Namespace, config: ExplainConfig) -> Summary:
    from blackbox_sal.jobs.batch_generation import run_generation_batch
    from blackbox_sal.model.encoder_decoder import load_encoder_decoder

    if a.generate is None and a.target_column is None:
        raise UsageError("a batch over an encoder/decoder model needs --generate N or --target-column NAME")
    return run_generation_batch(load_encoder_decoder(a.model, dequantize=a.dequantize), a.input, a.output,
                                generate_tokens=a.generate, method=config.method,
                                steps=32 if config.steps == "auto" else int(config.steps), baseline=config.baseline,
                                batch_size=config.batch_size or 64, backend=config.backend, columns=_columns(a),
                                limit=a.limit)


def _batch_text(a: argparse.Namespace, config: ExplainConfig) -> Summary:
    if a.generate is not None:
        raise UsageError("--generate in batch is for encoder/decoder models (a folder with encoder_model.onnx)")
    model = _load(a)
    if a.engine == "ray":
        from blackbox_sal.jobs.batch_ray import run_batch_ray

        summary = run_batch_ray(model, a.input, a.output, config, _columns(a), a.address, limit=a.limit)
    else:
        summary = run_batch(model, a.input, a.output, config, _columns(a), window=a.window, limit=a.limit,
                            progress=False if a.quiet else None)
    return summary


def _explain(a: argparse.Namespace) -> None:
    text = _text(a.text)
    config = _config(a)  # validate names before loading anything
    if sum(x is not None for x in (a.generate, a.similar_to, a.choice, a.context)) > 1:
        raise UsageError("--generate, --similar-to, --choice and --context are different tasks: give one")
    if a.model and _encoder_decoder(Path(a.model)):
        _write(_explain_pair(a, text, config), a.output)
        return
    if a.target_text is not None:
        raise UsageError("--target-text is for encoder/decoder pairs (a folder with encoder_model.onnx)")
    model = _load(a)
    result: object
    if a.context is not None:
        result = explain_answer(model, text, _text(a.context, "--context"), config)
    elif a.choice is not None:
        result = explain_choices(model, text, [_text(c, "--choice") for c in a.choice], config)
    elif a.similar_to is not None:
        result = explain_similarity(model, text, _text(a.similar_to, "--similar-to"), config)
    elif a.generate is not None:
        result = explain_generation(model, text, a.generate, config)
    elif model.task == "per-token" and config.at is None:  # every entity: the matrix
        result = explain_tokens(model, text, config)
    else:
        result = explain(model, text, config)
    _write(_render(a.format, result, to_terminal=a.output is None), a.output)


def _encoder_decoder(folder: Path) -> bool:
    """optimum's encoder/decoder layout, two files with a stepping decoder (config.json's
    encoder_decoder), or a single graph whose config.json says it is one."""
    from blackbox_sal.model.seq2seq_folder import is_file_pair

    if (folder / "encoder_model.onnx").is_file() or is_file_pair(folder):
        return True
    if not (folder.is_dir() and (folder / "model.onnx").is_file()):
        return False
    config = read_side_json(folder, "config.json")
    return isinstance(config, dict) and config.get("is_encoder_decoder") is True


def _explain_pair(a: argparse.Namespace, text: str, config: ExplainConfig) -> str:
    """An encoder/decoder pair's generation (or --target-text) explained, rendered."""
    from blackbox_sal.model.encoder_decoder import load_encoder_decoder
    from blackbox_sal.render.generation import generation_html, generation_json, generation_terminal
    from blackbox_sal.seq2seq.explaining import explain_generation as explain_pair

    if config.baseline not in ("pad", "zero"):
        raise UsageError("encoder/decoder pairs take --baseline pad or zero")
    if config.richardson or config.fd_step is not None:  # their finite differences have a step of their own
        raise UsageError("encoder/decoder pairs take neither --richardson nor --fd-step: their finite differences "
                         "use central differences with a step of 3e-3 of the embeddings' root mean square")
    steps = 32 if config.steps == "auto" else int(config.steps)
    result = explain_pair(load_encoder_decoder(a.model, dequantize=a.dequantize), text, generate_tokens=a.generate,
                                target_text=None if a.target_text is None else _text(a.target_text, "--target-text"),
                                method=config.method, steps=steps, baseline=config.baseline,
                                batch_size=config.batch_size or 64, backend=config.backend)
    if a.format == "json":
        return json.dumps(generation_json(result), indent=1) + "\n"
    if a.format == "html":
        return generation_html(result)
    color = a.output is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return generation_terminal(result, color=color)


def _write(out: str, path: str | None) -> None:
    """The output to standard output, or to ``path`` (UsageError when it cannot be written)."""
    if path is None:
        sys.stdout.write(out)
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(out)
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror}") from exc


def _serve(a: argparse.Namespace) -> None:
    config = _config(a)
    limits = Limits(**{e.name: getattr(a, dest_of(e)) for e in SETTINGS
                       if e.owner == Limits.__name__ and "serve" in e.commands}).validated()
    try:
        from blackbox_sal.server.app import Server
        from blackbox_sal.server.process import run
    except ImportError as exc:
        raise UnavailableError(f"serve needs the [serve] extra (pip install 'blackbox-sal[serve]'): "
                               f"{exc.name} is missing") from exc
    named: dict[str, TextModel] = {}
    pairs: dict[str, Any] = {}  # encoder/decoder folders (KServe V1 :predict and :explain)
    for spec in a.models or [str(default_model_path())]:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, ""
        if _encoder_decoder(Path(path)):
            from blackbox_sal.model.encoder_decoder import load_encoder_decoder

            name = name or _served_name(path)
            if not name or "/" in name or ":" in name or name in named or name in pairs:
                raise UsageError(f"model name {name!r} is empty, repeated or has '/' or ':' (give NAME=PATH)")
            pairs[name] = load_encoder_decoder(path, dequantize=a.dequantize)
            continue
        model = load_model(path, device=a.device, output=a.model_output, verify=not a.no_verify,
                           dequantize=a.dequantize, pooling=a.pooling, normalize=a.normalize)
        name = name or _served_name(path)
        if not name or "/" in name or ":" in name or name in named or name in pairs:
            raise UsageError(f"model name {name!r} is empty, repeated or has '/' or ':' (give NAME=PATH)")
        named[name] = model
    server = Server(named, config, limits, pairs=pairs)
    print(printable(f"blackbox-sal: serving {', '.join([*named, *pairs])} on http://{a.host}:{a.port}/ "
                    f"(Ctrl-C or SIGTERM drains and stops)"), file=sys.stderr)
    run(server, a.host, a.port, access_log=a.access_log)


def _served_name(path: str) -> str:
    p = Path(path)
    if p.name == "model.onnx":
        p = p.parent
    elif p.suffix == ".onnx":
        p = p.with_suffix("")
    return "default" if p.resolve() == default_model_path().resolve() else p.name


def _rows(a: argparse.Namespace, model: TextModel, path: str | None = None) -> list[Row | BadRow]:
    """The rows of DATA (or ``path``) the command works on, at most --limit."""
    source = path or a.data
    columns = _columns(a)
    if model.features is not None and model.features.kind == "numbers" and columns.features is None:
        taken = {a.id_column, a.label_column, a.target_column}
        features = tuple(c for c in sniff_columns(source) if c not in taken)
        if len(features) != model.features.size:
            raise UsageError(f"the model takes {model.features.size:,} numbers; {source} has {len(features):,} columns "
                             f"besides the id, label and target columns: name the label column with --label-column, "
                             f"or list the features with --feature-columns")
        columns = replace(columns, features=features)
    rows = list(itertools.islice(read_rows(source, columns), a.limit))
    if not rows:
        raise UsageError(f"{source} has no rows")
    bad = [r for r in rows if isinstance(r, BadRow)]
    if len(bad) == len(rows):
        raise UsageError(f"no row of {source} can be used (the first, row {bad[0].index}: {bad[0].error})")
    return rows


def _texts(rows: list[Row | BadRow]) -> list[str]:
    bad = [r for r in rows if isinstance(r, BadRow)]
    if bad:
        print(printable(f"blackbox-sal: {len(bad):,} rows left out ({bad[0].error}, ...)"), file=sys.stderr)
    return [r.text for r in rows if isinstance(r, Row)]


def _report(a: argparse.Namespace, table: str, data: dict[str, Any], plot: Callable[[str], object] | None) -> None:
    out = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n" if a.format == "json" else table
    if plot is not None and getattr(a, "plot", None):
        with warnings.catch_warnings():  # matplotlib's advice (an empty legend...) is not the user's business
            warnings.simplefilter("ignore")
            plot(a.plot)
        print(printable(f"blackbox-sal: drawn to {a.plot}"), file=sys.stderr)
    _write(out if out.endswith("\n") else out + "\n", a.output)


def _global(a: argparse.Namespace) -> None:
    from blackbox_sal.evaluation import global_analysis as ga

    config = _config(a)
    model = _load(a)
    rows = _rows(a, model)
    kind = model.features.kind if model.features is not None else None
    if kind in ("bag-of-words", "pipeline"):
        fit = _rows(a, model, a.fit) if a.fit else None
        bow = ga.global_bow(model, rows, config, fit_rows=fit, top=a.top)
        _report(a, ga.global_bow_table(bow), ga.global_bow_dict(bow), lambda path: ga.global_bow_plot(bow, path))
    elif kind == "numbers":
        second = load_model(a.compare, device=a.device) if a.compare else None  # a bad path fails first
        jac = ga.class_jacobians(model, rows, a.over, config)
        compare = None
        other: ga.ClassJacobians | None = None
        if second is not None:
            other = ga.class_jacobians(second, _rows(a, second), a.over, config)
            compare = ga.jacobian_correlation(jac, other)
        data = {**ga.class_jacobians_dict(jac),
                **({"compare": {"model": other.model, **ga.jacobian_correlation_dict(compare)}}
                   if compare is not None and other is not None else {})}
        beside = [(f"{other.model}\nmean Jacobian ({other.over})", other)] if other is not None else []
        _report(a, ga.class_jacobians_table(jac, compare), data,
                lambda path: ga.class_jacobians_plot(jac, path, beside=beside))
    else:
        if a.fit or a.compare:
            raise UsageError("--fit is for bag-of-words models and --compare for models that take numbers")
        words = ga.word_importance(model, rows, config, min_count=a.min_count, top=a.top)
        _report(a, ga.word_importance_table(words, a.top), ga.word_importance_dict(words, a.top),
                lambda path: ga.word_importance_plot(words, path, a.top))


def _methods(a: argparse.Namespace, default: Sequence[str]) -> list[ExplainConfig]:
    base = _config(a)
    return [replace(base, method=m).validated() for m in dict.fromkeys(a.methods or default)]


def _eval(a: argparse.Namespace) -> None:
    from blackbox_sal.evaluation import faithfulness as fa

    methods: list[ExplainConfig | str] = [*_methods(a, list(METHODS))]
    if a.random:
        methods.append("random")
    try:
        bins = [float(b) for b in a.bins.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--bins takes fractions separated by commas, got {a.bins!r}") from None
    model = _load(a)
    result = fa.faithfulness(model, _texts(_rows(a, model)), methods, bins=bins, curve_points=a.curve_points,
                             score=a.eval_score, baseline=a.removal, seed=a.seed,
                             shapley_tokens=a.shapley_tokens, top_k=a.top_k)
    _report(a, fa.faithfulness_table(result), fa.faithfulness_dict(result),
            lambda path: fa.faithfulness_plot(result, path))


def _sanity(a: argparse.Namespace) -> None:
    from blackbox_sal.evaluation.sanity import sanity, sanity_dict, sanity_plot, sanity_table

    stages: int | list[int] | None = None
    if a.stages:
        try:
            stages = int(a.stages) if "," not in a.stages else [int(v) for v in a.stages.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--stages takes a number or numbers separated by commas, got {a.stages!r}") from None
    methods = _methods(a, ["ig", "grad-x-input", "saliency", "occlusion", "kernel-shap"])
    model = _load(a)
    result = sanity(model, _texts(_rows(a, model)), list(methods), stages=stages, seed=a.seed,
                    backends=not a.no_backends, agreement_texts=a.agreement_texts)
    _report(a, sanity_table(result), sanity_dict(result), lambda path: sanity_plot(result, path))


def _swaps(a: argparse.Namespace) -> None:
    from blackbox_sal.evaluation.swaps import swaps, swaps_dict, swaps_plot, swaps_table

    text = _text(a.text)
    config = _config(a)
    model = _load(a)
    result = swaps(model, text, config, top=a.top, direction=a.toward)
    _report(a, swaps_table(result), swaps_dict(result), lambda path: swaps_plot(result, path))


def _grad(a: argparse.Namespace) -> None:
    model = load_model(a.model or default_model_path(), device=a.device, output=a.model_output,
                       dequantize=a.dequantize, pooling=a.pooling, normalize=a.normalize)
    if a.folder is not None:
        path = prepare(model, a.folder)
        print(printable(f"prepared {model.name} ({model.output}) in {path}: model.onnx (taking inputs_embeds), "
                        f"embeddings.npy, grad.onnx (verified against finite differences), tokenizer.json, "
                        f"config.json"))
        return
    path = export_gradient(model, a.output)
    print(printable(f"gradient graph of {model.name} ({model.output}): verified against finite differences; "
                    f"written to {path}"))


class _PrintableFormatter(logging.Formatter):
    """Log lines as printable text: model names and paths in them come from untrusted folders,
    and an escape sequence among them must not reach the terminal (as errors do not)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), keep_newlines=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's own usage, not the top level's (argparse reports extras at the top)
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    clash = conflict(args, args.command, SETTINGS)
    if clash is not None:
        commands[args.command].error(clash)
    log = logging.getLogger("blackbox_sal")
    if not getattr(args, "quiet", False) and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PrintableFormatter("blackbox-sal: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        check_options(args, args.command, SETTINGS)
        with np.errstate(all="ignore"), warnings.catch_warnings(), contextlib.ExitStack() as stack:
            # a model's overflowing numbers are reported once, as non-finite scores or an error
            warnings.simplefilter("ignore", RuntimeWarning)
            stack.enter_context(time_limit(getattr(args, "timeout", DEFAULT_TIMEOUT)))
            {"explain": _explain, "batch": _batch, "grad": _grad, "serve": _serve, "global": _global, "eval": _eval,
             "sanity": _sanity, "swaps": _swaps}[args.command](args)
    except Interrupted as exc:  # a job that saved its work says what was saved
        print(f"blackbox-sal: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except SalError as exc:
        print(f"blackbox-sal: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("blackbox-sal: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
