"""Attribution methods: a registry of plain functions ``(Problem) -> Attribution``.

========================  ===============================================  =================
method                    score of token i                                 default reduction
========================  ===============================================  =================
saliency                  reduce(grad_i f(x))                              l2
grad-x-input              reduce(x_i * grad_i f(x)); with sum, this is     sum
                          d f / d onehot_i at the token present
ig                        reduce((x_i - x'_i) * integral of grad_i f       sum
                          along x' -> x)
smoothgrad                reduce(mean over noisy copies of grad_i f)       l2
occlusion                 f(x) - f(x with token i set to its baseline)     (none)
========================  ===============================================  =================
"""

from __future__ import annotations

from collections.abc import Callable

from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.methods.gradient_methods import grad_x_input, saliency, smoothgrad
from blackbox_sal.methods.integrated_gradients import integrated_gradients
from blackbox_sal.methods.occlusion import occlusion

METHODS: dict[str, Callable[[Problem], Attribution]] = {
    "saliency": saliency,
    "grad-x-input": grad_x_input,
    "ig": integrated_gradients,
    "smoothgrad": smoothgrad,
    "occlusion": occlusion,
}

__all__ = ["METHODS", "Attribution", "Problem"]
