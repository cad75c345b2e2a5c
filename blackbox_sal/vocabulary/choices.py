"""The names a user may choose from, by registry: the vocabulary the settings spec
(:mod:`blackbox_sal.vocabulary.config`) validates against, without importing the registries themselves.

The registries (``METHODS``, ``BACKENDS``, ``SCORES``, ``REDUCTIONS``, ``QUADRATURES``, the
finite-difference ``SCHEMES``, the model loader's ``DEVICES`` and ``POOLINGS``) live with the
code they run and sit above the configuration in the layers; each is checked against its list
here by ``tests/test_settings.py``, so a name added to a registry and not here (or the reverse)
fails a test instead of being refused or offered silently. Adding a method is one entry here
(its name, summary and default reduction) and one in ``blackbox_sal.methods.METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Named:
    """One choice of a registry: its one-line summary (help texts) and, for a method, the
    reduction it uses when the config names none (None: it has no per-dimension step)."""

    summary: str
    default_reduce: str | None = None


METHODS: dict[str, Named] = {
    "saliency": Named("the norm of each token's gradient (the paper's ranking)", "l2"),
    "grad-x-input": Named("each token's embedding times its gradient", "sum"),
    "ig": Named("gradients integrated along the straight path from the baseline", "sum"),
    "smoothgrad": Named("gradients averaged over noisy copies of the input", "l2"),
    "occlusion": Named("the drop in f when a token is replaced by its baseline"),
    "lrp-attn": Named("AttnLRP: input x gradient with LRP's rules for attention, norms and activations (one pass)",
                      "sum"),
    "lrp-cp": Named("CP-LRP: as lrp-attn, with the attention weights held constant (one pass)", "sum"),
    "shapley": Named("exact Shapley values of the words, every coalition (up to 14 words)"),
    "kernel-shap": Named("Shapley values estimated by KernelSHAP's weighted regression (samples x words rows)"),
    "permutation": Named("Shapley values estimated over sampled orders of the words and their reverses"),
    "lime": Named("LIME: a kernel-weighted ridge regression on random masks of the words (samples x words rows)"),
    "owen": Named("exact Owen values over the sentences, clauses and words (long texts, where shapley refuses)"),
}
#: what the Shapley and sampling methods attribute to (blackbox_sal.methods.coalitions)
PLAYERS = ("words", "tokens")
BACKENDS: dict[str, Named] = {
    "auto": Named("the gradient graph when one can be had, else finite differences"),
    "fd": Named("finite differences: forward passes only, any model"),
    "graph": Named("an exported gradient graph: exact, built and verified once"),
}
SCORES = ("logit", "probability", "log-probability")
REDUCTIONS = ("l2", "l1", "sum", "mean", "max")
QUADRATURES = ("gauss-legendre", "riemann-left", "riemann-right", "riemann-middle", "trapezoid", "clenshaw-curtis")
#: rules steps="auto" can stand for (it adds nested Clenshaw-Curtis nodes)
AUTO_QUADRATURES = ("gauss-legendre", "clenshaw-curtis")
#: rules that need at least two nodes
TWO_NODE_QUADRATURES = ("trapezoid", "clenshaw-curtis")
FD_SCHEMES = ("central", "forward")
#: what to do with a text over the model's token limit
LONG = ("error", "window")
DEVICES = ("auto", "cpu", "cuda")
POOLINGS = ("mean", "cls", "max")
#: output formats of ``explain`` (blackbox_sal.render.FORMATS) and of the report commands
FORMATS = ("terminal", "json", "html")
REPORT_FORMATS = ("terminal", "json")
#: the output files ``batch`` writes, by suffix
BATCH_SUFFIXES = (".jsonl", ".csv", ".parquet")
