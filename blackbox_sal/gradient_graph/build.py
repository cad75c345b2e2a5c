"""Building a loaded model's gradient graph: probe runs for shapes, then the reverse pass.

The surgery itself is pure (:mod:`blackbox_sal.surgery.gradient`); this module feeds it: the
forward part of the body runs on two small random inputs of different batch size and length
(:func:`probe_feeds`), every intermediate tensor fetched (:mod:`blackbox_sal.model.probe`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from blackbox_sal.model.probe import probe
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery.gradient import forward_part, gradient_model
from blackbox_sal.surgery.lrp_rules import GRADIENT, RuleSet
from blackbox_sal.text.printable import printable
from blackbox_sal.vocabulary.errors import ModelError

log = logging.getLogger("blackbox_sal")

#: the largest graph a gradient graph is built for. Building is linear in the nodes (the probe
#: runs in segments): 100,000 nodes take 21 s and 0.9 GB on a 2-core machine; beyond this the
#: model is explained by finite differences (benchmarks/big_graph.py measures it)
MAX_GRAPH_NODES = 250_000


def probe_feeds(model: TextModel, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Two feeds of different batch size and length (neither 1), for reading shapes; a
    fixed-shape export gets its own sizes in both."""
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, length in ((2, 5), (3, 7)):
        batch, length = model.fixed_batch or batch, model.fixed_length or length
        ids = rng.integers(0, model.table.shape[0], length)
        x = np.repeat(model.embed(ids)[None], batch, axis=0)
        feeds.append(model.feeds(x + rng.normal(0, 0.01, x.shape), ids, np.zeros_like(ids)))
    return feeds


def gradient_of(body: onnx.ModelProto, output: str, feeds: Sequence[Mapping[str, np.ndarray]],
                rules: RuleSet = GRADIENT) -> onnx.ModelProto:
    """The (unverified) gradient graph of a body taking inputs_embeds, for ``output``, with
    shapes read from probe runs on ``feeds`` (two or more, of different batch sizes and
    lengths, none of them 1); ``rules``: the reverse rules (the gradient's, or an LRP set)."""
    forward = forward_part(body, output)
    return gradient_model(forward, output, probe(forward, feeds), rules)


def build_gradient(model: TextModel, rules: RuleSet = GRADIENT) -> onnx.ModelProto:
    """The (unverified) gradient graph of a loaded model's body for its explained output."""
    if model.body is None:
        raise ModelError("this model keeps no graph to differentiate")
    nodes = len(model.body.graph.node)
    if nodes > MAX_GRAPH_NODES:
        raise ModelError(f"the model's graph has {nodes:,} nodes; gradient graphs are built for at most "
                         f"{MAX_GRAPH_NODES:,} (time and memory grow with it): finite differences answer")
    # the name comes from the model folder: escaped for whatever handler prints it (as errors are)
    log.info("building the %s graph of %s (%s nodes)", "gradient" if rules is GRADIENT else rules.name,
             printable(model.name), f"{nodes:,}")
    return gradient_of(model.body, model.output, probe_feeds(model), rules)
