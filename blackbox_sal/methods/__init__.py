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
shapley                   exact Shapley value of word i (every coalition)  (none)
kernel-shap               KernelSHAP's estimate of it (sampled, with s.e.) (none)
permutation               its mean over sampled orders (with s.e.)         (none)
lime                      LIME's ridge coefficient of word i (with s.e.)   (none)
owen                      exact Owen value over sentences/clauses/words    (none)
========================  ===============================================  =================

The last five are over players, words by default (``players="tokens"``: tokens), removed as
``eval --removal`` removes them (:mod:`blackbox_sal.methods.coalitions`); a word's value is
split equally over its tokens.
"""

from __future__ import annotations

from blackbox_sal.methods.attribution import MethodSpec
from blackbox_sal.methods.gradient_methods import GRAD_X_INPUT, SALIENCY, SMOOTHGRAD
from blackbox_sal.methods.integrated_gradients import INTEGRATED_GRADIENTS
from blackbox_sal.methods.kernel_shap import KERNEL_SHAP
from blackbox_sal.methods.lime import LIME
from blackbox_sal.methods.lrp import LRP_ATTN, LRP_CP
from blackbox_sal.methods.occlusion import OCCLUSION
from blackbox_sal.methods.owen import OWEN
from blackbox_sal.methods.permutation import PERMUTATION
from blackbox_sal.methods.shapley import SHAPLEY

METHODS: dict[str, MethodSpec] = {
    "saliency": SALIENCY,
    "grad-x-input": GRAD_X_INPUT,
    "ig": INTEGRATED_GRADIENTS,
    "smoothgrad": SMOOTHGRAD,
    "occlusion": OCCLUSION,
    "lrp-attn": LRP_ATTN,
    "lrp-cp": LRP_CP,
    "shapley": SHAPLEY,
    "kernel-shap": KERNEL_SHAP,
    "permutation": PERMUTATION,
    "lime": LIME,
    "owen": OWEN,
}
