"""The engine: many pieces of work packed into shared runs give what one at a time gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny

from blackbox_sal import (
    Choices,
    ExplainConfig,
    Generation,
    SalError,
    Similarity,
    explain,
    explain_choices,
    explain_generation,
    explain_many,
    explain_similarity,
    load_model,
)
from blackbox_sal.api.explaining import text_explanation
from blackbox_sal.api.tasks import generation, multiple_choice, similarity
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.engine.runner import Runner
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.vocabulary.errors import InputError, ModelError, UsageError
from blackbox_sal.vocabulary.result import Explanation
from blackbox_sal.vocabulary.runs import Request, Work

D = 6
TABLE = tiny.table(D, seed=3)
W1, B1, W2 = tiny.mlp_weights(D, 7, 3, seed=3)
TEXTS = ["the film was good", "bad", "the plot was great and the film awful", "good good bad",
         "the film", "awful plot and bad film and the good", "great"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    m = tiny.bert_like(TABLE, rng.normal(size=(32, D)).astype(np.float32), rng.normal(size=(2, D)).astype(np.float32),
                       rng.normal(size=(D, 3)).astype(np.float32))
    return tiny.write_model_dir(tmp_path_factory.mktemp("bert"), m, ["x", "y", "z"], with_cls=True)


def scores(e: Explanation | SalError) -> np.ndarray:
    assert isinstance(e, Explanation), e
    return np.array([t.score for t in e.tokens])


@pytest.mark.parametrize("cfg", [
    ExplainConfig(method="ig", steps=12), ExplainConfig(method="ig", steps="auto"),
    ExplainConfig(method="grad-x-input"), ExplainConfig(method="saliency"),
    ExplainConfig(method="smoothgrad", samples=3), ExplainConfig(method="occlusion"),
    ExplainConfig(method="ig", steps=6, backend="fd"), ExplainConfig(method="grad-x-input", backend="fd"),
    ExplainConfig(method="ig", steps=8, reduce="l2", score="probability"),
    ExplainConfig(method="grad-x-input", target="y", score="log-probability"),
], ids=lambda c: f"{c.method}-{c.backend}-{c.reduce}-{c.score}-{c.steps}")
def test_engine_equals_one_at_a_time(bert_dir: Path, cfg: ExplainConfig) -> None:
    model = load_model(bert_dir)
    alone = [explain(model, t, cfg) for t in TEXTS]
    together = list(explain_many(model, TEXTS, replace(cfg, batch_size=16), window=5))
    assert len(together) == len(TEXTS)
    # on the CPU a row's numbers do not depend on the rows run beside it; CUDA's kernels differ
    # with the batch size, and finite differences divide that float32 noise by their step
    # (measured on an H200: up to 2.3e-3 relative, 1.9e-4 absolute)
    rtol, atol = (5e-3, 5e-4) if model.device == "cuda" and cfg.backend == "fd" else (1e-6, 1e-7)
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, Explanation)
        np.testing.assert_allclose(scores(b), scores(a), rtol=rtol, atol=atol)
        assert b.target == a.target and b.target_value == pytest.approx(a.target_value, rel=1e-6)
        assert b.provenance.forward_passes == a.provenance.forward_passes
        assert b.provenance.gradient_passes == a.provenance.gradient_passes


def test_mixed_targets_lengths_and_bad_rows_in_one_job(bert_dir: Path) -> None:
    """Per-text targets, texts of many lengths, and texts that fail: each fails alone, with
    its own error, and the others come out in order, as if explained one by one."""
    model = load_model(bert_dir)
    cfg = ExplainConfig(method="ig", steps=10, batch_size=8)
    rows = [("the film was good", "x"), ("", None), ("bad", "z"), ("good", "nope"), (TEXTS[2], 1)]
    runner = Runner(model, rows=8)
    works = [text_explanation(model, text, replace(cfg, target=target)) for text, target in rows]
    out = list(drive_many(works, runner, window=3))
    assert isinstance(out[1], InputError) and "empty" in str(out[1])
    assert isinstance(out[3], UsageError) and "unknown target label 'nope'" in str(out[3])
    for k in (0, 2, 4):
        text, target = rows[k]
        alone = explain(model, text, replace(cfg, target=target))
        np.testing.assert_allclose(scores(out[k]), scores(alone), rtol=1e-6, atol=1e-7)
        assert isinstance(out[k], Explanation) and out[k].target.index == alone.target.index  # type: ignore[union-attr]


@pytest.mark.parametrize("window", [1, 3, 64])
def test_two_lanes_give_what_one_lane_gives(bert_dir: Path, window: int) -> None:
    """Two lanes (two halves of the window whose rounds alternate, runs on a worker thread
    while this one steps the other half) give every piece what one lane gives, in input
    order, errors included; and the runs do execute on the worker thread."""
    model = load_model(bert_dir)
    cfg = ExplainConfig(method="ig", steps=10, batch_size=8)
    rows = [("the film was good", "x"), ("", None), ("bad", "z"), ("good", "nope"), (TEXTS[2], 1),
            (TEXTS[5], None), (TEXTS[3], "y")]

    def works() -> list[Work[Explanation]]:
        return [text_explanation(model, text, replace(cfg, target=target)) for text, target in rows]

    one = list(drive_many(works(), Runner(model, rows=8), window=window, lanes=1))
    runner = Runner(model, rows=8)
    threads: list[str] = []
    execute = runner.execute

    def spy(requests: Sequence[Request]) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        return execute(requests)

    runner.execute = spy  # type: ignore[method-assign]
    two = list(drive_many(works(), runner, window=window, lanes=2))
    assert len(one) == len(two) == len(rows)
    for a, b in zip(one, two, strict=True):
        assert type(a) is type(b) and (str(a) == str(b) if isinstance(a, SalError) else True)
        if isinstance(a, Explanation):
            np.testing.assert_allclose(scores(b), scores(a), rtol=1e-6, atol=1e-7)
            assert b.target == a.target  # type: ignore[union-attr]
    # a window of one piece has one lane, run here; wider windows run on the worker threads
    assert threads and all(t.startswith("blackbox-sal-runs") == (window > 1) for t in threads)
    with pytest.raises(ValueError, match="lanes must be 1 or 2"):
        next(drive_many(works(), runner, lanes=3))


def test_lanes_run_with_the_callers_run_options(bert_dir: Path) -> None:
    """The worker threads run with the caller's context: run options set by the caller (a
    deadline's terminate flag) reach every run, so a stopped job stops in both lanes."""
    import onnxruntime as ort

    from blackbox_sal.model.session import RUN_OPTIONS

    model = load_model(bert_dir)
    cfg = ExplainConfig(method="ig", steps=10, batch_size=8)
    options = ort.RunOptions()
    options.terminate = True
    token = RUN_OPTIONS.set(options)
    try:
        out = list(drive_many([text_explanation(model, t, cfg) for t in TEXTS], Runner(model, rows=8), lanes=2))
    finally:
        RUN_OPTIONS.reset(token)
    assert all(isinstance(r, ModelError) for r in out), out
    assert all(isinstance(r, Explanation)
               for r in drive_many([text_explanation(model, t, cfg) for t in TEXTS], Runner(model, rows=8), lanes=2))


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_run_that_fails_is_split_to_find_its_piece(bert_dir: Path, lanes: int) -> None:
    """A shared run that fails (here: any run holding the 5-token text's rows) is run again
    piece by piece: that piece ends with the error, the others with their results."""
    model = load_model(bert_dir)
    cfg = ExplainConfig(method="grad-x-input", batch_size=8)
    bad = "good good bad"
    bad_length = len(model.tokenizer.encode(bad).ids)
    runner = Runner(model, rows=8)
    execute = runner.execute

    def failing(requests: Sequence[Request]) -> list[np.ndarray]:
        if any(r.seq is not None and len(r.seq) == bad_length for r in requests):
            raise ModelError("the run failed")
        return execute(requests)

    runner.execute = failing  # type: ignore[method-assign]
    texts = [t for t in TEXTS if len(model.tokenizer.encode(t).ids) != bad_length]
    out = list(drive_many([text_explanation(model, t, cfg) for t in [*texts[:2], bad, *texts[2:]]], runner,
                          window=4, lanes=lanes))
    assert isinstance(out[2], ModelError) and "the run failed" in str(out[2])
    for text, got in zip([*texts[:2], *texts[2:]], out[:2] + out[3:], strict=True):
        np.testing.assert_allclose(scores(got), scores(explain(model, text, cfg)), rtol=1e-6, atol=1e-7)


def test_what_is_not_a_text_is_one_input_error_in_its_place(bert_dir: Path) -> None:
    """Numbers, bytes, lists, None and lone surrogates among the texts: each ends with its own
    InputError and the texts around it are explained (they raised AttributeError or the
    tokenizer's TypeError out of the whole iteration)."""
    model = load_model(bert_dir)
    cfg = ExplainConfig(method="grad-x-input")
    items: list[Any] = ["the film was good", 5, b"bad", ["x"], "good \udc00", None, "bad"]
    out = list(explain_many(model, items, cfg))
    assert [type(o).__name__ for o in out] == ["Explanation", *["InputError"] * 5, "Explanation"]
    assert [str(o) for o in out[1:6]] == [
        "the text must be a string, not int", "the text must be a string, not bytes",
        "the text must be a string, not list", "the text is not valid Unicode (a lone surrogate at character 5)",
        "the text is empty"]
    np.testing.assert_allclose(scores(out[6]), scores(explain(model, "bad", cfg)), rtol=1e-6)


@pytest.mark.parametrize(("values", "message"), [
    ({"direction": (10**400,)}, "direction must be"),  # an int with no float: OverflowError before
    ({"tolerance": "x"}, "tolerance must be a number"), ({"noise": "x"}, "noise must be a number"),
    ({"fd_step": "x"}, "fd_step must be a number"), ({"words": "no"}, "words must be true or false"),
    ({"baseline": "\udc00"}, "baseline is not valid Unicode"),
])
def test_config_values_of_the_wrong_kind_are_usage_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ExplainConfig(**values).validated()


def test_tasks_packed_together_equal_alone(tmp_path: Path) -> None:
    """Generation steps, similarity sides and multiple-choice pairs as engine work."""
    lm = load_model(tiny.write_model_dir(tmp_path / "lm", tiny.causal_lm(TABLE)))
    cfg = ExplainConfig(method="ig", steps=8)
    gens = list(drive_many([generation(lm, p, 2, cfg) for p in ("the film was", "bad plot", "good")], Runner(lm, 64)))
    for prompt, packed in zip(("the film was", "bad plot", "good"), gens, strict=True):
        assert isinstance(packed, Generation)
        alone = explain_generation(lm, prompt, 2, cfg)
        assert [t.index for t in packed.generated] == [t.index for t in alone.generated]
        for a, b in zip(alone.steps, packed.steps, strict=True):
            np.testing.assert_allclose(scores(b), scores(a), rtol=1e-6, atol=1e-7)
    enc = load_model(tiny.write_model_dir(tmp_path / "enc", tiny.tanh_mlp(TABLE, W1, B1, W2)))
    pairs = [("the film was good", "great plot"), ("bad", "awful film and the plot")]
    sims = list(drive_many([similarity(enc, first, second, cfg) for first, second in pairs], Runner(enc, 64)))
    for (first, second), sim in zip(pairs, sims, strict=True):
        assert isinstance(sim, Similarity)
        lone = explain_similarity(enc, first, second, cfg)
        assert sim.cosine == pytest.approx(lone.cosine, rel=1e-9)
        for x, y in zip(lone.texts, sim.texts, strict=True):
            np.testing.assert_allclose(scores(y), scores(x), rtol=1e-6, atol=1e-7)
    cls = replace(cfg, target=0)
    mc = list(drive_many([multiple_choice(enc, "the film was", ["good", "bad"], cls),
                          multiple_choice(enc, "plot", ["great", "awful", "bad"], cls)], Runner(enc, 64)))
    for choice, (text, options) in zip(mc, (("the film was", ["good", "bad"]), ("plot", ["great", "awful", "bad"])),
                                       strict=True):
        assert isinstance(choice, Choices)
        single = explain_choices(enc, text, options, cls)
        assert choice.predicted == single.predicted
        np.testing.assert_allclose(scores(choice.explanation), scores(single.explanation), rtol=1e-6)


def test_runs_respect_the_row_and_token_budget(bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient runs take at most ``tokens`` rows x tokens, forward runs four times that."""
    model = load_model(bert_dir)
    forward: list[int] = []
    gradient: list[int] = []
    original = model.forward

    def counting(embeds: np.ndarray, ids: np.ndarray, types: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        forward.append(embeds.shape[0] * embeds.shape[1])
        return original(embeds, ids, types, mask)

    object.__setattr__(model, "forward", counting)
    path_jvp = GradientSession.path_jvp

    def counting_path(self: GradientSession, model: object, anchors: np.ndarray, deltas: np.ndarray,
                      rows: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        gradient.append(len(rows) * anchors.shape[1])
        return path_jvp(self, model, anchors, deltas, rows, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(GradientSession, "path_jvp", counting_path)
    runner = Runner(model, rows=64, tokens=40)
    for method in ("occlusion", "ig"):
        works = [text_explanation(model, t, ExplainConfig(method=method, steps=20)) for t in TEXTS]
        assert all(isinstance(r, Explanation) for r in drive_many(works, runner))
    assert forward and max(forward) <= 160 and max(forward) > 40
    assert gradient and max(gradient) <= 40


def test_path_form_reduces_on_the_device_as_on_the_host(bert_dir: Path) -> None:
    """On a GPU the per-token derivatives come from the graph's token_jvp output; the same
    graph on the CPU reduced on the host gives the same numbers."""
    model = load_model(bert_dir, device="cpu")
    host = gradient_session(model)
    assert host.path_form and not host.reduce_on_device
    device = GradientSession(host.session, True, True)
    rng = np.random.default_rng(0)
    ids = np.array(tiny.tokenizer(with_cls=True).encode(TEXTS[2]).ids)
    s = len(ids)
    anchors = rng.normal(size=(2, s, D)).astype(np.float32)
    deltas = rng.normal(size=(2, s, D)).astype(np.float32)
    rows = np.array([0, 1, 1, 0, 1])
    alphas = rng.uniform(size=5)
    ids2, types2 = np.tile(ids, (5, 1)), np.zeros((5, s), np.int64)
    weights = rng.normal(size=(5, 3))
    a = host.path_jvp(model, anchors, deltas, rows, alphas, ids2, types2, weights)
    b = device.path_jvp(model, anchors, deltas, rows, alphas, ids2, types2, weights)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # and both equal the full gradient at the path points, dotted with the directions
    points = anchors[rows] + alphas.astype(np.float32)[:, None, None] * deltas[rows]
    grad = host.gradient(model, points, ids2, types2, weights).astype(np.float64)
    np.testing.assert_allclose(a, np.einsum("psd,psd->ps", grad, deltas[rows]), rtol=1e-6, atol=1e-7)
