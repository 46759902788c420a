"""QOperator ``Reshape -> QGemm -> Reshape``: a QLinearConv with the same integers and the QGemm's int32 bias.

``quant_pre_process`` turns a Linear on a 4D or rank-3 tensor into ``Reshape(x, [-1, C]) -> Gemm -> Reshape``, and
``quantize_static(..., quant_format=QOperator)`` writes the Gemm as onnxruntime's QGemm (com.microsoft) with an int32
bias (timm's ResMLP, Swin). The rank-4 sandwich converts by default, the rank-3 one under ``tokens`` (the token
layer's ``[B, C, 1, S]``); the QuantizeLinear sits on the flat rows, or x comes quantized. Proved by
``converter.verify`` (PASSED: the certificate compares the weight, every parameter and the bias with the QGemm's, the
layer check recomputes the integer sums with the bias) and by onnxruntime bit for bit. The QOperator QLinearMatMul
sandwich back to rank 3 converts the same way under ``tokens``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from tests._onnxruntime import first_output as _run
from tests.conftest import with_output_shapes

S, C_IN, K_OUT = 7, 12, 10  # S != C != K: a swapped axis shows
H, W = 3, 5


def sandwich(
    x_rank: int = 3,
    core: str = "QGemm",
    trans_b: bool = False,
    per_channel: bool = True,
    bias: bool = True,
    quantized_x: bool = True,
    seed: int = 0,
    **edit: object,
) -> onnx.ModelProto:
    """``x (float) -> [QuantizeLinear] -> Reshape [-1, C] -> [QuantizeLinear] -> QGemm | QLinearMatMul -> Reshape back ->
    DequantizeLinear``. ``quantized_x``: x is quantized before the first Reshape (the QOperator export of a model whose
    x comes out of a quantized op), else its flat rows are. ``edit``: QGemm attributes or inputs to change."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    w = rng.integers(-100, 100, (C_IN, K_OUT)).astype(np.int8)
    ws = (rng.random(K_OUT) * 0.01 + 0.002).astype(np.float32) if per_channel else np.float32(0.004)
    wz = np.zeros(K_OUT, np.int8) if per_channel else np.array(0, np.int8)
    xs, xz = np.float32(0.03), np.array(120, np.uint8)
    dims = ["B", S, C_IN] if x_rank == 3 else ["B", H, W, C_IN]
    restore = [-1, S, K_OUT] if x_rank == 3 else [-1, H, W, K_OUT]
    init("xs", xs), init("xz", xz), init("ys", np.float32(0.05)), init("yz", np.array(130, np.uint8))
    nodes = []
    x = "x"
    if quantized_x:
        nodes.append(helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], "x_quantize"))
        x = "xq"
    nodes.append(helper.make_node("Reshape", [x, init("rows_shape", np.array([-1, C_IN], np.int64))], ["rows"], "flatten"))
    rows = "rows"
    if not quantized_x:
        nodes.append(helper.make_node("QuantizeLinear", ["rows", "xs", "xz"], ["rows_q"], "rows_quantize"))
        rows = "rows_q"
    if core == "QGemm":
        stored = w.T.copy() if trans_b else w
        b = rng.integers(-3000, 3000, K_OUT).astype(np.int32)
        ins = [rows, "xs", "xz", init("w", stored), init("ws", ws), init("wz", wz), init("b", b) if bias else "", "ys", "yz"]
        for slot, name in edit.get("inputs", {}).items():  # type: ignore[attr-defined]
            ins[slot] = name
        while ins and not ins[-1]:
            ins.pop()
        attrs = {"transB": int(trans_b), **edit.get("attrs", {})}  # type: ignore[dict-item]
        nodes.append(helper.make_node("QGemm", ins, ["flat"], "qgemm", domain="com.microsoft", **attrs))
    else:
        ins = [rows, "xs", "xz", init("w", w), init("ws", ws), init("wz", wz), "ys", "yz"]
        nodes.append(helper.make_node("QLinearMatMul", ins, ["flat"], "qmatmul"))
    nodes.append(helper.make_node("Reshape", ["flat", init("target", np.array(restore, np.int64))], ["yq"], "restore"))
    nodes.append(helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], "y_dequantize"))
    for extra in edit.get("extra_inits", []):  # type: ignore[attr-defined]
        inits.append(extra)
    graph = helper.make_graph(
        nodes,
        "qgemm_sandwich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", *restore[1:]])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return with_output_shapes(helper.make_model(graph, opset_imports=opsets))


def _x(model: onnx.ModelProto, batch: int) -> np.ndarray:
    dims = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    return (np.random.default_rng(batch).standard_normal(dims) * 2).astype(np.float32)


CASES = [
    {"trans_b": False, "per_channel": True, "bias": True, "quantized_x": True},
    {"trans_b": True, "per_channel": True, "bias": True, "quantized_x": False},
    {"trans_b": False, "per_channel": False, "bias": False, "quantized_x": False},
    {"trans_b": True, "per_channel": False, "bias": True, "quantized_x": True},
]


def _case_id(t: dict) -> str:
    return "-".join(k if v else f"no-{k}" for k, v in t.items())


@pytest.mark.parametrize("x_rank", [3, 4], ids=["tokens", "rank4"])
@pytest.mark.parametrize("t", CASES, ids=_case_id)
def test_the_qgemm_sandwich_becomes_a_qlinear_conv_and_is_proved(t: dict, x_rank: int) -> None:
    model = sandwich(x_rank, **t)
    result = converter.rewrite(model, tokens=x_rank == 3, layout="keep-all")
    (d,) = result.report.decisions
    assert d.rewritten and d.rule == "qgemm_sandwich_to_conv", d
    granularity = "per_channel" if t["per_channel"] else "per_tensor"
    assert d.notes["bias_folded"] == t["bias"] and d.notes["weight_quantization"] == granularity
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    ops = count_ops(out.graph)
    assert ops["QLinearConv"] == 1 and "QGemm" not in ops and "Reshape" not in ops, ops
    conv = next(n for n in out.graph.node if n.op_type == "QLinearConv")
    inits = {i.name: numpy_helper.to_array(i) for i in [*out.graph.initializer, *model.graph.initializer]}
    # The weight's integers moved to [K, C, 1, 1], every parameter the QGemm's tensor, the bias its int32 C.
    w = inits["w"] if not t["trans_b"] else inits["w"].T
    ints = inits[conv.input[3]]
    assert ints.shape == (K_OUT, C_IN, 1, 1) and ints.reshape(K_OUT, C_IN).T.tobytes() == w.tobytes()
    assert list(conv.input[1:3]) == ["xs", "xz"] and list(conv.input[4:8]) == ["ws", "wz", "ys", "yz"]
    assert list(conv.input[8:]) == (["b"] if t["bias"] else [])

    report = converter.verify(model, result)
    assert report.verdict == "passed", report.to_dict()
    assert [(layer.structure, layer.numbers) for layer in report.layers] == [("proved", "passed")]
    for batch in (1, 3):
        x = _x(model, batch)
        want, got = _run(model, x), _run(out, x)
        assert got.shape == want.shape and len(np.unique(want)) > 20
        np.testing.assert_array_equal(got, want)  # the same sums, bias and requantization: bit for bit


def test_without_tokens_the_rank_3_sandwich_is_no_candidate() -> None:
    """Rank 3 back to rank 3 is a token layer: not converted by default (as its float twin)."""
    model = sandwich(3)
    result = converter.rewrite(model, layout="keep-all")
    assert result.report.rewritten == 0 and count_ops(result.model.graph)["QGemm"] == 1


@pytest.mark.parametrize("quantized_x", [True, False], ids=["quantized-x", "quantized-rows"])
def test_a_qlinear_matmul_sandwich_back_to_rank_3_converts_under_tokens(quantized_x: bool) -> None:
    """The QLinearMatMul sandwich (no bias: the quantizer writes a separate QLinearAdd) was declined ``tokens_quantized``."""
    model = sandwich(3, core="QLinearMatMul", quantized_x=quantized_x)
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    (d,) = result.report.decisions
    assert d.rewritten and d.rule == "qlinear_sandwich_to_conv", d
    assert converter.verify(model, result).verdict == "passed"
    x = _x(model, 2)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))


def _declined(model: onnx.ModelProto, tokens: bool = True) -> tuple[str, str]:
    result = converter.rewrite(model, tokens=tokens, layout="keep-all")
    (d,) = result.report.decisions
    assert not d.rewritten
    return d.rule, d.reason


def test_a_qgemm_with_a_float_output_is_declined() -> None:
    model = sandwich(3, inputs={7: "", 8: ""})
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    model.graph.node.remove(dq)
    next(n for n in model.graph.node if n.name == "restore").output[0] = "y"
    assert _declined(model) == ("qgemm_sandwich_to_conv", "qgemm_float_output")


def test_a_scaled_qgemm_is_declined() -> None:
    assert _declined(sandwich(3, attrs={"alpha": 0.5})) == ("qgemm_sandwich_to_conv", "gemm_alpha")


def test_a_bias_that_is_not_one_per_output_is_declined() -> None:
    per_row = numpy_helper.from_array(np.ones((1, 1), np.int32), "b_one")
    assert _declined(sandwich(3, inputs={6: "b_one"}, extra_inits=[per_row])) == ("qgemm_sandwich_to_conv", "bias_not_per_channel")


def test_a_sandwich_from_rank_4_back_to_rank_3_is_declined() -> None:
    """x [B, H, W, C] to [B*H, W*C] and back to [B, H, K]: a token layer only from rank 3."""
    model = sandwich(3)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", S, 3, 4]))
    model.graph.ClearField("value_info")
    assert _declined(with_output_shapes(model)) == ("qgemm_sandwich_to_conv", "tokens_quantized")
