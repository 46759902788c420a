"""Constants the certificate computes itself must be what onnxruntime computes, or a candidate holding the
certificate's value passes while it runs differently. DequantizeLinear of an int16 weight with a float16 scale:
onnxruntime multiplies in float32 and rounds once; an integer cast to float16 first rounds twice (many elements
1 ulp off, outputs off by up to 8). The candidate holding onnxruntime's own weight is the correct one.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter

C = K = 8


def _original(wq: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Add", ["m", "b"], ["y"], name="add"),
        ],
        "g",
        [vi("x", TensorProto.FLOAT16, ["N", 2, 3, C])],
        [vi("y", TensorProto.FLOAT16, ["N", 2, 3, K])],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _candidate(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
            helper.make_node("Conv", ["xt", "wc", "b"], ["yc"], kernel_shape=[1, 1], name="mm_conv"),
            helper.make_node("Transpose", ["yc"], ["y"], perm=[0, 2, 3, 1], name="to_nhwc"),
        ],
        "g",
        [vi("x", TensorProto.FLOAT16, ["N", 2, 3, C])],
        [vi("y", TensorProto.FLOAT16, ["N", 2, 3, K])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T.reshape(K, C, 1, 1)), "wc"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("which", ["twice rounded", "as onnxruntime"])
def test_a_dequantized_int16_weight_with_a_float16_scale_is_what_onnxruntime_computes(which: str) -> None:
    rng = np.random.default_rng(0)
    wq = rng.integers(2049, 4000, size=(C, K)).astype(np.int16)  # past 2048: not exact in float16
    scale, bias = np.array(0.75, np.float16), rng.standard_normal(K).astype(np.float16)
    original = _original(wq, scale, bias)
    probe = onnx.ModelProto()
    probe.CopyFrom(original)
    del probe.graph.node[1:]
    del probe.graph.input[:]
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info("w", TensorProto.FLOAT16, [C, K]))
    (runs,) = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    twice = (wq.astype(np.float16) * scale).astype(np.float16)
    assert (twice != runs).sum() > 5  # the two readings differ
    weight = twice if which == "twice rounded" else runs
    check = converter.verify(original, _candidate(weight, bias))
    assert check.passed == (which == "as onnxruntime"), check.to_dict()


def _branch_model(fold: list[onnx.NodeProto], constants: list[onnx.TensorProto], converted: bool) -> onnx.ModelProto:
    """A dense layer (or its Conv), then an If that only an input past 1000 takes, whose branch multiplies the
    layer's output by ``k``: computed from constants by ``fold`` (the original), or held as a constant."""
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((C, K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    vi = helper.make_tensor_value_info
    then = helper.make_graph(
        [*fold, helper.make_node("Mul", ["a", "k"], ["t"])], "then", [], [vi("t", TensorProto.FLOAT, ["N", 2, 3, K])], constants
    )
    other = helper.make_graph([helper.make_node("Relu", ["a"], ["e"])], "else", [], [vi("e", TensorProto.FLOAT, ["N", 2, 3, K])])
    if converted:
        nodes = [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["xt", "wc", "b"], ["ac"], kernel_shape=[1, 1], name="mm_conv"),
            helper.make_node("Transpose", ["ac"], ["a"], perm=[0, 2, 3, 1]),
        ]
        weights = [numpy_helper.from_array(np.ascontiguousarray(w.T.reshape(K, C, 1, 1)), "wc")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["a"])]
        weights = [numpy_helper.from_array(w, "w")]
    nodes += [
        helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
        helper.make_node("Greater", ["top", "limit"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits = [*weights, numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(1000, np.float32), "limit")]
    graph = helper.make_graph(
        nodes, "g", [vi("x", TensorProto.FLOAT, ["N", 2, 3, C])], [vi("y", TensorProto.FLOAT, ["N", 2, 3, K])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("op", "value", "reference", "engine"),
    [
        ("ReduceMax", [1.0, np.nan, 5.0, 2.0], np.nan, 5.0),  # onnxruntime skips the NaN
        ("Cast", ["1_0"], 10.0, 1.0),  # onnx's reference parses "1_0" as 10
    ],
)
def test_a_constant_expression_is_what_onnxruntime_computes_not_what_onnx_reference_does(
    op: str, value: list, reference: float, engine: float
) -> None:
    """In a branch no random input takes, a candidate holding onnx's reference value for the original's constant
    expression would compute otherwise in onnxruntime: it is not proved; onnxruntime's value is."""
    data = np.array(value, dtype=object if isinstance(value[0], str) else np.float32)
    fold = [helper.make_node(op, ["c"], ["k"], **({"keepdims": 0} if op == "ReduceMax" else {"to": TensorProto.FLOAT}))]
    original = _branch_model(fold, [numpy_helper.from_array(data, "c")], converted=False)
    for held, proved in ((reference, False), (engine, True)):
        k = np.full(1 if op == "Cast" else (), held, np.float32)
        candidate = _branch_model([], [numpy_helper.from_array(k, "k")], converted=True)
        check = converter.verify(original, candidate)
        assert check.passed == proved, (held, check.to_dict())
