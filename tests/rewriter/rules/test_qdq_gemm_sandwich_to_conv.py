"""QDQ ``Reshape -> Gemm -> Reshape`` -> Transpose, the activation's pair, Conv of a DequantizeLinear weight (and bias),
the output's pair, Transpose.

Hand-built QDQ Gemm sandwiches in every signedness, granularity, ``transB`` and bias kind (int32 through
DequantizeLinear, float, none), a per-channel axis along either dim of either weight layout; and
``onnxruntime.quantization.quantize_static`` (QDQ) on float Gemm sandwiches, converted by ``convert``. Proved by
structure (op counts, the integers moved bit for bit, the axis, the same scale / zero point / bias tensors), by
``converter.verify`` (certificate and each layer's numbers) and by onnxruntime (N > 1, H != W: outputs within one
step of the output's quantization); every decline by its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

import converter
from converter.graph import count_ops
from converter.verifier.certificate.walk import certify
from models.graphs import Builder, reshape_sandwich
from models.quantized import RandomReader
from tests.conftest import W_, C, H, K, assert_rewritten, with_output_shapes

RULE = "qdq_gemm_sandwich_to_conv"


@dataclass(frozen=True)
class G:
    """One QDQ Gemm sandwich: how its weight, bias and activation are quantized, and the Gemm's attributes."""

    signed: bool = True
    per_channel: bool = True
    trans_b: bool = True
    channel_dim: str = "K"  # the per-channel axis: along the output channels K, or the input channels C
    bias: str = "int32"  # int32 | float | none
    in_pair: bool = True
    out_pair: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    bias_reader: str = "none"  # none | relu (another node reads the bias) | output (the bias is a graph output)
    seed: int = 0


def _quantize(w: np.ndarray, g: G, axis: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(integers, scale, zero point) of ``w`` as stored, per tensor or along ``axis``."""
    lo, hi = (-128, 127) if g.signed else (0, 255)
    dtype = np.int8 if g.signed else np.uint8
    if axis is None:
        scale, shape = np.float32(np.abs(w).max() / 127.0), ()
    else:
        shape = (w.shape[axis],)
        scale = (np.abs(w).max(axis=1 - axis) / 127.0).astype(np.float32)
    zero = np.full(shape, 0 if g.signed else 128, dtype)
    bcast = scale if axis is None else np.expand_dims(scale, 1 - axis)
    z = zero.astype(np.int32) if axis is None else np.expand_dims(zero.astype(np.int32), 1 - axis)
    ints = np.clip(np.round(w / bcast) + z, lo, hi).astype(dtype)
    return ints, np.asarray(scale, np.float32), zero


def qdq_gemm(g: G = G(), c: int = C, k: int = K) -> onnx.ModelProto:
    rng = np.random.default_rng(g.seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    a_dtype = np.int8 if g.signed else np.uint8
    nodes.append(helper.make_node("Reshape", ["x", init("rows_shape", np.array([-1, c], np.int64))], ["rows"], "flatten"))
    a = "rows"
    if g.in_pair:
        init("xs", np.float32(0.05)), init("xz", np.array(3 if g.signed else 131, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", ["rows", "xs", "xz"], ["rows_q"], "x_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["rows_q", "xs", "xz"], ["rows_dq"], "x_dq"))
        a = "rows_dq"
    w = (rng.standard_normal((c, k)) / np.sqrt(c)).astype(np.float32)
    stored = np.ascontiguousarray(w.T) if g.trans_b else w
    k_axis, c_axis = (0, 1) if g.trans_b else (1, 0)
    axis = (k_axis if g.channel_dim == "K" else c_axis) if g.per_channel else None
    w_q, w_s, w_z = _quantize(stored, g, axis)
    attrs = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node("DequantizeLinear", [init("wq", w_q), init("ws", w_s), init("wz", w_z)], ["w"], "w_dq", **attrs))
    gemm_in = [a, "w"]
    outputs = []
    if g.bias == "int32":
        per_k = g.per_channel and g.channel_dim == "K"
        # As the quantizer writes it: per output channel [K] along axis 0, or per tensor as scale [1], zero point [].
        b_scale = (0.05 * w_s).astype(np.float32) if per_k else np.array([0.05 * 0.01], np.float32)
        b_q = np.round(rng.standard_normal(k) * 0.1 / b_scale).astype(np.int32)
        b_zero = np.zeros(k, np.int32) if per_k else np.array(0, np.int32)
        b_attrs = {"axis": 0} if per_k else {}
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [init("bq", b_q), init("bs", b_scale), init("bz", b_zero)], ["b"], "b_dq", **b_attrs
            )
        )
        gemm_in.append("b")
    elif g.bias == "float":
        gemm_in.append(init("b", (rng.standard_normal(k) * 0.1).astype(np.float32)))
    if g.bias_reader == "relu":
        nodes.append(helper.make_node("Relu", ["b"], ["side"], "side"))
        outputs.append("side")
    elif g.bias_reader == "output":
        outputs.append("b")
    gemm_attrs = {"transB": int(g.trans_b), "alpha": g.alpha, "beta": g.beta}
    if g.trans_a:
        gemm_attrs["transA"] = 1
    nodes.append(helper.make_node("Gemm", gemm_in, ["flat"], "gemm", **gemm_attrs))
    flat = "flat"
    if g.out_pair:
        init("ys", np.float32(0.04)), init("yz", np.array(0 if g.signed else 128, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", ["flat", "ys", "yz"], ["flat_q"], "y_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["flat_q", "ys", "yz"], ["flat_dq"], "y_dq"))
        flat = "flat_dq"
    nodes.append(helper.make_node("Reshape", [flat, init("y_shape", np.array([-1, H, W_, k], np.int64))], ["y"], "restore"))
    graph = helper.make_graph(
        nodes,
        "qdq_gemm_sandwich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H, W_, c])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ["y", *outputs]],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _node(model: onnx.ModelProto, output: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if output in n.output)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _axis(node: onnx.NodeProto) -> int | None:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)


def _conv(model: onnx.ModelProto) -> onnx.NodeProto:
    (conv,) = (n for n in model.graph.node if n.op_type == "Conv")
    return conv


def _ops(g: G, bias_copied: bool = False) -> dict[str, int]:
    """The op counts after the rewrite alone: two Transposes, the pairs moved, the weight's (and bias's) DequantizeLinear."""
    pairs = int(g.in_pair) + int(g.out_pair)
    dq = pairs + 1 + (g.bias == "int32") + bias_copied
    ops = {"Transpose": 2, "Conv": 1, "DequantizeLinear": dq}
    if pairs:
        ops["QuantizeLinear"] = pairs
    if g.bias_reader == "relu":
        ops["Relu"] = 1
    return ops


def _ids(g: G) -> str:
    return f"{'s8' if g.signed else 'u8'}-{'channel' if g.per_channel else 'tensor'}-transB{int(g.trans_b)}-{g.bias}"


CASES = [
    G(signed=s, per_channel=p, trans_b=t, bias=b)
    for s in (True, False)
    for p in (True, False)
    for t in (True, False)
    for b in ("int32", "float")
]


@pytest.mark.parametrize("g", CASES, ids=_ids)
def test_the_sandwich_becomes_a_qdq_conv(g: G) -> None:
    model = qdq_gemm(g)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, _ops(g))
    (d,) = result.report.decisions
    assert d.rewritten and d.rule == RULE
    assert d.notes["bias_folded"] and "bias_reason" not in d.notes
    assert d.notes.get("bias_quantized", False) == (g.bias == "int32")
    assert d.notes["weight_quantization"] == ("per_channel" if g.per_channel else "per_tensor")
    out = result.model
    conv = _conv(out)
    assert [helper.get_attribute_value(a) for a in conv.attribute] == [[1, 1]]
    # The weight: the integers moved, not changed; the same scale and zero point; the axis on K (0).
    w_dq = _node(out, conv.input[1])
    ints, original = _init(out, w_dq.input[0]), _init(model, "wq")
    assert ints.dtype == original.dtype and ints.shape == (K, C, 1, 1)
    assert ints.reshape(K, C).tobytes() == (original if g.trans_b else np.ascontiguousarray(original.T)).tobytes()
    assert list(w_dq.input[1:]) == ["ws", "wz"]
    assert _axis(w_dq) == (0 if g.per_channel else None)
    # The bias: the quantizer's DequantizeLinear again (the same tensors), or the float vector as it is.
    if g.bias == "int32":
        b_dq = _node(out, conv.input[2])
        assert b_dq.op_type == "DequantizeLinear" and list(b_dq.input) == ["bq", "bs", "bz"]
        assert not any(n.name == "b_dq" for n in out.graph.node)  # the original went with the Gemm
    else:
        assert conv.input[2] == "b"
    # Conv between the activation's DequantizeLinear and the output's QuantizeLinear, the QDQ Conv form.
    x_dq = _node(out, conv.input[0])
    assert x_dq.op_type == "DequantizeLinear" and _node(out, x_dq.input[0]).op_type == "QuantizeLinear"
    assert list(x_dq.input[1:]) == ["xs", "xz"]
    (y_q,) = (n for n in out.graph.node if conv.output[0] in n.input)
    assert y_q.op_type == "QuantizeLinear" and list(y_q.input[1:]) == ["ys", "yz"]


@pytest.mark.parametrize("channel_dim", ["K", "C"])
@pytest.mark.parametrize("trans_b", [True, False])
def test_the_per_channel_axis_follows_its_dim(trans_b: bool, channel_dim: str) -> None:
    """Stored [K, C] (transB=1) the axis stays (0 is K, 1 is C); stored [C, K] it swaps. Conv's [K, C, 1, 1]: K is 0."""
    g = G(trans_b=trans_b, channel_dim=channel_dim, bias="float")
    model = qdq_gemm(g)
    stored = _axis(_node(model, "w"))
    assert stored == {(True, "K"): 0, (True, "C"): 1, (False, "K"): 1, (False, "C"): 0}[(trans_b, channel_dim)]
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, _ops(g))
    assert _axis(_node(result.model, _conv(result.model).input[1])) == (0 if channel_dim == "K" else 1)


@pytest.mark.parametrize("trans_b", [True, False])
def test_a_float_bias_is_scaled_by_beta(trans_b: bool) -> None:
    model = qdq_gemm(G(trans_b=trans_b, bias="float", beta=0.5))
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, _ops(G(bias="float")))
    conv = _conv(result.model)
    np.testing.assert_array_equal(_init(result.model, conv.input[2]), _init(model, "b") * np.float32(0.5))
    assert "b" not in {t.name for t in result.model.graph.initializer}  # the unscaled bias went with the Gemm
    assert result.report.decisions[0].notes["bias_scaled_by_beta"] == 0.5


@pytest.mark.parametrize("out_pair", [True, False])
def test_without_a_bias(out_pair: bool) -> None:
    g = G(bias="none", out_pair=out_pair)
    model = qdq_gemm(g)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, _ops(g))
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == RULE and not d.notes["bias_folded"]
    assert len(_conv(result.model).input) == 2


@pytest.mark.parametrize("reader", ["relu", "output"])
def test_a_bias_read_elsewhere_stays_for_its_readers(reader: str) -> None:
    """The Conv reads its own copy of the bias's DequantizeLinear; the original stays for the other reader."""
    g = G(bias_reader=reader)
    model = qdq_gemm(g)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, _ops(g, bias_copied=True))
    assert any(n.name == "b_dq" for n in result.model.graph.node)


def test_a_square_weight_read_both_ways_gets_two_conv_weights() -> None:
    """One [C, C] weight under transB=0 and transB=1: two Conv weights (transposed, and as it is), not one shared."""
    a, b = qdq_gemm(G(trans_b=False, bias="none"), c=C, k=C), qdq_gemm(G(trans_b=True, bias="none", seed=1), c=C, k=C)
    model = onnx.ModelProto()
    model.CopyFrom(a)
    graph = model.graph
    rename = {n: f"{n}2" for node in b.graph.node for n in [*node.input, *node.output] if n not in ("x", "wq", "ws", "wz")}
    for node in b.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name += "2"
        for i, n in enumerate(copy.input):
            copy.input[i] = rename.get(n, n)
        copy.output[0] = rename[copy.output[0]]
        graph.node.append(copy)
    graph.initializer.extend(
        numpy_helper.from_array(numpy_helper.to_array(t), rename[t.name]) for t in b.graph.initializer if t.name in rename
    )
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    model = with_output_shapes(model)
    result = converter.rewrite(model, fold_transposes=False)
    assert [d.rewritten for d in result.report.decisions] == [True, True]
    check = assert_rewritten(model, result, {"Transpose": 4, "Conv": 2, "QuantizeLinear": 4, "DequantizeLinear": 6})
    assert check.structure["proved"]
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    weights = [_init(result.model, _node(result.model, c.input[1]).input[0]).reshape(C, C) for c in convs]
    wq = _init(model, "wq")
    assert weights[0].tobytes() == np.ascontiguousarray(wq.T).tobytes() and weights[1].tobytes() == wq.tobytes()


def _computed_bias(m: onnx.ModelProto) -> None:
    gemm = _node(m, "flat")
    m.graph.node.insert(0, helper.make_node("Abs", ["b"], ["b_run"], "bias_run"))  # Abs: no op the rules fold
    gemm.input[2] = "b_run"


def _bias_shape(shape: tuple[int, ...]):  # noqa: ANN202
    def edit(m: onnx.ModelProto) -> None:
        i = next(i for i, t in enumerate(m.graph.initializer) if t.name == "b")
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ones(shape, np.float32), "b"))

    return edit


@pytest.mark.parametrize(
    ("g", "edit", "reason"),
    [
        (G(in_pair=False), None, "activation_not_quantized"),
        (G(trans_a=True), None, "gemm_trans_a"),
        (G(alpha=0.5), None, "gemm_alpha"),
        (G(beta=0.5), None, "gemm_beta"),
        (G(bias="float"), _computed_bias, "bias_not_constant"),
        (G(bias="float"), _bias_shape((2, K)), "bias_not_per_channel"),
    ],
    ids=["no-activation-pair", "transA", "alpha", "beta-quantized-bias", "bias-computed", "bias-2d"],
)
def test_declines_with_reason(g: G, edit, reason: str) -> None:  # noqa: ANN001
    model = qdq_gemm(g)
    if edit is not None:
        edit(model)
    result = converter.rewrite(model, fold_transposes=False)
    assert count_ops(result.model.graph) == count_ops(model.graph)
    (decision,) = (d for d in result.report.decisions if d.op_type == "Gemm")
    assert not decision.rewritten and decision.rule == RULE and decision.reason == reason, decision


def test_a_float_gemm_sandwich_is_left_to_the_float_rule() -> None:
    result = converter.rewrite(reshape_sandwich(core="Gemm", bias="gemm", trans_b=1), fold_transposes=False)
    assert [(d.rule, d.rewritten) for d in result.report.decisions] == [("gemm_sandwich_to_conv", True)]


# -- onnxruntime.quantization's own output ----------------------------------------------------------

QUANTIZER = [
    (s, p, t, b)
    for s in (True, False)
    for p in (True, False)
    for t in (1, 0)
    for b in ("int32", "float")
    if b == "int32" or (s and t)  # a float bias (QuantizeBias=False): once per granularity
]


def _quantized(tmp_path: Path, signed: bool, per_channel: bool, trans_b: int, bias: str) -> Path:
    """A float block ``x NCHW -> Transpose -> Gemm sandwich -> Relu -> Gemm sandwich -> Transpose`` (onnxsim's form
    of two Linears on the NHWC view; the first target computed from x's shape, the second a constant), quantized QDQ
    by onnxruntime (``QuantizeBias`` off for a float bias)."""
    c, h, w, hidden = 16, 6, 10, 24
    b = Builder(1)

    def sandwich(x: str, c_in: int, k: int, target: str) -> str:
        rows = b.op("Reshape", x, b.const(np.array([-1, c_in]), np.int64))
        weight = b.const(b.rng.standard_normal((k, c_in) if trans_b else (c_in, k)) / np.sqrt(c_in))
        flat = b.op("Gemm", rows, weight, b.const(b.rng.standard_normal(k) * 0.1), transB=trans_b)
        return b.op("Reshape", flat, target)

    nhwc = b.op("Transpose", "x", perm=[0, 2, 3, 1])
    head = b.op("Slice", b.op("Shape", nhwc), b.const(np.array([0]), np.int64), b.const(np.array([3]), np.int64))
    y = b.op("Relu", sandwich(nhwc, c, hidden, b.op("Concat", head, b.const(np.array([hidden]), np.int64), axis=0)))
    y = sandwich(y, hidden, c, b.const(np.array([-1, h, w, c]), np.int64))
    model = b.model([("x", ["N", c, h, w])], [b.op("Transpose", y, perm=[0, 3, 1, 2])])
    source, target = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, source)
    kind = QuantType.QInt8 if signed else QuantType.QUInt8
    quantize_static(
        source,
        target,
        RandomReader(model, {"x": [2, c, h, w]}),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=kind,
        weight_type=kind,
        extra_options={"QuantizeBias": bias == "int32"},
    )
    return target


@pytest.mark.parametrize(
    ("signed", "per_channel", "trans_b", "bias"),
    QUANTIZER,
    ids=[f"{'s8' if s else 'u8'}-{'channel' if p else 'tensor'}-transB{t}-{b}" for s, p, t, b in QUANTIZER],
)
def test_quantize_static_qdq_gemm_sandwiches_convert(
    signed: bool, per_channel: bool, trans_b: int, bias: str, tmp_path: Path
) -> None:
    source = _quantized(tmp_path, signed, per_channel, trans_b, bias)
    original = onnx.load(source)
    gemms = [n for n in original.graph.node if n.op_type == "Gemm"]
    # What the quantizer writes: the Gemm kept with its transB, its weight through DequantizeLinear (per channel
    # along K), its bias an int32 DequantizeLinear or float as it was, pairs inside the Reshapes.
    producers = {o: n for n in original.graph.node for o in n.output}
    for gemm in gemms:
        assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute}["transB"] == trans_b
        w_dq = producers[gemm.input[1]]
        assert w_dq.op_type == "DequantizeLinear" and _axis(w_dq) == ((0 if trans_b else 1) if per_channel else None)
        assert (gemm.input[2] in producers) == (bias == "int32")
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert rw.rewritten == 2 and [d.rule for d in rw.decisions if d.rewritten] == [RULE, RULE]
    assert rw.ops_after.get("Gemm", 0) == 0 and rw.ops_after["Conv"] == 2
    assert (rw.ops_before["Transpose"], rw.ops_after.get("Transpose", 0)) == (2, 0)
    for op in ("QuantizeLinear", "DequantizeLinear"):  # nothing requantized; the pairs inside the Reshapes moved
        assert rw.ops_after[op] <= rw.ops_before[op], op
    result = onnx.load(tmp_path / "out.onnx")
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 16, 6, 10)).astype(np.float32)}  # N > 1, H != W
    # As written (no graph optimization), bit for bit. As deployed, onnxruntime fuses each Gemm into QGemm and each
    # Conv into an NHWC QLinearConv, integer kernels that round differently: within one output step per layer
    # (measured: 1 to 2 steps on 2 layers; the converted model's fused output is the closer of the two to the float
    # model's).
    step = _output_step(original)
    for optimize, bound in ((False, 0.0), (True, 2 * step * 1.0001)):
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        want, got = (
            ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for m in (original, result)
        )
        assert got.shape == want.shape and got.dtype == want.dtype
        assert float(np.abs(got - want).max()) <= bound, (optimize, float(np.abs(got - want).max()) / step)


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the last DequantizeLinear before the output's Transpose: one quantization step of the output."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers[model.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producers[node.input[0]]
    return float(_init(model, node.input[1]))


@pytest.mark.parametrize("in_pair", [True, False])
def test_a_qdq_matmul_sandwich_needs_its_activation_pair(in_pair: bool) -> None:
    """The same sandwich with a MatMul core (transB=0, no bias): rewritten with its activation pair, declined
    ``activation_not_quantized`` without it, so that convert leaves it and passes instead of failing."""
    model = qdq_gemm(G(trans_b=False, bias="none", in_pair=in_pair))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.op_type = "MatMul"
    del gemm.attribute[:]
    result = converter.rewrite(model, fold_transposes=False)
    (decision,) = (d for d in result.report.decisions if d.op_type == "MatMul")
    if in_pair:
        assert decision.rewritten and decision.rule == "qdq_sandwich_to_conv"
    else:
        # Reported as the first rule's decline (the float Tensordot's: its weight is a DequantizeLinear).
        assert not decision.rewritten, decision
        assert count_ops(result.model.graph) == count_ops(model.graph)
    assert certify(model, result.model, result.report.layers).proved
