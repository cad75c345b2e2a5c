"""List the operators on the differentiated path of an ONNX text model, and which of them
blackbox-sal's reverse-mode rules lack.

    python models/onnx_path_ops.py models/.cache/keras-tutorial [more model dirs or .onnx files]

The path starts at the embedding lookup: each ``Gather`` whose table (input 0) is a 2-D tensor
computed from initializers alone (an initializer, or ``Cast`` / ``Mul`` / ``DequantizeLinear``
... chains of them) and whose indices depend on a graph input; for a scikit-learn export (a
``bow.json`` beside the model) it starts at the bag-of-words tensor that file names. It ends at
the model's outputs of float type. Ops on the path are those reached forward from the start
(through float tensors, not through operators that have no derivative) and backward from the
outputs, as blackbox_sal.surgery.reverse selects them. Ops inside subgraphs (``Loop``, ``Scan``,
``If``) are listed separately. Rules are read from blackbox_sal.surgery.rules.RULES; ops in
blackbox_sal.surgery.reverse.NON_DIFFERENTIABLE are not needed.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import onnx

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    consts = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" or (n.input and all(i in consts for i in n.input if i)):
            consts.update(n.output)
    return consts


def node_inputs(n: onnx.NodeProto) -> list[str]:
    """A node's inputs, with the outer-scope names its subgraphs (Loop, Scan, If bodies) read."""
    names = list(n.input)
    for a in n.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            inner = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for x in sub.node:
                inner.update(x.output)
            names += [i for x in sub.node for i in node_inputs(x) if i and i not in inner]
    return names


def path_ops(model_path: Path) -> dict[str, object]:
    from blackbox_sal.surgery.reverse import NON_DIFFERENTIABLE
    from blackbox_sal.surgery.rules import RULES

    model = onnx.load(str(model_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    consts = constant_tensors(g)
    init_names = {i.name for i in g.initializer}
    graph_inputs = {i.name for i in g.input if i.name not in init_names}
    # the word ids: input_ids where the model has it; values, not shapes (Shape -> Range position
    # ids and the like do not count)
    depends_on_input = {"input_ids"} if "input_ids" in graph_inputs else set(graph_inputs)
    for n in g.node:
        if n.op_type not in ("Shape", "Size") and any(i in depends_on_input for i in node_inputs(n)):
            depends_on_input.update(n.output)

    bow = model_path.parent / "bow.json"
    starts: list[str] = []
    tables: list[str] = []
    if bow.exists():
        starts = [json.loads(bow.read_text())["feature_tensor"]]
    else:
        for n in g.node:
            if n.op_type == "Gather" and n.input[0] in consts and n.input[1] in depends_on_input:
                starts.append(n.output[0])
                chain = [x.op_type for x in g.node if n.input[0] in x.output]
                tables.append(f"{n.input[0]}" + (f" (computed by {chain[0]})" if chain else " (initializer)"))
    active = set(starts)
    for n in g.node:
        if n.op_type not in NON_DIFFERENTIABLE and any(i in active for i in node_inputs(n)):
            active.update(o for o in n.output if o and types.get(o, onnx.TensorProto.FLOAT) in FLOAT_TYPES)
    outputs = [o.name for o in g.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    needed = set(outputs)
    on_path: list[onnx.NodeProto] = []
    for n in reversed(g.node):
        if any(o in needed and o in active for o in n.output) and not any(o in starts for o in n.output):
            on_path.append(n)
            needed.update(i for i in node_inputs(n) if i in active)
    on_path.reverse()
    ops = Counter(n.op_type for n in on_path)
    sub_ops: Counter[str] = Counter()
    for n in on_path:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                sub_ops.update(x.op_type for x in sub.node)
    missing = sorted(op for op in ops if op not in RULES and op not in NON_DIFFERENTIABLE)
    return {"model": str(model_path), "starts": starts, "inputs": sorted(graph_inputs), "tables": tables,
            "outputs": outputs,
            "ops": dict(ops), "subgraph_ops": dict(sub_ops), "missing_rules": missing,
            "domains": sorted({n.domain or "ai.onnx" for n in on_path})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model directories or .onnx files")
    ap.add_argument("--json", action="store_true", help="one JSON object per model")
    for arg in ap.parse_args().models:
        p = Path(arg)
        info = path_ops(p / "model.onnx" if p.is_dir() else p)
        if ap.parse_args().json:
            print(json.dumps(info))
            continue
        print(f"{info['model']}\n  from {info['starts']} {info['tables']}\n  to {info['outputs']}\n"
              f"  ops on the path: {', '.join(f'{k} x{v}' for k, v in sorted(info['ops'].items()))}")
        if info["subgraph_ops"]:
            inner = ", ".join(f"{k} x{v}" for k, v in sorted(info["subgraph_ops"].items()))
            print(f"  inside their subgraphs: {inner}")
        print(f"  domains: {info['domains']}\n  without a reverse rule: {info['missing_rules'] or 'none'}")


if __name__ == "__main__":
    main()
