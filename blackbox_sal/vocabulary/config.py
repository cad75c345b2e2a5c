"""The settings spec: every setting of the API, the command line and the server, once.

Each setting is one entry (a :class:`~blackbox_sal.vocabulary.settings.Setting`): its name, kind (type and
range or choices), default, help, the commands that take it and whether the server's requests
do. The config objects' fields *are* entries (``ExplainConfig`` for what to compute,
``Limits`` for what the server accepts); the commands' own options are ``LOADING`` and
``OPTIONS``.
``SETTINGS`` is the whole table. Derived from it, nowhere written again:

- the config objects' ``validated`` (each field against its kind, then the few rules that
  tie two settings together);
- the command line's options (``blackbox_sal.cli`` adds them with ``settings.add_options``);
- the server's checks of ``parameters`` and the OpenAPI schema of them
  (``blackbox_sal.server.protocol``, ``blackbox_sal.server.openapi``);
- the reference ``docs/cli.md``: ``python -m blackbox_sal.vocabulary.config --markdown > docs/cli.md``.

Adding a setting is one entry here (see ``docs/settings.md``). Names of registries (methods,
backends, scores...) come from :mod:`blackbox_sal.vocabulary.choices`, so this module imports no
registry: the configuration sits below the code it configures.

Documented maxima (bad input never runs for minutes or exhausts memory): batch_size 1 ..
4,096 rows per run; tokens_per_run 1 .. 10,000,000; steps 1 .. 1,024 or "auto" (at most 257
nodes); samples 1 .. 10,000; max_chars 1 .. 10,000,000; fd_step in [1e-6, 1); tolerance in (0, 1).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import blackbox_sal.vocabulary.choices as choices
from blackbox_sal.text.tokenization import MAX_CHARS
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.settings import (
    AUTO,
    FLOAT32_MAX,
    Choice,
    FilePath,
    Flag,
    Integer,
    Label,
    Number,
    Setting,
    Steps,
    Switch,
    Text,
    Vector,
    fields_of,
    markdown,
    setting,
    validate,
)

#: what to do with a text over the model's token limit
LONG = choices.LONG
#: finite-difference schemes (blackbox_sal.gradients.finite_differences.SCHEMES)
FD_SCHEMES = choices.FD_SCHEMES
#: seconds one model run may take by default (--timeout; blackbox_sal.model.session.time_limit)
DEFAULT_TIMEOUT = 600.0
#: the smallest finite-difference step, relative to a token's norm: float32 resolves 2^-23 ~ 1.2e-7
MIN_FD_STEP = 1e-6
#: the most rows one onnxruntime run may take
MAX_BATCH_SIZE = 4096
#: the most rows x tokens one gradient run may be given
MAX_TOKENS_PER_RUN = 10_000_000
#: the longest direction vector a projection may be explained along
MAX_DIRECTION = 1_000_000
#: the highest character limit a caller may set
MAX_CHARS_LIMIT = 10_000_000
#: the most nodes a fixed integrated-gradients rule may use (Gauss-Legendre's nodes cost O(m^2)
#: memory to compute; 1,024 takes 8 MB, and no text seen here needed more than 257)
MAX_STEPS = 1024
#: the most SmoothGrad samples one explanation may ask for
MAX_SAMPLES = 10_000

#: the commands that explain with a config (each takes every method option)
EXPLAINING = ("explain", "batch", "global", "eval", "sanity", "swaps", "serve")
#: those that take one --method (eval and sanity compare several)
ONE_METHOD = ("explain", "batch", "global", "swaps", "serve")
#: those that load one model by --model
ONE_MODEL = ("explain", "batch", "global", "eval", "sanity", "swaps")
#: those that read a dataset
DATA = ("batch", "global", "eval", "sanity")
#: those that write a report (a table, or JSON)
REPORTS = ("global", "eval", "sanity", "swaps")


_REDUCE_DEFAULTS = ", ".join(f"{n} {m.default_reduce}" for n, m in choices.METHODS.items() if m.default_reduce)


@dataclass(frozen=True)
class ExplainConfig:
    """What to compute and how: one object shared by the Python API, the CLI and the server.
    Each field is a spec entry; its help is the field's documentation (``docs/cli.md``)."""

    method: str = setting("ig", Choice(choices.METHODS, "method"),
                          "attribution method", commands=ONE_METHOD, request=True)
    backend: str = setting("auto", Choice(choices.BACKENDS, "backend"),
                           "how derivatives are taken", commands=EXPLAINING, request=True)
    target: str | int | None = setting(
        None, Label(), "class to explain, a label or an index; for a causal LM a token (a word means the next "
        "word: ' Paris')", nullable=True, shown_default="the predicted class", commands=EXPLAINING, request=True,
        metavar="LABEL|INDEX|TOKEN")
    contrast: str | int | None = setting(
        None, Label(), "explain the target rather than this class (a label, an index, a token): the difference "
        "of the two scores", nullable=True, shown_default="none: the target's score alone", commands=EXPLAINING,
        request=True, metavar="LABEL|INDEX|TOKEN")
    at: str | int | None = setting(
        None, Label(), "a per-token model: the position to explain, a token index or a word of the text (its "
        "tokens' scores summed)", nullable=True, shown_default="every predicted entity (every position not O)",
        commands=EXPLAINING, request=True, metavar="INDEX|WORD")
    score: str = setting("logit", Choice(choices.SCORES, "score"),
                         "the explained scalar: the raw output, or its softmax's probability or log",
                         commands=EXPLAINING, request=True)
    steps: int | Literal["auto"] = setting(
        50, Steps(MAX_STEPS), "integrated-gradients nodes, or auto = nested Clenshaw-Curtis nodes (5, 9, 17, ... "
        "257) until the estimated error is within --tolerance", commands=EXPLAINING, request=True, metavar="N|auto")
    tolerance: float = setting(
        0.01, Number(0, 1, low_open=True, high_open=True), "--steps auto stops when the error estimate is at most "
        "this times the sum of |scores|", commands=EXPLAINING, request=True, metavar="T")
    quadrature: str = setting("gauss-legendre", Choice(choices.QUADRATURES, "quadrature"),
                              "integrated-gradients rule", commands=EXPLAINING, request=True)
    baseline: str = setting("pad", Text(blank=False, refusal="pad, zero, unk, mask or a token"),
                            "baseline for ig and occlusion: pad, zero, unk, mask or a single vocabulary token",
                            commands=EXPLAINING, request=True, metavar="pad|zero|unk|mask|TOKEN")
    reduce: str | None = setting(None, Choice(choices.REDUCTIONS, "reduction"), "per-token reduction",
                                 nullable=True, shown_default=f"the method's own: {_REDUCE_DEFAULTS}",
                                 commands=EXPLAINING, request=True)
    words: bool = setting(False, Flag(), "merge subword scores into words", commands=EXPLAINING, request=True)
    batch_size: int | None = setting(
        None, Integer(1, MAX_BATCH_SIZE), "rows per onnxruntime run; bounds memory", nullable=True,
        shown_default="64 on the CPU; on CUDA as many as --tokens-per-run allows", commands=EXPLAINING,
        metavar="N")
    tokens_per_run: int | None = setting(
        None, Integer(1, MAX_TOKENS_PER_RUN), "the most rows x tokens in one gradient run; forward-only runs take "
        "4 times as many; on CUDA many texts keep up to two runs in flight (twice the memory)", nullable=True,
        shown_default="8192 on the CPU, none when --batch-size is given; 16384 on CUDA", commands=EXPLAINING,
        metavar="N")
    fd_step: float | None = setting(
        None, Number(MIN_FD_STEP, 1, high_open=True), "finite-difference step relative to each token "
        "embedding's norm (at least 1e-6: float32 embeddings move by no less, and smaller steps give all-zero "
        "scores)", nullable=True, shown_default="0.01, or 0.3 for quantized models", commands=EXPLAINING,
        request=True, metavar="H")
    richardson: bool = setting(False, Flag(), "Richardson extrapolation: 4 runs per derivative, O(h^4) error",
                               commands=EXPLAINING, request=True)
    fd_scheme: str = setting(
        "central", Choice(choices.FD_SCHEMES, "finite-difference scheme"), "central differences (O(h^2)), or "
        "forward = one-sided (O(h)) with f(x) shared by every token at a point: about half the runs for "
        "grad-x-input and ig", commands=EXPLAINING, request=True)
    samples: int = setting(10, Integer(1, MAX_SAMPLES), "SmoothGrad samples (run --batch-size at a time); "
                           "kernel-shap and lime: coalitions per player (samples x players rows); permutation: "
                           "orders of the players", commands=EXPLAINING, request=True, metavar="N")
    noise: float = setting(0.1, Number(0), "SmoothGrad noise, relative to each token embedding's RMS",
                           commands=EXPLAINING, request=True, metavar="SIGMA")
    seed: int = setting(0, Integer(0, 2**63 - 1), "random seed (SmoothGrad, kernel-shap, permutation, lime; "
                        "eval's random rankings)", commands=EXPLAINING, request=True)
    players: str = setting("words", Choice(choices.PLAYERS, "players"), "what shapley, kernel-shap, permutation, "
                           "lime and owen attribute to: words (a word's value split equally over its tokens) or "
                           "tokens", commands=EXPLAINING, request=True)
    max_chars: int = setting(MAX_CHARS, Integer(1, MAX_CHARS_LIMIT), "the longest accepted text, in characters")
    long: str = setting(
        "error", Choice(choices.LONG, "long-text handling"), "a text over the model's token limit: error (exit 2), "
        "or window = explain overlapping windows and stitch them (classifiers)", commands=EXPLAINING, request=True)
    window_overlap: int | None = setting(None, Integer(0), "tokens consecutive windows share", nullable=True,
                                         shown_default="a quarter of the limit", commands=EXPLAINING, request=True,
                                         metavar="N")
    answer: str | None = setting(
        None, Text(blank=False, refusal="a text of the context, or token indices START:END"),
        "question answering: the answer span to explain, its text in the context or token indices START:END",
        nullable=True, shown_default="the best span", commands=EXPLAINING, request=True, metavar="TEXT|START:END")
    max_answer_tokens: int = setting(30, Integer(1, 4096), "question answering: the longest answer span considered, "
                                     "in tokens", commands=EXPLAINING, request=True, metavar="N")
    progress: bool | None = setting(None, Flag(), "progress bars (None: when stderr is a terminal; the CLI's "
                                    "--quiet turns them off)", nullable=True)
    #: for an embedding model: explain the output's projection on this vector
    direction: tuple[float, ...] | None = setting(
        None, Vector(MAX_DIRECTION), "a model whose output is an embedding: explain its projection on this "
        "vector (as long as the output, not all zero; on the command line a FILE: .npy, or numbers separated by "
        "spaces or commas)", nullable=True, commands=EXPLAINING, request=True, metavar="FILE")

    def validated(self) -> ExplainConfig:
        """Self, after checking every setting against its entry and the rules that tie two
        together; UsageError (exit 2) otherwise."""
        validate(self)
        if self.steps == AUTO and self.quadrature not in choices.AUTO_QUADRATURES:
            raise UsageError(f"steps 'auto' adds nested Clenshaw-Curtis nodes; it does not combine "
                             f"with the {self.quadrature} rule (give a number of steps instead)")
        if self.steps != AUTO and self.quadrature in choices.TWO_NODE_QUADRATURES and int(self.steps) < 2:
            raise UsageError(f"the {self.quadrature} rule needs steps >= 2")
        if self.fd_scheme == "forward" and self.richardson:
            raise UsageError("--richardson extrapolates central differences: it does not combine with "
                             "--fd-scheme forward")
        return self

    def reduction(self) -> str | None:
        """The reduction used: the configured one, or the method's default."""
        return self.reduce if self.reduce is not None else choices.METHODS[self.method].default_reduce


@dataclass(frozen=True)
class Limits:
    """What the server accepts, per request and in all (``docs/cli.md``, serve)."""

    max_body: int = setting(64 * 1024**2, Integer(1, 2**31), "largest request body (413 beyond)",
                            commands=("serve",), metavar="BYTES")
    max_chars: int = setting(100_000, Integer(1, MAX_CHARS_LIMIT), "longest text in characters (413 beyond)",
                             commands=("serve",), metavar="N")
    max_instances: int = setting(256, Integer(1, 4096), "texts per request (413 beyond)", commands=("serve",),
                                 metavar="N")
    max_active: int = setting(64, Integer(1, 4096), "texts the engine works on together, their runs shared",
                              commands=("serve",), metavar="N")
    queue_size: int = setting(256, Integer(1, 1_000_000), "texts waiting beyond those (429 beyond)",
                              commands=("serve",), flag="--queue", metavar="N")
    deadline: float = setting(
        30.0, Number(0.001, 3600), "the longest a request may take, in seconds; its work is stopped then (504). "
        "A request may ask for less in its parameters (at most the server's)", commands=("serve",), request=True,
        metavar="SECONDS")
    batch_window: float = setting(0.005, Number(0, 1), "how long the engine waits after a first text for others "
                                  "to join its runs, in seconds", commands=("serve",), metavar="SECONDS")
    max_reading: int = setting(4, Integer(1, 1024), "request bodies of max_body bytes being read at once: the "
                               "bodies being read hold at most max_reading x max_body bytes (503 beyond)")
    max_connections: int = setting(256, Integer(1, 100_000), "requests answered at the same time (503 beyond)",
                                   commands=("serve",), metavar="N")
    read_timeout: float = setting(10.0, Number(0.01, 3600), "the longest a request's headers or body may take to "
                                  "arrive, in seconds (408 beyond)", commands=("serve",), metavar="SECONDS")

    def validated(self) -> Limits:
        """Itself, or UsageError naming (by its option) the setting out of range."""
        validate(self, label=lambda entry: entry.option)
        return self


_TEXT = Text()
_PATH = FilePath()
#: how the model is found and loaded (first in every command's help)
LOADING: tuple[Setting, ...] = (
    # which model, and how it is loaded
    Setting("model", _PATH, "model directory or .onnx file", shown_default="the bundled sentiment CNN",
            commands=ONE_MODEL, metavar="PATH"),
    Setting("device", Choice(choices.DEVICES, "device"), "cpu, cuda, or auto = cuda when a GPU is usable",
            default="auto", commands=(*EXPLAINING, "grad")),
    Setting("model_output", _TEXT, "the model output to explain",
            shown_default="class scores, else an embedding, else token states to pool; never an integer output or "
            "a copy of an input",
            commands=(*EXPLAINING, "grad"), metavar="NAME"),
    Setting("pooling", Choice(choices.POOLINGS, "pooling"), "a model whose output is token states "
            "[batch, seq, hidden]: pool them into one embedding",
            shown_default="what the folder's config says, else mean over the attention mask",
            commands=(*EXPLAINING, "grad")),
    Setting("normalize", Switch(), "L2-normalise the pooled embedding",
            shown_default="what the folder says, else no", commands=(*EXPLAINING, "grad")),
    Setting("dequantize", Flag(), "explain a quantized model's float twin (dynamic or QDQ int8; weights "
            "dequantized, activations in float): exact gradients of the deployed weights (4-bit MatMulNBits "
            "models need no flag: their twin is the same function)", default=False, commands=(*EXPLAINING, "grad")),
    Setting("no_verify", Flag(), "skip checking the embedding split against the original model", default=False,
            commands=EXPLAINING),
    Setting("quiet", Flag(), "no progress or cost messages", default=False, short="-q",
            commands=(*EXPLAINING, "grad")),
    Setting("timeout", Number(0, 86_400, low_open=True), "stop any one model run (loading's checks included) "
            "after SECONDS, exit 5; serve: loading only (requests keep --deadline)", default=DEFAULT_TIMEOUT,
            commands=(*EXPLAINING, "grad"), metavar="SECONDS"),
)
#: the commands' other options
OPTIONS: tuple[Setting, ...] = (
    # several methods compared
    Setting("methods", Choice(choices.METHODS, "method"),
            "attribution method, once per method compared",
            shown_default="eval: every method; sanity: ig, grad-x-input, saliency, occlusion, kernel-shap",
            flag="--method",
            append=True, dest="methods", commands=("eval", "sanity")),
    # explain
    Setting("format", Choice(choices.FORMATS, "format"), "output format", default="terminal",
            commands=("explain",)),
    Setting("report_format", Choice(choices.REPORT_FORMATS, "format"), "output format", default="terminal",
            flag="--format", commands=REPORTS),
    Setting("output", _PATH, "write the output to FILE", commands=("explain", *REPORTS), metavar="FILE"),
    Setting("generate", Integer(1, 1024), "causal LMs: generate up to N tokens greedily and attribute each to the "
            "tokens before it (a matrix; terminal or json); encoder/decoder pairs: the output to explain (batch: "
            "for rows without a target column)", commands=("explain", "batch"), metavar="N"),
    Setting("target_text", _TEXT, "encoder/decoder pairs: explain this output (teacher forcing) instead of a "
            "generated one", commands=("explain",), metavar="TEXT"),
    Setting("choice", _TEXT, "multiple choice (give it twice or more): score each (TEXT, ANSWER) pair and explain "
            "the best; a classifier needs --target, the class that scores a pair", append=True,
            commands=("explain",), metavar="ANSWER"),
    Setting("similar_to", _TEXT, "sentence encoders: explain the cosine similarity of TEXT's and this text's "
            "embeddings, over the tokens of both (terminal or json)", commands=("explain",), metavar="TEXT"),
    Setting("context", _TEXT, "question answering: the context the answer is taken from (the text is the "
            "question)", commands=("explain",), metavar="TEXT"),
    # batch
    Setting("batch_output", _PATH, "where the results go: .jsonl, .csv or .parquet (the suffix picks the format)",
            flag="--output", short="-o", required=True, commands=("batch",), metavar="OUTPUT"),
    # datasets
    Setting("text_column", _TEXT, "the text", default="text", commands=DATA, metavar="NAME"),
    Setting("id_column", _TEXT, "an id written with each result", shown_default="the row number", commands=DATA,
            metavar="NAME"),
    Setting("target_column", _TEXT, "the class to explain, per row", commands=DATA, metavar="NAME"),
    Setting("pair_column", _TEXT, "a second text per row: the row is explained as a similarity to it",
            commands=DATA, metavar="NAME"),
    Setting("choices_column", _TEXT, "answer choices per row (a JSON list, or texts separated by |): multiple "
            "choice", commands=DATA, metavar="NAME"),
    Setting("question_column", _TEXT, "a question per row: the row's text is its context (question answering)",
            commands=DATA, metavar="NAME"),
    Setting("at_column", _TEXT, "a per-token model's position per row (as --at: a token index or a word of the "
            "text); a row without one takes --at", commands=("batch",), metavar="NAME"),
    Setting("contrast_column", _TEXT, "the class each row's target is explained against (as --contrast); a row "
            "without one takes --contrast", commands=("batch",), metavar="NAME"),
    Setting("answer_column", _TEXT, "question answering: the answer span per row (as --answer: its text in the "
            "context, or token indices START:END); a row without one takes --answer", commands=("batch",),
            metavar="NAME"),
    Setting("feature_columns", _TEXT, "a model that takes numbers: the columns that make its input, "
            "comma-separated", shown_default="for such a model: every column but the id, label and target columns",
            commands=DATA, metavar="NAMES"),
    Setting("label_column", _TEXT, "the true label per row (global: accuracies, and per-class averages by label)",
            commands=DATA, metavar="NAME"),
    Setting("limit", Integer(1, 10_000_000), "at most the first N rows", commands=DATA, metavar="N"),
    Setting("window", Integer(1, 10_000_000), "rows in flight together, their runs packed (memory grows with it)",
            default=64, commands=("batch",), metavar="N"),
    Setting("engine", Choice(("local", "ray"), "engine"), "local (this process), or ray: Ray Data with one model "
            "per actor (the [ray] extra)", default="local", commands=("batch",)),
    Setting("address", _TEXT, "--engine ray: the cluster to join", shown_default="a local Ray", commands=("batch",),
            metavar="ADDRESS"),
    # reports
    Setting("plot", _PATH, "also draw it to FILE (.png, .svg, .pdf; the [plot] extra)",
            commands=("global", "eval", "sanity", "swaps"), metavar="FILE"),
    # global
    Setting("top", Integer(1, 10_000), "words shown each way", default=15, commands=("global",), metavar="K"),
    Setting("min_count", Integer(1, 10_000_000), "text models: words seen fewer times are left out", default=3,
            commands=("global",), metavar="N"),
    Setting("fit", _PATH, "bag-of-words: fit the surrogate's b on these rows (e.g. the training split) instead of "
            "DATA itself (in-sample, optimistic)", commands=("global",), metavar="DATA"),
    Setting("over", Choice(("all", "own"), "averaging"), "models that take numbers: average each class's "
            "Jacobian over every row, or over the rows of that class (by label where given, else by prediction)",
            default="all", commands=("global",)),
    Setting("compare", _PATH, "models that take numbers: correlate the mean Jacobians with this model's (e.g. a "
            "logistic regression, whose Jacobian is its weights)", commands=("global",), metavar="MODEL"),
    # eval
    Setting("random", Flag(), "add a row of random token rankings, for reference", default=False,
            commands=("eval",)),
    Setting("bins", _TEXT, "fractions of the tokens removed or kept, comma-separated", default="0.01,0.05,0.1,0.2,0.5",
            commands=("eval",), metavar="FRACTIONS"),
    Setting("curve_points", Integer(2, 1000), "points of the deletion and insertion curves", default=10,
            commands=("eval",), metavar="N"),
    Setting("eval_score", Choice(choices.SCORES, "score"), "what f is in the metrics", default="probability",
            commands=("eval",)),
    Setting("removal", Text(blank=False, refusal="pad, zero, unk, mask or a token"),
            "what a removed token's embedding becomes", default="pad", commands=("eval",),
            metavar="pad|zero|unk|mask|TOKEN"),
    Setting("shapley_tokens", Integer(0, 14), "compare every method with exact Shapley values on the texts of at "
            "most N tokens (2^N model rows each; 0: never)", default=12, commands=("eval",), metavar="N"),
    Setting("top_k", Integer(1, 1000), "the top-k overlap with exact Shapley values", default=3,
            commands=("eval",), metavar="K"),
    # sanity
    Setting("stages", _TEXT, "the first K randomization stages, or a comma-separated list",
            shown_default="all", commands=("sanity",), metavar="K|LIST"),
    Setting("no_backends", Flag(), "skip comparing the graph with finite differences", default=False,
            commands=("sanity",)),
    Setting("agreement_texts", Integer(1, 10_000_000), "texts the backend comparison uses (finite differences of a "
            "full gradient are costly)", default=10, commands=("sanity",), metavar="N"),
    # swaps
    Setting("swaps_top", Integer(1, 100), "substitutions per position", default=5, flag="--top",
            commands=("swaps",), metavar="K"),
    Setting("toward", Choice(("both", "increase", "decrease"), "direction"), "substitutions that raise the "
            "target, lower it, or the largest either way", default="both", commands=("swaps",)),
    # serve
    Setting("host", _TEXT, "address to listen on", default="127.0.0.1", shown_default="127.0.0.1, loopback only",
            commands=("serve",)),
    Setting("port", Integer(1, 65_535), "port", default=8080, commands=("serve",)),
    Setting("access_log", Flag(), "log every request: one JSON line on stderr (route, model, status, ms)",
            default=False, commands=("serve",)),
    # grad
    Setting("grad_output", _PATH, "where to write it", shown_default="the cache, printed", flag="--output",
            short="-o", exclusive="where", commands=("grad",), metavar="OUT"),
    Setting("folder", _PATH, "write a prepared folder instead (a new or empty folder): the loaded model taking "
            "inputs_embeds, embeddings.npy, the verified grad.onnx, tokenizer.json and config.json, which an "
            "install without onnx (onnxruntime, numpy, tokenizers) loads and explains", exclusive="where",
            commands=("grad",), metavar="OUT"),
)

#: the whole spec, in the order each command's help lists its options
SETTINGS: tuple[Setting, ...] = (*LOADING, *fields_of(ExplainConfig), *fields_of(Limits), *OPTIONS)


@dataclass(frozen=True)
class Command:
    """A subcommand: its one line in the command list, and its description."""

    help: str
    description: str


COMMANDS: dict[str, Command] = {
    "explain": Command(
        "attribute a prediction to the input tokens",
        "Attribute the model's prediction on TEXT to its tokens."),
    "batch": Command(
        "explain every row of a dataset into a JSONL, CSV or Parquet file (resumable)",
        "Explain every row of INPUT (JSONL, CSV or Parquet with a text column) into OUTPUT (the format follows "
        "its suffix: .jsonl, .csv or .parquet): one record per row, the explain command's JSON object with the "
        "row's id, or the error a row ended with (the job goes on). Killed at any point and run again with the "
        "same command, it continues where it stopped."),
    "global": Command(
        "what a model relies on across a dataset (the paper's global analysis)",
        "What MODEL relies on across DATA. A bag-of-words model (its input is a multi-hot vector): the average "
        "gradient g, its top words each way and the linear surrogate sign(x . g + b) with its agreement with the "
        "model (the paper's section 5.2). A model that takes numbers: the mean Jacobian per class (section 5.3), "
        "with --compare, its correlation with another model's. A text model: every text explained with --method, "
        "and per word the mean score, count and spread, overall and per predicted class."),
    "eval": Command(
        "how faithful each method's explanations are (ERASER metrics, curves)",
        "How faithful each method's explanations of MODEL are over DATA: ERASER comprehensiveness and sufficiency "
        "over bins of the top tokens and their AOPC, deletion and insertion curves with their areas, the rank "
        "correlation with leave-one-out changes, IG completeness, and time per explanation; methods side by side. "
        "Tokens are removed by replacing their embeddings with the removal baseline (never by editing the text)."),
    "sanity": Command(
        "sanity checks: cascading model randomization, backend and method agreement",
        "Sanity checks of the explanations of MODEL over DATA (Adebayo et al. 2018): the weights are re-drawn "
        "layer by layer from the output down, and at every stage each method's rank correlation with its original "
        "attributions is reported (a method that does not change is not explaining the model); plus the agreement "
        "of the gradient graph with finite differences, and of methods with each other."),
    "swaps": Command(
        "which single-token substitutions would change the prediction most",
        "The one-hot view of TEXT: for each position, the first-order change of the target if the token were "
        "replaced by each vocabulary word, (E_v - E_x) . grad, over the whole vocabulary at once; the top K per "
        "position are checked by running the model on the substituted text (estimated against actual change)."),
    "serve": Command(
        "answer predict and explain requests over HTTP (the [serve] extra)",
        "Serve MODEL... over HTTP: KServe V1 (/v1/models/NAME:predict, :explain), the V2 inference protocol "
        "(/v2/models/NAME/infer, /v2/models/NAME-explainer/infer), health and metadata routes, /openapi.json and a "
        "web page at /. Each MODEL is PATH or NAME=PATH (the name defaults to the folder's); the method options "
        "are the requests' defaults. Concurrent requests share onnxruntime runs. SIGTERM turns readiness off and "
        "drains."),
    "grad": Command(
        "build, verify and write a model's gradient graph",
        "Build the ONNX gradient graph of MODEL (inputs_embeds, the model's inputs, target_weights [batch, "
        "classes] -> outputs, grad [batch, seq, dim]), check it against finite differences, and write it. To ship "
        "it with the model, put the file in the model folder and add \"gradient_model\": \"FILE\" to config.json."),
}


def reference() -> str:
    """``docs/cli.md``: the command-line reference, rendered from the spec."""
    return markdown(SETTINGS, {name: c.description for name, c in COMMANDS.items()}, [
        ("Model options", "How the model is found and loaded.", LOADING),
        ("Method options", "What is explained and how (the fields of `ExplainConfig`, the Python API's config).",
         [e for e in SETTINGS if e.owner == ExplainConfig.__name__])])


__all__ = ["AUTO", "COMMANDS", "FLOAT32_MAX", "SETTINGS", "ExplainConfig", "Limits", "reference"]

if __name__ == "__main__":  # python -m blackbox_sal.vocabulary.config --markdown > docs/cli.md
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m blackbox_sal.vocabulary.config --markdown")
    sys.stdout.write(reference())
