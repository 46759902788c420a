"""Default-domain stand-ins for onnxruntime's MatMulNBits, on the light copy the certificate infers shapes on.

onnx has no schema for ``com.microsoft`` MatMulNBits, so shape inference stops at each one and every tensor after
it loses its shape: a decoder's head split after a 4-bit projection then has no sizes to follow, and a Reshape the
rewrite folded a Transpose into is left unproved. For inference alone (the graphs compared are not changed), each
MatMulNBits stands in as a MatMul of its input with a ``[K, N]`` weight of the input's type (its attributes ``K``
and ``N``), which makes the same shape; the output keeps its name. Written for the certificate alone.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

_MS = "com.microsoft"


def give_stand_ins(light: onnx.ModelProto) -> int:
    """Replace, in every graph of ``light``, each MatMulNBits whose ``K``, ``N`` and scales' type are known with its
    stand-in. How many were replaced."""
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
