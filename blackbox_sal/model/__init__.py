"""Loading a model directory, running it on embeddings, and the explained scalar."""

from blackbox_sal.model.objective import SCORES, Objective, resolve_target
from blackbox_sal.model.text_model import TextModel, load_model

__all__ = ["SCORES", "Objective", "TextModel", "load_model", "resolve_target"]
