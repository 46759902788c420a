"""Transpose cleanup after the rewrite: the layouts the issue names, by structure and by numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

import converter
from converter.graph import count_ops
from converter.rewriter.cleanup import run_passes
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.layout import census
from models.graphs import F32, Builder, convnext_block

H, W = 5, 7  # H != W


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)


def check(model: onnx.ModelProto, *, degenerate_ok: bool = False, **kw) -> converter.RewriteResult:
    # What the cleanup does to every rewritten layer (the default layout policy would decline some).
    kw.setdefault("layout", "keep-all")
    result = converter.rewrite(model, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.model.graph.input) == list(model.graph.input)
    assert list(result.model.graph.output) == list(model.graph.output)
    verdict = converter.verify(model, result)
    if degenerate_ok and verdict.verdict == "incomplete":
        # Random chains can collapse to a constant (a softmax of an all-zero Relu output): then the layers after it
        # only see one repeated value. That is an honest "incomplete", never a pass, and the structure is still proved.
        unverified = [layer for layer in verdict.layers if not layer.verified]
        assert unverified and all(layer.structure == "proved" for layer in verdict.layers), verdict.to_dict()
        assert all("one repeated value" in layer.numbers_detail for layer in unverified), verdict.to_dict()
    else:
        assert verdict.passed, verdict.to_dict()
    # Never more Transposes inside the model than the rewrite alone left (the optimum may move some to its edge),
    # and exactly the optimum's.
    layout = result.report.layout
    assert layout is not None
    assert layout.transposes_final - layout.edge_final <= layout.transposes_rewritten
    if layout.transposes_optimum is not None:  # (None: no cleanup asked for)
        assert census(result.model).inside <= layout.transposes_optimum
    return result


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "gelu", "Gelu"])
def test_three_dense_layers_keep_one_transpose_in_and_one_out(act: str) -> None:
    b = Builder()
    x = "x"
    for c, k in ((8, 16), (16, 12), (12, 6)):
        x = b.dense(x, c, k)
        x = b.gelu(x) if act == "gelu" else b.op(act, x)
    model = b.model([("x", [2, H, W, 8])], [x], opset=20 if act == "Gelu" else 17)
    result = check(model)
    assert result.report.ops_rewritten["Transpose"] == 6
    assert result.report.ops_after["Transpose"] == 2 and result.report.ops_after["Conv"] == 3
    first, last = (n for n in result.model.graph.node if n.op_type == "Transpose")
    assert first.input[0] == "x" and last.output[0] == x  # in from the graph input, out to the graph output


@pytest.mark.parametrize(("layer_scale", "residual"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("act", ["gelu", "Relu"])
def test_pytorch_convnext_block_has_no_transpose_left(layer_scale: bool, residual: bool, act: str) -> None:
    model = convnext_block(layer_scale, residual, act)
    result = check(model)
    assert result.report.rewritten == 2
    ops = result.report.ops_after
    assert "Transpose" not in ops and ops["Conv"] == 2 and "MatMul" not in ops
    if layer_scale:  # gamma [C] became [C, 1, 1] for the NCHW side
        gammas = [t for t in result.model.graph.initializer if list(t.dims) == [1, 8, 1, 1]]
        assert len(gammas) == 1
        assert any(gammas[0].name in n.input for n in result.model.graph.node if n.op_type == "Mul")


def test_nhwc_residual_block_reuses_the_input_transpose() -> None:
    """MLP-Mixer style on NHWC: y = x + dense(act(dense(x))). The residual reads the NCHW copy of x."""
    b = Builder(2)
    y = b.dense(b.op("Relu", b.dense("x", 6, 24)), 24, 6)
    y = b.op("Add", y, "x")
    model = b.model([("x", [1, H, W, 6])], [y])
    result = check(model)
    assert result.report.ops_rewritten["Transpose"] == 4 and result.report.ops_after["Transpose"] == 2


def test_graph_input_and_output_layout_is_kept() -> None:
    b = Builder(3)
    y = b.op("Relu", b.dense("x", 4, 4))
    model = b.model([("x", [1, H, W, 4])], [y])
    result = check(model)
    assert result.report.ops_after["Transpose"] == 2


def test_transpose_output_that_is_a_graph_output_stays() -> None:
    b = Builder(4)
    mid = b.dense("x", 4, 5)
    out = b.dense(b.op("Relu", mid), 5, 3)
    model = b.model([("x", [1, H, W, 4])], [out, mid])  # the middle activation is also an output
    result = check(model)
    assert result.report.ops_after["Transpose"] <= result.report.ops_rewritten["Transpose"]


def test_fanout_to_an_axis_op_leaves_the_transposes_at_the_edges() -> None:
    """The layer's result is read by a Softmax over its channels and a Relu, both graph outputs: the Softmax runs
    over the channel axis in NCHW and the Transposes go to the model's edge (one in, one per output), none inside."""
    b = Builder(5)
    y = b.dense("x", 4, 6)
    soft = b.op("Softmax", y, axis=-1)
    r = b.op("Relu", y)
    model = b.model([("x", [1, H, W, 4])], [soft, r])
    result = check(model)
    after = census(result.model)
    assert (after.inside, after.edge) == (0, 3)
    softmax = next(n for n in result.model.graph.node if n.op_type == "Softmax")
    assert [a.i for a in softmax.attribute if a.name == "axis"] == [1]


def test_no_fold_transposes_keeps_the_rewrite_as_it_is() -> None:
    model = convnext_block(True, True)
    result = check(model, fold_transposes=False)
    assert result.report.ops_after["Transpose"] == 6 and result.report.cleanup is None


def test_cleanup_does_not_run_when_nothing_was_rewritten() -> None:
    b = Builder(6)
    y = b.op("Transpose", b.op("Transpose", "x", perm=[0, 2, 3, 1]), perm=[0, 3, 1, 2])
    model = b.model([("x", [1, 3, H, W])], [y])
    result = converter.rewrite(model)
    assert result.model.SerializeToString() == model.SerializeToString()


def _transposes_model(perms: list[list[int]], extra_reader: bool = False) -> onnx.ModelProto:
    b = Builder(7)
    t = "x"
    outs = []
    for i, p in enumerate(perms):
        t = b.op("Transpose", t, perm=p)
        if extra_reader and i == 0:
            outs.append(b.op("Relu", t))
    y = b.op("Sigmoid", t)
    return b.model([("x", [2, 3, H, W])], [y, *outs])


@pytest.mark.parametrize(
    ("perms", "left"),
    [
        ([[0, 2, 3, 1], [0, 3, 1, 2]], 0),  # inverse pair
        ([[0, 2, 3, 1], [0, 2, 3, 1]], 1),  # merged into one
        ([[0, 1, 2, 3]], 0),  # identity
        ([[0, 2, 3, 1]] * 3, 0),  # this perm has order 3
        ([[0, 2, 3, 1]] * 4, 1),
    ],
)
def test_cancel_transposes(perms: list[list[int]], left: int) -> None:
    model = _transposes_model(perms)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, [CancelTransposes()])
    onnx.checker.check_model(out, full_check=True)
    assert transposes(out) == left
    assert converter.verify(model, out).passed


def test_first_transpose_stays_while_something_else_reads_it() -> None:
    model = _transposes_model([[0, 2, 3, 1], [0, 3, 1, 2]], extra_reader=True)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, [CancelTransposes()])
    assert transposes(out) == 1 and converter.verify(model, out).passed


def test_identity_transpose_at_a_graph_output_renames_its_producer() -> None:
    b = Builder(8)
    y = b.op("Transpose", b.op("Transpose", b.op("Relu", "x"), perm=[0, 2, 3, 1]), perm=[0, 3, 1, 2])
    model = b.model([("x", [1, 3, H, W])], [y])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, [CancelTransposes()])
    assert [n.op_type for n in out.graph.node] == ["Relu"] and out.graph.node[0].output[0] == y
    assert converter.verify(model, out).passed


def test_cleanup_inside_an_if_branch() -> None:
    inner = Builder(9)
    y = inner.dense(inner.op("Relu", inner.dense("x", 4, 8)), 8, 4)
    branch = helper.make_graph(inner.nodes, "then", [], [helper.make_tensor_value_info(y, F32, None)], inner.inits)
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"])], "else", [], [helper.make_tensor_value_info("same", F32, None)]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=other)],
        "if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("x", F32, [1, H, W, 4])],
        [helper.make_tensor_value_info("out", F32, [1, H, W, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = converter.rewrite(model, layout="keep-all")
    assert result.report.ops_rewritten["Transpose"] == 4 and result.report.ops_after["Transpose"] == 2
    x = np.random.default_rng(0).standard_normal((1, H, W, 4)).astype(np.float32)
    assert converter.verify(model, result, inputs={"cond": np.array(True), "x": x}).passed


ELEMENTWISE = ["Relu", "Sigmoid", "Tanh", "gelu", "scale", "shift", "square", "softmax"]


@given(st.lists(st.sampled_from(ELEMENTWISE), min_size=0, max_size=5), st.integers(1, 3), st.booleans())
def test_random_chains_never_get_worse_and_stay_equal(chain: list[str], layers: int, nchw_io: bool) -> None:
    b = Builder(10)
    c = 6
    x = b.op("Transpose", "x", perm=[0, 2, 3, 1]) if nchw_io else "x"
    for _ in range(layers):
        x = b.dense(x, c, c)
        for op in chain:
            if op == "gelu":
                x = b.gelu(x)
            elif op == "scale":
                x = b.op("Mul", x, b.const(b.rng.standard_normal(c)))
            elif op == "shift":
                x = b.op("Sub", b.const(b.rng.standard_normal((W, 1))), x)  # varies along W
            elif op == "square":
                x = b.op("Mul", x, x)
            elif op == "softmax":
                x = b.op("Softmax", x, axis=-1)
            else:
                x = b.op(op, x)
    if nchw_io:
        x = b.op("Transpose", x, perm=[0, 3, 1, 2])
    shape = [2, c, H, W] if nchw_io else [2, H, W, c]
    check(b.model([("x", shape)], [x]), degenerate_ok=True)
