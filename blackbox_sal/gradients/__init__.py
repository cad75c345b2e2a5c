"""Gradient backends: finite differences, the gradient graph, and the registry
(:mod:`blackbox_sal.gradients.backend`)."""
