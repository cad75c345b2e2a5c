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
from blackbox_sal.config import AUTO, FD_SCHEMES, LONG, ExplainConfig
from blackbox_sal.errors import InputError, SalError, UsageError
from blackbox_sal.explaining import explain
from blackbox_sal.gradient_graph.store import export_gradient
from blackbox_sal.gradients.backend import BACKENDS
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.session import DEVICES
from blackbox_sal.reductions import REDUCTIONS
from blackbox_sal.render import FORMATS, render_html, render_json, render_terminal
from blackbox_sal.scores import SCORES
from blackbox_sal.surgery.pooling import POOLINGS
from blackbox_sal.tasks import explain_choices, explain_generation, explain_similarity
from blackbox_sal.text.printable import printable

EPILOG = """exit codes: 0 ok, 2 bad usage or input, 3 model cannot be loaded or used,
4 backend or device not available, 1 internal error (a bug), 130 interrupted.
Environment: NO_COLOR disables colour in the terminal format."""


def _parser() -> argparse.ArgumentParser:
    defaults = ExplainConfig()
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
    e.add_argument("--model", metavar="PATH",
                   help="model directory or .onnx file (default: the bundled sentiment CNN)")
    e.add_argument("--method", choices=list(METHODS), default=defaults.method,
                   help="attribution method (default: %(default)s): " + "; ".join(
                       f"{name} = {spec.summary}" for name, spec in METHODS.items()))
    e.add_argument("--backend", choices=list(BACKENDS), default=defaults.backend,
                   help="how derivatives are taken (default: %(default)s): " + "; ".join(
                       f"{name} = {spec.summary}" for name, spec in BACKENDS.items()))
    e.add_argument("--target", metavar="LABEL|INDEX|TOKEN",
                   help="class to explain (default: the predicted class); for a causal LM a token "
                        "(a word means the next word: ' Paris')")
    e.add_argument("--score", choices=list(SCORES), default=defaults.score,
                   help="the explained scalar (default: %(default)s)")
    e.add_argument("--steps", type=_steps, default=defaults.steps, metavar="N|auto",
                   help="integrated-gradients nodes, or auto = nested Clenshaw-Curtis nodes (5, 9, 17, "
                        "... 257) until the estimated error is within --tolerance (default: %(default)s)")
    e.add_argument("--tolerance", type=float, default=defaults.tolerance, metavar="T",
                   help="--steps auto stops when the error estimate is at most T times the sum of "
                        "|scores| (default: %(default)s)")
    e.add_argument("--quadrature", choices=list(QUADRATURES), default=defaults.quadrature,
                   help="integrated-gradients rule (default: %(default)s)")
    e.add_argument("--baseline", default=defaults.baseline, metavar="pad|zero|unk|mask|TOKEN",
                   help="baseline for ig and occlusion (default: %(default)s)")
    e.add_argument("--reduce", choices=list(REDUCTIONS),
                   help="per-token reduction (default: the method's own: " + ", ".join(
                       f"{name} {spec.default_reduce}" for name, spec in METHODS.items() if spec.default_reduce) + ")")
    e.add_argument("--words", action="store_true", help="merge subword scores into words")
    e.add_argument("--format", choices=FORMATS, default="terminal", help="output format")
    e.add_argument("--output", metavar="FILE", help="write the output to FILE")
    e.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                   help="rows per onnxruntime run; bounds memory (default: 64 on the CPU; on CUDA as many "
                        "as --tokens-per-run allows)")
    e.add_argument("--tokens-per-run", type=int, default=defaults.tokens_per_run, metavar="N",
                   help="the most rows x tokens in one gradient run (default: no limit on the CPU, 16384 on "
                        "CUDA; forward-only runs take 4 times as many)")
    e.add_argument("--device", choices=DEVICES, default="auto",
                   help="cpu, cuda, or auto = cuda when a GPU is usable (default: auto)")
    e.add_argument("--model-output", metavar="NAME",
                   help="model output to explain (default: the first)")
    e.add_argument("--fd-step", type=float, default=defaults.fd_step, metavar="H",
                   help="finite-difference step relative to each token embedding's norm "
                        "(default: 0.01, or 0.3 for quantized models)")
    e.add_argument("--richardson", action="store_true",
                   help="Richardson extrapolation: 4 runs per derivative, O(h^4) error")
    e.add_argument("--fd-scheme", choices=FD_SCHEMES, default=defaults.fd_scheme,
                   help="central differences (O(h^2)), or forward = one-sided (O(h)) with f(x) shared "
                        "by every token at a point: about half the runs for grad-x-input and ig "
                        "(default: %(default)s)")
    e.add_argument("--samples", type=int, default=defaults.samples, metavar="N",
                   help="SmoothGrad samples (default: %(default)s)")
    e.add_argument("--noise", type=float, default=defaults.noise, metavar="SIGMA",
                   help="SmoothGrad noise relative to the embeddings (default: %(default)s)")
    e.add_argument("--seed", type=int, default=defaults.seed, help="random seed (SmoothGrad)")
    e.add_argument("--generate", type=int, metavar="N",
                   help="causal LMs: generate up to N tokens greedily and attribute each to the "
                        "tokens before it (a matrix; terminal or json)")
    e.add_argument("--choice", action="append", metavar="ANSWER",
                   help="multiple choice (give it twice or more): score each (TEXT, ANSWER) pair and "
                        "explain the best; a classifier needs --target, the class that scores a pair")
    e.add_argument("--similar-to", metavar="TEXT",
                   help="sentence encoders: explain the cosine similarity of TEXT's and this "
                        "text's embeddings, over the tokens of both (terminal or json)")
    e.add_argument("--long", choices=LONG, default=defaults.long,
                   help="a text over the model's token limit: error (exit 2), or window = explain "
                        "overlapping windows and stitch them (classifiers; default: %(default)s)")
    e.add_argument("--window-overlap", type=int, metavar="N",
                   help="tokens consecutive windows share (default: a quarter of the limit)")
    e.add_argument("--pooling", choices=POOLINGS,
                   help="a model whose output is token states [batch, seq, hidden]: pool them into one embedding "
                        "(default: what the folder's config says, else mean over the attention mask)")
    e.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the pooled embedding (default: what the folder says, else no)")
    e.add_argument("--direction", metavar="FILE",
                   help="a model whose output is an embedding: explain its projection on the vector in FILE "
                        "(.npy, or numbers separated by spaces or commas)")
    e.add_argument("--dequantize", action="store_true",
                   help="explain a quantized model's float twin (dynamic or QDQ int8; weights dequantized, "
                        "activations in float): exact gradients of the deployed weights (4-bit MatMulNBits "
                        "models need no flag: their twin is the same function)")
    e.add_argument("--no-verify", action="store_true",
                   help="skip checking the embedding split against the original model")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress or cost messages")

    g = sub.add_parser(
        "grad", help="build, verify and write a model's gradient graph",
        description="Build the ONNX gradient graph of MODEL (inputs_embeds, the model's inputs, "
                    "target_weights [batch, classes] -> outputs, grad [batch, seq, dim]), check it "
                    "against finite differences, and write it. To ship it with the model, put the "
                    "file in the model folder and add \"gradient_model\": \"FILE\" to config.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("model", metavar="MODEL", nargs="?",
                   help="model directory or .onnx file (default: the bundled model)")
    g.add_argument("-o", "--output", metavar="OUT", help="where to write it (default: the cache, printed)")
    g.add_argument("--model-output", metavar="NAME", help="model output to differentiate (default: the first)")
    g.add_argument("--device", choices=DEVICES, default="auto", help="device for the check (default: auto)")
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


def _explain(a: argparse.Namespace) -> None:
    text = _text(a.text)
    config = _config(a)  # validate names before loading anything
    if sum(x is not None for x in (a.generate, a.similar_to, a.choice)) > 1:
        raise UsageError("--generate, --similar-to and --choice are different tasks: give one")
    model = load_model(a.model or default_model_path(), device=a.device, output=a.model_output,
                       verify=not a.no_verify, dequantize=a.dequantize, pooling=a.pooling, normalize=a.normalize)
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
    model = load_model(a.model or default_model_path(), device=a.device, output=a.model_output)
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
            if args.command == "explain":
                _explain(args)
            elif args.command == "grad":
                _grad(args)
    except SalError as exc:
        print(f"blackbox-sal: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("blackbox-sal: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
