"""Explain one prediction: text -> tokens -> embeddings -> backend -> method -> Explanation."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import numpy as np

from blackbox_sal.baselines import make_baseline
from blackbox_sal.config import ExplainConfig
from blackbox_sal.gradients import FiniteDifferences, GraphBackend, make_backend, step_scale
from blackbox_sal.methods import METHODS, Problem
from blackbox_sal.model.objective import SCORES, Objective, resolve_target
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.result import MAX_SCORES, TOP, Explanation, Label, Prediction
from blackbox_sal.text.tokenization import tokenize
from blackbox_sal.text.words import merge_words, token_spans

#: methods that replace tokens by a baseline
USES_BASELINE = frozenset({"ig", "occlusion"})
#: methods that ask the backend for derivatives (the others use forward passes only)
NEEDS_DERIVATIVES = frozenset({"saliency", "grad-x-input", "ig", "smoothgrad"})


def explain(model: TextModel, text: str, config: ExplainConfig | None = None) -> Explanation:
    """Attribute the model's prediction on ``text`` to its tokens (see ExplainConfig).

    Raises InputError / UsageError (exit 2) for bad text or settings, ModelError (exit 3)
    when the model cannot be used, UnavailableError (exit 4) for a missing backend.
    """
    cfg = (config or ExplainConfig()).validated()
    tokens = tokenize(model.tokenizer, text, model.max_length, cfg.max_chars)
    x = model.embed(tokens.ids)
    f = Objective(model, tokens.ids, tokens.type_ids, 0, cfg.score, cfg.batch_size)
    outputs = f.outputs(x[None])  # [1, C]: the prediction, and f(x) for any target
    predicted = int(np.argmax(outputs[0]))
    target = resolve_target(cfg.target, model.labels, outputs.shape[1], predicted,
                            model.class_of if model.task == "next-token" else None)
    f = replace(f, target=target, n_classes=outputs.shape[1])  # shares the forward-pass counter
    target_value = float(SCORES[cfg.score](outputs)[0, target])
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
        settings.update(steps=cfg.steps, quadrature=cfg.quadrature)
    if cfg.method == "smoothgrad":
        settings.update(samples=cfg.samples, noise=cfg.noise, seed=cfg.seed)
    if backend.name == "fd" and cfg.method in NEEDS_DERIVATIVES:
        assert isinstance(backend, FiniteDifferences)
        settings.update(fd_step=backend.rel_step, richardson=cfg.richardson)
    if isinstance(backend, GraphBackend):
        settings["gradient_passes"] = backend.gradient_passes

    label = model.label
    top = np.argsort(-outputs[0], kind="stable")[:TOP]
    return Explanation(
        text=text, model=model.name, method=cfg.method,
        backend=backend.name if cfg.method in NEEDS_DERIVATIVES else "none",
        reduce=result.reduce, target=Label(target, label(target)),
        prediction=Prediction(predicted, label(predicted),
                              tuple(float(v) for v in outputs[0]) if outputs.shape[1] <= MAX_SCORES else (),
                              tuple(Label(int(i), label(int(i)), float(outputs[0, i])) for i in top)),
        target_value=target_value, tokens=token_spans(tokens, result.scores),
        words=merge_words(tokens, result.scores) if cfg.words else None,
        baseline_value=result.baseline_value, convergence_delta=result.delta,
        settings=MappingProxyType(settings), notes=backend_notes + result.notes, task=model.task,
    )
