"""Reshape -> MatMul -> Reshape (tf2onnx's Tensordot) and Reshape -> Gemm -> Reshape (onnxsim/onnxslim)."""

from __future__ import annotations

import pytest

import converter
from models.graphs import reshape_sandwich
from tests.conftest import assert_rewritten

FOLDED = {"Conv": 1, "Transpose": 2}


def only(result: converter.RewriteResult) -> converter.Decision:
    assert len(result.report.decisions) == 1, result.report.decisions
    return result.report.decisions[0]


@pytest.mark.parametrize("core", ["MatMul", "Gemm"])
@pytest.mark.parametrize("target", ["runtime", "slice", "static", "static_minus_one"])
@pytest.mark.parametrize("batch", [2, "N"])
def test_sandwich_becomes_conv_and_shape_subgraph_goes(core: str, target: str, batch: int | str) -> None:
    if target == "static" and batch == "N":
        pytest.skip("a static target needs a static batch")
    model = reshape_sandwich(core=core, target=target, batch=batch)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)  # no Reshape, Shape, Gather, Concat or Cast is left
    d = only(result)
    assert d.rewritten and d.rule == ("tensordot_to_conv" if core == "MatMul" else "gemm_sandwich_to_conv")
    assert d.notes == {"bias_folded": True}
    assert len(result.model.graph.initializer) == 2  # the Conv weight and its bias, nothing dead


def test_shape_nodes_used_elsewhere_stay() -> None:
    model = reshape_sandwich(share_shape=True)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {**FOLDED, "Shape": 1})


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"target": "swapped", "batch": 2}, "not_per_position"),
        ({"target": "flat", "batch": 2}, "not_per_position"),
        ({"core": "Gemm", "bias": "gemm", "trans_b": 0}, None),
    ],
)
def test_wrong_targets_decline(kw: dict, reason: str | None) -> None:
    model = reshape_sandwich(**kw)
    result = converter.rewrite(model, fold_transposes=False)
    if reason is None:
        assert only(result).rewritten
        return
    d = only(result)
    assert (d.rewritten, d.reason) == (False, reason) and d.rule == "tensordot_to_conv"
    assert result.model.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(1, 1.0, 1.0), (0, 2.0, 0.5), (1, 0.5, 3.0)])
def test_gemm_attributes_fold_into_the_conv(trans_b: int, alpha: float, beta: float) -> None:
    model = reshape_sandwich(core="Gemm", bias="gemm", trans_b=trans_b, alpha=alpha, beta=beta)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)
    assert only(result).rewritten


def test_gemm_with_bias_keeps_a_following_add() -> None:
    model = reshape_sandwich(core="Gemm", bias="gemm")
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)


def test_gemm_outside_a_sandwich_is_not_a_candidate() -> None:
    from models.graphs import Builder

    b = Builder(0)
    y = b.op("Gemm", "x", b.const(b.rng.standard_normal((6, 3))), b.const(b.rng.standard_normal(3)))
    model = b.model([("x", [2, 6])], [y])
    result = converter.rewrite(model)
    assert result.report.decisions == [] and result.model.SerializeToString() == model.SerializeToString()


def test_gemms_with_nearly_equal_alpha_get_their_own_weights() -> None:
    """alpha 1.000001 and 1.000002 print alike (``:g``) but scale the weight differently."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    nodes, outputs = [], []
    for i, alpha in enumerate([1.000001, 1.000002]):
        nodes += [
            helper.make_node("Reshape", ["x", "rows"], [f"r{i}"]),
            helper.make_node("Gemm", [f"r{i}", "B"], [f"g{i}"], alpha=alpha),
            helper.make_node("Reshape", [f"g{i}", "back"], [f"y{i}"]),
        ]
        outputs.append(vi(f"y{i}", TensorProto.FLOAT, [2, 3, 5, 6]))
    inits = [
        numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "B"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "rows"),
        numpy_helper.from_array(np.array([2, 3, 5, 6], np.int64), "back"),
    ]
    graph = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [2, 3, 5, 4])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = converter.rewrite(model)
    weights = [n.input[1] for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(set(weights)) == 2
    values = [numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == w)) for w in weights]
    assert not np.array_equal(values[0], values[1])
    assert converter.verify(model, result).passed
