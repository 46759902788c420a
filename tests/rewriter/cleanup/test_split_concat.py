"""A Transpose moves through Split (every output gets one) and Concat (every operand in the same layout).

MambaOut's gated block splits the channels of a channels-last tensor and concatenates two parts
back; both ops work on axis 3 of NHWC, which is axis 1 of NCHW.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, declines, nodes_of, same_numbers, transposes

C = 8
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


@pytest.mark.parametrize(
    ("opset", "how"),
    [(11, "attribute"), (13, "input"), (18, "num_outputs"), (13, "equal")],
)
def test_split_on_the_channels_moves_and_every_output_cancels(opset: int, how: str) -> None:
    b = Builder(31)
    t = b.op("Transpose", "x", perm=NHWC)
    sizes = [2, 3, 3] if how != "num_outputs" else [3, 3, 2]
    extra, attrs = [], {}
    if how == "attribute":
        attrs["split"] = sizes
    elif how == "input":
        extra = [b.const(sizes, np.int64)]
    elif how == "num_outputs":
        attrs["num_outputs"] = 3
    outs = [f"part{i}" for i in range(3 if how != "equal" else 2)]
    b.nodes.append(onnx.helper.make_node("Split", [t, *extra], outs, name="split", axis=3, **attrs))
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", o, perm=NCHW) for o in outs], opset=opset)
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Split")[0], "axis") == 1
    same_numbers(model, out)


def mambaout_gate(b: Builder, x: str, c: int) -> str:
    """Split(NHWC, axis=-1) into g, i, c; c through an NCHW depthwise Conv; act(g) * Concat(i, c)."""
    g, i, cc = "g", "i", "c"
    b.nodes.append(
        onnx.helper.make_node("Split", [x, b.const([c // 2, c // 4, c // 4], np.int64)], [g, i, cc], name="split", axis=-1)
    )
    conv = b.op("Transpose", b.depthwise(b.op("Transpose", cc, perm=NCHW), c // 4, 3), perm=NHWC)
    return b.op("Mul", b.op("Sigmoid", g), b.op("Concat", i, conv, axis=-1))


def test_mambaout_gate_keeps_no_transpose() -> None:
    b = Builder(32)
    y = mambaout_gate(b, b.op("Transpose", "x", perm=NHWC), C)
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    assert transposes(model) == 4
    out, _ = cleaned(model)
    assert transposes(out) == 0
    assert attr(nodes_of(out, "Split")[0], "axis") == 1 and attr(nodes_of(out, "Concat")[0], "axis") == 1
    same_numbers(model, out)


def test_split_output_nothing_reads_gets_no_transpose() -> None:
    b = Builder(33)
    t = b.op("Transpose", "x", perm=NHWC)
    b.nodes.append(onnx.helper.make_node("Split", [t, b.const([4, 4], np.int64)], ["a", "unused"], name="split", axis=3))
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", "a", perm=NCHW)], opset=13)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    same_numbers(model, out)


def test_split_whose_outputs_cannot_go_on_declines() -> None:
    """The cost check: one Transpose in, two out that would stay (a Reshape reads one)."""
    b = Builder(34)
    t = b.op("Transpose", "x", perm=NHWC)
    b.nodes.append(onnx.helper.make_node("Split", [t, b.const([4, 4], np.int64)], ["a", "r"], name="split", axis=3))
    flat = b.op("Reshape", "r", b.const([N, -1], np.int64))
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", "a", perm=NCHW), flat], opset=13)
    declines(model, "Split", "outputs_stay_transposed")


def test_split_output_that_is_a_graph_output_declines() -> None:
    b = Builder(35)
    t = b.op("Transpose", "x", perm=NHWC)
    b.nodes.append(onnx.helper.make_node("Split", [t, b.const([4, 4], np.int64)], ["a", "b"], name="split", axis=3))
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", "a", perm=NCHW), "b"], opset=13)
    declines(model, "Split", "output_is_graph_output")


@pytest.mark.parametrize("axis", [3, -1, 1])
def test_concat_of_transposes_with_the_same_perm(axis: int) -> None:
    b = Builder(36)
    y = b.op("Concat", b.op("Transpose", "x", perm=NHWC), b.op("Transpose", "z", perm=NHWC), axis=axis)
    model = b.model([("x", [N, C, H, W]), ("z", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Concat")[0], "axis") == NHWC[axis]
    same_numbers(model, out)


def test_concat_with_a_constant_operand_lays_it_out() -> None:
    b = Builder(37)
    y = b.op("Concat", b.op("Transpose", "x", perm=NHWC), b.const(b.rng.standard_normal((N, H, W, 3))), axis=3)
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    assert [list(t.dims) for t in out.graph.initializer] == [[N, 3, H, W]]  # the original is released
    same_numbers(model, out)


def test_concat_with_an_operand_in_another_layout_declines() -> None:
    b = Builder(38)
    y = b.op("Concat", b.op("Transpose", "x", perm=NHWC), "z", axis=3)
    model = b.model([("x", [N, C, H, W]), ("z", [N, H, W, 2])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    declines(model, "Concat", "operand_in_other_layout")


def test_concat_reads_an_existing_inverse_transpose_of_its_other_operand() -> None:
    """z is also brought to NCHW for another reader: Concat reads that copy instead of adding one."""
    b = Builder(39)
    z_nchw = b.op("Transpose", "z", perm=NCHW)
    y = b.op("Concat", b.op("Transpose", "x", perm=NHWC), "z", axis=3)
    model = b.model([("x", [N, C, H, W]), ("z", [N, H, W, 2])], [b.op("Transpose", y, perm=NCHW), z_nchw], opset=17)
    out, _ = cleaned(model)
    assert transposes(out) == 1 and nodes_of(out, "Concat")[0].input[1] == z_nchw
    same_numbers(model, out)
