"""The ``blackbox-sal`` command line. Exit codes are documented in :mod:`blackbox_sal.errors`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from blackbox_sal import __version__  # the one place the version is written
from blackbox_sal.batch import run_batch
from blackbox_sal.config import AUTO, FD_SCHEMES, LONG, ExplainConfig
from blackbox_sal.datasets import Columns
from blackbox_sal.errors import InputError, SalError, UsageError
from blackbox_sal.explaining import explain
from blackbox_sal.gradient_graph.store import export_gradient, prepare
from blackbox_sal.gradients.backend import BACKENDS
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.session import DEVICES
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.reductions import REDUCTIONS
from blackbox_sal.render import FORMATS, render_html, render_json, render_terminal
from blackbox_sal.scores import SCORES
from blackbox_sal.surgery.names import POOLINGS
from blackbox_sal.tasks import explain_choices, explain_generation, explain_similarity
from blackbox_sal.text.printable import printable

EPILOG = """exit codes: 0 ok, 2 bad usage or input, 3 model cannot be loaded or used,
4 backend or device not available, 1 internal error (a bug), 130 interrupted.
Environment: NO_COLOR disables colour in the terminal format."""


def _model_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    """How the model is found and loaded (shared by every command that loads one)."""
    if required:
        p.add_argument("--model", metavar="PATH", help="model directory or .onnx file")
    else:
        p.add_argument("--model", metavar="PATH",
                       help="model directory or .onnx file (default: the bundled sentiment CNN)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="cpu, cuda, or auto = cuda when a GPU is usable (default: auto)")
    p.add_argument("--model-output", metavar="NAME", help="model output to explain (default: the first)")
    p.add_argument("--pooling", choices=POOLINGS,
                   help="a model whose output is token states [batch, seq, hidden]: pool them into one embedding "
                        "(default: what the folder's config says, else mean over the attention mask)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the pooled embedding (default: what the folder says, else no)")
    p.add_argument("--dequantize", action="store_true",
                   help="explain a quantized model's float twin (dynamic or QDQ int8; weights dequantized, "
                        "activations in float): exact gradients of the deployed weights (4-bit MatMulNBits "
                        "models need no flag: their twin is the same function)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the embedding split against the original model")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or cost messages")


def _method_options(p: argparse.ArgumentParser) -> None:
    """What is explained and how (shared by explain, batch and the evaluation commands)."""
    defaults = ExplainConfig()
    p.add_argument("--method", choices=list(METHODS), default=defaults.method,
                   help="attribution method (default: %(default)s): " + "; ".join(
                       f"{name} = {spec.summary}" for name, spec in METHODS.items()))
    p.add_argument("--backend", choices=list(BACKENDS), default=defaults.backend,
                   help="how derivatives are taken (default: %(default)s): " + "; ".join(
                       f"{name} = {spec.summary}" for name, spec in BACKENDS.items()))
    p.add_argument("--target", metavar="LABEL|INDEX|TOKEN",
                   help="class to explain (default: the predicted class); for a causal LM a token "
                        "(a word means the next word: ' Paris')")
    p.add_argument("--score", choices=list(SCORES), default=defaults.score,
                   help="the explained scalar (default: %(default)s)")
    p.add_argument("--steps", type=_steps, default=defaults.steps, metavar="N|auto",
                   help="integrated-gradients nodes, or auto = nested Clenshaw-Curtis nodes (5, 9, 17, "
                        "... 257) until the estimated error is within --tolerance (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=defaults.tolerance, metavar="T",
                   help="--steps auto stops when the error estimate is at most T times the sum of "
                        "|scores| (default: %(default)s)")
    p.add_argument("--quadrature", choices=list(QUADRATURES), default=defaults.quadrature,
                   help="integrated-gradients rule (default: %(default)s)")
    p.add_argument("--baseline", default=defaults.baseline, metavar="pad|zero|unk|mask|TOKEN",
                   help="baseline for ig and occlusion (default: %(default)s)")
    p.add_argument("--reduce", choices=list(REDUCTIONS),
                   help="per-token reduction (default: the method's own: " + ", ".join(
                       f"{name} {spec.default_reduce}" for name, spec in METHODS.items() if spec.default_reduce) + ")")
    p.add_argument("--words", action="store_true", help="merge subword scores into words")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                   help="rows per onnxruntime run; bounds memory (default: 64 on the CPU; on CUDA as many "
                        "as --tokens-per-run allows)")
    p.add_argument("--tokens-per-run", type=int, default=defaults.tokens_per_run, metavar="N",
                   help="the most rows x tokens in one gradient run (default: no limit on the CPU, 16384 on "
                        "CUDA; forward-only runs take 4 times as many)")
    p.add_argument("--fd-step", type=float, default=defaults.fd_step, metavar="H",
                   help="finite-difference step relative to each token embedding's norm "
                        "(default: 0.01, or 0.3 for quantized models)")
    p.add_argument("--richardson", action="store_true",
                   help="Richardson extrapolation: 4 runs per derivative, O(h^4) error")
    p.add_argument("--fd-scheme", choices=FD_SCHEMES, default=defaults.fd_scheme,
                   help="central differences (O(h^2)), or forward = one-sided (O(h)) with f(x) shared "
                        "by every token at a point: about half the runs for grad-x-input and ig "
                        "(default: %(default)s)")
    p.add_argument("--samples", type=int, default=defaults.samples, metavar="N",
                   help="SmoothGrad samples (default: %(default)s)")
    p.add_argument("--noise", type=float, default=defaults.noise, metavar="SIGMA",
                   help="SmoothGrad noise relative to the embeddings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed (SmoothGrad)")
    p.add_argument("--long", choices=LONG, default=defaults.long,
                   help="a text over the model's token limit: error (exit 2), or window = explain "
                        "overlapping windows and stitch them (classifiers; default: %(default)s)")
    p.add_argument("--window-overlap", type=int, metavar="N",
                   help="tokens consecutive windows share (default: a quarter of the limit)")
    p.add_argument("--direction", metavar="FILE",
                   help="a model whose output is an embedding: explain its projection on the vector in FILE "
                        "(.npy, or numbers separated by spaces or commas)")


def _column_options(p: argparse.ArgumentParser) -> None:
    """Which columns of a dataset hold what."""
    p.add_argument("--text-column", default="text", metavar="NAME", help="the text (default: %(default)s)")
    p.add_argument("--id-column", metavar="NAME", help="an id written with each result (default: the row number)")
    p.add_argument("--target-column", metavar="NAME", help="the class to explain, per row")
    p.add_argument("--pair-column", metavar="NAME",
                   help="a second text per row: the row is explained as a similarity to it")
    p.add_argument("--choices-column", metavar="NAME",
                   help="answer choices per row (a JSON list, or texts separated by |): multiple choice")
    p.add_argument("--feature-columns", metavar="NAMES",
                   help="a model that takes numbers: the columns that make its input, comma-separated")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blackbox-sal",
        description="Explain predictions of ONNX text models: which tokens drove the output.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"blackbox-sal {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    e = sub.add_parser(
        "explain", help="attribute a prediction to the input tokens",
        description="Attribute the model's prediction on TEXT to its tokens.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("text", metavar="TEXT", help="the text to explain ('-' reads standard input)")
    _model_options(e)
    _method_options(e)
    e.add_argument("--format", choices=FORMATS, default="terminal", help="output format")
    e.add_argument("--output", metavar="FILE", help="write the output to FILE")
    e.add_argument("--generate", type=int, metavar="N",
                   help="causal LMs: generate up to N tokens greedily and attribute each to the "
                        "tokens before it (a matrix; terminal or json)")
    e.add_argument("--choice", action="append", metavar="ANSWER",
                   help="multiple choice (give it twice or more): score each (TEXT, ANSWER) pair and "
                        "explain the best; a classifier needs --target, the class that scores a pair")
    e.add_argument("--similar-to", metavar="TEXT",
                   help="sentence encoders: explain the cosine similarity of TEXT's and this "
                        "text's embeddings, over the tokens of both (terminal or json)")

    b = sub.add_parser(
        "batch", help="explain every row of a dataset into a JSONL or Parquet file (resumable)",
        description="Explain every row of INPUT (JSONL, CSV or Parquet with a text column) into OUTPUT "
                    "(JSONL, or Parquet): one record per row, the explain command's JSON object with the row's "
                    "id, or the error a row ended with (the job goes on). Killed at any point and run again "
                    "with the same command, it continues where it stopped.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("input", metavar="INPUT", help="the dataset: .jsonl, .csv or .parquet")
    b.add_argument("-o", "--output", metavar="OUTPUT", required=True, help="where the results go: .jsonl or .parquet")
    _model_options(b)
    _method_options(b)
    _column_options(b)
    b.add_argument("--limit", type=int, metavar="N", help="at most the first N rows")
    b.add_argument("--window", type=int, default=64, metavar="N",
                   help="rows in flight together, their runs packed (default: %(default)s; memory grows with it)")
    b.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (this process), or ray: Ray Data with one model per actor (the [ray] extra)")
    b.add_argument("--address", metavar="ADDRESS", help="--engine ray: the cluster to join (default: a local Ray)")

    g = sub.add_parser(
        "grad", help="build, verify and write a model's gradient graph",
        description="Build the ONNX gradient graph of MODEL (inputs_embeds, the model's inputs, "
                    "target_weights [batch, classes] -> outputs, grad [batch, seq, dim]), check it "
                    "against finite differences, and write it. To ship it with the model, put the "
                    "file in the model folder and add \"gradient_model\": \"FILE\" to config.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("model", metavar="MODEL", nargs="?",
                   help="model directory or .onnx file (default: the bundled model)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="OUT", help="where to write it (default: the cache, printed)")
    where.add_argument("--folder", metavar="OUT",
                       help="write a prepared folder instead (a new or empty folder): the loaded model taking "
                            "inputs_embeds, embeddings.npy, the verified grad.onnx, tokenizer.json and config.json, "
                            "which an install without onnx (onnxruntime, numpy, tokenizers) loads and explains")
    g.add_argument("--model-output", metavar="NAME", help="model output to differentiate (default: the first)")
    g.add_argument("--device", choices=DEVICES, default="auto", help="device for the check (default: auto)")
    g.add_argument("--dequantize", action="store_true", help="differentiate a quantized model's float twin")
    g.add_argument("--pooling", choices=POOLINGS, help="token states: how they are pooled (as explain takes it)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="token states: L2-normalise the pooled embedding (as explain takes it)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return p


def _steps(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of nodes or 'auto', got {text!r}") from None


def _config(a: argparse.Namespace) -> ExplainConfig:
    return ExplainConfig(
        method=a.method, backend=a.backend, target=a.target, score=a.score, steps=a.steps,
        tolerance=a.tolerance, quadrature=a.quadrature, baseline=a.baseline, reduce=a.reduce, words=a.words,
        batch_size=a.batch_size, tokens_per_run=a.tokens_per_run, fd_step=a.fd_step, richardson=a.richardson,
        fd_scheme=a.fd_scheme,
        samples=a.samples, noise=a.noise, seed=a.seed, long=a.long, window_overlap=a.window_overlap,
        progress=False if a.quiet else None, direction=_direction(a.direction) if a.direction else None,
    ).validated()


def _direction(path: str) -> tuple[float, ...]:
    """A direction vector from a .npy file or a text file of numbers; UsageError otherwise."""
    try:
        if path.endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as fh:
                values = np.array([float(v) for v in fh.read(64 * 1024**2).replace(",", " ").split()])
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read a direction from {path!r}: {str(exc).splitlines()[0][:200]}") from exc
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
    return Columns(text=a.text_column, id=a.id_column, target=a.target_column, pair=a.pair_column,
                   choices=a.choices_column, features=features)


def _batch(a: argparse.Namespace) -> None:
    config = _config(a)
    for name, value in (("--limit", a.limit), ("--window", a.window)):
        if value is not None and not 1 <= value <= 10_000_000:
            raise UsageError(f"{name} must be from 1 to 10,000,000, got {value}")
    model = _load(a)
    if a.engine == "ray":
        from blackbox_sal.batch_ray import run_batch_ray

        summary = run_batch_ray(model, a.input, a.output, config, _columns(a), a.address, limit=a.limit)
    else:
        summary = run_batch(model, a.input, a.output, config, _columns(a), window=a.window, limit=a.limit,
                            progress=False if a.quiet else None)
    resumed = f"; {summary.resumed:,} rows were already there from an earlier run" if summary.resumed else ""
    failed = f", {summary.failed:,} failed (see their error field)" if summary.failed else ""
    print(f"blackbox-sal: batch: {summary.rows:,} rows: {summary.explained:,} explained{failed}, "
          f"{summary.seconds:.1f} s, {summary.texts_per_second:.1f} texts/s{resumed}; written to {summary.output}",
          file=sys.stderr)


def _explain(a: argparse.Namespace) -> None:
    text = _text(a.text)
    config = _config(a)  # validate names before loading anything
    if sum(x is not None for x in (a.generate, a.similar_to, a.choice)) > 1:
        raise UsageError("--generate, --similar-to and --choice are different tasks: give one")
    model = _load(a)
    result: object
    if a.choice is not None:
        result = explain_choices(model, text, [_text(c, "--choice") for c in a.choice], config)
    elif a.similar_to is not None:
        result = explain_similarity(model, text, _text(a.similar_to, "--similar-to"), config)
    elif a.generate is not None:
        result = explain_generation(model, text, a.generate, config)
    else:
        result = explain(model, text, config)
    out = _render(a.format, result, to_terminal=a.output is None)
    if a.output is None:
        sys.stdout.write(out)
        return
    try:
        with open(a.output, "w", encoding="utf-8") as fh:
            fh.write(out)
    except OSError as exc:
        raise UsageError(f"cannot write {a.output!r}: {exc.strerror}") from exc


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = logging.getLogger("blackbox_sal")
    if not getattr(args, "quiet", False) and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("blackbox-sal: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            # a model's overflowing numbers are reported once, as non-finite scores or an error
            warnings.simplefilter("ignore", RuntimeWarning)
            {"explain": _explain, "batch": _batch, "grad": _grad}[args.command](args)
    except SalError as exc:
        print(f"blackbox-sal: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("blackbox-sal: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
