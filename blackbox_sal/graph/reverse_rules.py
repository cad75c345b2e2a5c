"""Our reverse-mode rules, installed over onnx-ad's table where its own fall short.

onnx-ad (pinned, see pyproject.toml) differentiates ONNX graphs by source transformation.
Its Conv rule needs the input's static shape to size the transposed convolution, which a
text model with a dynamic sequence length never declares. For stride 1 and explicit pads
the shape is not needed: ``ConvTranspose`` with the forward pads and no ``output_shape``
returns exactly the input length, L_out + (k - 1) * dilation - pads = L_in::

    forward:  x [B, C, L] --Conv(W, pads)--> y [B, F, L']
    adjoint:  dy [B, F, L'] --ConvTranspose(W, same pads)--> dx [B, C, L]

Only the input adjoint is emitted: input gradients never need weight gradients.

Its Concat rule needs each operand's extent along the axis to be declared; GPT-2 exports
concatenate a (dynamic, often empty) key/value cache. Ours splits the incoming adjoint at
run-time extents: ``Split(dy, Concat(Shape(x_i)[axis] ...), axis)``.
"""

from __future__ import annotations

from typing import Any

import onnx

_installed = False


def install() -> None:
    """Put our rules into onnx-ad's reverse table (idempotent)."""
    global _installed
    if _installed:
        return
    from onnx_ad import rules

    original = rules.REVERSE["Conv"]

    def conv_reverse(ctx: Any, node: onnx.NodeProto, grads: list[Any]) -> list[Any]:
        attrs, _ = rules._conv_attributes(ctx, node)
        x, w, y = node.input[0], node.input[1], node.output[0]
        strides = attrs.get("strides") or []
        if any(s != 1 for s in strides):
            return original(ctx, node, grads)  # needs the static shape; onnx-ad says so if absent
        contributions: list[Any] = [None] * len(node.input)
        if ctx.asked_for(x):
            seeded = ctx.full(grads[0], y)
            folded = rules._fold_seed_into_batch(ctx, seeded, y)
            transposed = {k: v for k, v in attrs.items() if k != "kernel_shape"}
            back = ctx.b.op("ConvTranspose", [folded, w], stem="a_conv", **transposed)
            contributions[0] = rules._unfold_batch_into_seed(ctx, back, x, ctx.rank(x))
        return contributions

    rules.REVERSE["Conv"] = conv_reverse

    original_concat = rules.REVERSE["Concat"]

    def concat_reverse(ctx: Any, node: onnx.NodeProto, grads: list[Any]) -> list[Any]:
        try:
            return original_concat(ctx, node, grads)
        except rules.UnsupportedOperator:
            pass  # extents not declared: take them at run time
        y = node.output[0]
        axis = next(int(a.i) for a in node.attribute if a.name == "axis") % ctx.rank(y)
        seeded = ctx.full(grads[0], y)
        ends = [ctx.b.op("Slice", [ctx.shape_of(x), ctx.b.ints([axis]), ctx.b.ints([axis + 1])],
                         stem="a_concat_extent") for x in node.input]
        sizes = ctx.b.op("Concat", ends, axis=0, stem="a_concat_sizes")
        parts = ctx.b.op("Split", [seeded, sizes], outputs=len(node.input), axis=axis, stem="a_concat")
        parts = parts if isinstance(parts, list) else [parts]
        return [p if ctx.asked_for(x) else None for p, x in zip(parts, node.input, strict=True)]

    rules.REVERSE["Concat"] = concat_reverse
    _installed = True
