"""Default-domain stand-ins for onnxruntime's own ops, on the light copy the certificate infers shapes on.

onnx has no schema for ``com.microsoft`` MatMulNBits, so shape inference stops at each one and every tensor after
it loses its shape: a decoder's head split after a 4-bit projection then has no sizes to follow, and a Reshape the
rewrite folded a Transpose into is left unproved. For inference alone (the graphs compared are not changed), each
MatMulNBits stands in as a MatMul of its input with a ``[K, N]`` weight of the input's type (its attributes ``K``
and ``N``), which makes the same shape; the output keeps its name. The quantized elementwise ops of the QOperator
format (QLinearAdd, QLinearMul: an Add of their two data inputs, broadcasting as they do; QLinearSigmoid,
QLinearLeakyRelu, QLinearSoftmax: an Identity of their data input) stand in the same way, and so does QGemm with an
output scale (``quant_pre_process``'s Gemm between two Reshapes, quantized): a QLinearMatMul of its activation and
weight (a ``[K, N]`` one of the weight's type when ``transB=1`` stores it ``[N, K]``) with its output's scale and zero
point, which makes the same shape and type. Written for the certificate alone.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

_MS = "com.microsoft"
# Quantized elementwise ops: their data inputs (an Add of two, an Identity of one makes their shape and type).
_ELEMENTWISE = {
    "QLinearAdd": (0, 3),
    "QLinearMul": (0, 3),
    "QLinearSigmoid": (0,),
    "QLinearLeakyRelu": (0,),
    "QLinearSoftmax": (0,),
}


def give_stand_ins(light: onnx.ModelProto) -> int:
    """Replace, in every graph of ``light``, each MatMulNBits whose ``K``, ``N`` and scales' type are known, and each
    quantized elementwise op with its data inputs, with its stand-in. How many were replaced."""
    count = 0
    stack = [light.graph]
    while stack:
        g = stack.pop()
        dtypes = {t.name: t.data_type for t in g.initializer}
        dtypes.update((i.name, i.type.tensor_type.elem_type) for i in g.input if i.type.HasField("tensor_type"))
        for i, node in enumerate(g.node):
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
            data = _ELEMENTWISE.get(node.op_type) if node.domain == _MS else None
            if data is not None and len(node.output) == 1 and all(s < len(node.input) and node.input[s] for s in data):
                op = "Add" if len(data) == 2 else "Identity"
                g.node[i].CopyFrom(onnx.helper.make_node(op, [node.input[s] for s in data], [node.output[0]], name=node.name))
                count += 1
                continue
            if node.domain == _MS and node.op_type == "QGemm":
                count += _qgemm(g, i, node, dtypes)
                continue
            if node.domain != _MS or node.op_type != "MatMulNBits" or len(node.input) < 3 or len(node.output) != 1:
                continue
            attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
            k, n, dtype = attrs.get("K"), attrs.get("N"), dtypes.get(node.input[2], TensorProto.UNDEFINED)
            if not k or not n or dtype == TensorProto.UNDEFINED:
                continue
            weight = f"{node.output[0]}/stand_in_weight"
            g.input.append(onnx.helper.make_tensor_value_info(weight, dtype, [k, n]))
            g.node[i].CopyFrom(onnx.helper.make_node("MatMul", [node.input[0], weight], [node.output[0]], name=node.name))
            count += 1
    return count


def _qgemm(g: onnx.GraphProto, i: int, node: onnx.NodeProto, dtypes: dict[str, int]) -> int:
    """QGemm ``g.node[i]`` as a QLinearMatMul of the same shape and type (1), or left alone (0): float output, transA."""
    ins = list(node.input) + [""] * (9 - len(node.input))
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if len(node.output) != 1 or not all(ins[j] for j in (0, 1, 2, 3, 4, 5, 7, 8)) or attrs.get("transA", 0):
        return 0
    weight = ins[3]
    if attrs.get("transB", 0):
        stored = next((t for t in g.initializer if t.name == weight), None)
        if stored is None or len(stored.dims) != 2:
            return 0
        weight = f"{node.output[0]}/stand_in_weight"
        g.input.append(onnx.helper.make_tensor_value_info(weight, stored.data_type, [stored.dims[1], stored.dims[0]]))
    inputs = [ins[0], ins[1], ins[2], weight, ins[4], ins[5], ins[7], ins[8]]
    g.node[i].CopyFrom(onnx.helper.make_node("QLinearMatMul", inputs, [node.output[0]], name=node.name))
    return 1
