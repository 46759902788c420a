"""Property test: random dense-layer graphs, in every form the rule accepts or refuses.

Each example is checked against an independent statement of the rules (what should happen)
and against onnxruntime (that whatever happened computes the same thing). More examples:
CONVERTER_HYPOTHESIS_EXAMPLES=500 pytest tests/test_properties.py
"""

from __future__ import annotations

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto

import converter
from tests.conftest import Dense, dense_model


@st.composite
def dense_graphs(draw) -> Dense:
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7).filter(lambda v: v != h))  # H != W: a swapped axis cannot hide
    c, k = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    batch = draw(st.sampled_from([1, 2, "N"]))
    spatial_symbolic = draw(st.booleans())
    x_shape = (batch, "H" if spatial_symbolic else h, "W" if spatial_symbolic else w, c)
    weight_shape = draw(st.sampled_from([(c, k), (1, c, k), (1, 1, c, k)]))
    bias = draw(st.sampled_from([None, "initializer", "constant_node", "graph_input", "runtime"]))
    bias_shape = draw(st.sampled_from([(k,), (1, k), (1, 1, 1, k), (), (1,), (1, 1, w, 1), (w, k)]))
    return Dense(
        x_shape=x_shape,
        dtype=draw(st.sampled_from([TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE])),
        weight=draw(st.sampled_from(["initializer", "initializer", "constant_node", "graph_input"])),
        weight_shape=weight_shape,
        bias=bias,
        bias_shape=bias_shape,
        bias_first=draw(st.booleans()),
        fanout=bias is not None and draw(st.booleans()),
        matmul_is_output=bias is not None and draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        extra={"h": h, "w": w},
    )


def expected(o: Dense) -> tuple[bool, bool]:
    """(rewritten, bias folded) as the issue states the rules."""
    rewritten = o.weight in ("initializer", "constant_node") and o.dtype != TensorProto.DOUBLE
    k = o.weight_shape[-1]
    per_channel = all(d == 1 for d in o.bias_shape[:-1]) and (not o.bias_shape or o.bias_shape[-1] in (1, k))
    folded = rewritten and o.bias in ("initializer", "constant_node") and per_channel and not o.fanout and not o.matmul_is_output
    return rewritten, folded


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(dense_graphs())
def test_rewrite_matches_rules_and_onnxruntime(o: Dense) -> None:
    model = dense_model(o)
    result = converter.rewrite(model)
    (decision,) = result.report.decisions
    rewritten, folded = expected(o)
    assert decision.rewritten == rewritten, decision
    if rewritten:
        assert decision.notes["bias_folded"] == folded, decision
    else:
        assert result.model.SerializeToString() == model.SerializeToString()

    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.model.graph.input) == list(model.graph.input)
    assert list(result.model.graph.output) == list(model.graph.output)
    ops = result.report.ops_after
    assert ops.get("MatMul", 0) == (0 if rewritten else 1)
    assert ops.get("Add", 0) == (0 if folded or o.bias is None else 1)

    batch = 2 if o.x_shape[0] == "N" else o.x_shape[0]
    shapes = {"x": [batch, o.extra["h"], o.extra["w"], o.x_shape[3]]}
    for name in ("W", "b"):
        if any(i.name == name for i in model.graph.input) and (name == "b" and o.bias == "runtime"):
            shapes[name] = list(o.bias_shape)
    check = converter.verify(model, result.model, input_shapes=shapes, seed=o.seed)
    assert check.passed, check.to_dict()
