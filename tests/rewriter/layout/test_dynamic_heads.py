"""Attention on a dynamic sequence under ``--tokens``: head split and merge whose Reshape targets are computed.

dynamo writes a token encoder's ``view(B, S, heads, dh)`` on a dynamic sequence as a Reshape whose target is a
``Concat`` of dims read out of ``Shape`` (and ``K^T`` as ``[B*H, S, D] -> [B*H, D, S] -> [B, H, D, S]``, with
targets read from the shape of the heads tensor). Those chains take the token layout in (the Convs' channels-first
``[B, C, S]``) exactly as their static twins' constant targets do, so every Linear converts with no more
Transposes than the original, the certificate proves the folded chains, and the result is right at any sequence
length (the targets written are 0 and -1 where a size is symbolic).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converter
from converter.graph import count_ops
from converter.rewriter.layout import LAYOUT_COST
from models.graphs import Builder

C, HEADS = 16, 4
DH = C // HEADS


def _i64(b: Builder, *values: int) -> str:
    return b.const(np.array(values), np.int64)


def _dim(b: Builder, x: str, i: int) -> str:
    """``Shape(x)[i:i+1]``, as dynamo reads one dim."""
    return b.op("Shape", x, start=i, end=i + 1)


def dynamic_attention(layers: int = 2, heads_left: bool = False) -> onnx.ModelProto:
    """A BERT-like encoder on ``[N, S, C]`` with N and S dynamic, written the way dynamo exports it (with
    ``heads_left``, the split's target is ``[N, S, -1, dh]``, as HF's BERT writes it: onnx's inference cannot
    divide N and S out of that -1, the certificate's own inference does)."""
    b = Builder(21)
    x = b.layernorm("x", C)
    n, s = _dim(b, "x", 0), _dim(b, "x", 1)
    heads = b.op("Concat", n, s, _i64(b, -1 if heads_left else HEADS), _i64(b, DH), axis=0)
    merged = b.op("Concat", n, s, _i64(b, C), axis=0)
    for _ in range(layers):
        q, k, v = (b.op("Transpose", b.op("Reshape", b.dense(x, C, C), heads, allowzero=1), perm=[0, 2, 1, 3]) for _ in range(3))
        # K^T through [N*H, S, D]: its targets read from k's own shape (a second reader of k)
        shape = b.op("Shape", k)
        d = b.op("Slice", shape, _i64(b, 3), _i64(b, 4))
        length = b.op("Slice", shape, _i64(b, 2), _i64(b, 3))
        lead = b.op("Slice", shape, _i64(b, 0), _i64(b, 2))
        flat = b.op("Reshape", k, b.op("Concat", _i64(b, -1), length, d, axis=0))
        kt = b.op("Reshape", b.op("Transpose", flat, perm=[0, 2, 1]), b.op("Concat", lead, d, length, axis=0))
        scores = b.op("Softmax", b.op("MatMul", b.op("Mul", q, b.const(np.array(DH**-0.5))), kt), axis=-1)
        att = b.op("Transpose", b.op("MatMul", scores, v), perm=[0, 2, 1, 3])
        x = b.layernorm(b.op("Add", x, b.dense(b.op("Reshape", att, merged, allowzero=1), C, C)), C)
    return b.model([("x", ["N", "S", C])], [x])


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("heads_left", [False, True])
def test_computed_head_split_and_merge_take_the_token_layout_in(heads_left: bool) -> None:
    model = dynamic_attention(heads_left=heads_left)
    result = converter.rewrite(model, tokens=True)
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert report.rewritten == 8 and not [d for d in report.decisions if d.reason == LAYOUT_COST]
    assert transposes(result.model) <= transposes(model) == 10
    assert report.layout.transposes_final == transposes(result.model)

    check = converter.verify(model, result)
    assert check.passed and check.structure["proved"], check.to_dict()
    rng = np.random.default_rng(0)
    for n, s in ((2, 7), (3, 13)):  # any sequence length: the targets written follow it
        x = rng.standard_normal((n, s, C)).astype(np.float32)
        np.testing.assert_allclose(run(result.model, x), run(model, x), rtol=1e-4, atol=1e-4)
