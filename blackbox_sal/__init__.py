"""blackbox-sal: explain predictions of ONNX text models, no training framework needed.

    >>> import blackbox_sal as bs
    >>> model = bs.load_model(bs.default_model_path())
    >>> result = bs.explain(model, "An absolute masterpiece.", bs.ExplainConfig(method="ig"))
    >>> print(bs.render_terminal(result))

Attributions are taken with respect to the token embeddings, from an exported gradient graph
(exact, verified, cached) or finite differences (any model), and reduced to one score per token.
"""

from blackbox_sal.config import ExplainConfig
from blackbox_sal.errors import InputError, ModelError, SalError, UnavailableError, UsageError
from blackbox_sal.explain import explain
from blackbox_sal.gradients.graph import export_gradient
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.text_model import TextModel, load_model
from blackbox_sal.render import (
    render_choices_json,
    render_choices_terminal,
    render_generation_json,
    render_generation_terminal,
    render_html,
    render_json,
    render_similarity_json,
    render_similarity_terminal,
    render_terminal,
)
from blackbox_sal.result import Choices, Explanation, Generation, Label, Prediction, Similarity, Window
from blackbox_sal.tasks import explain_choices, explain_generation, explain_similarity
from blackbox_sal.text.words import Span
from blackbox_sal.torch_export import export_torch

__version__ = "0.1.0"

__all__ = [
    "Choices",
    "ExplainConfig",
    "Explanation",
    "Generation",
    "InputError",
    "Label",
    "ModelError",
    "Prediction",
    "SalError",
    "Similarity",
    "Span",
    "TextModel",
    "UnavailableError",
    "UsageError",
    "Window",
    "__version__",
    "default_model_path",
    "explain",
    "explain_choices",
    "explain_generation",
    "explain_similarity",
    "export_gradient",
    "export_torch",
    "load_model",
    "render_choices_json",
    "render_choices_terminal",
    "render_generation_json",
    "render_generation_terminal",
    "render_html",
    "render_json",
    "render_similarity_json",
    "render_similarity_terminal",
    "render_terminal",
]
