"""Sanity checks of attributions: cascading model randomization (Adebayo et al. 2018, "Sanity
Checks for Saliency Maps"), agreement between gradient backends, and between methods.

**Layers.** The weights are the model body's floating-point initializers with two or more
dimensions (weight matrices, convolution kernels, tables kept in the body such as position
embeddings or a tied LM head). Each sits at the topological position of the first node that
reads it (ONNX keeps nodes in topological order; a read inside an If/Loop/Scan body counts
for the node that holds it). Every node that first reads one or more weights starts a layer
holding them. A one-dimensional float initializer of more than one value (a bias, a
LayerNorm scale or shift) goes with the layer of the nearest weight-reading node at or before
its own first reader (a bias added after its MatMul goes with that MatMul; one read before
any weight goes with the first layer). Scalars, single values, integer tensors, tensors no
node reads and values held in Constant nodes (not initializers) are never re-drawn. Layers
are ordered **from the output down**: the layer whose node comes last first. The embedding
table (the split lookup's, outside the body) is the last stage.

**Re-draw.** Every tensor of a layer is replaced by draws from a normal distribution with that
tensor's own mean and standard deviation (so a tensor with no spread, e.g. a LayerNorm scale
of ones, stays as it is), in its own dtype, from a numpy Generator seeded by (seed, layer):
the same draw at every stage. Stage 0 is the model itself; stage k re-draws the top k layers
(cumulatively); the last stage adds the whole embedding table (every row, PAD included).

At each stage every method explains every text again, for the class it explained on the
original model, and its token scores (ordinary tokens) are compared with the original's by
Spearman's rank correlation, of the scores and of their absolute values, averaged over the
texts. A method that passes the check loses correlation as layers are re-drawn; one that
does not depends on the input more than on the model. The sampling methods (kernel-shap, permutation,
lime) draw the same coalitions at every stage (one seed), so what changes is the model.

**Gradient graph.** The graph built for the model reads the body's initializers under the
same names, so a randomized stage substitutes its values into a copy of the graph (as read
from the model folder or the gradient-graph cache) instead of rebuilding it, and checks it
against finite differences of the randomized model before use. Where no graph can be had or
the check fails, that stage's derivatives come from finite differences (``fd``), and a note
says so.

**Agreement.** Backends: each method that needs derivatives is run on the original model
with the other backend too (graph against finite differences): mean Spearman and the largest
relative difference max|a - b| / max|a| over the texts. Methods: the mean pairwise Spearman
of their token scores on the original model (and of their absolute values).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from blackbox_sal.api.explaining import runner, text_explanation
from blackbox_sal.api.per_token import TextTarget, target_explanation
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.evaluation.common import per_token_items
from blackbox_sal.evaluation.correlation import mean_defined, spearman
from blackbox_sal.evaluation.faithfulness import fmt_number, json_float, method_configs, row_names
from blackbox_sal.gradient_graph.build import build_gradient
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.store import cache_dir, cache_key, gradient_session
from blackbox_sal.methods import METHODS
from blackbox_sal.model import files
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery.prune import node_inputs
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError, SalError, UsageError
from blackbox_sal.vocabulary.result import Explanation

FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
#: what the last stage re-draws
TABLE = "embedding table"
#: texts the backends are compared on by default
AGREEMENT_TEXTS = 10


@dataclass(frozen=True)
class Layer:
    """One randomization layer: the node that first reads its weights (op type and name, or
    its position when unnamed), its position among the body's nodes, and its tensors
    (weights first, then the one-dimensional ones that go with them) and their size."""

    node: str
    op: str
    position: int
    tensors: tuple[str, ...]
    parameters: int

    @property
    def name(self) -> str:
        return f"{self.op} {', '.join(self.tensors)}"


@dataclass(frozen=True)
class StageMethod:
    """One method at one stage: mean Spearman of its token scores with the original's (and of
    their absolute values) over ``texts`` texts where it is defined; ``failed`` texts whose
    explanation failed at this stage; the backend(s) used."""

    name: str
    spearman: float | None
    spearman_abs: float | None
    texts: int
    failed: int
    backend: str | None


@dataclass(frozen=True)
class Stage:
    """Stage k: what it re-draws on top of stage k - 1 (a layer, or the embedding table)."""

    stage: int
    randomized: str
    tensors: tuple[str, ...]
    methods: tuple[StageMethod, ...]


@dataclass(frozen=True)
class BackendAgreement:
    """Graph against finite differences for one method on the original model: mean Spearman,
    the largest max|graph - fd| / max|graph| over the texts, and the texts compared (None
    values and ``reason`` when it could not be compared)."""

    name: str
    spearman: float | None
    max_relative_difference: float | None
    texts: int
    reason: str | None = None


@dataclass(frozen=True)
class MethodAgreement:
    """Two methods on the original model: mean Spearman of their token scores, and of their
    absolute values, over ``texts`` texts."""

    first: str
    second: str
    spearman: float | None
    spearman_abs: float | None
    texts: int


@dataclass(frozen=True)
class Sanity:
    """The sanity checks of several methods on one model and dataset (see the module docstring).

    layers: output first. stages: the stages computed, in order. failures: (method, reason,
    count) for texts that could not be explained on the original model (left out everywhere).
    """

    model: str
    texts: int
    seed: int
    methods: tuple[str, ...]
    layers: tuple[Layer, ...]
    stages: tuple[Stage, ...]
    backends: tuple[BackendAgreement, ...]
    agreement: tuple[MethodAgreement, ...]
    failures: tuple[tuple[str, str, int], ...] = ()
    notes: tuple[str, ...] = ()
    #: what each of the ``texts`` items is: "texts", or for a per-token model "targets" (each
    #: predicted entity of each text, or the position ``at`` names)
    unit: str = "texts"


def weight_layers(body: onnx.ModelProto) -> tuple[Layer, ...]:
    """The body's randomization layers, output first (see the module docstring)."""
    inits = {i.name: i for i in body.graph.initializer if i.data_type in FLOATS}
    first: dict[str, int] = {}
    for position, node in enumerate(body.graph.node):
        for name in sorted(node_inputs(node)):
            if name in inits and name not in first:
                first[name] = position
    weights = {n: p for n, p in first.items() if len(inits[n].dims) >= 2}
    small = {n: p for n, p in first.items() if len(inits[n].dims) == 1 and inits[n].dims[0] > 1}
    readers = sorted(set(weights.values()))
    if not readers:
        return ()
    groups: dict[int, list[str]] = {p: sorted((n for n, q in weights.items() if q == p),
                                              key=lambda n: _order(body, p, n)) for p in readers}
    for name, p in sorted(small.items(), key=lambda kv: kv[1]):
        owner = max((r for r in readers if r <= p), default=readers[0])
        groups[owner].append(name)
    layers = []
    for p in reversed(readers):
        node = body.graph.node[p]
        size = sum(math.prod(inits[n].dims) for n in groups[p])
        layers.append(Layer(node.name or f"node {p}", node.op_type, p, tuple(groups[p]), int(size)))
    return tuple(layers)


def _order(body: onnx.ModelProto, position: int, name: str) -> int:
    inputs = list(body.graph.node[position].input)
    return inputs.index(name) if name in inputs else len(inputs)


def redrawn(body: onnx.ModelProto, layer: Layer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """New values for a layer's tensors: normal draws with each tensor's own mean and std."""
    inits = {i.name: i for i in body.graph.initializer}
    return {name: _redraw(numpy_helper.to_array(inits[name]), rng) for name in layer.tensors}


def _redraw(value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    wide = value.astype(np.float64)
    return rng.normal(wide.mean(), wide.std(), value.shape).astype(value.dtype)


def substituted(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers named in ``values`` hold those values."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
    return out


@dataclass(frozen=True)
class Randomized:
    """A model at one stage: the model, the body values it changed, and whether its
    derivatives come from a substituted gradient graph (else: finite differences), and why not."""

    model: TextModel
    values: dict[str, np.ndarray]
    graph: bool
    reason: str | None = None


class Cascade:
    """The randomization stages of one model: its layers and their draws (seeded), and the
    models of each stage, each with its gradient graph where one can be had."""

    def __init__(self, model: TextModel, seed: int = 0) -> None:
        if model.body is None:
            raise UsageError("the model keeps no ONNX graph to randomize")
        self.model, self.seed = model, seed
        self.layers = weight_layers(model.body)
        self.with_table = model.features is None
        self._graph: onnx.ModelProto | None = None
        self._graph_reason: str | None = None
        self._graph_read = False

    @property
    def count(self) -> int:
        """The number of stages after stage 0."""
        return len(self.layers) + int(self.with_table)

    def describe(self, stage: int) -> tuple[str, tuple[str, ...]]:
        """What stage ``stage`` (1..count) re-draws on top of the one before."""
        if stage <= len(self.layers):
            layer = self.layers[stage - 1]
            return layer.name, layer.tensors
        return TABLE, ()

    def values(self, stage: int) -> dict[str, np.ndarray]:
        """The body tensors re-drawn by stage ``stage``."""
        assert self.model.body is not None
        out: dict[str, np.ndarray] = {}
        for k, layer in enumerate(self.layers[:stage]):
            out.update(redrawn(self.model.body, layer, np.random.default_rng([self.seed, k])))
        return out

    def at(self, stage: int, graph: bool = True) -> Randomized:
        """The model at stage ``stage`` (0: the model itself), with its gradient graph where
        ``graph`` asks for one and one can be had."""
        if not 0 <= stage <= self.count:
            raise UsageError(f"stage {stage} is out of range: the model has stages 0 to {self.count}")
        if stage == 0:
            return Randomized(self.model, {}, True)
        values = self.values(stage)
        assert self.model.body is not None
        table = (_redraw(self.model.table, np.random.default_rng([self.seed, len(self.layers)]))
                 if stage > len(self.layers) else None)
        model = self.model.with_weights(substituted(self.model.body, values), table)
        proto = self._gradient_proto() if graph else None
        if proto is None:
            return Randomized(model, values, False, self._graph_reason if graph else "no gradient graph asked for")
        try:
            session = GradientSession.create(substituted(proto, values).SerializeToString(), model)
            same_outputs(model, session, self.seed)
        except ModelError as exc:
            return Randomized(model, values, False, f"the substituted gradient graph failed its check: {exc}")
        model.runtime.keep("gradient", session)
        return Randomized(model, values, True)

    def _gradient_proto(self) -> onnx.ModelProto | None:
        """The original model's gradient graph as an ONNX proto (None, with the reason kept,
        when the model has none)."""
        if not self._graph_read:
            self._graph_read = True
            try:
                self._graph = _read_gradient_proto(self.model)
            except ModelError as exc:
                self._graph_reason = f"the model has no gradient graph: {exc}"
        return self._graph


def same_outputs(model: TextModel, graph: GradientSession, seed: int = 0) -> None:
    """ModelError unless the gradient graph's copy of the model output equals the model's on a
    random token sequence: a graph that still held an old value of a re-drawn tensor (or a
    copy of one under another name) would differ. Its backward half reads the forward half's
    tensors by name, so the substitution is exact there too. (Checking against finite
    differences, as a new graph is checked, refuses randomized ReLU / max-pool models: their
    kinks sit everywhere.)"""
    rng = np.random.default_rng(seed)
    length = model.fixed_length or min(6, model.max_length or 6)
    rows = model.fixed_batch or 1
    ids = rng.integers(0, model.table.shape[0], length) if model.features is None else np.zeros(length, np.int64)
    x = (model.embed(ids) if model.features is None else
         rng.uniform(0.0, 1.0, (length, 1)).astype(np.float32))
    points = np.repeat(x[None], rows, axis=0)
    types = np.zeros(length, np.int64)
    expected = model.forward(points, ids, types)
    got = graph.model_output(model, points, ids, types, expected.shape[1])
    scale = float(np.max(np.abs(expected))) + 1e-30
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        raise ModelError(f"its output differs from the randomized model's by up to "
                         f"{float(np.max(np.abs(got - expected))):.3g}")


def _read_gradient_proto(model: TextModel) -> onnx.ModelProto:
    """The graph gradient_session(model) runs: the folder's, the cache's, or (where the cache
    could not be written) built again."""
    gradient_session(model)  # shipped, cached or built and verified, or ModelError
    if model.config.gradient_model:
        return files.read_onnx(files.gradient_model_path(model.folder, model.config.gradient_model))
    assert model.body is not None
    path = cache_dir() / f"grad-{cache_key(model.body, model.output)[:32]}.onnx"
    if path.is_file():
        return files.read_onnx(path)
    return build_gradient(model)


def sanity(model: TextModel, texts: Iterable[str], methods: Sequence[ExplainConfig | str],
           stages: int | Sequence[int] | None = None, seed: int = 0, backends: bool = True,
           agreement_texts: int | None = AGREEMENT_TEXTS, window: int = 64) -> Sanity:
    """Run the sanity checks (see the module docstring) of ``methods`` (configs or method
    names) on ``texts``. ``stages``: which randomization stages (None: all; an int k: the
    first k; or a list of stage numbers). ``backends``: also compare graph and finite
    differences (methods with LRP rules have no finite-difference twin and are left out), on
    the first ``agreement_texts`` texts (None: all; finite differences of a
    full gradient, for saliency and SmoothGrad, cost 2 L D forward passes per point).
    UsageError for bad settings; a text that fails is counted, not raised.

    A per-token model's items are its targets (:mod:`blackbox_sal.targets.per_token`): each
    predicted entity of each text, or the position the config's ``at`` names, found once on
    the original model (with the first method's config) and explained at every stage for the
    same positions and labels."""
    configs = method_configs(methods)
    if any(c is None for c in configs):
        raise UsageError("the sanity checks compare explanations: 'random' has none")
    cfgs = [c for c in configs if c is not None]
    items: list[str] | list[TextTarget] = list(texts)
    found_notes: list[str] = []
    if model.task == "per-token":
        items, found_notes = per_token_items(model, list(texts), cfgs[0], window)
    names = row_names(cfgs)
    cascade = Cascade(model, seed)
    chosen = _stages(stages, cascade.count)
    if agreement_texts is not None and (isinstance(agreement_texts, bool) or not isinstance(agreement_texts, int)
                                        or agreement_texts < 1):
        raise UsageError(f"agreement_texts must be an integer >= 1 or None, got {agreement_texts!r}")
    derivatives = any(METHODS[c.method].needs_derivatives and c.backend != "fd" for c in cfgs)
    by_fd: dict[str, list[int]] = {}

    original = _explain_all(model, items, cfgs, [None] * len(cfgs), window)
    failures = Counter((names[m], str(e)) for m, per in enumerate(original) for e in per if isinstance(e, SalError))
    result_stages = []
    for stage in chosen:
        randomized = cascade.at(stage, graph=derivatives)
        stage_cfgs = cfgs
        if not randomized.graph:
            stage_cfgs = [replace(c, backend="fd") if METHODS[c.method].needs_derivatives else c for c in cfgs]
            if derivatives:
                by_fd.setdefault(str(randomized.reason), []).append(stage)
        again = _explain_all(randomized.model, items, stage_cfgs, original, window)
        what, tensors = cascade.describe(stage)
        result_stages.append(Stage(stage, what, tensors, tuple(
            _compare_stage(name, before, after) for name, before, after in zip(names, original, again, strict=True))))

    backend_rows = (_backends(model, items[:agreement_texts] if agreement_texts is not None else items, cfgs, names,
                              original, window) if backends else ())
    pairs = []
    for i in range(len(cfgs)):
        for j in range(i + 1, len(cfgs)):
            signed, absolute = [], []
            for a, b in zip(original[i], original[j], strict=True):
                if isinstance(a, Explanation) and isinstance(b, Explanation):
                    x, y = _ordinary(a), _ordinary(b)
                    signed.append(spearman(x, y) if x.shape == y.shape else None)
                    absolute.append(spearman(np.abs(x), np.abs(y)) if x.shape == y.shape else None)
            s, n = mean_defined(signed)
            pairs.append(MethodAgreement(names[i], names[j], s, mean_defined(absolute)[0], n))
    notes = [f"stage{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: derivatives by finite differences "
             f"({reason})" for reason, ks in by_fd.items()]
    if derivatives and sum(len(ks) for ks in by_fd.values()) < len(chosen):
        notes.insert(0, "randomized stages: the model's gradient graph with the re-drawn values substituted (its "
                        "output checked against the randomized model's)")
    return Sanity(model.name, len(items), seed, tuple(names), cascade.layers, tuple(result_stages),
                  tuple(backend_rows), tuple(pairs),
                  tuple((m, r, c) for (m, r), c in sorted(failures.items())), tuple(found_notes + notes),
                  "targets" if model.task == "per-token" else "texts")


def _stages(stages: int | Sequence[int] | None, count: int) -> list[int]:
    if stages is None:
        return list(range(1, count + 1))
    if isinstance(stages, bool):
        raise UsageError(f"stages: a number of stages or a list of stage numbers, not {stages!r}")
    if isinstance(stages, int):
        if not 0 <= stages <= count:
            raise UsageError(f"stages must be 0 to {count} (the model's randomization stages), got {stages}")
        return list(range(1, stages + 1))
    chosen = sorted({int(s) for s in stages})
    bad = [s for s in chosen if not 1 <= s <= count]
    if bad:
        raise UsageError(f"stages {bad} are out of range: the model has stages 1 to {count}")
    return chosen


def _explain_all(model: TextModel, texts: Sequence[str | TextTarget], cfgs: list[ExplainConfig],
                 original: Sequence[Any], window: int) -> list[list[Explanation | SalError]]:
    """Every method on every text, all driven together; with ``original`` (per method, per
    text) each text is explained for the class it was, and only where it was explained (a
    per-token target always for its own positions and labels)."""
    jobs: list[tuple[int, int]] = []
    works = []
    for m, cfg in enumerate(cfgs):
        for k, text in enumerate(texts):
            before = original[m][k] if original[m] is not None else None
            if isinstance(before, SalError):
                continue
            jobs.append((m, k))
            if isinstance(text, TextTarget):
                works.append(target_explanation(model, text, cfg))
                continue
            target = before.target.index if isinstance(before, Explanation) else cfg.target
            works.append(text_explanation(model, text, replace(cfg, target=target)))
    out: list[list[Explanation | SalError]] = [[UsageError("not explained")] * len(texts) for _ in cfgs]
    for (m, k), done in zip(jobs, drive_many(works, runner(model, cfgs[0]), window), strict=True):
        out[m][k] = done
    return out


def _ordinary(e: Explanation) -> np.ndarray:
    return np.array([t.score for t in e.tokens if not t.special], np.float64)


def _compare_stage(name: str, before: list[Explanation | SalError], after: list[Explanation | SalError]) -> StageMethod:
    signed, absolute = [], []
    failed = 0
    used = set()
    for a, b in zip(before, after, strict=True):
        if not isinstance(a, Explanation):
            continue
        if not isinstance(b, Explanation):
            failed += 1
            continue
        used.add(b.backend)
        x, y = _ordinary(a), _ordinary(b)
        signed.append(spearman(x, y) if x.shape == y.shape else None)
        absolute.append(spearman(np.abs(x), np.abs(y)) if x.shape == y.shape else None)
    s, n = mean_defined(signed)
    return StageMethod(name, s, mean_defined(absolute)[0], n, failed, ",".join(sorted(used)) or None)


def _backends(model: TextModel, texts: Sequence[str | TextTarget], cfgs: list[ExplainConfig], names: list[str],
              original: list[list[Explanation | SalError]], window: int) -> list[BackendAgreement]:
    rows = []
    for name, cfg, per in zip(names, cfgs, original, strict=True):
        spec = METHODS[cfg.method]
        if not spec.needs_derivatives or spec.rules != "gradient":  # (LRP's rules exist on a graph only)
            continue
        first = per[:len(texts)]
        used = {e.backend for e in first if isinstance(e, Explanation)}
        if not used:
            rows.append(BackendAgreement(name, None, None, 0, "no text was explained"))
            continue
        if used != {"graph"} and used != {"fd"}:
            rows.append(BackendAgreement(name, None, None, 0, f"backends {sorted(used)}"))
            continue
        other = "fd" if used == {"graph"} else "graph"
        again = _explain_all(model, texts, [replace(cfg, backend=other)], [first], window)[0]
        correlations: list[float | None] = []
        worst: float | None = None
        reasons = Counter(str(e) for e in again if isinstance(e, SalError) and not str(e) == "not explained")
        for a, b in zip(first, again, strict=True):
            if not (isinstance(a, Explanation) and isinstance(b, Explanation)):
                continue
            graph, fd = (_ordinary(a), _ordinary(b)) if other == "fd" else (_ordinary(b), _ordinary(a))
            correlations.append(spearman(graph, fd))
            top = float(np.max(np.abs(graph))) if graph.size else 0.0
            if top > 0 and np.isfinite(fd).all():
                rel = float(np.max(np.abs(graph - fd))) / top
                worst = rel if worst is None else max(worst, rel)
        s, n = mean_defined(correlations)
        reason = None if not reasons else "; ".join(f"{c} x {r}" for r, c in reasons.most_common())
        rows.append(BackendAgreement(name, s, worst, n, reason))
    return rows


# ---------------------------------------------------------------------------------------------
# rendering


def sanity_table(result: Sanity) -> str:
    """The checks as plain-text tables: the cascade (a column per method), the backends, the
    methods against each other."""
    names = list(result.methods)
    out = [f"sanity checks of {result.model} on {result.texts} {result.unit} (seed {result.seed})", "",
           "cascading randomization (output layer first): mean Spearman of the token scores with the original "
           "model's, of |scores| in parentheses"]
    cells: list[list[str]] = [["stage", "re-drawn", *names], ["0", "(the model)", *(["1.000 (1.000)"] * len(names))]]
    for stage in result.stages:
        cells.append([str(stage.stage), _short(stage.randomized),
                      *(f"{fmt_number(m.spearman, 3)} ({fmt_number(m.spearman_abs, 3)})" for m in stage.methods)])
    out += _grid(cells)
    if result.layers:
        out += ["", "layers, output first: " + "; ".join(
            f"{k + 1}: {layer.name} ({layer.parameters:,})" for k, layer in enumerate(result.layers))]
    if result.backends:
        out += ["", "backend agreement on the original model (gradient graph against finite differences)"]
        rows = [["method", "Spearman", "max relative difference", "texts"]]
        rows += [[b.name, fmt_number(b.spearman, 4), fmt_number(b.max_relative_difference, 3),
                  str(b.texts) + (f" ({b.reason})" if b.reason else "")] for b in result.backends]
        out += _grid(rows)
    if result.agreement:
        out += ["", "method agreement on the original model: mean Spearman of the token scores / of |scores|"]
        table = {(a.first, a.second): a for a in result.agreement}
        rows = [["", *names[1:]]]
        for i, first in enumerate(names[:-1]):
            row = [first]
            for j, second in enumerate(names[1:], start=1):
                a = table.get((first, second))
                row.append("" if j <= i or a is None else
                           f"{fmt_number(a.spearman, 3)} / {fmt_number(a.spearman_abs, 3)}")
            rows.append(row)
        out += _grid(rows)
    if result.failures:
        out += ["", "failed texts (left out):"] + [f"  {m}: {c} x {r}" for m, r, c in result.failures]
    failed = [(s.stage, m.name, m.failed) for s in result.stages for m in s.methods if m.failed]
    if failed:
        out += [f"  stage {s}, {name}: {n} failed" for s, name, n in failed]
    if result.notes:
        out += ["", *(f"note: {n}" for n in result.notes)]
    return "\n".join(out).rstrip()


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def sanity_dict(result: Sanity) -> dict[str, Any]:
    """The result as JSON-ready values (numbers that are not finite, and missing ones, are None)."""
    return {
        "model": result.model, "texts": result.texts, "unit": result.unit, "seed": result.seed,
        "methods": list(result.methods),
        "layers": [{"node": layer.node, "op": layer.op, "position": layer.position, "tensors": list(layer.tensors),
                    "parameters": layer.parameters} for layer in result.layers],
        "stages": [{"stage": s.stage, "randomized": s.randomized, "tensors": list(s.tensors), "methods": [
            {"name": m.name, "spearman": json_float(m.spearman), "spearman_abs": json_float(m.spearman_abs),
             "texts": m.texts, "failed": m.failed, "backend": m.backend} for m in s.methods]} for s in result.stages],
        "backends": [{"name": b.name, "spearman": json_float(b.spearman),
                      "max_relative_difference": json_float(b.max_relative_difference), "texts": b.texts,
                      "reason": b.reason} for b in result.backends],
        "agreement": [{"first": a.first, "second": a.second, "spearman": json_float(a.spearman),
                       "spearman_abs": json_float(a.spearman_abs), "texts": a.texts} for a in result.agreement],
        "failures": [{"method": m, "reason": r, "count": c} for m, r, c in result.failures],
        "notes": list(result.notes),
    }


def _layer_label(randomized: str, width: int = 16) -> str:
    """A stage's tick label: the re-drawn layer's name without the op and the per-tensor
    suffixes ("Gemm head.weight, head.bias" -> "head"), cut to ``width`` from the left (the
    end of a dotted name is the specific part)."""
    words = randomized.split(" ", 1)
    names = words[1] if len(words) == 2 and words[0][:1].isupper() and "." not in words[0] else randomized
    layers = dict.fromkeys(n.strip().removesuffix(".weight").removesuffix(".bias") for n in names.split(","))
    label = ", ".join(layers)
    return label if len(label) <= width else "..." + label[-(width - 3):]


def sanity_plot(result: Sanity, path: str | Path) -> Path:
    """Draw each method's mean Spearman against the stage (0: the model), to ``path``. Needs
    matplotlib (the ``plot`` extra). Each stage is labelled with its number and its layer's
    short name (the table names every tensor); methods take Okabe and Ito's colours."""
    from blackbox_sal.evaluation.faithfulness import figure_class, save_figure
    from blackbox_sal.render import palette

    fig = figure_class()(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    xs = [0, *(s.stage for s in result.stages)]
    markers = "osD^v<>p"
    for k, name in enumerate(result.methods):
        ys = [1.0, *(np.nan if s.methods[k].spearman is None else s.methods[k].spearman for s in result.stages)]
        ax.plot(xs, ys, marker=markers[k % len(markers)], label=name,
                color=palette.CATEGORICAL[k % len(palette.CATEGORICAL)])
    ax.set_xticks(xs, ["0\nthe model", *(f"{s.stage}\n{_layer_label(s.randomized)}" for s in result.stages)],
                  fontsize="small")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylim(min(-0.25, ax.get_ylim()[0]), 1.05)
    ax.set_xlabel("stage: layers re-drawn so far, cumulatively from the output (the table names every tensor)")
    ax.set_ylabel("mean Spearman with the original scores")
    ax.set_title(f"{result.model}: cascading randomization, output layer first ({result.texts} {result.unit})\n"
                 "a method that explains the model falls toward 0", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="method", title_fontsize="small")
    return save_figure(fig, path)
