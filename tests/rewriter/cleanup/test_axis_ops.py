"""A Transpose moves through ops whose layout lives in axis numbers: Softmax, Slice, Pad, Squeeze, Unsqueeze, Gather.

Each graph is ``x (NCHW) -> Transpose(0,2,3,1) -> Op -> Transpose back -> output``: once the first
Transpose is below the op it meets the second and both go. Proved by structure (the Transposes
left, the op's new axes) and by onnxruntime's numbers on both graphs.
"""

from __future__ import annotations

import numpy as np
import pytest

from converter.rewriter.cleanup.handlers import Plan
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, constant, declines, nodes_of, plan_for, same_numbers, transposes

C = 6
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def around(op_type: str, opset: int = 17, back: list[int] | None = NCHW, shape: tuple[int, ...] = (N, C, H, W), **attrs):
    """x -> Transpose(NHWC) -> op_type(t, *extra inputs made by the caller) -> Transpose(back)."""
    b = Builder(11)

    def build(*extra: str):
        y = b.op(op_type, b.op("Transpose", "x", perm=NHWC), *extra, **attrs)
        if back is not None:
            y = b.op("Transpose", y, perm=back)
        return b.model([("x", list(shape))], [y], opset=opset)

    return b, build


# -- Softmax / LogSoftmax / Hardmax ----------------------------------------------------------------


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize(("axis", "new_axis"), [(-1, 1), (3, 1), (1, 2), (2, 3)])
def test_softmax_axis_is_mapped_through_the_perm(op_type: str, axis: int, new_axis: int) -> None:
    _, build = around(op_type, opset=17, axis=axis)
    model = build()
    out, _ = cleaned(model)
    assert transposes(out) == 0
    assert attr(nodes_of(out, op_type)[0], "axis") == new_axis
    same_numbers(model, out)


def test_softmax_default_axis_from_opset_13_is_the_last() -> None:
    _, build = around("Softmax", opset=13)
    model = build()
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Softmax")[0], "axis") == 1
    same_numbers(model, out)


@pytest.mark.parametrize("axis", [1, None])  # None: the default, 1 before opset 13
def test_opset_11_softmax_moves_when_the_flattened_axes_stay_together(axis: int | None) -> None:
    """Softmax-11 normalizes over axes 1.. together; NHWC's perm keeps {1, 2, 3} among themselves."""
    _, build = around("Softmax", opset=11, **({} if axis is None else {"axis": axis}))
    model = build()
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Softmax")[0], "axis") == axis
    same_numbers(model, out)


@pytest.mark.parametrize("axis", [-1, 2, 3])
def test_opset_11_softmax_on_a_later_axis_declines(axis: int) -> None:
    _, build = around("Softmax", opset=11, axis=axis)
    declines(build(), "Softmax", "softmax_axis_coerced")


@pytest.mark.parametrize("axis", [1, None])
def test_opset_11_hardmax_declines_where_the_perm_reorders_the_flattened_block(axis: int | None) -> None:
    """Hardmax-11 marks the first maximum of the flattened block: NHWC's perm keeps {1, 2, 3} together but
    reorders them, which changes which of equal values comes first."""
    _, build = around("Hardmax", opset=11, **({} if axis is None else {"axis": axis}))
    declines(build(), "Hardmax", "softmax_axis_coerced")


# -- Slice -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "new_axes"),
    [
        ([1], [4], [3], None, [1]),  # the channels
        ([1], [4], [-1], None, [1]),
        ([4, 0], [0, 3], [2, 1], [-2, 1], [3, 2]),  # W backwards, H
        ([0, 1], [2, 4], None, None, [0, 2]),  # no axes: the leading ones
    ],
)
def test_slice_axes_are_mapped(starts, ends, axes, steps, new_axes) -> None:
    b, build = around("Slice")
    extra = [b.const(starts, np.int64), b.const(ends, np.int64)]
    if axes is not None or steps is not None:
        extra.append(b.const(axes, np.int64) if axes is not None else "")
    if steps is not None:
        extra.append(b.const(steps, np.int64))
    model = build(*extra)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    node = nodes_of(out, "Slice")[0]
    assert list(constant(out, node.input[3])) == new_axes
    assert list(constant(out, node.input[1])) == starts and list(constant(out, node.input[2])) == ends
    same_numbers(model, out)


def test_opset_9_slice_attribute_axes_are_mapped() -> None:
    _, build = around("Slice", opset=9, starts=[1, 0], ends=[3, 5], axes=[3, 2])
    model = build()
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Slice")[0], "axes") == [1, 3]
    same_numbers(model, out)


def test_slice_with_computed_axes_declines() -> None:
    b = Builder(12)
    t = b.op("Transpose", "x", perm=NHWC)
    y = b.op("Slice", t, b.const([1], np.int64), b.const([3], np.int64), "axes")
    model = b.model([("x", [N, C, H, W]), ("axes", [1])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    model.graph.input[1].type.tensor_type.elem_type = 7  # int64
    verdict = plan_for(model, "Slice")
    assert verdict.code == "axes_not_constant"


# -- Pad -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_pads_are_mapped(mode: str) -> None:
    b, build = around("Pad", mode=mode)
    pads = [0, 1, 2, 0, 0, 3, 1, 0]  # NHWC: H by (1, 3), W by (2, 1)
    model = build(b.const(pads, np.int64), *([b.const(np.array(0.5))] if mode == "constant" else []))
    out, _ = cleaned(model)
    assert transposes(out) == 0
    assert list(constant(out, nodes_of(out, "Pad")[0].input[1])) == [0, 0, 1, 2, 0, 0, 3, 1]
    same_numbers(model, out)


def test_opset_18_pad_axes_are_mapped_and_pads_kept() -> None:
    b, build = around("Pad", opset=18)
    model = build(b.const([1, 2, 3, 1], np.int64), "", b.const([1, -2], np.int64))
    out, _ = cleaned(model)
    node = nodes_of(out, "Pad")[0]
    assert transposes(out) == 0
    assert list(constant(out, node.input[3])) == [2, 3] and list(constant(out, node.input[1])) == [1, 2, 3, 1]
    same_numbers(model, out)


def test_opset_10_pad_attribute_is_mapped() -> None:
    _, build = around("Pad", opset=10, pads=[0, 1, 2, 0, 0, 3, 1, 0])
    model = build()
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "Pad")[0], "pads") == [0, 0, 1, 2, 0, 0, 3, 1]
    same_numbers(model, out)


def test_pad_with_computed_pads_declines() -> None:
    b = Builder(13)
    y = b.op("Pad", b.op("Transpose", "x", perm=NHWC), "pads")
    model = b.model([("x", [N, C, H, W]), ("pads", [8])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    model.graph.input[1].type.tensor_type.elem_type = 7
    assert plan_for(model, "Pad").code == "pads_not_constant"


# -- Squeeze / Unsqueeze ---------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_axes_are_mapped_and_the_output_perm_is_narrowed(opset: int) -> None:
    b, build = around("Squeeze", opset=opset, back=[0, 2, 1], shape=(N, C, 1, W), **({"axes": [1]} if opset < 13 else {}))
    model = build(*([b.const([1], np.int64)] if opset >= 13 else []))
    out, _ = cleaned(model)
    node = nodes_of(out, "Squeeze")[0]
    axes = attr(node, "axes") if opset < 13 else list(constant(out, node.input[1]))
    # Squeeze(x, [2]) is [N, C, W]; the Transpose it leaves ([0, 2, 1]) cancels the one after.
    assert axes == [2] and transposes(out) == 0
    same_numbers(model, out)


def test_squeeze_without_axes_declines() -> None:
    _, build = around("Squeeze", opset=13, back=None, shape=(N, C, 1, W))
    declines(build(), "Squeeze", "axes_not_constant")


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize(("axes", "left"), [([0], 0), ([1], 0), ([-1], 1)])
def test_unsqueeze_keeps_its_axes_and_the_perm_grows(opset: int, axes: list[int], left: int) -> None:
    # Back to NCHW with the unit axis where Unsqueeze(x, axes) puts it: [1, N, C, H, W], [N, 1, C, H, W];
    # for the last axis Unsqueeze(x, [-1]) is [N, C, H, W, 1] and [N, C, 1, H, W] is wanted: one Transpose stays.
    back = {0: [0, 1, 4, 2, 3], 1: [0, 1, 4, 2, 3], -1: [0, 3, 4, 1, 2]}[axes[0]]
    b, build = around("Unsqueeze", opset=opset, back=back, **({"axes": axes} if opset < 13 else {}))
    model = build(*([b.const(axes, np.int64)] if opset >= 13 else []))
    out, _ = cleaned(model)
    assert transposes(out) == left
    same_numbers(model, out)


def test_unsqueeze_perm_puts_the_unit_axis_where_it_was() -> None:
    b, build = around("Unsqueeze", back=None)
    model = build(b.const([1], np.int64))
    plan = plan_for(model, "Unsqueeze")
    assert isinstance(plan, Plan) and list(plan.outputs[0]) == [0, 1, 3, 4, 2]
    out, _ = cleaned(model)
    assert transposes(out) == 1
    same_numbers(model, out)


# -- Gather ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "axis", "new_axis", "back", "left"),
    [
        ([4, 0, 2], 3, 1, NCHW, 0),  # 1-D on the channels: the perm is kept
        ([6, 1], -2, 3, NCHW, 0),  # 1-D on W
        (2, 1, 2, [0, 2, 1], 0),  # a scalar on H: [N, W, C]; Gather(x, 2, axis=2) is [N, C, W]
        ([[0, 1], [3, 2]], 3, 1, None, 1),  # 2-D indices: rank 5 out
    ],
)
def test_gather_axis_is_mapped(indices, axis: int, new_axis: int, back, left: int) -> None:
    b, build = around("Gather", back=back, axis=axis)
    model = build(b.const(np.array(indices), np.int64))
    out, _ = cleaned(model)
    assert attr(nodes_of(out, "Gather")[0], "axis") == new_axis and transposes(out) == left
    same_numbers(model, out)


def test_gather_with_computed_indices_declines() -> None:
    b = Builder(14)
    y = b.op("Gather", b.op("Transpose", "x", perm=NHWC), "i", axis=3)
    model = b.model([("x", [N, C, H, W]), ("i", [2])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    model.graph.input[1].type.tensor_type.elem_type = 7
    assert plan_for(model, "Gather").code == "indices_not_constant"


def test_gather_on_its_indices_input_declines() -> None:
    b = Builder(15)
    idx = b.op("Transpose", "i", perm=NHWC)
    y = b.op("Gather", b.const(np.arange(6.0)), idx, axis=0)
    model = b.model([("i", [N, C, H, W])], [y], opset=17)
    model.graph.input[0].type.tensor_type.elem_type = 7
    assert plan_for(model, "Gather").code == "not_data_input"


def test_a_shared_transpose_is_not_copied_into_gathers_whose_results_stay() -> None:
    """Swin's qkv: one Transpose read by three Gathers. Copies pay off only if every result can go on;
    here one goes into a MatMul, so none is made (three copies would stay where one Transpose was)."""
    b = Builder(16)
    qkv = b.op("Transpose", "x", perm=NHWC)
    q, k, v = (b.op("Gather", qkv, b.const(np.array(i), np.int64), axis=0) for i in range(3))
    scores = b.op("MatMul", b.op("Mul", q, b.const(np.array(0.5))), b.op("Transpose", k, perm=[0, 2, 1]))
    model = b.model([("x", [3, C, H, W])], [scores, b.op("MatMul", v, b.const(b.rng.standard_normal((C, 4))))], opset=17)
    assert plan_for(model, "Gather").code == "fanout_stays_transposed"
    out, _ = cleaned(model)
    assert transposes(out) == transposes(model)
    same_numbers(model, out, rtol=1e-5)
