"""The certificate's shapes through onnxruntime's MatMulNBits (stand_ins.py).

onnx has no schema for com.microsoft MatMulNBits: without a stand-in, inference stops there and a head split after
a 4-bit projection has no sizes, so a Reshape a rewrite folded a Transpose into is left unproved.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.verifier.certificate.original import _inferred_shapes


def _projection_then_heads() -> onnx.ModelProto:
    """x [N, S, 64] -> MatMulNBits (K 64, N 32, 4 bits, blocks of 32) -> Reshape [0, 0, 2, 16] -> Transpose."""
    k, n, block = 64, 32, 32
    packed = np.random.default_rng(0).integers(0, 255, size=(n, k // block, block // 2), dtype=np.uint8)
    inits = [
        numpy_helper.from_array(packed, "w"),
        numpy_helper.from_array(np.full((n * (k // block),), 0.01, np.float32), "scales"),
        numpy_helper.from_array(np.array([0, 0, 2, 16], np.int64), "heads"),
    ]
    nodes = [
        helper.make_node("MatMulNBits", ["x", "w", "scales"], ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block),
        helper.make_node("Reshape", ["y", "heads"], ["split"]),
        helper.make_node("Transpose", ["split"], ["heads_first"], perm=[0, 2, 1, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", k])],
        [helper.make_tensor_value_info("heads_first", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def test_shapes_carry_through_matmul_nbits() -> None:
    model = _projection_then_heads()
    shapes, _ = _inferred_shapes(model)
    assert shapes["y"] == ("N", "S", 32)
    assert shapes["heads_first"] == ("N", 2, "S", 16)
    assert [n.op_type for n in model.graph.node][0] == "MatMulNBits"  # the model it was given is not changed


def test_shapes_carry_through_quantized_elementwise_ops() -> None:
    """QOperator's QLinearAdd (a broadcast [C] operand) and QLinearSigmoid keep their data input's shape."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "z"),
        numpy_helper.from_array(np.arange(16, dtype=np.uint8), "b"),
        numpy_helper.from_array(np.array([0, 0, 2, 8], np.int64), "heads"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("QLinearAdd", ["xq", "s", "z", "b", "s", "z", "s", "z"], ["added"], domain="com.microsoft"),
        helper.make_node("QLinearSigmoid", ["added", "s", "z", "s", "z"], ["squashed"], domain="com.microsoft"),
        helper.make_node("Reshape", ["squashed", "heads"], ["split"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 16])],
        [helper.make_tensor_value_info("split", TensorProto.UINT8, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    shapes, _ = _inferred_shapes(model)
    assert shapes["added"] == ("N", "S", 16)
    assert shapes["squashed"] == ("N", "S", 16)
    assert shapes["split"] == ("N", "S", 2, 8)
