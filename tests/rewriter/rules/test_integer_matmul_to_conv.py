"""QLinearMatMul -> QLinearConv and MatMulInteger -> ConvInteger, between layout Transposes.

Hand-built graphs in every signedness onnxruntime runs, per tensor and per channel, symmetric and
asymmetric, proved by structure (op counts, the integer weight bit for bit, the parameters the same
tensors) and numbers (onnxruntime, N=2, H != W, the certificate and the integer layer checks); every
decline by its reason, and the certificate's and the numbers' guards by a broken model each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate import IntegerLayer
from converter.verifier.certificate.walk import certify
from converter.verifier.numbers.layers import check_integer_layer
from tests.conftest import W_, C, H, K, N, assert_rewritten, with_output_shapes

OPSET = 21


@dataclass(frozen=True)
class L:
    """One integer dense layer: QLinearMatMul (``dynamic`` False) or DynamicQuantizeLinear + MatMulInteger."""

    dynamic: bool = False
    x_signed: bool = False
    w_signed: bool = True
    per_channel: bool = True
    symmetric: bool = True
    uniform_zero_point: bool = False  # per channel: a [K] zero point of one value
    weight_zero_point: bool = True  # MatMulInteger: False leaves its optional weight zero point out (0)
    seed: int = 0

    @property
    def id(self) -> str:
        kind = "dynamic" if self.dynamic else "qlinear"
        sign = f"{'s8' if self.x_signed else 'u8'}x{'s8' if self.w_signed else 'u8'}"
        gran = "channel" if self.per_channel else "tensor"
        extra = ("-uniform" if self.uniform_zero_point else "") + ("" if self.weight_zero_point else "-no-zero-point")
        return f"{kind}-{sign}-{gran}-{'sym' if self.symmetric else 'asym'}{extra}"

    @property
    def shifted(self) -> bool:
        """MatMulInteger uint8 x int8: the ConvInteger's weight and its zero point are written as uint8 + 128."""
        return self.dynamic and not self.x_signed and self.w_signed


def integer_dense(q: L, c: int = C, k: int = K) -> onnx.ModelProto:
    rng = np.random.default_rng(q.seed)
    inits: list[TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    wdt, xdt = (np.int8 if q.w_signed else np.uint8), (np.int8 if q.x_signed else np.uint8)
    info = np.iinfo(wdt)
    w = rng.integers(info.min, info.max + 1, size=(c, k)).astype(wdt)
    shape = (k,) if q.per_channel else ()
    if q.symmetric or q.uniform_zero_point:
        wz = np.full(shape, 0 if q.w_signed else 128, wdt) if not q.uniform_zero_point else np.full(shape, 3, wdt)
    else:
        wz = rng.integers(-9 if q.w_signed else 120, 9 if q.w_signed else 136, size=shape).astype(wdt)
    ws = (rng.random(shape) * 0.01 + 0.002).astype(np.float32)
    nodes = []
    if q.dynamic:
        if q.x_signed:  # an int8 activation (quantize_dynamic writes uint8; a hand-made graph may not)
            x_q = ["x", init("xs", np.float32(0.05)), init("xz", np.int8(3))]
            nodes.append(helper.make_node("QuantizeLinear", x_q, ["xq"], "x_q"))
        else:
            nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], "x_dq"))
        zero = [init("wz", wz)] if q.weight_zero_point else []
        nodes += [
            helper.make_node("MatMulInteger", ["xq", init("w", w), "xz", *zero], ["acc"], "matmul"),
            helper.make_node("Cast", ["acc"], ["accf"], "cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["xs", init("ws", ws)], ["scale"], "scale"),
            helper.make_node("Mul", ["accf", "scale"], ["y"], "rescale"),
        ]
    else:
        xz = np.asarray(3 if q.x_signed else 131, xdt)
        yz = np.asarray(-2 if q.x_signed else 125, xdt)
        nodes += [
            helper.make_node("QuantizeLinear", ["x", init("xs", np.float32(0.05)), init("xz", xz)], ["xq"], "x_q"),
            helper.make_node(
                "QLinearMatMul",
                ["xq", "xs", "xz", init("w", w), init("ws", ws), init("wz", wz), init("ys", np.float32(0.2)), init("yz", yz)],
                ["yq"],
                "matmul",
            ),
            helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], "y_dq"),
        ]
    graph = helper.make_graph(
        nodes,
        "integer_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H, W_, c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


QLINEAR = [
    L(x_signed=xs, w_signed=ws, per_channel=p, symmetric=s, seed=i)
    for i, (xs, ws, p, s) in enumerate(
        (xs, ws, p, s) for xs, ws in ((False, False), (False, True), (True, True)) for p in (True, False) for s in (True, False)
    )
]
DYNAMIC = [
    L(dynamic=True, w_signed=ws, per_channel=p, symmetric=True, uniform_zero_point=u, seed=i)
    for i, (ws, p, u) in enumerate((ws, p, u) for ws in (True, False) for p, u in ((False, False), (True, False), (True, True)))
    if not (p and not ws and not u)  # uint8 symmetric per channel: a uniform 128, listed as uniform
] + [
    L(dynamic=True, w_signed=False, per_channel=True, uniform_zero_point=True, seed=9),
    L(dynamic=True, per_channel=False, symmetric=False, seed=10),
    L(dynamic=True, per_channel=False, weight_zero_point=False, seed=11),
    L(dynamic=True, x_signed=True, per_channel=False, symmetric=False, seed=12),
    L(dynamic=True, x_signed=True, w_signed=False, per_channel=False, symmetric=False, seed=13),
]


def _conv(model: onnx.ModelProto, op: str) -> tuple[onnx.NodeProto, dict[str, TensorProto]]:
    return next(n for n in model.graph.node if n.op_type == op), {t.name: t for t in model.graph.initializer}


@pytest.mark.parametrize("q", QLINEAR, ids=lambda q: q.id)
def test_qlinear_matmul_becomes_qlinear_conv(q: L) -> None:
    model = integer_dense(q)
    result = converter.rewrite(model, fold_transposes=False)
    check = assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 1, "QLinearConv": 1, "DequantizeLinear": 1})
    conv, inits = _conv(result.model, "QLinearConv")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute} == {"kernel_shape": [1, 1]}
    ints = numpy_helper.to_array(inits[conv.input[3]])
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    assert ints.dtype == original.dtype and ints.shape == (K, C, 1, 1)
    assert ints.reshape(K, C).T.tobytes() == original.tobytes()
    # Every scale and zero point is the tensor the QLinearMatMul read; no bias input.
    assert [conv.input[i] for i in (1, 2, 4, 5, 6, 7)] == ["xs", "xz", "ws", "wz", "ys", "yz"] and len(conv.input) == 8
    # onnxruntime's kernels agree: the integer output is the original's, bit for bit (checked per layer).
    assert check.layers[0].numbers_detail == "integer output equal to the original's, bit for bit"
    feeds = {"x": np.random.default_rng(1).standard_normal((N, H, W_, C)).astype(np.float32) * 3}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.tobytes() == want.tobytes()


def _shift(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v).astype(np.int16) + 128).astype(np.uint8)


def _original(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _exposing(model: onnx.ModelProto, name: str, elem_type: int) -> bytes:
    """The model with ``name`` as an extra graph output, serialized."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return exposed.SerializeToString()


@pytest.mark.parametrize("q", DYNAMIC, ids=lambda q: q.id)
def test_matmul_integer_becomes_conv_integer(q: L) -> None:
    model = integer_dense(q)
    result = converter.rewrite(model, fold_transposes=False)
    ops = {"DynamicQuantizeLinear": 0 if q.x_signed else 1, "QuantizeLinear": 1 if q.x_signed else 0}
    ops = {**{k: v for k, v in ops.items() if v}, "Transpose": 2, "ConvInteger": 1, "Cast": 1, "Mul": 2}
    check = assert_rewritten(model, result, ops)
    conv, inits = _conv(result.model, "ConvInteger")
    ints = numpy_helper.to_array(inits[conv.input[1]])
    original = _original(model, "w")
    o_zero = _original(model, "wz") if q.weight_zero_point else np.zeros((), original.dtype)
    assert ints.shape == (K, C, 1, 1)
    if q.shifted:  # uint8 x int8 -> uint8 x uint8: the weight + 128, as uint8
        assert ints.dtype == np.uint8 and ints.reshape(K, C).T.tobytes() == _shift(original).tobytes()
    else:
        assert ints.dtype == original.dtype and ints.reshape(K, C).T.tobytes() == original.tobytes()
    assert conv.input[2] == "xz"  # the activation's zero point (DynamicQuantizeLinear's), read as it is
    zero = numpy_helper.to_array(inits[conv.input[3]])
    assert zero.size == 1 and zero.dtype == ints.dtype  # one element: what onnxruntime's ConvInteger takes
    assert (o_zero.astype(np.int16) + (128 if q.shifted else 0) == int(zero.reshape(-1)[0])).all()
    if not q.per_channel and not q.shifted:
        assert conv.input[3] == "wz"
    # The rescale reads the restored NHWC int32 tensor, as before.
    back = next(n for n in result.model.graph.node if n.op_type == "Transpose" and n.input[0] == conv.output[0])
    assert back.output[0] == "acc"
    # The layer check compares with the original's integers (int8 weight, its zero point), not the rewritten's.
    layer = certify(model, result.model, result.report.layers).originals[conv.name]
    assert isinstance(layer, IntegerLayer)
    assert layer.weight_kc.dtype == original.dtype and layer.weight_kc.T.tobytes() == original.tobytes()
    assert (layer.w_zero == o_zero.astype(np.int64)).all()
    assert check.layers[0].numbers_detail == "integer output equal to the original's, bit for bit"
    # onnxruntime (N=2, H != W): the int32 sums bit for bit (default optimizations), and the float output as written.
    feeds = {"x": np.random.default_rng(1).standard_normal((N, H, W_, C)).astype(np.float32) * 3}
    cpu = ["CPUExecutionProvider"]
    sums = [
        ort.InferenceSession(_exposing(m, "acc", TensorProto.INT32), providers=cpu).run(["acc"], feeds)[0]
        for m in (model, result.model)
    ]
    assert sums[0].dtype == sums[1].dtype == np.int32 and sums[0].shape == (N, H, W_, K)
    assert sums[1].tobytes() == sums[0].tobytes() and len(np.unique(sums[0])) > 10
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [ort.InferenceSession(m.SerializeToString(), plain, providers=cpu).run(None, feeds)[0] for m in (model, result.model)]
    assert outs[1].tobytes() == outs[0].tobytes()


def _decline(model: onnx.ModelProto) -> tuple[str, str]:
    result = converter.rewrite(model, fold_transposes=False)
    assert result.report.rewritten == 0
    d = next(d for d in result.report.decisions if not d.rewritten)
    return d.reason, d.detail


def test_a_varying_per_channel_zero_point_is_declined_for_conv_integer() -> None:
    """onnxruntime's ConvInteger fails at run time on a [K] weight zero point; the rewrite would not run."""
    reason, detail = _decline(integer_dense(L(dynamic=True, w_signed=False, per_channel=True, symmetric=False)))
    assert reason == "per_channel_zero_point_unsupported" and "Non per-tensor" in detail


def test_int8_activation_with_uint8_weight_is_declined_as_onnxruntime_cannot_run_it() -> None:
    reason, detail = _decline(integer_dense(L(x_signed=True, w_signed=False)))
    assert reason == "runtime_kernel_missing" and "QLinearConv" in detail


def test_a_per_row_activation_scale_is_declined() -> None:
    model = integer_dense(L())
    xs = next(t for t in model.graph.initializer if t.name == "xs")
    model.graph.initializer.append(numpy_helper.from_array(np.full(H, 0.05, np.float32), "xs_rows"))
    matmul = next(n for n in model.graph.node if n.op_type == "QLinearMatMul")
    matmul.input[1] = "xs_rows"
    assert xs is not None
    reason, _ = _decline(model)
    assert reason == "activation_quantization_per_axis"


def test_a_rank_3_activation_is_left_alone() -> None:
    model = integer_dense(L())
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H * W_, C]))
    model.graph.ClearField("value_info")
    result = converter.rewrite(with_output_shapes(model), fold_transposes=False)
    assert result.report.rewritten == 0


# --- the certificate's guards ----------------------------------------------------------------------


def _rewritten(q: L) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    model = integer_dense(q)
    result = converter.rewrite(model, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    return model, result.model, result.report.layers


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(value, name))


@pytest.mark.parametrize("op", ["QLinearConv", "ConvInteger"])
@pytest.mark.parametrize("damage", ["weight", "weight_zero_point", "input_layout"])
def test_the_certificate_refutes_a_damaged_integer_layer(op: str, damage: str) -> None:
    q = L(dynamic=op == "ConvInteger", per_channel=op == "QLinearConv", symmetric=False)
    model, broken, layers = _rewritten(q)
    conv, inits = _conv(broken, op)
    w_slot, z_slot = (3, 5) if op == "QLinearConv" else (1, 3)
    if damage == "weight":
        w = numpy_helper.to_array(inits[conv.input[w_slot]]).copy()
        w.flat[5] ^= 1
        _set_init(broken, conv.input[w_slot], w)
    elif damage == "weight_zero_point":
        z = numpy_helper.to_array(inits[conv.input[z_slot]]).copy()
        z.flat[0] += 1
        _set_init(broken, conv.input[z_slot], z)
    else:
        to_nchw = next(n for n in broken.graph.node if n.op_type == "Transpose" and n.output[0] == conv.input[0])
        del to_nchw.attribute[:]
        to_nchw.attribute.append(helper.make_attribute("perm", [0, 3, 2, 1]))
    cert = certify(model, broken, layers)
    assert cert.layers[conv.name].status == "refuted" and not cert.proved


def test_the_certificate_refutes_a_per_channel_scale_moved_to_another_channel() -> None:
    model, broken, layers = _rewritten(L(per_channel=True))
    conv, inits = _conv(broken, "QLinearConv")
    broken.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits["ws"])[::-1].copy(), "ws_reversed"))
    conv.input[4] = "ws_reversed"
    cert = certify(model, broken, layers)
    assert cert.layers[conv.name].status == "refuted" and "weight scale" in cert.layers[conv.name].detail


def _shifted_layer() -> tuple[onnx.ModelProto, onnx.ModelProto, list, np.ndarray]:
    """A uint8 x int8 MatMulInteger (zero point 5, weights in [-100, 127]) rewritten, proved; and its int8 weight."""
    model = integer_dense(L(dynamic=True, per_channel=False))
    w = np.clip(_original(model, "w"), -100, 127).astype(np.int8)
    _set_init(model, "w", w)
    _set_init(model, "wz", np.array(5, np.int8))
    result = converter.rewrite(model, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    return model, result.model, result.report.layers, w


# (weight, weight zero point) written instead of the rule's (w + 128, 5 + 128), both uint8. Those that change some
# difference w - zw are refuted; "by_100" and "by_127" keep every one (no weight wraps, as w >= -100): the same
# sums, proved (layers/integer.py: a weight shifted with its zero point).
SHIFTS = {
    "weight_only": lambda w: (_shift(w), np.uint8(5)),
    "weight_only_int8_zero_point": lambda w: (_shift(w), np.int8(5)),
    "zero_point_only": lambda w: (w, np.uint8(133)),
    "zero_point_only_int8_weight_as_uint8": lambda w: (w.view(np.uint8), np.uint8(133)),
    "weight_off_by_one": lambda w: ((w.astype(np.int16) + 129).astype(np.uint8), np.uint8(133)),
}
SAME_DIFFERENCES = {
    "by_100": lambda w: ((w.astype(np.int16) + 100).astype(np.uint8), np.uint8(105)),
    "by_127": lambda w: ((w.astype(np.int16) + 127).astype(np.uint8), np.uint8(132)),
}


def _with_weight(shift: Callable[[np.ndarray], tuple[np.ndarray, object]]) -> tuple[onnx.ModelProto, onnx.ModelProto, list, str]:
    model, broken, layers, w = _shifted_layer()
    conv, _ = _conv(broken, "ConvInteger")
    weight, zero = shift(np.ascontiguousarray(w.T).reshape(K, C, 1, 1))
    broken.graph.initializer.extend(
        [numpy_helper.from_array(np.asarray(weight), "w_other"), numpy_helper.from_array(np.asarray(zero), "wz_other")]
    )
    conv.input[1], conv.input[3] = "w_other", "wz_other"
    return model, broken, layers, conv.name


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_the_certificate_refutes_a_weight_not_shifted_with_its_zero_point(shift: str) -> None:
    model, broken, layers, conv = _with_weight(SHIFTS[shift])
    cert = certify(model, broken, layers)
    assert cert.layers[conv].status == "refuted" and not cert.proved, cert.layers[conv]


@pytest.mark.parametrize("shift", list(SAME_DIFFERENCES))
def test_the_certificate_proves_a_weight_shifted_with_its_zero_point(shift: str) -> None:
    model, broken, layers, conv = _with_weight(SAME_DIFFERENCES[shift])
    assert certify(model, broken, layers).proved
    feeds = {"x": np.random.default_rng(2).standard_normal((N, H, W_, C)).astype(np.float32)}
    want, got = (
        ort.InferenceSession(_exposing(m, "acc", TensorProto.INT32), providers=["CPUExecutionProvider"]).run(["acc"], feeds)[0]
        for m in (model, broken)
    )
    assert got.tobytes() == want.tobytes()  # the same integers, as the proof says


@pytest.mark.parametrize("zero_point", ["shifted", "kept"])
def test_a_shifted_weight_in_a_qlinear_conv_needs_its_zero_point_shifted(zero_point: str) -> None:
    """Another tool's QLinearConv with the int8 weight as uint8 + 128: proved with its zero point + 128 too."""
    model, broken, layers = _rewritten(L(per_channel=False))
    conv, inits = _conv(broken, "QLinearConv")
    _set_init(broken, conv.input[3], _shift(numpy_helper.to_array(inits[conv.input[3]])))
    zero = numpy_helper.to_array(inits[conv.input[5]])
    _set_init(broken, conv.input[5], _shift(zero) if zero_point == "shifted" else zero.view(np.uint8))
    proof = certify(model, broken, layers).layers[conv.name]
    assert (proof.status == "proved") == (zero_point == "shifted"), proof


def test_the_certificate_proves_the_unshifted_int8_conv_integer() -> None:
    """uint8 x int8 written as it is (slow in onnxruntime, but the same integers) is proved too."""
    model, broken, layers, w = _shifted_layer()
    conv, _ = _conv(broken, "ConvInteger")
    broken.graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(w.T).reshape(K, C, 1, 1), "w_int8"),
            numpy_helper.from_array(np.array(5, np.int8), "wz_int8"),
        ]
    )
    conv.input[1], conv.input[3] = "w_int8", "wz_int8"
    assert certify(model, broken, layers).proved


# --- the numbers' guards ---------------------------------------------------------------------------


def _layer(requantized: bool) -> tuple[IntegerLayer, np.ndarray, np.ndarray, np.ndarray]:
    """A QLinearConv-like (or ConvInteger-like) layer, its NCHW input, and exact outputs (NCHW, NHWC)."""
    rng = np.random.default_rng(4)
    w = rng.integers(-128, 128, size=(K, C)).astype(np.int8)
    wz = np.zeros(K, np.int64)
    x = rng.integers(0, 256, size=(N, C, H, W_)).astype(np.uint8)
    if requantized:
        layer = IntegerLayer(w, wz, np.uint8(128), np.float32(0.05), np.full(K, 0.01, np.float32), np.float32(0.5), np.uint8(128))
    else:
        layer = IntegerLayer(w, wz, np.uint8(128))
    rows = x.transpose(0, 2, 3, 1).reshape(-1, C).astype(np.int64) - 128
    acc = rows @ w.astype(np.int64).T
    out = np.clip(np.rint(acc * (0.05 * 0.01 / 0.5)) + 128, 0, 255).astype(np.uint8) if requantized else acc.astype(np.int32)
    nhwc = out.reshape(N, H, W_, K)
    return layer, x, np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)), nhwc


@pytest.mark.parametrize("requantized", [True, False], ids=["qlinear", "integer"])
def test_integer_layer_numbers_pass_and_catch_errors(requantized: bool) -> None:
    layer, x, out, nhwc = _layer(requantized)
    x_nhwc = x.transpose(0, 2, 3, 1)
    ok = check_integer_layer(x, out, layer, layer.x_zero, x_nhwc, nhwc)
    assert ok.passed and ok.exact and ok.output_max_error == 0
    # One step off at one element: allowed after requantization (rounding), never for exact int32 sums.
    off = out.astype(np.int64).copy()
    off[1, 2, 0, 3] += 1
    one = check_integer_layer(x, off.astype(out.dtype), layer, layer.x_zero, x_nhwc, nhwc)
    assert one.passed == requantized and not one.exact
    two = off.copy()
    two[0, 1, 2, 4] += 2
    assert not check_integer_layer(x, two.astype(out.dtype), layer, layer.x_zero, x_nhwc, nhwc).passed
    # The Conv's input in another layout (rows in the wrong order): the input check fails.
    moved = np.ascontiguousarray(x[:, :, ::-1, :])
    assert not check_integer_layer(moved, out, layer, layer.x_zero, x_nhwc, nhwc).input_ok
    # Parameters that do not describe the original (the weight's zero point off): the calibration says so.
    wrong = replace(layer, w_zero=layer.w_zero + 5)
    assert "not what its integer weight" in check_integer_layer(x, out, wrong, wrong.x_zero, x_nhwc, nhwc).problem
