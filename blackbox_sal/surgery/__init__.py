"""ONNX surgery: pure functions from a model to new models (no sessions, no files)."""
