"""Blocks as PyTorch exports them, where a channels-last stream used to stop the cleanup, through converter.rewrite.

- MambaOut's gated CNN block: ``Conv -> Transpose -> LayerNorm -> Linear -> Split(axis=-1) -> (g, i, c)``,
  ``c`` through ``Transpose -> depthwise Conv -> Transpose``, ``act(g) * Concat(i, c) -> Linear -> + shortcut``.
- ConvNeXt V2's GRN: ``ReduceL2(axes=[1, 2]) / (ReduceMean(axis=-1) + eps)`` between its two Linears.
- A Softmax over the channels after a Linear.

``converter.rewrite`` with its defaults must never leave more Transposes than the original. The
cleanup's own reach is shown on the rules' output (every layer rewritten) with the passes run
directly, by exact counts; numbers come from onnxruntime on the original and the result.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import converter
from converter.rewriter import CLEANUP
from converter.rewriter.cleanup import CleanupOptions, run_passes
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, same_numbers, transposes

NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]
C = 8


def mambaout(opset: int = 17) -> onnx.ModelProto:
    b = Builder(51)
    stem = b.op("Conv", "x", b.const(b.rng.standard_normal((C, 3, 3, 3)) / 3), pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    s = b.op("Transpose", stem, perm=NHWC)  # the channels-last stream
    y = b.dense(b.layernorm(s, C), C, 24)
    g, i, c = "g", "i", "c"
    b.nodes.append(onnx.helper.make_node("Split", [y, b.const([12, 8, 4], np.int64)], [g, i, c], name="split", axis=-1))
    c = b.op("Transpose", b.depthwise(b.op("Transpose", c, perm=NCHW), 4, 3), perm=NHWC)
    y = b.op("Mul", b.gelu(g), b.op("Concat", i, c, axis=-1))
    y = b.op("Add", b.dense(y, 12, C), s)
    head = b.op("Conv", b.op("Transpose", y, perm=NCHW), b.const(b.rng.standard_normal((4, C, 1, 1))), kernel_shape=[1, 1])
    return b.model([("x", [N, 3, H, W])], [head], opset=opset)


def grn_block(opset: int = 17) -> onnx.ModelProto:
    b = Builder(52)
    y = b.dense(b.layernorm(b.op("Transpose", b.depthwise("x", C), perm=NHWC), C), C, 4 * C)
    y = b.gelu(y)
    if opset >= 18:
        gx = b.op("ReduceL2", y, b.const([1, 2], np.int64), keepdims=1)
        mean = b.op("ReduceMean", gx, b.const([-1], np.int64), keepdims=1)
    else:
        gx = b.op("ReduceL2", y, axes=[1, 2], keepdims=1)
        mean = b.op("ReduceMean", gx, axes=[-1], keepdims=1)
    nx = b.op("Div", gx, b.op("Add", mean, b.const(np.array(1e-6))))
    gamma, beta = b.const(b.rng.standard_normal(4 * C) * 0.1), b.const(b.rng.standard_normal(4 * C) * 0.1)
    y = b.op("Add", b.op("Add", b.op("Mul", gamma, b.op("Mul", y, nx)), beta), y)
    y = b.op("Transpose", b.dense(y, 4 * C, C), perm=NCHW)
    return b.model([("x", [N, C, H, W])], [b.op("Add", "x", y)], opset=opset)


def softmax_after_dense(opset: int = 17) -> onnx.ModelProto:
    b = Builder(53)
    y = b.op("Softmax", b.dense(b.op("Transpose", "x", perm=NHWC), C, 6), axis=-1)
    return b.model([("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], opset=opset)


def every_layer_then_cleanup(model: onnx.ModelProto, options: CleanupOptions | None = None) -> tuple[onnx.ModelProto, int]:
    """The rules' output with every layer rewritten, and the cleanup run on it: (result, Transposes before cleanup)."""
    rewritten = converter.rewrite(model, fold_transposes=False).model
    before = transposes(rewritten)
    run_passes(rewritten, CLEANUP, options=options)
    onnx.checker.check_model(rewritten, full_check=True)
    return rewritten, before


CASES = {
    # name: (builder, Transposes in the original, left by the cleanup, left with layernorm_to_nchw)
    "mambaout": (mambaout, 4, 2, 0),
    "grn": (grn_block, 2, 2, 0),
    "softmax": (softmax_after_dense, 2, 0, 0),
}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cleanup_reaches_through_the_block(case: str, opset: int) -> None:
    build, original, left, left_nchw = CASES[case]
    model = build(opset)
    assert transposes(model) == original
    out, rewritten = every_layer_then_cleanup(model)
    assert rewritten > original and transposes(out) == left
    same_numbers(model, out, rtol=1e-4, atol=1e-5)  # the Convs sum in another order than the MatMuls
    out, _ = every_layer_then_cleanup(model, CleanupOptions(layernorm_to_nchw=True))
    assert transposes(out) == left_nchw
    same_numbers(model, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_never_leaves_more_transposes(case: str) -> None:
    model = CASES[case][0]()
    result = converter.rewrite(model)
    assert result.report.ops_after.get("Transpose", 0) <= transposes(model)
    same_numbers(model, result.model, rtol=1e-4, atol=1e-5)
