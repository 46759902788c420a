"""Layouts that readers of a shape, and Transposes that reach a chain late, must not hold back.

TorchScript's attention with a mask reads the sizes of the head-split queries and keys (``Shape`` of ``[B, H, S, D]``)
to build the mask; the keys' ``K^T`` is a Transpose of its own from the split, so the split's output has two
Transposes reading it, one of them read only by a ``Shape``. A shape can be read in either layout: that Transpose
goes (its Shapes read the ``K^T`` Transpose's shape, the dims picked by a Gather) and the split folds with ``K^T``
alone, as in the dynamo export. Every token Linear converts, and the model ends with exactly the Transposes the
optimum counted.

A shifted window's way back (a roll written as Slices and a Concat, then the flatten to tokens) is a chain whose
head is to take in a Transpose that the moves bring one node a round; folded before it arrives, the chain would
fold without it and the Transpose would stay (HF Swin's TorchScript export: 20 Transposes where the optimum counted
15, so nothing was converted). The real exports are the slow tier's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from converter.graph import count_ops
from converter.rewriter.layout import LAYOUT_COST, census
from models.graphs import Builder

S, C, HEADS = 6, 16, 4
DH = C // HEADS


def _i64(b: Builder, *values: int) -> str:
    return b.const(np.array(values), np.int64)


def ts_masked_attention(layers: int = 2) -> onnx.ModelProto:
    """A text encoder on ``[1, S, C]`` as TorchScript exports attention with a causal mask: the mask's size read from
    the head-split queries' and keys' shapes, ``K^T`` a Transpose of its own from the keys' split."""
    b = Builder(31)
    x = b.layernorm("x", C)
    split = _i64(b, 1, S, HEADS, DH)
    for _ in range(layers):
        q = b.op("Transpose", b.op("Reshape", b.dense(x, C, C), split), perm=[0, 2, 1, 3])
        k_split = b.op("Reshape", b.dense(x, C, C), split)
        k = b.op("Transpose", k_split, perm=[0, 2, 1, 3])  # read only by the Shape below
        v = b.op("Transpose", b.op("Reshape", b.dense(x, C, C), split), perm=[0, 2, 1, 3])
        rows = b.op("Slice", b.op("Shape", q), _i64(b, 2), _i64(b, 3))
        cols = b.op("Slice", b.op("Shape", k), _i64(b, 2), _i64(b, 3))
        ones = b.op("Expand", b.const(np.array([1.0], np.float32)), b.op("Concat", rows, cols, axis=0))
        mask = b.op("Mul", b.op("Sub", b.op("Trilu", ones, upper=0), ones), b.const(np.array(1e4, np.float32)))
        kt = b.op("Transpose", k_split, perm=[0, 2, 3, 1])
        scores = b.op("MatMul", b.op("Mul", q, b.const(np.array(DH**-0.5, np.float32))), kt)
        att = b.op("MatMul", b.op("Softmax", b.op("Add", scores, mask), axis=-1), v)
        merged = b.op("Reshape", b.op("Transpose", att, perm=[0, 2, 1, 3]), _i64(b, 1, S, C))
        x = b.layernorm(b.op("Add", x, b.dense(merged, C, C)), C)
        x = b.layernorm(b.op("Add", x, b.dense(b.gelu(b.dense(x, C, 2 * C)), 2 * C, C)), C)
    return b.model([("x", [1, S, C])], [x])


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)


def rewritten(model: onnx.ModelProto) -> converter.RewriteResult:
    """Rewrite with ``--tokens`` and prove it: every layer converted, the certificate and the numbers, and exactly
    the Transposes the optimum counted."""
    result = converter.rewrite(model, tokens=True)
    onnx.checker.check_model(result.model, full_check=True)
    assert not [d for d in result.report.decisions if d.reason == LAYOUT_COST], result.report.decisions
    check = converter.verify(model, result)
    assert check.passed and check.structure["proved"], check.to_dict()
    layout = result.report.layout
    assert layout.transposes_optimum + layout.edge_optimum == layout.transposes_final == transposes(result.model)
    return result


def test_a_transpose_read_only_by_shapes_does_not_hold_the_head_split() -> None:
    model = ts_masked_attention()
    result = rewritten(model)
    assert result.report.rewritten == 12
    assert transposes(result.model) < transposes(model) == 10
    # the keys' own Transpose for the mask is gone: no Transpose is read by Shapes alone
    readers: dict[str, list[str]] = {}
    for n in result.model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    kept = [n.name for n in result.model.graph.node if n.op_type == "Transpose" and set(readers.get(n.output[0], [])) == {"Shape"}]
    assert not kept


# HF Swin and CLIP's text encoder, exported by TorchScript: the mask's Shape reads the head split (CLIP), and the
# shifted windows' way back waits for its Transpose (Swin). Small configs, random weights.
_REAL = {
    "hf_swin_tiny": (
        "Swin",
        ("SwinConfig", "SwinModel"),
        dict(image_size=64, patch_size=4, embed_dim=32, depths=[2, 1], num_heads=[2, 4], window_size=4),
        ("x", (1, 3, 64, 64), False),
    ),
    "hf_clip_text_tiny": (
        "CLIP text",
        ("CLIPTextConfig", "CLIPTextModel"),
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        ),
        ("input_ids", (1, 16), True),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_REAL))
def test_a_torchscript_export_converts_every_token_linear_with_the_transposes_counted(tmp_path: Path, name: str) -> None:
    pytest.importorskip("transformers")
    from models.layout_corpus import FAMILIES, CorpusModel, Input, _hf, build_one

    description, (config, cls), kwargs, (input_name, shape, ids) = _REAL[name]
    inputs = (Input(input_name, shape, ids=True, high=512),) if ids else (Input(input_name, shape),)
    spec = CorpusModel(name, FAMILIES[0], description, _hf(config, cls, **kwargs), inputs, needs="transformers")
    (row,) = build_one(spec, ["static"], ["ts"], tmp_path)
    assert "export_error" not in row, row.get("export_error")
    model = onnx.load(str(tmp_path / row["file"]))
    result = converter.rewrite(model, tokens=True)
    linears = [d for d in result.report.decisions if d.op_type in ("MatMul", "Gemm") and d.reason != "weight_not_constant"]
    assert linears and all(d.rewritten for d in linears), [(d.node, d.reason, d.detail) for d in linears if not d.rewritten]
    layout = result.report.layout
    assert layout.transposes_optimum + layout.edge_optimum == layout.transposes_final
    assert census(result.model).inside <= census(model).inside
    assert converter.verify(model, result).verdict == "passed"
