"""Explain one prediction: text -> tokens -> embeddings -> backend -> method -> Explanation
(long texts, optionally: windows -> one Explanation each -> stitched)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import numpy as np

from blackbox_sal.baselines import make_baseline
from blackbox_sal.config import AUTO, ExplainConfig
from blackbox_sal.errors import InputError, UsageError
from blackbox_sal.gradients import FiniteDifferences, GraphBackend, make_backend, step_scale
from blackbox_sal.methods import METHODS, Problem
from blackbox_sal.model.objective import SCORES, Objective, cosine, resolve_target
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.result import (
    MAX_SCORES,
    TOP,
    Explanation,
    Label,
    Prediction,
    Window,
)
from blackbox_sal.text.tokenization import Tokens, stitch, tokenize, tokenize_windows
from blackbox_sal.text.words import merge_words, token_spans

#: methods that replace tokens by a baseline
USES_BASELINE = frozenset({"ig", "occlusion"})
#: methods that ask the backend for derivatives (the others use forward passes only)
NEEDS_DERIVATIVES = frozenset({"saliency", "grad-x-input", "ig", "smoothgrad"})


def explain(model: TextModel, text: str, config: ExplainConfig | None = None) -> Explanation:
    """Attribute the model's prediction on ``text`` to its tokens (see ExplainConfig).

    A text over the model's token limit is refused, or with ``long="window"`` explained in
    overlapping windows that are stitched back together (:func:`_windows`).
    Raises InputError / UsageError (exit 2) for bad text or settings, ModelError (exit 3)
    when the model cannot be used, UnavailableError (exit 4) for a missing backend.
    """
    cfg = (config or ExplainConfig()).validated()
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    if model.max_length is not None and len(tokens) > model.max_length:
        if cfg.long != "window":
            raise InputError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length} "
                             f"(--long window explains it in overlapping windows)")
        if model.task == "next-token":
            raise UsageError("--long window splits a text for a classifier; a causal LM predicts from the end "
                             f"of its prompt: shorten the prompt to {model.max_length} tokens")
        if model.task != "classification":
            raise UsageError(f"--long window splits a text for a classifier, not a {model.task} model")
        return _windows(model, text, cfg)
    return explain_tokens(model, tokens, cfg)


def explain_tokens(model: TextModel, tokens: Tokens, cfg: ExplainConfig, target: int | None = None,
                   reference: np.ndarray | None = None) -> Explanation:
    """Explain one tokenized text: ``target`` fixes the class (else config.target or the
    prediction); ``reference`` makes the scalar the cosine of the output to that vector."""
    text = tokens.text
    x = model.embed(tokens.ids)
    f = Objective(model, tokens.ids, tokens.type_ids, 0, cfg.score, cfg.batch_size, reference=reference)
    outputs = f.outputs(x[None])  # [1, C]: the prediction, and f(x) for any target
    predicted = int(np.argmax(outputs[0]))
    if reference is not None:
        target = 0
    elif target is None:
        target = resolve_target(cfg.target, model.labels, outputs.shape[1], predicted,
                                model.class_of if model.task == "next-token" else None)
    f = replace(f, target=target, n_classes=outputs.shape[1])  # shares the forward-pass counter
    target_value = (float(cosine(outputs, reference)[0]) if reference is not None else
                    float(SCORES[cfg.score](outputs)[0, target]))
    baseline = make_baseline(cfg.baseline, model.tokenizer, model.table, tokens, x)
    scale = step_scale(x, model.row_norm)
    # occlusion needs values only: finite differences' plain forward passes are all it uses
    backend, backend_notes = make_backend(
        f, scale, cfg if cfg.method in NEEDS_DERIVATIVES else replace(cfg, backend="fd"))
    result = METHODS[cfg.method](Problem(backend, x, baseline, tokens.special, target_value,
                                         scale, cfg))

    settings: dict[str, object] = {"score": cfg.score, "batch_size": cfg.batch_size,
                                   "forward_passes": int(f.calls[0]), "device": model.device}
    if cfg.method in USES_BASELINE:
        settings["baseline"] = cfg.baseline
    if cfg.method == "ig":
        settings.update(steps=result.nodes, quadrature=cfg.quadrature)
        if cfg.steps == AUTO:
            settings.update(quadrature="clenshaw-curtis", steps_auto=True, tolerance=cfg.tolerance)
    if cfg.method == "smoothgrad":
        settings.update(samples=cfg.samples, noise=cfg.noise, seed=cfg.seed)
    if backend.name == "fd" and cfg.method in NEEDS_DERIVATIVES:
        assert isinstance(backend, FiniteDifferences)
        settings.update(fd_step=backend.rel_step, richardson=cfg.richardson, fd_scheme=cfg.fd_scheme)
    if isinstance(backend, GraphBackend):
        settings["gradient_passes"] = backend.gradient_passes

    if reference is not None:
        settings["score"] = "cosine"
    return Explanation(
        text=text, model=model.name, method=cfg.method,
        backend=backend.name if cfg.method in NEEDS_DERIVATIVES else "none",
        reduce=result.reduce,
        target=Label(target, "cosine") if reference is not None else Label(target, model.label(target)),
        prediction=Prediction(0, "cosine", (), ()) if reference is not None else _prediction(model, outputs[0]),
        target_value=target_value, tokens=token_spans(tokens, result.scores),
        words=merge_words(tokens, result.scores) if cfg.words else None,
        baseline_value=result.baseline_value, convergence_delta=result.delta,
        settings=MappingProxyType(settings), notes=_model_notes(model) + backend_notes + result.notes,
        task="similarity" if reference is not None else model.task,
    )


def _model_notes(model: TextModel) -> tuple[str, ...]:
    if model.weight_only:
        return (f"the model's low-bit weights ({', '.join(model.weight_only)}) were dequantized into float "
                f"MatMuls: its activations are float, so that is the same function (checked on a probe sentence) "
                f"and its gradients are exact",)
    if not model.twin_of:
        return ()
    return (f"explained the float twin of a quantized model ({', '.join(model.twin_of)} replaced): its int8 weights "
            f"exactly, its activations in float, so gradients are exact for the deployed weights; the int8 model's "
            f"own outputs differ by its activation rounding",)


def _prediction(model: TextModel, outputs: np.ndarray) -> Prediction:
    predicted = int(np.argmax(outputs))
    top = np.argsort(-outputs, kind="stable")[:TOP]
    return Prediction(predicted, model.label(predicted),
                      tuple(float(v) for v in outputs) if outputs.shape[0] <= MAX_SCORES else (),
                      tuple(Label(int(i), model.label(int(i)), float(outputs[i])) for i in top))


def _windows(model: TextModel, text: str, cfg: ExplainConfig) -> Explanation:
    """Explain a long text window by window (overlapping, each within the model's limit) and
    stitch: the prediction is the mean of the windows' outputs, the target is resolved on it
    and explained in every window, and a token's score is the mean over the windows that
    hold it. Windows are explained one after the other, so memory stays bounded."""
    assert model.max_length is not None
    overlap = cfg.window_overlap if cfg.window_overlap is not None else model.max_length // 4
    windows = tokenize_windows(model.tokenizer, text, model.max_length, overlap, cfg.max_chars)
    outputs = np.mean([model.run(model.embed(w.ids)[None], w.ids, w.type_ids, 1)[0] for w in windows], axis=0)
    prediction = _prediction(model, outputs)
    target = resolve_target(cfg.target, model.labels, outputs.shape[0], prediction.index)
    parts = [explain_tokens(model, w, cfg, target) for w in windows]
    total: dict[tuple[int, int], list[float]] = {}
    for part in parts:
        for span in part.tokens:
            if not span.special:
                total.setdefault((span.start, span.end), []).append(span.score)
    stitched = stitch(windows)
    scores = np.array([0.0 if s else float(np.mean(total[o])) for o, s in zip(stitched.offsets, stitched.special,
                                                                              strict=True)])
    notes: tuple[str, ...] = (
        f"the text has {len(stitched)} tokens, more than the model's {model.max_length}: explained in "
        f"{len(windows)} windows overlapping by {overlap} tokens; a token's score is the mean over the windows "
        f"that hold it, the prediction the mean of their outputs",)
    for part in parts:
        notes += tuple(n for n in part.notes if n not in notes)
    settings = dict(parts[0].settings)
    settings.update(forward_passes=sum(int(p.settings["forward_passes"]) for p in parts) + len(windows),
                    windows=len(windows), window_overlap=overlap)
    if "gradient_passes" in settings:
        settings["gradient_passes"] = sum(int(p.settings["gradient_passes"]) for p in parts)
    if settings.get("steps_auto"):  # each window settles on its own count: the most any needed
        settings["steps"] = max(int(p.settings["steps"]) for p in parts)
    return replace(
        parts[0], text=text, prediction=prediction, target_value=float(np.mean([p.target_value for p in parts])),
        tokens=token_spans(stitched, scores), words=merge_words(stitched, scores) if cfg.words else None,
        baseline_value=None, convergence_delta=None, settings=MappingProxyType(settings), notes=notes,
        windows=tuple(Window(w.offsets[int(np.flatnonzero(~w.special)[0])][0],
                             w.offsets[int(np.flatnonzero(~w.special)[-1])][1], p.target_value,
                             p.baseline_value, p.convergence_delta) for w, p in zip(windows, parts, strict=True)))
