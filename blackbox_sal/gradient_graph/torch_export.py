"""Export a PyTorch text model as a model directory that ships its own gradient graph.

Optional: ``pip install "blackbox-sal[torch]"`` (torch 2.13 and onnxscript). For teams that
still have the torch module: the gradient graph is then exactly what autograd computes,
traced once, and the deployed side never differentiates anything.

The module's contract: ``module(inputs_embeds [B, S, D] float32, attention_mask [B, S]
int64) -> logits [B, C]`` (wrap a Hugging Face model so it takes ``inputs_embeds``). Written::

    out/model.onnx       inputs_embeds, attention_mask -> logits
    out/grad.onnx        inputs_embeds, attention_mask, target_weights [B, C] -> logits, grad
    out/embeddings.npy   the token embedding table [V, D]
    out/tokenizer.json
    out/config.json      {"name", "labels", "max_length", "gradient_model": "grad.onnx"}

Route: ``make_fx`` traces a function that calls ``torch.autograd.grad`` into one joint
forward+backward graph (symbolic shapes, math attention, our decomposition of
``convolution_backward`` into a transposed convolution cut to the input length), and
``torch.export`` + ``torch.onnx`` write it with dynamic batch and sequence axes. The result
is loaded back and checked against finite differences like any shipped gradient graph.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from blackbox_sal.vocabulary.errors import ModelError, UnavailableError

#: example batch and length for tracing: odd sizes that no model dimension is likely to share
#: (torch gives equal example sizes one symbol, which would pin the batch to, say, the classes)
_EXAMPLE = (11, 13)


def export_torch(module: Any, table: np.ndarray, tokenizer_json: str | os.PathLike[str], out: str | os.PathLike[str],
                 *, labels: Sequence[str] | None = None, max_length: int = 512, name: str | None = None) -> Path:
    """Write ``module`` (see the module docstring) as a blackbox-sal model directory with a
    verified gradient graph; returns the directory. UnavailableError without torch,
    ModelError when tracing or the check fails."""
    try:
        import torch
    except ImportError as exc:
        raise UnavailableError('exporting from PyTorch needs torch: pip install "blackbox-sal[torch]"') from exc
    from blackbox_sal.gradient_graph.store import gradient_session
    from blackbox_sal.model.loading import load_model

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = np.ascontiguousarray(table, dtype=np.float32)
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    batch, length = _EXAMPLE
    length = min(length, max_length)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(table[rng.integers(0, table.shape[0], (batch, length))])
    mask = torch.ones(batch, length, dtype=torch.long)
    with torch.no_grad():
        logits = module(x, mask)
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ModelError(f"the module returned shape {list(logits.shape)}; expected [batch, classes]")
    classes = int(logits.shape[1])
    w = torch.ones(batch, classes)
    try:
        with warnings.catch_warnings():  # torch's tracers warn about their own internals
            warnings.simplefilter("ignore")
            _write(torch.export.export(module, (x, mask), dynamic_shapes=_dims(2), strict=False),
                   (x, mask), ["inputs_embeds", "attention_mask"], ["logits"], folder / "model.onnx")
            joint = _joint_graph(module, x, mask, w)
            _write(torch.export.export(joint, (x, mask, w), dynamic_shapes=_dims(3), strict=False),
                   (x, mask, w), ["inputs_embeds", "attention_mask", "target_weights"], ["logits", "grad"],
                   folder / "grad.onnx")
    except (ModelError, UnavailableError):
        raise
    except Exception as exc:  # torch's tracers raise many types; all mean "this module did not export"
        raise ModelError(f"PyTorch export failed ({type(exc).__name__}): {str(exc).splitlines()[0][:300]}") from exc
    np.save(folder / "embeddings.npy", table)
    (folder / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    config: dict[str, object] = {"name": name or folder.name, "max_length": max_length,
                                 "gradient_model": "grad.onnx"}
    if labels is not None:
        config["labels"] = list(labels)
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    gradient_session(load_model(folder, device="cpu"))  # verified against finite differences
    return folder


def _dims(n: int) -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    both = {0: Dim.AUTO, 1: Dim.AUTO}
    return (both, both, {0: Dim.AUTO})[:n]


def _joint_graph(module: Any, x: Any, mask: Any, w: Any) -> Any:
    """One traced graph: (inputs_embeds, mask, weights) -> (logits, d sum(w * logits) / d inputs_embeds)."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def joint(embeds: torch.Tensor, m: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = module(embeds, m)
            (grad,) = torch.autograd.grad((logits * weights).sum(), embeds)
        return logits.detach(), grad

    decompositions = {torch.ops.aten.convolution_backward.default: _convolution_backward}
    with sdpa_kernel(SDPBackend.MATH):
        return make_fx(joint, tracing_mode="symbolic", _allow_non_fake_inputs=True,
                       decomposition_table=decompositions)(x, mask, w)


def _convolution_backward(grad: Any, inp: Any, weight: Any, bias_sizes: Any, stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                          output_padding: Sequence[int], groups: int, mask: Sequence[bool]) -> tuple[Any, None, None]:
    """Input gradient of a convolution as a transposed convolution. A strided convolution's
    transpose is one remainder too short for some lengths, and which depends on the length:
    take the longest (output_padding = stride - 1; the positions before it do not depend on
    it) and cut it to the input's extent, so one graph serves every length."""
    import torch.nn.functional as F

    if transposed or mask[1] or mask[2]:
        raise ModelError("only input gradients of ordinary convolutions can be exported")
    n = weight.dim() - 2
    transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    out = transpose(grad, weight, None, stride, padding, [s - 1 for s in stride], groups, dilation)
    for i in range(n):
        out = out.narrow(2 + i, 0, inp.shape[2 + i])
    return out, None, None


def _write(program: Any, args: tuple[Any, ...], inputs: list[str], outputs: list[str], path: Path) -> None:
    import torch

    onnx_program = torch.onnx.export(program, args, dynamo=True, input_names=inputs, output_names=outputs)
    if onnx_program is None:
        raise ModelError("torch.onnx.export returned no program")
    proto = onnx_program.model_proto
    _name_dims(proto, inputs)
    onnx.save(proto, str(path))


def _name_dims(proto: onnx.ModelProto, inputs: list[str]) -> None:
    """Rename torch's symbols (s22, s48...) to batch and sequence, everywhere; refuse a graph
    whose batch or sequence axis was specialised to a number."""
    rename: dict[str, str] = {}
    for value in proto.graph.input:
        if value.name not in inputs or value.name == "target_weights":
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, label in ((0, "batch"), (1, "sequence")):
            if not dims[axis].dim_param:
                raise ModelError(f"the export fixed the {label} axis of {value.name} to {dims[axis].dim_value}; "
                                 "the module must accept any batch size and length")
            rename[dims[axis].dim_param] = label
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
