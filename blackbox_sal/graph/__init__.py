"""ONNX surgery: pure functions from a model to new models (no sessions, no files)."""

from blackbox_sal.graph.split import EmbeddingSplit, split_embedding

__all__ = ["EmbeddingSplit", "split_embedding"]
