"""Reshape -> MatMul -> Reshape (tf2onnx's Tensordot) and Reshape -> Gemm -> Reshape (onnxsim/onnxslim);
with ``tokens``, the same back to rank 3 (onnxsim on a Linear of [B, S, C], MultiheadAttention's out_proj)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import converter
from converter.graph import count_ops
from models.graphs import Builder, reshape_sandwich
from tests.conftest import assert_rewritten
from tests.rewriter.rules.test_matmul_tokens_to_conv import assert_same_numbers

FOLDED = {"Conv": 1, "Transpose": 2}


def only(result: converter.RewriteResult) -> converter.Decision:
    assert len(result.report.decisions) == 1, result.report.decisions
    return result.report.decisions[0]


@pytest.mark.parametrize("core", ["MatMul", "Gemm"])
@pytest.mark.parametrize("target", ["runtime", "slice", "static", "static_minus_one"])
@pytest.mark.parametrize("batch", [2, "N"])
def test_sandwich_becomes_conv_and_shape_subgraph_goes(core: str, target: str, batch: int | str) -> None:
    if target == "static" and batch == "N":
        pytest.skip("a static target needs a static batch")
    model = reshape_sandwich(core=core, target=target, batch=batch)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)  # no Reshape, Shape, Gather, Concat or Cast is left
    d = only(result)
    assert d.rewritten and d.rule == ("tensordot_to_conv" if core == "MatMul" else "gemm_sandwich_to_conv")
    assert d.notes == {"bias_folded": True}
    assert len(result.model.graph.initializer) == 2  # the Conv weight and its bias, nothing dead


def test_shape_nodes_used_elsewhere_stay() -> None:
    model = reshape_sandwich(share_shape=True)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {**FOLDED, "Shape": 1})


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"target": "swapped", "batch": 2}, "not_per_position"),
        ({"target": "flat", "batch": 2}, "not_per_position"),
        ({"core": "Gemm", "bias": "gemm", "trans_b": 0}, None),
    ],
)
def test_wrong_targets_decline(kw: dict, reason: str | None) -> None:
    model = reshape_sandwich(**kw)
    result = converter.rewrite(model, fold_transposes=False)
    if reason is None:
        assert only(result).rewritten
        return
    d = only(result)
    assert (d.rewritten, d.reason) == (False, reason) and d.rule == "tensordot_to_conv"
    assert result.model.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(1, 1.0, 1.0), (0, 2.0, 0.5), (1, 0.5, 3.0)])
def test_gemm_attributes_fold_into_the_conv(trans_b: int, alpha: float, beta: float) -> None:
    model = reshape_sandwich(core="Gemm", bias="gemm", trans_b=trans_b, alpha=alpha, beta=beta)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)
    assert only(result).rewritten


def test_gemm_with_bias_keeps_a_following_add() -> None:
    model = reshape_sandwich(core="Gemm", bias="gemm")
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)


def test_gemm_outside_a_sandwich_is_not_a_candidate() -> None:
    b = Builder(0)
    y = b.op("Gemm", "x", b.const(b.rng.standard_normal((6, 3))), b.const(b.rng.standard_normal(3)))
    model = b.model([("x", [2, 6])], [y])
    result = converter.rewrite(model)
    assert result.report.decisions == [] and result.model.SerializeToString() == model.SerializeToString()


def test_gemms_with_nearly_equal_alpha_get_their_own_weights() -> None:
    """alpha 1.000001 and 1.000002 print alike (``:g``) but scale the weight differently."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    nodes, outputs = [], []
    for i, alpha in enumerate([1.000001, 1.000002]):
        nodes += [
            helper.make_node("Reshape", ["x", "rows"], [f"r{i}"]),
            helper.make_node("Gemm", [f"r{i}", "B"], [f"g{i}"], alpha=alpha),
            helper.make_node("Reshape", [f"g{i}", "back"], [f"y{i}"]),
        ]
        outputs.append(vi(f"y{i}", TensorProto.FLOAT, [2, 3, 5, 6]))
    inits = [
        numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "B"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "rows"),
        numpy_helper.from_array(np.array([2, 3, 5, 6], np.int64), "back"),
    ]
    graph = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, [2, 3, 5, 4])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = converter.rewrite(model)
    weights = [n.input[1] for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(set(weights)) == 2
    values = [numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == w)) for w in weights]
    assert not np.array_equal(values[0], values[1])
    assert converter.verify(model, result).passed


# -- with tokens: a sandwich back to rank 3 is a token layer in the [B, C, 1, S] layout ------------
# (the certificate does not prove token layers yet: the numbers are compared directly, in onnxruntime)

TOKENS = {"Transpose": 2, "Unsqueeze": 1, "Conv": 1, "Squeeze": 1}
E, HEADS, KT, ST = 8, 2, 5, 7  # channels (= HEADS * E // HEADS), out width, tokens: all different


def token_sandwich(
    form: str = "runtime", core: str = "Gemm", bias: str | None = "gemm", x_dims: tuple = ("B", "S", E)
) -> onnx.ModelProto:
    """``Reshape(x, [-1, C]) -> MatMul/Gemm -> Reshape`` back to rank 3, the ways exporters write it.

    ``form``: "runtime" (onnxsim on a Linear of [B, S, C]: target Concat(Shape(x)[0:2], [K])), "static"
    (constant target), "mha_ts" (TorchScript's MultiheadAttention out_proj: heads [S, B, H, D] in S-major
    order, every target element read from the shape of the attention's input and of the Gemm's output),
    "mha_dynamo" (the same with constant targets and a -1, allowzero=1), or a wrong one: "swapped"
    (target [S, B, K] of x [B, S, C]), "dynamo_unknown_d" (a -1 while x's head size is unknown).
    """
    b = Builder(11)
    i64 = lambda v: b.const(np.array(v), np.int64)  # noqa: E731
    inputs = [("x", list(x_dims))]
    allowzero = {}
    if form in ("mha_ts", "mha_dynamo", "dynamo_unknown_d"):
        # x [B, S, C] -> T = [S, B, C] (batch_first) -> heads [S, B, H, D]
        t = b.op("Transpose", "x", perm=[1, 0, 2])
        head = E // HEADS if form != "dynamo_unknown_d" else b.op("Gather", b.op("Shape", "d"), i64(1), axis=0)
        if form == "dynamo_unknown_d":
            inputs.append(("d", [1, "D"]))
            lead = b.op("Slice", b.op("Shape", t), i64([0]), i64([2]))
            heads_shape = b.op("Concat", lead, i64([HEADS]), b.op("Unsqueeze", head, i64([0])), axis=0)
            x = b.op("Reshape", t, heads_shape)
        else:
            lead = b.op("Slice", b.op("Shape", t), i64([0]), i64([2]))
            x = b.op("Reshape", t, b.op("Concat", lead, i64([HEADS, E // HEADS]), axis=0))
        x = b.op("Relu", x)  # the attention that makes the heads
        c = E
    else:
        x, c = "x", x_dims[-1]
    if form == "mha_ts":
        shape_t = b.op("Shape", t)
        s_dim, b_dim = (b.op("Gather", shape_t, i64(i), axis=0) for i in (0, 1))
        rows_shape = b.op("Concat", b.op("Unsqueeze", b.op("Mul", b_dim, s_dim), i64([0])), i64([c]), axis=0)
    elif form in ("mha_dynamo", "dynamo_unknown_d"):
        rows_shape, allowzero = i64([-1, c]), {"allowzero": 1}
    else:
        rows_shape = i64([-1, c])
    rows = b.op("Reshape", x, rows_shape, **allowzero)
    w = b.rng.standard_normal((KT, c) if core == "Gemm" else (c, KT)) / np.sqrt(c)
    if core == "Gemm":
        flat = b.op("Gemm", rows, b.const(w), *([b.const(b.rng.standard_normal(KT))] if bias == "gemm" else []), transB=1)
    else:
        flat = b.op("MatMul", rows, b.const(w))
    if form == "runtime":
        target = b.op("Concat", b.op("Slice", b.op("Shape", "x"), i64([0]), i64([2])), i64([KT]), axis=0)
    elif form == "swapped":
        target = b.op("Concat", b.op("Gather", b.op("Shape", "x"), i64([1, 0]), axis=0), i64([KT]), axis=0)
    elif form == "static":
        target = i64([*x_dims[:2], KT])
    elif form == "mha_ts":
        k_dim = b.op("Gather", b.op("Shape", flat), i64(1), axis=0)
        target = b.op("Concat", *(b.op("Unsqueeze", d, i64([0])) for d in (s_dim, b_dim, k_dim)), axis=0)
    else:
        target = i64([ST, -1, KT])
    y = b.op("Reshape", flat, target, **allowzero)
    if bias == "add":
        y = b.op("Add", y, b.const(b.rng.standard_normal(KT) * 0.1))
    elif bias == "add4":
        y = b.op("Add", y, b.const(b.rng.standard_normal((1, 1, 1, KT)) * 0.1))
    if form.startswith("mha") or form == "dynamo_unknown_d":
        y = b.op("Transpose", y, perm=[1, 0, 2])  # back to batch first
    return b.model(inputs, [y], name=f"sandwich_{form}")


def token_run(model: onnx.ModelProto, **kw) -> converter.RewriteResult:
    return converter.rewrite(model, fold_transposes=False, tokens=True, **kw)


@pytest.mark.parametrize(
    ("form", "core", "bias", "x_dims", "extra"),
    [
        ("runtime", "Gemm", "gemm", ("B", "S", E), {}),
        ("runtime", "MatMul", "add", ("B", "S", E), {}),
        ("runtime", "MatMul", None, ("B", "S", E), {}),
        ("static", "Gemm", "gemm", (3, ST, E), {}),
        ("static", "MatMul", "add", (3, ST, E), {}),
        ("mha_ts", "Gemm", "gemm", ("B", ST, E), {"Reshape": 2, "Relu": 1, "Slice": 1, "Concat": 1}),
        ("mha_ts", "MatMul", "add", ("B", "S", E), {"Reshape": 2, "Relu": 1, "Slice": 1, "Concat": 1}),
        ("mha_dynamo", "Gemm", "gemm", ("B", ST, E), {"Reshape": 2, "Relu": 1, "Slice": 1, "Concat": 1}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_tokens_sandwich_becomes_token_conv(form: str, core: str, bias: str | None, x_dims: tuple, extra: dict) -> None:
    model = token_sandwich(form, core, bias, x_dims)
    result = token_run(model)
    # Rank-4 heads keep one Reshape, [S, B, H, D] -> [S, B, H*D]; the one that made them stays, with what feeds it.
    heads = {"Transpose": 2 + 2, "Shape": 1} if form.startswith("mha") else {}
    want = {**TOKENS, **extra, **heads}
    assert count_ops(result.model.graph) == want
    (d,) = [d for d in result.report.decisions if d.rewritten]
    assert d.rule == ("gemm_sandwich_to_conv" if core == "Gemm" else "tensordot_to_conv")
    assert d.notes == {"bias_folded": bias is not None, "tokens": True}
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    inits = {t.name: t for t in result.model.graph.initializer}
    assert list(inits[conv.input[1]].dims) == [KT, E, 1, 1] and (len(conv.input) == 3) == (bias is not None)
    if form.startswith("mha"):
        merge = next(n for n in result.model.graph.node if n.name.endswith("_merge_channels"))
        assert numpy_helper.to_array(inits[merge.input[1]]).tolist() == [0, 0, E]
        unsqueeze = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
        swap = next(n for n in result.model.graph.node if n.output[0] == unsqueeze.input[0])
        assert (swap.op_type, swap.input[0]) == ("Transpose", merge.output[0])
    shapes = ((2, ST), (3, 4), (1, 9)) if "S" in x_dims else ((2, ST), (4, ST))
    if form == "static":
        shapes = ((3, ST),)
    assert_same_numbers(model, result.model, shapes=shapes)


def test_tokens_sandwich_without_the_option_is_unchanged() -> None:
    for form, x_dims in (("runtime", ("B", "S", E)), ("mha_ts", ("B", ST, E)), ("mha_dynamo", ("B", ST, E))):
        model = token_sandwich(form, x_dims=x_dims)
        result = converter.rewrite(model, layout="keep-all")
        assert result.model.SerializeToString() == model.SerializeToString()
        assert not any(d.rewritten for d in result.report.decisions)


@pytest.mark.parametrize(("form", "x_dims"), [("swapped", ("B", "S", E)), ("dynamo_unknown_d", ("B", ST, E))])
def test_tokens_sandwich_not_per_position_declines(form: str, x_dims: tuple) -> None:
    model = token_sandwich(form, x_dims=x_dims)
    result = token_run(model)
    (d,) = result.report.decisions
    assert (d.rule, d.rewritten, d.reason) == ("gemm_sandwich_to_conv", False, "not_per_position")
    assert "first two dims" in d.detail
    assert result.model.SerializeToString() == model.SerializeToString()


def test_tokens_sandwich_rank4_bias_is_not_folded() -> None:
    model = token_sandwich("runtime", "MatMul", "add4")
    result = token_run(model)
    (d,) = [d for d in result.report.decisions if d.rewritten]
    assert d.notes == {"bias_folded": False, "bias_reason": "bias_not_per_channel", "tokens": True}
    assert count_ops(result.model.graph) == {**TOKENS, "Add": 1}
    assert_same_numbers(model, result.model)


def test_tokens_sandwich_in_rank4_stays_the_rank4_rewrite() -> None:
    model = reshape_sandwich(core="Gemm", target="runtime", batch="N")
    plain, tokens = converter.rewrite(model, fold_transposes=False), token_run(model)
    assert tokens.model.SerializeToString() == plain.model.SerializeToString()
