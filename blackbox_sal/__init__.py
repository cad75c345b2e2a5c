"""blackbox-sal: explain predictions of ONNX text models, no training framework needed.

    >>> import blackbox_sal as bs
    >>> model = bs.load_model(bs.default_model_path())
    >>> result = bs.explain(model, "An absolute masterpiece.", bs.ExplainConfig(method="ig"))
    >>> print(bs.render_terminal(result))

Attributions are taken with respect to the token embeddings, from an exported gradient graph
(exact, verified, cached) or finite differences (any model), and reduced to one score per token.

Importing the package is cheap: each public name is imported from its module on first use
(PEP 562), so ``import blackbox_sal`` alone loads neither onnx nor onnxruntime.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> the module that defines it
_WHERE = {
    "ExplainConfig": "blackbox_sal.vocabulary.config",
    "SalError": "blackbox_sal.vocabulary.errors",
    "UsageError": "blackbox_sal.vocabulary.errors",
    "InputError": "blackbox_sal.vocabulary.errors",
    "ModelError": "blackbox_sal.vocabulary.errors",
    "UnavailableError": "blackbox_sal.vocabulary.errors",
    "explain": "blackbox_sal.api.explaining",
    "attribute": "blackbox_sal.api.arrays",
    "Attributions": "blackbox_sal.api.arrays",
    "explain_many": "blackbox_sal.api.explaining",
    "explain_generation": "blackbox_sal.api.tasks",
    "explain_similarity": "blackbox_sal.api.tasks",
    "explain_choices": "blackbox_sal.api.tasks",
    "explain_answer": "blackbox_sal.api.spans",
    "explain_tokens": "blackbox_sal.api.per_token",
    "export_gradient": "blackbox_sal.gradient_graph.store",
    "prepare": "blackbox_sal.gradient_graph.store",
    "default_model_path": "blackbox_sal.model.files",
    "load_model": "blackbox_sal.model.loading",
    "load_encoder_decoder": "blackbox_sal.model.encoder_decoder",
    "explain_seq2seq": "blackbox_sal.seq2seq.explaining",
    "GenerationExplanation": "blackbox_sal.vocabulary.result",
    "TextModel": "blackbox_sal.model.text_model",
    "render_terminal": "blackbox_sal.render.terminal",
    "render_json": "blackbox_sal.render.json",
    "render_html": "blackbox_sal.render.html",
    "Explanation": "blackbox_sal.vocabulary.result",
    "Provenance": "blackbox_sal.vocabulary.result",
    "Label": "blackbox_sal.vocabulary.result",
    "Prediction": "blackbox_sal.vocabulary.result",
    "Window": "blackbox_sal.vocabulary.result",
    "Generation": "blackbox_sal.vocabulary.result",
    "Similarity": "blackbox_sal.vocabulary.result",
    "Choices": "blackbox_sal.vocabulary.result",
    "AnswerSpan": "blackbox_sal.vocabulary.result",
    "TokenTargets": "blackbox_sal.vocabulary.result",
    "Span": "blackbox_sal.text.words",
    "export_torch": "blackbox_sal.gradient_graph.torch_export",
}

#: names of 0.1, kept for one release: each task's renderer is now the one renderer per format
_DEPRECATED = {
    f"render_{task}_{fmt}": f"render_{fmt}"
    for task in ("generation", "similarity", "choices") for fmt in ("terminal", "json")
}

__all__ = [
    "AnswerSpan", "Attributions", "Choices", "ExplainConfig", "Explanation", "Generation", "GenerationExplanation",
    "InputError", "Label", "ModelError", "Prediction", "Provenance", "SalError", "Similarity", "Span", "TextModel",
    "TokenTargets", "UnavailableError", "UsageError", "Window", "__version__", "attribute", "default_model_path",
    "explain", "explain_answer", "explain_choices", "explain_generation", "explain_many", "explain_seq2seq",
    "explain_similarity", "explain_tokens", "export_gradient", "export_torch", "load_encoder_decoder", "load_model",
    "prepare", "render_html", "render_json", "render_terminal",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        warnings.warn(f"blackbox_sal.{name} is deprecated: use {_DEPRECATED[name]}, which renders every result type",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(_DEPRECATED[name])
    raise AttributeError(f"module 'blackbox_sal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from blackbox_sal.api.arrays import Attributions, attribute
    from blackbox_sal.api.explaining import explain, explain_many
    from blackbox_sal.api.per_token import explain_tokens
    from blackbox_sal.api.spans import explain_answer
    from blackbox_sal.api.tasks import explain_choices, explain_generation, explain_similarity
    from blackbox_sal.gradient_graph.store import export_gradient, prepare
    from blackbox_sal.gradient_graph.torch_export import export_torch
    from blackbox_sal.model.encoder_decoder import load_encoder_decoder
    from blackbox_sal.model.files import default_model_path
    from blackbox_sal.model.loading import load_model
    from blackbox_sal.model.text_model import TextModel
    from blackbox_sal.render.html import render_html
    from blackbox_sal.render.json import render_json
    from blackbox_sal.render.terminal import render_terminal
    from blackbox_sal.seq2seq.explaining import explain_seq2seq
    from blackbox_sal.text.words import Span
    from blackbox_sal.vocabulary.config import ExplainConfig
    from blackbox_sal.vocabulary.errors import InputError, ModelError, SalError, UnavailableError, UsageError
    from blackbox_sal.vocabulary.result import (
        AnswerSpan,
        Choices,
        Explanation,
        Generation,
        GenerationExplanation,
        Label,
        Prediction,
        Provenance,
        Similarity,
        TokenTargets,
        Window,
    )
