"""CleanupOptions(layernorm_to_nchw=True): a LayerNormalization over the channels of a transposed NCHW
tensor is written out over axis 1 of the NCHW tensor, so the Transpose moves below it.

Numbers within 1e-5 of the original LayerNormalization (onnxruntime's own kernel).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.rewriter.cleanup import CleanupOptions
from converter.rewriter.cleanup.handlers import Plan
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, constant, declines, nodes_of, plan_for, same_numbers, transposes

C = 8
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]
ON = CleanupOptions(layernorm_to_nchw=True)


def ln_block(opset: int = 17, bias: bool = True, axis: int = -1, back: bool = True, dtype=np.float32, **attrs) -> onnx.ModelProto:
    b = Builder(41)
    t = b.op("Transpose", "x", perm=NHWC)
    scale = b.const(1 + 0.1 * b.rng.standard_normal(C), dtype)
    extra = [b.const(b.rng.standard_normal(C), dtype)] if bias else []
    y = b.op("LayerNormalization", t, scale, *extra, axis=axis, epsilon=1e-5, **attrs)
    if back:
        y = b.op("Transpose", y, perm=NCHW)
    model = b.model([("x", [N, C, H, W])], [y], opset=opset)
    if dtype != np.float32:
        model.graph.input[0].type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        model.graph.output[0].type.tensor_type.elem_type = model.graph.input[0].type.tensor_type.elem_type
    return model


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("axis", [-1, 3])
def test_layernorm_over_the_channels_becomes_nchw(opset: int, bias: bool, axis: int) -> None:
    model = ln_block(opset, bias, axis)
    out, _ = cleaned(model, ON)
    assert transposes(out) == 0 and not nodes_of(out, "LayerNormalization")
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul", *(["Add"] if bias else [])]
    for mean in nodes_of(out, "ReduceMean"):
        axes = attr(mean, "axes") if opset < 18 else list(constant(out, mean.input[1]))
        assert axes == [1] and attr(mean, "keepdims") == 1
    scale = nodes_of(out, "Mul")[-1].input[1]
    assert constant(out, scale).shape == (1, C, 1, 1)
    same_numbers(model, out, rtol=1e-5, atol=1e-5)


def test_layernorm_in_float16_computes_in_float32() -> None:
    """stash_type=1: the statistics in float32, as the ONNX function body: Cast in, Cast back before the scale."""
    model = ln_block(dtype=np.float16)
    out, _ = cleaned(model, ON)
    assert transposes(out) == 0
    casts = nodes_of(out, "Cast")
    assert [attr(c, "to") for c in casts] == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]
    feeds = {"x": np.random.default_rng(0).standard_normal((N, C, H, W)).astype(np.float16)}
    same_numbers(model, out, rtol=2e-3, atol=2e-3, feeds=feeds)  # float16 outputs: one rounding apart at most


def test_layernorm_is_kept_without_the_option() -> None:
    declines(ln_block(), "LayerNormalization", "option_off")


def test_layernorm_whose_output_stays_transposed_declines() -> None:
    """Nothing would cancel the Transpose after it: writing it out would add eight nodes for nothing."""
    model = ln_block(back=False)
    assert plan_for(model, "LayerNormalization", ON).code == "output_is_graph_output"


def test_layernorm_reading_its_statistics_declines() -> None:
    b = Builder(42)
    t = b.op("Transpose", "x", perm=NHWC)
    b.nodes.append(onnx.helper.make_node("LayerNormalization", [t, b.const(np.ones(C))], ["y", "mean"], name="ln", axis=-1))
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", "y", perm=NCHW), "mean"], opset=17)
    assert plan_for(model, "LayerNormalization", ON).code == "statistics_read"


def test_layernorm_with_a_computed_scale_declines() -> None:
    b = Builder(43)
    y = b.op("LayerNormalization", b.op("Transpose", "x", perm=NHWC), "scale", axis=-1)
    model = b.model([("x", [N, C, H, W]), ("scale", [C])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    declines(model, "LayerNormalization", "scale_not_constant", ON)


def test_layernorm_over_more_axes_reduces_over_their_images() -> None:
    """axis=2 of NHWC normalizes over W and C together: over axes [1, 3] of NCHW, scale [W, C] laid out as [1, C, 1, W]."""
    b = Builder(44)
    y = b.op("LayerNormalization", b.op("Transpose", "x", perm=NHWC), b.const(b.rng.standard_normal((W, C))), axis=2)
    model = b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=17)
    plan = plan_for(model, "LayerNormalization", ON)
    assert isinstance(plan, Plan)
    out, _ = cleaned(model, ON)
    assert transposes(out) == 0 and attr(nodes_of(out, "ReduceMean")[0], "axes") == [1, 3]
    same_numbers(model, out, rtol=1e-5, atol=1e-5)
