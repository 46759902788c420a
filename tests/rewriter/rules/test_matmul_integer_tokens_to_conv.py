"""DynamicQuantizeLinear + MatMulInteger on a token sequence [B, S, C] -> ConvInteger in [B, C, 1, S] between the
token layout's Transposes (``matmul_integer_tokens_to_conv``, with ``tokens``).

The rank-4 rule's hand-built layers (every signedness, per tensor and per channel, uniform zero points, the int8
weight written uint8 + 128) on a token sequence, and what ``quantize_dynamic`` writes for a transformer MLP (the
form BERT-like encoders are shipped in); proved by structure and by numbers (the certificate, the exact int32 sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import converter
from tests.conftest import C, K, assert_rewritten
from tests.rewriter.rules.test_integer_matmul_to_conv import DYNAMIC, L
from tests.rewriter.rules.test_qlinear_matmul_tokens_to_conv import SHAPES, TOKEN_OPS, on_tokens, quantized_mlp


@pytest.mark.parametrize("q", [q for q in DYNAMIC if not q.x_signed], ids=lambda q: q.id)
def test_a_dynamic_token_layer_becomes_a_convinteger(q: L) -> None:
    model = on_tokens(q)
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    ops = TOKEN_OPS | {"DynamicQuantizeLinear": 1, "ConvInteger": 1, "Cast": 1, "Mul": 2}
    assert_rewritten(model, result, ops, input_shapes=SHAPES)
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == "matmul_integer_tokens_to_conv"
    conv = next(n for n in result.model.graph.node if n.op_type == "ConvInteger")
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    got = inits[conv.input[1]].reshape(K, C).T
    expected = (w.astype(np.int16) + 128).astype(np.uint8) if q.shifted else w
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert d.notes.get("weight") == ("int8_as_uint8_plus_128" if q.shifted else None)


def test_onnxruntimes_dynamic_mlp_converts_bit_for_bit() -> None:
    model = quantized_mlp("dynamic")
    for layout in ("optimal", "keep-all"):
        result = converter.rewrite(model, tokens=True, layout=layout)
        assert [d.rule for d in result.report.decisions if d.rewritten] == ["matmul_integer_tokens_to_conv"] * 2
        check = converter.verify(model, result, input_shapes=SHAPES)
        assert check.passed and check.structure["proved"] and all(layer.verified for layer in check.layers), check.to_dict()


def test_declines_with_the_rank_4_rules_reasons() -> None:
    varying = L(dynamic=True, w_signed=False, per_channel=True, symmetric=False, seed=3)
    d = converter.rewrite(on_tokens(varying), tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "per_channel_zero_point_unsupported"
    d = converter.rewrite(on_tokens(L(dynamic=True))).report.decisions[0]
    assert not d.rewritten and d.reason == "rank_not_4"
