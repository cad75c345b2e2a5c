"""The one configuration object shared by the Python API, the CLI and the server.

:meth:`ExplainConfig.validated` checks every name against its registry (methods, backends,
scores, reductions: each lists its choices and suggests the closest) and every number against
its documented range, so a bad setting fails before any model work. A method's own
constraints live with the method (:attr:`MethodSpec.check`); every method's are checked,
whichever is chosen, so a setting is valid or not whatever method reads it.

Documented maxima (bad input never runs for minutes or exhausts memory):

==================  ===================================================================
batch_size          1 .. 4,096 rows per onnxruntime run (memory is bounded by it); default 64
                    on the CPU, and on CUDA as many as ``tokens_per_run`` allows
tokens_per_run      1 .. 10,000,000 rows x tokens per gradient run; default 8,192 on the CPU
                    (none when batch_size is given), 16,384 on CUDA (forward-only runs take 4x;
                    many texts on CUDA keep up to two runs in flight: twice the memory)
steps               1 .. 1,024 integration nodes, or "auto" (at most 257)
samples             1 .. 10,000 SmoothGrad samples (run batch_size at a time)
max_chars           1 .. 10,000,000 characters per text (default 100,000)
fd_step, tolerance  in (0, 1);  noise finite and >= 0;  seed 0 .. 2^63 - 1
==================  ===================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from blackbox_sal.errors import UsageError, unknown_choice
from blackbox_sal.gradients.backend import BACKENDS
from blackbox_sal.gradients.finite_differences import SCHEMES
from blackbox_sal.methods import METHODS
from blackbox_sal.reductions import REDUCTIONS
from blackbox_sal.scores import SCORES
from blackbox_sal.text.tokenization import MAX_CHARS

#: what to do with a text over the model's token limit
LONG = ("error", "window")
#: finite-difference schemes (blackbox_sal.gradients.finite_differences.SCHEMES)
FD_SCHEMES = SCHEMES
#: ``steps="auto"``: integrated gradients add nested nodes until they converge
AUTO = "auto"
#: the most rows one onnxruntime run may take
MAX_BATCH_SIZE = 4096
#: the most rows x tokens one gradient run may be given
MAX_TOKENS_PER_RUN = 10_000_000
#: the longest direction vector a projection may be explained along
MAX_DIRECTION = 1_000_000
#: the largest magnitude a direction's value may have: it reaches the model as float32 weights
FLOAT32_MAX = 3.4028234663852886e38
#: the highest character limit a caller may set
MAX_CHARS_LIMIT = 10_000_000


@dataclass(frozen=True)
class ExplainConfig:
    """What to compute and how. Defaults are the CLI's defaults.

    method: saliency | grad-x-input | ig | smoothgrad | occlusion | shapley | kernel-shap |
        permutation | lime.
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
    batch_size: rows per onnxruntime run (bounds memory); None = the device's default (64 on
        the CPU; on CUDA as many as tokens_per_run allows, up to 4,096).
    tokens_per_run: the most rows x tokens per gradient run; None = 8,192 on the CPU (no limit
        when batch_size is given), 16,384 on CUDA (see blackbox_sal.engine.runner). Many texts
        on CUDA keep up to two runs in flight (blackbox_sal.engine.drive): twice the memory.
    fd_step: finite-difference step relative to each token embedding's norm; None = 1e-2, or
        the wider quantized-model step for int8 models (see finite_differences).
    richardson: Richardson extrapolation (4 runs per derivative, O(h^4)).
    fd_scheme: central (default, O(h^2)) or forward (one-sided, O(h), about half the runs).
    samples, noise, seed: SmoothGrad's sample count, noise std relative to each token's
        embedding RMS, and random seed. kernel-shap and lime draw samples x n coalitions of
        the n players, permutation samples orders (n - 1 rows each), all with ``seed``.
    players: words | tokens: what the Shapley and sampling methods (shapley, kernel-shap,
        permutation, lime) attribute to (words: a word's value split equally over its tokens).
    max_chars: longest accepted text. progress: progress bars (None = when stderr is a TTY).
    long: what to do with a text over the model's token limit: error (exit 2), or window
        (explain overlapping windows and stitch them; classifiers only).
    window_overlap: tokens two consecutive windows share (None = a quarter of the limit).
    direction: for a model whose output is an embedding, explain its projection on this
        vector (as long as the output) instead of a class.
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
    batch_size: int | None = None
    tokens_per_run: int | None = None
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
    #: for an embedding model: explain the output's projection on this vector
    direction: tuple[float, ...] | None = None
    #: shapley, kernel-shap, permutation, lime: words or tokens are the players
    players: str = "words"

    def validated(self) -> ExplainConfig:
        """Self, after checking every name and number; UsageError (exit 2) otherwise."""
        for kind, name, registry in (("method", self.method, METHODS), ("backend", self.backend, BACKENDS),
                                     ("score", self.score, SCORES)):
            if name not in registry:
                raise unknown_choice(kind, name, registry)
        if self.reduce is not None and self.reduce not in REDUCTIONS:
            raise unknown_choice("reduction", self.reduce, REDUCTIONS)
        for name, value, high in (("batch_size", self.batch_size, MAX_BATCH_SIZE),
                                  ("tokens_per_run", self.tokens_per_run, MAX_TOKENS_PER_RUN),
                                  ("max_chars", self.max_chars, MAX_CHARS_LIMIT)):
            if value is None and name != "max_chars":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise UsageError(f"{name} must be an integer from 1 to {high:,}, got {value!r}")
        for name, number in (("tolerance", self.tolerance), ("noise", self.noise), ("fd_step", self.fd_step)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)):
                raise UsageError(f"{name} must be a number, got {number!r}")
        for name, flag in (("words", self.words), ("richardson", self.richardson)):
            if not isinstance(flag, bool):
                raise UsageError(f"{name} must be true or false, got {flag!r}")
        for spec in METHODS.values():
            spec.check(self)
        if self.fd_step is not None and not 0 < self.fd_step < 1:
            raise UsageError(f"fd_step must be in (0, 1), got {self.fd_step!r}")
        if self.fd_scheme not in FD_SCHEMES:
            raise unknown_choice("finite-difference scheme", self.fd_scheme, FD_SCHEMES)
        if self.fd_scheme == "forward" and self.richardson:
            raise UsageError("--richardson extrapolates central differences: it does not combine with "
                             "--fd-scheme forward")
        if self.long not in LONG:
            raise unknown_choice("long-text handling", self.long, LONG)
        if self.window_overlap is not None and (isinstance(self.window_overlap, bool)
                                                or not isinstance(self.window_overlap, int)
                                                or self.window_overlap < 0):
            raise UsageError(f"window_overlap must be an integer >= 0, got {self.window_overlap!r}")
        if not isinstance(self.baseline, str) or not self.baseline.strip():
            raise UsageError("baseline must be pad, zero, unk, mask or a token")
        try:
            self.baseline.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (undecodable bytes in argv arrive as such)
            raise UsageError("baseline is not valid Unicode (a lone surrogate)") from None
        if self.direction is not None and (
                not self.direction or len(self.direction) > MAX_DIRECTION
                or not all(isinstance(v, float | int) and abs(v) <= FLOAT32_MAX and math.isfinite(v)
                           for v in self.direction)
                or not any(self.direction)):
            raise UsageError(f"direction must be 1 to {MAX_DIRECTION:,} finite numbers within float32's range "
                             f"(|v| <= {FLOAT32_MAX:.4g}), not all zero")
        if isinstance(self.target, float) and not math.isfinite(self.target):
            raise UsageError(f"target must be a label or an index, got {self.target!r}")
        return self

    def reduction(self) -> str | None:
        """The reduction used: the configured one, or the method's default."""
        return self.reduce if self.reduce is not None else METHODS[self.method].default_reduce
