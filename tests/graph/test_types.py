"""collect_types: shape inference's types for every graph, with what it cannot see filled in.

onnx has no schema for onnxruntime's quantized elementwise ops (com.microsoft QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu), so inference alone stops at each and every tensor after one loses its shape;
the layout optimizer then cannot tell a QOperator ConvNeXt block's GELU from a fixed op. collect_types infers
on a skeleton where each stands in as default-domain ops of the same output shape and type.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.graph import collect_types

MS = "com.microsoft"


def _chain(op: str) -> onnx.ModelProto:
    """x [N, 5, 7, 4] float -> Q -> the com.microsoft op (with a broadcast [4] operand when binary) -> DQ -> Relu."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.int8), "z"),
        numpy_helper.from_array(np.array([1, -2, 3, 4], np.int8), "b"),
        numpy_helper.from_array(np.array(7, np.uint8), "yz"),
    ]
    if op in ("QLinearAdd", "QLinearMul"):
        inputs = ["xq", "s", "z", "b", "s", "z", "s", "yz"]
    else:
        inputs = ["xq", "s", "z", "s", "yz"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node(op, inputs, ["q"], domain=MS),
        helper.make_node("DequantizeLinear", ["q", "s", "yz"], ["d"]),
        helper.make_node("Relu", ["d"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 7, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu"])
def test_shapes_carry_through_onnxruntimes_quantized_elementwise_ops(op: str) -> None:
    model = _chain(op)
    before = model.SerializeToString()
    types = collect_types(model)[()]
    assert types["q"].elem_type == TensorProto.UINT8  # its output zero point's type
    for name in ("q", "d", "out"):
        assert types[name].shape == ("N", 5, 7, 4), name
    assert model.SerializeToString() == before  # the caller's model is not changed
    assert not any("\x00" in name for name in (n.output[0] for n in model.graph.node))


def test_an_op_without_its_data_inputs_is_left_to_inference() -> None:
    """A QLinearAdd missing its second data input has no stand-in: what follows it stays unknown, as before."""
    model = _chain("QLinearAdd")
    model.graph.node[1].input[3] = ""
    types = collect_types(model)[()]
    assert types.get("out") is None or types["out"].shape is None
