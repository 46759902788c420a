"""Window attention with separate q, k and v layers under ``--tokens`` (Hugging Face's Swin and SwinV2): the three
layers read one window partition, and each brings its own Transpose into the channels-first token layout. The
optimum takes that Transpose into the partition's chain of Reshapes once; the cleanup carries that out only after
the three twins are merged into one Transpose, so the rounds go on after a merge (the chain in front of the merged
Transpose then folds). Without that, the graph kept two more Transposes than the optimum, and the safety net gave
every layer back.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import converter
from converter.rewriter.layout import census
from models.graphs import F32, Builder, with_output_shapes

N, C, H, W, P, HEADS = 2, 8, 4, 6, 2, 2  # H != W; 2x2 windows of 4 tokens


def window_attention(pad: bool = False) -> onnx.ModelProto:
    """A Hugging Face SwinV2 layer: tokens [N, H * W, C] in; the image [N, H, W, C] (padded, or not); windows
    [N * 6, 4, C]; q, k, v as three Linears, each split into heads; attention; heads merged; the output Linear;
    the windows back to tokens; a LayerNorm after the attention and the residual; an MLP with its LayerNorm and
    residual; tokens out."""
    b = Builder(21)
    hp, wp = H + 2 * pad, W + 2 * pad
    tokens, d = P * P, C // HEADS
    image = b.op("Reshape", "x", b.const(np.array([N, H, W, C]), np.int64))
    if pad:
        image = b.op("Pad", image, b.const(np.array([0, 1, 1, 0, 0, 1, 1, 0]), np.int64))
    split = b.op("Reshape", image, b.const(np.array([N, hp // P, P, wp // P, P, C]), np.int64))
    parts = b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5])
    seq = b.op("Reshape", parts, b.const(np.array([-1, tokens, C]), np.int64))
    heads = []
    for _ in range(3):
        t = b.op("Reshape", b.dense(seq, C, C), b.const(np.array([-1, tokens, HEADS, d]), np.int64))
        heads.append(b.op("Transpose", t, perm=[0, 2, 1, 3]))
    q, k, v = heads
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    att = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
    merged = b.op("Reshape", b.op("Transpose", att, perm=[0, 2, 1, 3]), b.const(np.array([-1, tokens, C]), np.int64))
    back = b.op("Reshape", b.dense(merged, C, C), b.const(np.array([N, hp // P, wp // P, P, P, C]), np.int64))
    back = b.op("Transpose", back, perm=[0, 1, 3, 2, 4, 5])
    back = b.op("Reshape", back, b.const(np.array([N, hp, wp, C]), np.int64))
    if pad:
        back = b.op("Slice", back, *(b.const(np.array(v), np.int64) for v in ([1, 1], [1 + H, 1 + W], [1, 2])))
    y = b.op("Add", "x", b.layernorm(b.op("Reshape", back, b.const(np.array([N, H * W, C]), np.int64)), C))
    out = b.op("Add", y, b.layernorm(b.dense(b.gelu(b.dense(y, C, 2 * C)), 2 * C, C), C))
    graph = helper.make_graph(
        b.nodes,
        "window_attention",
        [helper.make_tensor_value_info("x", F32, [N, H * W, C])],
        [helper.make_tensor_value_info(out, F32, None)],
        b.inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("pad", [False, True])
def test_three_layers_reading_one_window_partition_are_converted_with_no_more_transposes(pad: bool) -> None:
    model = window_attention(pad)
    result = converter.rewrite(model, tokens=True)
    layout = result.report.layout
    assert result.report.rewritten == 6, [(d.node, d.reason, d.detail) for d in result.report.decisions]
    before, after = census(model), census(result.model)
    assert after.inside <= before.inside and after.inside == layout.transposes_optimum
    check = converter.verify(model, result)
    assert check.passed and all(c.verified for c in check.layers), check.to_dict()
    x = np.random.default_rng(3).standard_normal((N, H * W, C)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, result.model)]
    want, got = (s.run(None, {"x": x})[0] for s in run)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
