"""The manager and its workspace: a worse graph goes back byte for byte, node order stays valid, output is deterministic."""

from __future__ import annotations

import onnx
import pytest

from converter.rewriter.cleanup import run_passes
from models.graphs import Builder
from tests.rewriter.cleanup._harness import PASSES, H, N, W, cleaned, nodes_of, same_numbers, transposes

C = 6
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def test_a_worse_graph_is_put_back_byte_for_byte() -> None:
    """Both readers take the Transpose and nothing cancels the copies: two Transposes instead of one, so nothing changes."""
    b = Builder(61)
    t = b.op("Transpose", "x", perm=NHWC)
    w = b.const(b.rng.standard_normal((C, 3)))
    ys = [b.op("MatMul", b.op("Softmax", t, axis=-1), w), b.op("MatMul", b.op("Relu", t), w)]
    model = b.model([("x", [N, C, H, W])], ys, opset=17)
    out, report = cleaned(model)
    assert report.reverted_graphs == 1 and transposes(out) == 1
    assert out.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("copy_first", [True, False])
def test_an_existing_copy_made_later_in_the_list_is_moved_before_its_reader(copy_first: bool) -> None:
    """Add reads z in NCHW through a Transpose that the node list has after it: the list is put in order."""
    b = Builder(62)
    copy = b.op("Transpose", "z", perm=NCHW) if copy_first else None
    y = b.op("Add", b.op("Transpose", "x", perm=NHWC), "z")
    y = b.op("Transpose", y, perm=NCHW)
    if copy is None:
        copy = b.op("Transpose", "z", perm=NCHW)
    model = b.model([("x", [N, C, H, W]), ("z", [N, H, W, C])], [y, b.op("Sigmoid", copy)], opset=17)
    out, _ = cleaned(model)  # the checker refuses a list where a tensor is read before it is made
    assert transposes(out) == 1
    assert nodes_of(out, "Add")[0].input[1] == nodes_of(out, "Transpose")[0].output[0]
    same_numbers(model, out)


def test_same_input_same_bytes_and_a_second_run_changes_nothing() -> None:
    b = Builder(63)
    t = b.op("Transpose", "x", perm=NHWC)
    y = b.op("ReduceMean", b.op("Mul", b.op("Relu", t), b.const(b.rng.standard_normal(C))), axes=[1, 2], keepdims=1)
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    first, _ = cleaned(model)
    second, _ = cleaned(model)
    assert first.SerializeToString() == second.SerializeToString()
    again = onnx.ModelProto()
    again.CopyFrom(first)
    report = run_passes(again, PASSES)
    assert not any(report.changes.values()) and again.SerializeToString() == first.SerializeToString()
    assert transposes(first) == 0
    same_numbers(model, first)


def test_value_info_of_tensors_that_went_away_is_dropped() -> None:
    b = Builder(64)
    mid = b.op("Transpose", "x", perm=NHWC)
    y = b.op("Transpose", b.op("Relu", mid), perm=NCHW)
    model = b.model([("x", [N, C, H, W])], [y], opset=17)
    model = onnx.shape_inference.infer_shapes(model)
    assert {v.name for v in model.graph.value_info} >= {mid}
    out, _ = cleaned(model)
    names = {v.name for v in out.graph.value_info}
    made = {o for n in out.graph.node for o in n.output}
    assert mid not in names and names <= made


def test_a_constant_read_through_identity_and_transpose_is_laid_out_and_its_chain_goes() -> None:
    """gamma read through Identity (TorchScript) and c through its own Transpose: both are constants; once
    re-laid out for NCHW, the nodes that only made them go, the Transpose of c among them."""
    b = Builder(65)
    t = b.op("Transpose", "x", perm=NHWC)
    gamma = b.op("Identity", b.const(b.rng.standard_normal(C)))
    c = b.op("Transpose", b.const(b.rng.standard_normal((1, C, 1, W))), perm=NHWC)
    y = b.op("Add", b.op("Mul", t, gamma), c)
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    out, _ = cleaned(model)
    assert [n.op_type for n in out.graph.node] == ["Mul", "Add"]
    assert sorted(list(t.dims) for t in out.graph.initializer) == [[1, C, 1, 1], [1, C, 1, W]]
    same_numbers(model, out)


def test_a_transpose_of_a_constant_is_not_moved() -> None:
    """Swin's relative position bias: Add(scores, Unsqueeze(Transpose(table))). A Transpose of a constant is a
    constant (folded before anything runs): moving it through the Unsqueeze gains nothing, and the ops it would
    move through only ever see constants (the dynamo Swin-T export's certificate could not follow such a move)."""
    import numpy as np

    import converter

    b = Builder(66)
    table = b.op("Transpose", b.const(b.rng.standard_normal((W, H, C))), perm=[1, 0, 2])
    scores = b.op("Add", "s", b.op("Unsqueeze", table, b.const(np.array([0]), np.int64)))
    model = b.model([("x", [N, H, W, C]), ("s", [N, H, W, C])], [b.dense("x", C, C), scores], opset=17)
    result = converter.rewrite(model, layout="keep-all")
    kept = [n for n in result.model.graph.node if n.op_type == "Transpose" and list(n.attribute[0].ints) == [1, 0, 2]]
    assert len(kept) == 1 and kept[0].output[0] == table  # still where the model had it
    report = converter.verify(model, result)
    assert report.passed and report.structure["proved"], report.to_dict()
