"""Attribution methods: a registry of :class:`~blackbox_sal.methods.attribution.MethodSpec`.

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
lrp-attn, lrp-cp          reduce(x_i * g_i), g the gradient with LRP's     sum
                          rules (methods.lrp; graph backend only)
========================  ===============================================  =================
"""

from __future__ import annotations

from blackbox_sal.methods.attribution import MethodSpec
from blackbox_sal.methods.gradient_methods import GRAD_X_INPUT, SALIENCY, SMOOTHGRAD
from blackbox_sal.methods.integrated_gradients import INTEGRATED_GRADIENTS
from blackbox_sal.methods.lrp import LRP_ATTN, LRP_CP
from blackbox_sal.methods.occlusion import OCCLUSION

METHODS: dict[str, MethodSpec] = {
    "saliency": SALIENCY,
    "grad-x-input": GRAD_X_INPUT,
    "ig": INTEGRATED_GRADIENTS,
    "smoothgrad": SMOOTHGRAD,
    "occlusion": OCCLUSION,
    "lrp-attn": LRP_ATTN,
    "lrp-cp": LRP_CP,
}
