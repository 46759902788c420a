"""A Transpose moves through reductions over constant axes (attribute or input).

keepdims=1 keeps the perm (the Transpose back cancels it); keepdims=0 narrows it to the kept axes
(none left for a global pool over H and W). Proved by structure and by onnxruntime's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from converter.rewriter.cleanup.handlers import Plan
from converter.rewriter.cleanup.handlers.reductions import REDUCE
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, constant, nodes_of, plan_for, same_numbers, transposes

C = 6
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def reduction(op_type: str, axes: list[int] | None, keepdims: int, opset: int, back: list[int] | None, **attrs):
    b = Builder(21)
    from_input = opset >= (13 if op_type == "ReduceSum" else 18)
    extra = [b.const(axes, np.int64)] if from_input and axes is not None else []
    if not from_input and axes is not None:
        attrs["axes"] = axes
    y = b.op(op_type, b.op("Transpose", "x", perm=NHWC), *extra, keepdims=keepdims, **attrs)
    if back is not None:
        y = b.op("Transpose", y, perm=back)
    return b.model([("x", [N, C, H, W])], [y], opset=opset)


def axes_after(model, op_type: str) -> list[int]:
    node = nodes_of(model, op_type)[0]
    return attr(node, "axes") if len(node.input) < 2 else list(constant(model, node.input[1]))


@pytest.mark.parametrize("op_type", sorted(REDUCE))
@pytest.mark.parametrize("opset", [13, 18])
def test_keepdims_keeps_the_perm(op_type: str, opset: int) -> None:
    """ReduceL2 over NHWC's [1, 2] (GRN's norm over H and W) is over [2, 3] of NCHW."""
    model = reduction(op_type, [1, 2], 1, opset, NCHW)
    out, _ = cleaned(model)
    assert transposes(out) == 0 and axes_after(out, op_type) == [2, 3]
    same_numbers(model, out, low=0.5, rtol=1e-5)  # positive inputs: ReduceLog* and ReduceProd stay tame


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize(
    ("axes", "new_axes", "back", "left"), [([1, 2], [2, 3], None, 0), ([-1], [1], None, 0), ([2], [3], None, 1)]
)
def test_keepdims_0_narrows_the_perm(opset: int, axes, new_axes, back, left: int) -> None:
    """Global pooling in NHWC ([N, C] out) and a mean over the channels ([N, H, W]) need no Transpose at all."""
    model = reduction("ReduceMean" if opset < 18 else "ReduceSum", axes, 0, opset, None)
    op = nodes_of(model, "ReduceMean" if opset < 18 else "ReduceSum")[0].op_type
    out, _ = cleaned(model)
    assert axes_after(out, op) == new_axes and transposes(out) == left
    same_numbers(model, out, rtol=1e-5)


def test_keepdims_0_perm_is_the_perm_on_the_kept_axes() -> None:
    plan = plan_for(reduction("ReduceMax", [1], 0, 17, None), "ReduceMax")
    # Kept: t's axes 0, 2, 3 are x's 0, 3, 1; ReduceMax(x, [2]) has them as 0, 2, 1.
    assert isinstance(plan, Plan) and list(plan.outputs[0]) == [0, 2, 1]


@pytest.mark.parametrize(("keepdims", "left"), [(1, 0), (0, 0)])
def test_no_axes_reduces_everything(keepdims: int, left: int) -> None:
    model = reduction("ReduceMean", None, keepdims, 18, NCHW if keepdims else None)
    out, _ = cleaned(model)
    assert transposes(out) == left
    same_numbers(model, out, rtol=1e-5)


def test_noop_with_empty_axes_is_an_identity() -> None:
    model = reduction("ReduceSum", None, 1, 13, NCHW, noop_with_empty_axes=1)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    same_numbers(model, out)


def test_computed_axes_decline() -> None:
    b = Builder(22)
    y = b.op("ReduceSum", b.op("Transpose", "x", perm=NHWC), "axes", keepdims=1)
    model = b.model([("x", [N, C, H, W]), ("axes", [2])], [b.op("Transpose", y, perm=NCHW)], opset=13)
    model.graph.input[1].type.tensor_type.elem_type = 7
    assert plan_for(model, "ReduceSum").code == "axes_not_constant"


def test_bad_axes_decline() -> None:
    model = reduction("ReduceMean", [1, -3], 1, 17, NCHW)  # the same axis twice
    assert plan_for(model, "ReduceMean").code == "bad_axes"


def test_reduction_reading_the_transpose_on_its_axes_input_declines() -> None:
    b = Builder(24)
    y = b.op("ReduceSum", "x", b.op("Transpose", b.const([1, 2], np.int64), perm=[0]), keepdims=1)
    model = b.model([("x", [N, C, H, W])], [y], opset=13)
    assert plan_for(model, "ReduceSum").code == "not_data_input"


def test_a_shared_transpose_moves_into_a_pool_that_needs_no_transpose_after() -> None:
    """The head of a network: the NHWC features are pooled ([N, C]) and also returned; the pool reads NCHW."""
    b = Builder(25)
    t = b.op("Transpose", "x", perm=NHWC)
    pooled = b.op("ReduceMean", t, axes=[1, 2], keepdims=0)
    model = b.model([("x", [N, C, H, W])], [pooled, b.op("Transpose", b.op("Relu", t), perm=NCHW)], opset=17)
    out, _ = cleaned(model)
    assert transposes(out) == 0 and attr(nodes_of(out, "ReduceMean")[0], "axes") == [2, 3]
    same_numbers(model, out, rtol=1e-5)
