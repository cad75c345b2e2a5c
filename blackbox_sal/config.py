"""The one configuration object shared by the Python API and the CLI.

Registries (methods, backends, baselines, reductions, quadratures, scores) are checked in
:meth:`ExplainConfig.validated`, so a bad name fails before any model work, with the list of
choices and the closest match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from blackbox_sal.errors import UsageError, unknown_choice
from blackbox_sal.text.tokenization import MAX_CHARS

#: what to do with a text over the model's token limit
LONG = ("error", "window")
#: finite-difference schemes (blackbox_sal.gradients.finite_differences.SCHEMES)
FD_SCHEMES = ("central", "forward")
#: ``steps="auto"``: integrated gradients add nested nodes until they converge
AUTO = "auto"


@dataclass(frozen=True)
class ExplainConfig:
    """What to compute and how. Defaults are the CLI's defaults.

    method: saliency | grad-x-input | ig | smoothgrad | occlusion.
    backend: auto | fd | graph.
    target: a label name or class index to explain; None = the predicted class.
    score: logit (raw output) | probability | log-probability.
    steps, quadrature: integrated-gradients nodes and rule (gauss-legendre, riemann-left,
        riemann-right, riemann-middle, trapezoid, clenshaw-curtis). steps="auto": nested
        Clenshaw-Curtis rules of 5, 9, 17, ... 257 nodes until the estimated error is at most
        ``tolerance`` times the attributions' total size (sum of |score|).
    tolerance: the relative error at which steps="auto" stops (default 1%).
    baseline: pad | zero | unk | mask | any single vocabulary token (IG and occlusion).
    reduce: per-token reduction (l2, l1, sum, mean, max); None = the method's own default
        (l2 for saliency and smoothgrad, sum for grad-x-input and ig).
    words: also merge token scores to words.
    batch_size: rows per onnxruntime run (bounds memory).
    fd_step: finite-difference step relative to each token embedding's norm; None = 1e-2, or
        the wider quantized-model step for int8 models (see finite_differences).
    richardson: Richardson extrapolation (4 runs per derivative, O(h^4)).
    fd_scheme: central (default, O(h^2)) or forward (one-sided, O(h), about half the runs).
    samples, noise, seed: SmoothGrad's sample count, noise std relative to each token's
        embedding RMS, and random seed.
    max_chars: longest accepted text. progress: progress bars (None = when stderr is a TTY).
    long: what to do with a text over the model's token limit: error (exit 2), or window
        (explain overlapping windows and stitch them; classifiers only).
    window_overlap: tokens two consecutive windows share (None = a quarter of the limit).
    """

    method: str = "ig"
    backend: str = "auto"
    target: str | int | None = None
    score: str = "logit"
    steps: int | Literal["auto"] = 50
    tolerance: float = 0.01
    quadrature: str = "gauss-legendre"
    baseline: str = "pad"
    reduce: str | None = None
    words: bool = False
    batch_size: int = 64
    fd_step: float | None = None
    richardson: bool = False
    fd_scheme: str = "central"
    samples: int = 10
    noise: float = 0.1
    seed: int = 0
    max_chars: int = MAX_CHARS
    long: str = "error"
    window_overlap: int | None = None
    progress: bool | None = None

    def validated(self) -> ExplainConfig:
        """Self, after checking every name and number; UsageError (exit 2) otherwise."""
        from blackbox_sal.gradients import BACKENDS
        from blackbox_sal.methods import METHODS
        from blackbox_sal.methods.quadrature import QUADRATURES
        from blackbox_sal.model.objective import SCORES
        from blackbox_sal.reductions import REDUCTIONS

        for kind, name, registry in (
            ("method", self.method, METHODS), ("backend", self.backend, BACKENDS),
            ("score", self.score, SCORES), ("quadrature", self.quadrature, QUADRATURES),
        ):
            if name not in registry:
                raise unknown_choice(kind, name, registry)
        if self.reduce is not None and self.reduce not in REDUCTIONS:
            raise unknown_choice("reduction", self.reduce, REDUCTIONS)
        for name, value, low in (("batch_size", self.batch_size, 1), ("samples", self.samples, 1),
                                 ("max_chars", self.max_chars, 1)):
            if not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.steps == AUTO:
            if self.quadrature not in ("gauss-legendre", "clenshaw-curtis"):
                raise UsageError(f"steps 'auto' adds nested Clenshaw-Curtis nodes; it does not combine "
                                 f"with the {self.quadrature} rule (give a number of steps instead)")
        elif isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be an integer >= 1 or 'auto', got {self.steps!r}")
        elif self.quadrature in ("trapezoid", "clenshaw-curtis") and self.steps < 2:
            raise UsageError(f"the {self.quadrature} rule needs steps >= 2")
        if not 0 < self.tolerance < 1:
            raise UsageError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
        if self.fd_step is not None and not 0 < self.fd_step < 1:
            raise UsageError(f"fd_step must be in (0, 1), got {self.fd_step!r}")
        if self.fd_scheme not in FD_SCHEMES:
            raise unknown_choice("finite-difference scheme", self.fd_scheme, FD_SCHEMES)
        if self.fd_scheme == "forward" and self.richardson:
            raise UsageError("--richardson extrapolates central differences: it does not combine with "
                             "--fd-scheme forward")
        if self.long not in LONG:
            raise unknown_choice("long-text handling", self.long, LONG)
        if self.window_overlap is not None and (not isinstance(self.window_overlap, int) or self.window_overlap < 0):
            raise UsageError(f"window_overlap must be an integer >= 0, got {self.window_overlap!r}")
        if not self.noise >= 0:
            raise UsageError(f"noise must be >= 0, got {self.noise!r}")
        if not self.baseline or not self.baseline.strip():
            raise UsageError("baseline must be pad, zero, unk, mask or a token")
        return self
