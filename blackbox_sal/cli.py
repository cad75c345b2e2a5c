"""The ``blackbox-sal`` command line. Exit codes are documented in :mod:`blackbox_sal.errors`."""

from __future__ import annotations

import argparse
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
from blackbox_sal.batch import run_batch
from blackbox_sal.config import AUTO, FD_SCHEMES, LONG, ExplainConfig
from blackbox_sal.datasets import BadRow, Columns, Row, read_rows, sniff_columns
from blackbox_sal.errors import InputError, SalError, UnavailableError, UsageError
from blackbox_sal.explaining import explain
from blackbox_sal.gradient_graph.store import export_gradient, prepare
from blackbox_sal.gradients.backend import BACKENDS
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.coalitions import PLAYERS
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.session import DEVICES
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.reductions import REDUCTIONS
from blackbox_sal.render import FORMATS, render_html, render_json, render_terminal
from blackbox_sal.scores import SCORES
from blackbox_sal.server.protocol import Limits
from blackbox_sal.surgery.names import POOLINGS
from blackbox_sal.tasks import explain_choices, explain_generation, explain_similarity
from blackbox_sal.text.printable import printable

EPILOG = """exit codes: 0 ok, 2 bad usage or input, 3 model cannot be loaded or used,
4 backend or device not available, 1 internal error (a bug), 130 interrupted.
Environment: NO_COLOR disables colour in the terminal format."""


def _model_options(p: argparse.ArgumentParser, required: bool = False, serving: bool = False) -> None:
    """How the model is found and loaded (shared by every command that loads one)."""
    if required:
        p.add_argument("--model", metavar="PATH", help="model directory or .onnx file")
    elif not serving:
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


def _method_options(p: argparse.ArgumentParser, many: str | None = None) -> None:
    """What is explained and how (shared by explain, batch and the evaluation commands).
    ``many``: --method may be given several times (its help says what the default is)."""
    defaults = ExplainConfig()
    if many is not None:
        p.add_argument("--method", choices=list(METHODS), action="append", dest="methods",
                       help=f"attribution method, once per method compared (default: {many}): " + "; ".join(
                           f"{name} = {spec.summary}" for name, spec in METHODS.items()))
    else:
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
                   help="the most rows x tokens in one gradient run (default: 8192 on the CPU, none when "
                        "--batch-size is given; 16384 on CUDA, where many texts keep up to two runs in "
                        "flight; forward-only runs take 4 times as many)")
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
                   help="SmoothGrad samples; kernel-shap and lime: coalitions per word (samples x words "
                        "rows); permutation: orders of the words (default: %(default)s)")
    p.add_argument("--noise", type=float, default=defaults.noise, metavar="SIGMA",
                   help="SmoothGrad noise relative to the embeddings (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="random seed (SmoothGrad, kernel-shap, permutation, lime)")
    p.add_argument("--players", choices=PLAYERS, default=defaults.players,
                   help="what shapley, kernel-shap, permutation and lime attribute to: words or tokens "
                        "(default: %(default)s)")
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
                   help="a model that takes numbers: the columns that make its input, comma-separated "
                        "(default for such a model: every column but the id, label and target columns)")
    p.add_argument("--label-column", metavar="NAME",
                   help="the true label per row (global: accuracies, and per-class averages by label)")


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

    def data_command(name: str, help_: str, description: str, many: str | None = None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=description, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("data", metavar="DATA", help="the dataset: .jsonl, .csv or .parquet")
        _model_options(c)
        _method_options(c, many)
        _column_options(c)
        c.add_argument("--limit", type=int, metavar="N", help="at most the first N rows")
        _report_options(c)
        return c

    gl = data_command(
        "global", "what a model relies on across a dataset (the paper's global analysis)",
        "What MODEL relies on across DATA. A bag-of-words model (its input is a multi-hot vector): the "
        "average gradient g, its top words each way and the linear surrogate sign(x . g + b) with its "
        "agreement with the model (the paper's section 5.2). A model that takes numbers: the mean "
        "Jacobian per class (section 5.3), with --compare, its correlation with another model's. A "
        "text model: every text explained with --method, and per word the mean score, count and "
        "spread, overall and per predicted class.")
    gl.add_argument("--top", type=int, default=15, metavar="K", help="words shown each way (default: %(default)s)")
    gl.add_argument("--min-count", type=int, default=3, metavar="N",
                    help="text models: words seen fewer times are left out (default: %(default)s)")
    gl.add_argument("--fit", metavar="DATA",
                    help="bag-of-words: fit the surrogate's b on these rows (e.g. the training split) "
                         "instead of DATA itself (in-sample, optimistic)")
    gl.add_argument("--over", choices=("all", "own"), default="all",
                    help="models that take numbers: average each class's Jacobian over every row, or over "
                         "the rows of that class (by label where given, else by prediction) (default: all)")
    gl.add_argument("--compare", metavar="MODEL",
                    help="models that take numbers: correlate the mean Jacobians with this model's (e.g. a "
                         "logistic regression, whose Jacobian is its weights)")

    ev = data_command(
        "eval", "how faithful each method's explanations are (ERASER metrics, curves)",
        "How faithful each method's explanations of MODEL are over DATA: ERASER comprehensiveness and "
        "sufficiency over bins of the top tokens and their AOPC, deletion and insertion curves with their "
        "areas, the rank correlation with leave-one-out changes, IG completeness, and time per "
        "explanation; methods side by side. Tokens are removed by replacing their embeddings with the "
        "removal baseline (never by editing the text).",
        many="every method")
    ev.add_argument("--random", action="store_true", help="add a row of random token rankings, for reference")
    ev.add_argument("--bins", default="0.01,0.05,0.1,0.2,0.5", metavar="FRACTIONS",
                    help="fractions of the tokens removed or kept (default: %(default)s)")
    ev.add_argument("--curve-points", type=int, default=10, metavar="N",
                    help="points of the deletion and insertion curves (default: %(default)s)")
    ev.add_argument("--eval-score", choices=list(SCORES), default="probability",
                    help="what f is in the metrics (default: %(default)s)")
    ev.add_argument("--removal", default="pad", metavar="pad|zero|unk|mask|TOKEN",
                    help="what a removed token's embedding becomes (default: %(default)s)")
    ev.add_argument("--shapley-tokens", type=int, default=12, metavar="N",
                    help="compare every method with exact Shapley values on the texts of at most N tokens "
                         "(2^N model rows each; 0 to 14, 0: never; default: %(default)s)")
    ev.add_argument("--top-k", type=int, default=3, metavar="K",
                    help="the top-k overlap with exact Shapley values (default: %(default)s)")

    sa = data_command(
        "sanity", "sanity checks: cascading model randomization, backend and method agreement",
        "Sanity checks of the explanations of MODEL over DATA (Adebayo et al. 2018): the weights are "
        "re-drawn layer by layer from the output down, and at every stage each method's rank "
        "correlation with its original attributions is reported (a method that does not change is "
        "not explaining the model); plus the agreement of the gradient graph with finite differences, "
        "and of methods with each other.",
        many="ig, grad-x-input, saliency, occlusion, kernel-shap")
    sa.add_argument("--stages", metavar="K|LIST",
                    help="the first K randomization stages, or a comma-separated list (default: all)")
    sa.add_argument("--no-backends", action="store_true", help="skip comparing the graph with finite differences")
    sa.add_argument("--agreement-texts", type=int, default=10, metavar="N",
                    help="texts the backend comparison uses (finite differences of a full gradient are costly) "
                         "(default: %(default)s)")

    sw = sub.add_parser(
        "swaps", help="which single-token substitutions would change the prediction most",
        description="The one-hot view of TEXT: for each position, the first-order change of the target if the "
                    "token were replaced by each vocabulary word, (E_v - E_x) . grad, over the whole vocabulary "
                    "at once; the top K per position are checked by running the model on the substituted text "
                    "(estimated against actual change).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("text", metavar="TEXT", help="the text ('-' reads standard input)")
    _model_options(sw)
    _method_options(sw)
    sw.add_argument("--top", type=int, default=5, metavar="K", help="substitutions per position (default: %(default)s)")
    sw.add_argument("--toward", choices=("both", "increase", "decrease"), default="both",
                    help="substitutions that raise the target, lower it, or the largest either way (default: both)")
    _report_options(sw, plot=False)

    s = sub.add_parser(
        "serve", help="answer predict and explain requests over HTTP (the [serve] extra)",
        description="Serve MODEL... over HTTP: KServe V1 (/v1/models/NAME:predict, :explain), the V2 inference "
                    "protocol (/v2/models/NAME/infer, /v2/models/NAME-explainer/infer), health and metadata "
                    "routes, /openapi.json and a web page at /. Each MODEL is PATH or NAME=PATH (the name "
                    "defaults to the folder's); the method options are the requests' defaults. Concurrent "
                    "requests share onnxruntime runs. SIGTERM turns readiness off and drains.",
        epilog=EPILOG + "\nHTTP statuses: 400 bad request, 404 unknown model or route, 413 too large, 422 the model "
                        "cannot explain the text,\n429 queue full, 503 not ready or stopping, 504 deadline passed.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("models", metavar="MODEL", nargs="*", help="PATH or NAME=PATH (default: the bundled model)")
    _model_options(s, serving=True)
    _method_options(s)
    defaults = Limits()
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback only)")
    s.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    s.add_argument("--deadline", type=float, default=defaults.deadline, metavar="SECONDS",
                   help="the longest a request may take; its work is stopped then (504) (default: %(default)g)")
    s.add_argument("--max-body", type=int, default=defaults.max_body, metavar="BYTES",
                   help="largest request body (413 beyond) (default: %(default)s)")
    s.add_argument("--max-chars", type=int, default=defaults.max_chars, metavar="N",
                   help="longest text in characters (413 beyond) (default: %(default)s)")
    s.add_argument("--max-instances", type=int, default=defaults.max_instances, metavar="N",
                   help="texts per request (413 beyond) (default: %(default)s)")
    s.add_argument("--max-active", type=int, default=defaults.max_active, metavar="N",
                   help="texts the engine works on together, their runs shared (default: %(default)s)")
    s.add_argument("--queue", type=int, default=defaults.queue_size, metavar="N",
                   help="texts waiting beyond those (429 beyond) (default: %(default)s)")
    s.add_argument("--batch-window", type=float, default=defaults.batch_window, metavar="SECONDS",
                   help="how long the engine waits after a first text for others to join its runs "
                        "(default: %(default)g)")
    s.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="requests answered at the same time (503 beyond) (default: %(default)s)")
    s.add_argument("--access-log", action="store_true", help="log every request")

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


def _report_options(p: argparse.ArgumentParser, plot: bool = True) -> None:
    p.add_argument("--format", choices=("terminal", "json"), default="terminal", help="output format")
    p.add_argument("--output", metavar="FILE", help="write the output to FILE")
    if plot:
        p.add_argument("--plot", metavar="FILE", help="also draw it to FILE (.png, .svg, .pdf; the [plot] extra)")


def _steps(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of nodes or 'auto', got {text!r}") from None


def _config(a: argparse.Namespace) -> ExplainConfig:
    return ExplainConfig(
        method=getattr(a, "method", None) or ExplainConfig().method, backend=a.backend, target=a.target,
        score=a.score, steps=a.steps,
        tolerance=a.tolerance, quadrature=a.quadrature, baseline=a.baseline, reduce=a.reduce, words=a.words,
        batch_size=a.batch_size, tokens_per_run=a.tokens_per_run, fd_step=a.fd_step, richardson=a.richardson,
        fd_scheme=a.fd_scheme,
        samples=a.samples, noise=a.noise, seed=a.seed, long=a.long, window_overlap=a.window_overlap,
        players=a.players, progress=False if a.quiet else None,
        direction=_direction(a.direction) if a.direction else None,
    ).validated()


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
                   pair=a.pair_column, choices=a.choices_column, features=features)


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
    _write(_render(a.format, result, to_terminal=a.output is None), a.output)


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
    limits = Limits(max_body=a.max_body, max_chars=a.max_chars, max_instances=a.max_instances,
                    max_active=a.max_active, queue_size=a.queue, deadline=a.deadline,
                    batch_window=a.batch_window, max_connections=a.max_connections).validated()
    if not 0 < a.port < 65536:
        raise UsageError(f"--port must be from 1 to 65,535, got {a.port}")
    try:
        from blackbox_sal.server.app import Server
        from blackbox_sal.server.process import run
    except ImportError as exc:
        raise UnavailableError(f"serve needs the [serve] extra (pip install 'blackbox-sal[serve]'): "
                               f"{exc.name} is missing") from exc
    named: dict[str, TextModel] = {}
    for spec in a.models or [str(default_model_path())]:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, ""
        model = load_model(path, device=a.device, output=a.model_output, verify=not a.no_verify,
                           dequantize=a.dequantize, pooling=a.pooling, normalize=a.normalize)
        name = name or _served_name(path)
        if not name or "/" in name or ":" in name or name in named:
            raise UsageError(f"model name {name!r} is empty, repeated or has '/' or ':' (give NAME=PATH)")
        named[name] = model
    server = Server(named, config, limits)
    print(printable(f"blackbox-sal: serving {', '.join(named)} on http://{a.host}:{a.port}/ "
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
    if a.limit is not None and not 1 <= a.limit <= 10_000_000:
        raise UsageError(f"--limit must be from 1 to 10,000,000, got {a.limit}")
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
    from blackbox_sal.evaluation.swaps import swaps, swaps_dict, swaps_table

    text = _text(a.text)
    config = _config(a)
    model = _load(a)
    result = swaps(model, text, config, top=a.top, direction=a.toward)
    _report(a, swaps_table(result), swaps_dict(result), None)


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
            {"explain": _explain, "batch": _batch, "grad": _grad, "serve": _serve, "global": _global, "eval": _eval,
             "sanity": _sanity, "swaps": _swaps}[args.command](args)
    except SalError as exc:
        print(f"blackbox-sal: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("blackbox-sal: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
