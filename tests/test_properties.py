"""Property test: random dense-layer graphs, in every form the rule accepts or refuses.

Each example is checked against an independent statement of the rules (what should happen)
and against onnxruntime (that whatever happened computes the same thing). The fast tier draws
FAST_EXAMPLES of them; the slow tier's sweep draws the hypothesis profile's number (200, tests/conftest.py),
other ones. More examples: CONVERTER_HYPOTHESIS_EXAMPLES=500 pytest -m slow tests/test_properties.py
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

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


def inside_if(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph run inside both branches of an If; weights stay outside (outer-scope constants)."""
    outer = onnx.ModelProto()
    outer.CopyFrom(model)
    g = outer.graph
    branches = []
    for tag in ("then", "else"):
        branch = helper.make_graph(list(g.node), tag, [], list(g.output))
        branches.append(branch)
    outs = [f"{o.name}_if" for o in g.output]
    node = helper.make_node("If", ["cond"], outs, name="branch", then_branch=branches[0], else_branch=branches[1])
    new_outputs = []
    for o in g.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = f"{o.name}_if"
        new_outputs.append(vi)
    g.ClearField("node")
    g.node.append(node)
    g.ClearField("output")
    g.output.extend(new_outputs)
    g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    onnx.checker.check_model(outer)
    return outer


FAST_EXAMPLES = 50


@settings(max_examples=FAST_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(dense_graphs(), st.booleans())
def test_rewrite_matches_rules_and_onnxruntime(o: Dense, in_if: bool) -> None:
    check_rewrite(o, in_if)


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(dense_graphs(), st.booleans())
def test_rewrite_matches_rules_and_onnxruntime_full_sweep(o: Dense, in_if: bool) -> None:
    check_rewrite(o, in_if)


def check_rewrite(o: Dense, in_if: bool) -> None:
    """One example: the decisions the rules state, a valid model with the same interface, the same numbers."""
    model = inside_if(dense_model(o)) if in_if else dense_model(o)
    result = converter.rewrite(model, layout="keep-all")  # the rules' decisions, not the layout policy's
    decisions = result.report.decisions
    assert len(decisions) == (2 if in_if else 1)
    copies = len(decisions)
    rewritten, folded = expected(o)
    assert all(d.rewritten == rewritten for d in decisions), decisions
    if rewritten:
        assert all(d.notes["bias_folded"] == folded for d in decisions), decisions
    else:
        assert result.model.SerializeToString() == model.SerializeToString()

    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.model.graph.input) == list(model.graph.input)
    assert list(result.model.graph.output) == list(model.graph.output)
    ops = result.report.ops_after
    assert ops.get("MatMul", 0) == (0 if rewritten else copies)
    assert ops.get("Add", 0) == (0 if folded or o.bias is None else copies)

    batch = 2 if o.x_shape[0] == "N" else o.x_shape[0]
    shapes = {"x": [batch, o.extra["h"], o.extra["w"], o.x_shape[3]]}
    for name in ("W", "b"):
        if any(i.name == name for i in model.graph.input) and (name == "b" and o.bias == "runtime"):
            shapes[name] = list(o.bias_shape)
    if in_if:
        for cond in (True, False):
            feeds = {name: _feed(model, name, shape, o.seed) for name, shape in shapes.items()}
            feeds["cond"] = np.array(cond)
            check = converter.verify(model, result, inputs=feeds, seed=o.seed)
            assert check.passed, check.to_dict()
        return
    check = converter.verify(model, result, input_shapes=shapes, seed=o.seed)
    assert check.passed, check.to_dict()


def _feed(model: onnx.ModelProto, name: str, shape: list[int], seed: int) -> np.ndarray:
    vi = next(i for i in model.graph.input if i.name == name)
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
