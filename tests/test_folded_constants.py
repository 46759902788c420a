"""Constants behind the ops exporters leave on them (Identity, Cast, Reshape, Transpose, Squeeze, Unsqueeze).

The folding in ``converter/graph.py`` is checked against onnxruntime running the same node, for every
op form (attribute and input forms of the axes, Reshape's 0 and -1, allowzero); then whole models whose
every constant is read through an Identity, the way the TorchScript exporter deduplicates equal tensors,
must come out of the rewrite exactly like the plain models: same layers rewritten, biases folded, no more
Transposes, verified.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import Scope, count_ops
from models.graphs import convnext_block, convnext_stage

RNG = np.random.default_rng(0)
A = RNG.standard_normal((2, 3, 4)).astype(np.float32)
I64 = np.array([[1, -2, 3]], np.int64)


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


# (id, opset, data, node, extra initializers)
CASES = [
    ("identity", 17, A, helper.make_node("Identity", ["a"], ["out"]), []),
    ("cast_f16_f32", 17, A.astype(np.float16), helper.make_node("Cast", ["a"], ["out"], to=TensorProto.FLOAT), []),
    ("cast_f32_f64", 17, A, helper.make_node("Cast", ["a"], ["out"], to=TensorProto.DOUBLE), []),
    ("cast_i64_f32", 17, I64, helper.make_node("Cast", ["a"], ["out"], to=TensorProto.FLOAT), []),
    ("cast_i64_i32", 17, I64, helper.make_node("Cast", ["a"], ["out"], to=TensorProto.INT32), []),
    ("transpose_perm", 17, A, helper.make_node("Transpose", ["a"], ["out"], perm=[2, 0, 1]), []),
    ("transpose_default", 17, A, helper.make_node("Transpose", ["a"], ["out"]), []),
    ("reshape", 17, A, helper.make_node("Reshape", ["a", "s"], ["out"]), [ints("s", [4, -1])]),
    ("reshape_zero_copies", 17, A, helper.make_node("Reshape", ["a", "s"], ["out"]), [ints("s", [0, -1])]),
    ("reshape_allowzero", 17, A, helper.make_node("Reshape", ["a", "s"], ["out"], allowzero=1), [ints("s", [2, 12])]),
    ("squeeze_attr", 11, A[:1], helper.make_node("Squeeze", ["a"], ["out"], axes=[0]), []),
    ("squeeze_input", 17, A[:1], helper.make_node("Squeeze", ["a", "ax"], ["out"]), [ints("ax", [0])]),
    ("squeeze_all", 17, A[:1, :1], helper.make_node("Squeeze", ["a"], ["out"]), []),
    ("unsqueeze_attr", 11, A, helper.make_node("Unsqueeze", ["a"], ["out"], axes=[0, 4]), []),
    ("unsqueeze_input", 17, A, helper.make_node("Unsqueeze", ["a", "ax"], ["out"]), [ints("ax", [-1, 1])]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_folded_values_match_onnxruntime(case) -> None:
    _, opset, data, node, extra = case
    inits = [numpy_helper.from_array(data, "a"), *extra]
    graph = helper.make_graph([node], "fold", [], [], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output.extend(v for v in inferred.graph.value_info if v.name == "out")
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    scope = Scope(model.graph, (), {})
    assert scope.source("out").kind == "folded"
    got = scope.constant_value("out")
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_a_node_with_a_computed_input_is_not_folded() -> None:
    node = helper.make_node("Reshape", ["a", "s"], ["out"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(A, "a")],
    )
    assert Scope(graph, (), {}).source("out").kind == "computed"


def behind_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float constant a node reads, read through its own Identity (TorchScript's deduplication form)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    floats = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    nodes = []
    for i, node in enumerate(g.node):
        for slot, name in enumerate(node.input):
            if name in floats:
                copy = f"{name}_copy{i}"
                nodes.append(helper.make_node("Identity", [name], [copy], name=f"{copy}_identity"))
                node.input[slot] = copy
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return out


@pytest.mark.parametrize(
    "make",
    [lambda: convnext_block(), lambda: convnext_stage(8, 5, 7, blocks=2, layernorm=True, seed=3)],
    ids=["convnext_block", "convnext_stage_layernorm"],
)
def test_a_model_read_through_identities_converts_like_the_plain_one(make) -> None:
    plain = make()
    wrapped = behind_identity(plain)
    assert count_ops(wrapped.graph)["Identity"] > 4
    a, b = converter.rewrite(plain), converter.rewrite(wrapped)
    assert [(d.rewritten, d.notes) for d in b.report.decisions] == [(d.rewritten, d.notes) for d in a.report.decisions]
    assert all(d.rewritten and d.notes.get("bias_folded") for d in b.report.decisions)
    assert b.report.ops_after.get("Transpose", 0) == a.report.ops_after.get("Transpose", 0)
    assert b.report.ops_after.get("Transpose", 0) <= count_ops(plain.graph).get("Transpose", 0)
    assert count_ops(b.model.graph).get("MatMul", 0) == 0
    report = converter.verify(wrapped, b)  # N = 2 where the batch is symbolic, H != W
    assert report.passed, report.to_dict()
    assert report.structure["proved"] and all(layer.verified for layer in report.layers)
