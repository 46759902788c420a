"""A dynamically quantized Tensordot (Reshape -> DynamicQuantizeLinear -> MatMulInteger -> rescale -> Reshape) -> ConvInteger.

Hand-built graphs as tf2onnx and ``quantize_dynamic`` write them (the run-time target shape or a constant one,
the weight scale's Mul between the DynamicQuantizeLinear and the MatMulInteger, the bias Add after the second
Reshape), int8 and uint8 weights, per tensor and per channel (uniform zero points: what ConvInteger takes), with
and without bias. Structure: op counts, the checker, shapes, the ConvInteger's attributes, its weight and zero point
bit for bit what the rule promises (int8 as uint8 + 128, one element), the DynamicQuantizeLinear on the 4D tensor
writing the original's scale and zero point, the rescale after the restored positions. Numbers: onnxruntime, N > 1
and H != W, the int32 sums and the outputs as written bit for bit, as deployed within float rounding. The
certificate and the layer checks (verify). The layout cleanup cancelling the Transposes between two layers. Every
decline of the rule by its code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from converter.verifier.certificate import IntegerLayer
from converter.verifier.certificate.walk import certify
from models.graphs import with_output_shapes
from tests.conftest import W_, C, H, K, N

OPSET = 17
CPU = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class T:
    """One dynamically quantized Tensordot on x: [N, H, W, C] (``batch``: N's dim, symbolic by default)."""

    w_signed: bool = True
    per_channel: bool = False
    # The weight zero point: "zero" (0 for int8, 128 for uint8: quantize_dynamic's symmetric ones), "uniform" (one
    # other value in every channel), "varying" (per channel, different: ConvInteger refuses it), "asym" (per tensor,
    # not the middle), "absent" (the optional input left out: 0)
    zero_point: str = "zero"
    bias: bool = True
    target: str = "runtime"  # "runtime" (tf2onnx's Shape -> Cast -> Gather -> Concat -> Cast) or "static" ([-1, H, W, K])
    batch: int | str = "N"
    seed: int = 0

    @property
    def id(self) -> str:
        sign = "s8" if self.w_signed else "u8"
        gran = "channel" if self.per_channel else "tensor"
        return f"{sign}-{gran}-{self.zero_point}-{'bias' if self.bias else 'nobias'}-{self.target}"

    @property
    def shifted(self) -> bool:
        """uint8 activations (DynamicQuantizeLinear's) with an int8 weight: written as uint8 + 128."""
        return self.w_signed


def tensordot(t: T, c: int = C, k: int = K, x_shape: tuple | None = None) -> onnx.ModelProto:
    """The graph, node for node in quantize_dynamic's order; tensors named x, rows, xq, xs, xz, w, wz, ws, scale,
    acc, accf, flat, y (the second Reshape's output) and out (after the bias Add, or y)."""
    rng = np.random.default_rng(t.seed)
    inits: list[TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    wdt = np.int8 if t.w_signed else np.uint8
    info = np.iinfo(wdt)
    shape = (k,) if t.per_channel else ()
    middle = 0 if t.w_signed else 128
    zw = {
        "zero": np.full(shape, middle, wdt),
        "absent": np.full(shape, middle, wdt),
        "uniform": np.full(shape, middle + 3, wdt),
        "asym": np.full(shape, middle - 5, wdt),
        "varying": (middle + rng.integers(-9, 9, size=shape)).astype(wdt),
    }[t.zero_point]
    w = rng.integers(info.min, info.max + 1, size=(c, k)).astype(wdt)
    ws = (rng.random(shape) * 0.01 + 0.002).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", init("rows_shape", np.array([-1, c], np.int64))], ["rows"], "rows"),
        helper.make_node("DynamicQuantizeLinear", ["rows"], ["xq", "xs", "xz"], "x_quantize"),
        helper.make_node("Mul", ["xs", init("ws", ws)], ["scale"], "scales"),
        helper.make_node(
            "MatMulInteger", ["xq", init("w", w), "xz", *([init("wz", zw)] if t.zero_point != "absent" else [])], ["acc"], "matmul"
        ),
        helper.make_node("Cast", ["acc"], ["accf"], "cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "scale"], ["flat"], "rescale"),
    ]
    if t.target == "runtime":
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"], "shape"),
            helper.make_node("Cast", ["shape"], ["shape32"], "shape32", to=TensorProto.INT32),
            helper.make_node("Gather", ["shape32", init("free", np.array([0, 1, 2], np.int64))], ["head"], "head", axis=0),
            helper.make_node("Concat", ["head", init("k", np.array([k], np.int32))], ["target32"], "target32", axis=0),
            helper.make_node("Cast", ["target32"], ["target"], "target", to=TensorProto.INT64),
        ]
    else:
        init("target", np.array([-1, H, W_, k], np.int64))
    nodes.append(helper.make_node("Reshape", ["flat", "target"], ["y"], "restore"))
    out = "y"
    if t.bias:
        nodes.append(helper.make_node("Add", ["y", init("b", (rng.standard_normal(k) * 0.1).astype(np.float32))], ["out"], "bias"))
        out = "out"
    graph = helper.make_graph(
        nodes,
        "dynamic_tensordot",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape or (t.batch, H, W_, c)))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


REWRITTEN = [
    T(),
    T(per_channel=True, seed=1),
    T(per_channel=True, zero_point="uniform", bias=False, target="static", seed=2),
    T(zero_point="asym", target="static", seed=3),
    T(zero_point="absent", bias=False, seed=4),
    T(w_signed=False, seed=5),
    T(w_signed=False, per_channel=True, bias=False, seed=6),
    T(w_signed=False, zero_point="asym", target="static", seed=7),
    T(w_signed=False, per_channel=True, zero_point="uniform", batch=2, seed=8),
]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _shift(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v).astype(np.int16) + 128).astype(np.uint8)


def _session(model: onnx.ModelProto, optimized: bool = False, expose: str = "") -> ort.InferenceSession:
    if expose:
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        exposed.graph.output.append(helper.make_tensor_value_info(expose, TensorProto.INT32, None))
        model = exposed
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=CPU)


def _feeds(n: int = N, seed: int = 1) -> dict[str, np.ndarray]:
    assert H != W_
    return {"x": (np.random.default_rng(seed).standard_normal((n, H, W_, C)) * 3).astype(np.float32)}


def _rewrite(model: onnx.ModelProto, **options: object) -> converter.RewriteResult:
    return converter.rewrite(model, **{"layout": "keep-all", "fold_transposes": False, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize("t", REWRITTEN, ids=lambda t: t.id)
def test_a_dynamic_tensordot_becomes_a_conv_integer(t: T) -> None:
    model = tensordot(t)
    result = _rewrite(model)
    assert [(d.rule, d.rewritten) for d in result.report.decisions] == [("integer_sandwich_to_conv", True)]
    r = result.model
    onnx.checker.check_model(r, full_check=True)  # valid, and every tensor made before it is read
    ops = {"Transpose": 2, "DynamicQuantizeLinear": 1, "Mul": 2, "ConvInteger": 1, "Cast": 1, **({"Add": 1} if t.bias else {})}
    assert count_ops(r.graph) == ops  # the Reshapes, the shape nodes and the MatMulInteger gone
    assert list(r.graph.input) == list(model.graph.input) and list(r.graph.output) == list(model.graph.output)
    made = {o: n for n in r.graph.node for o in n.output}
    conv = next(n for n in r.graph.node if n.op_type == "ConvInteger")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute} == {"kernel_shape": [1, 1]}

    # In front: DynamicQuantizeLinear of x in NCHW, writing the original's scale and zero point (same names).
    dql = made[conv.input[0]]
    assert dql.op_type == "DynamicQuantizeLinear" and list(dql.output[1:]) == ["xs", "xz"]
    to_nchw = made[dql.input[0]]
    assert to_nchw.op_type == "Transpose" and list(to_nchw.input) == ["x"]
    assert helper.get_attribute_value(to_nchw.attribute[0]) == [0, 3, 1, 2]
    assert conv.input[2] == "xz"

    # The weight and its zero point, bit for bit: [K, C, 1, 1], int8 as uint8 + 128 (with the zero point), one element.
    inits = {i.name: numpy_helper.to_array(i) for i in r.graph.initializer}
    w = _init(model, "w")
    ints = inits[conv.input[1]]
    assert ints.shape == (K, C, 1, 1) and ints.dtype == np.uint8
    assert ints.reshape(K, C).T.tobytes() == (_shift(w) if t.shifted else w).tobytes()
    o_zero = _init(model, "wz") if t.zero_point != "absent" else np.zeros((), w.dtype)
    zero = inits[conv.input[3]]
    assert zero.dtype == np.uint8 and zero.size == 1
    assert (o_zero.astype(np.int16) + (128 if t.shifted else 0) == int(zero.reshape(-1)[0])).all()
    if not t.per_channel and not t.shifted and t.zero_point != "absent":
        assert conv.input[3] == "wz"  # the original's tensor, as it is

    # Behind: the NHWC int32 tensor, Cast and the rescale Mul writing the second Reshape's output y, [N, H, W, K].
    back = next(n for n in r.graph.node if conv.output[0] in n.input)
    assert back.op_type == "Transpose" and helper.get_attribute_value(back.attribute[0]) == [0, 2, 3, 1]
    cast = next(n for n in r.graph.node if back.output[0] in n.input)
    assert cast.op_type == "Cast" and helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
    rescale = made["y"]
    assert rescale.op_type == "Mul" and list(rescale.input) == [cast.output[0], "scale"]
    assert made["scale"].op_type == "Mul" and list(made["scale"].input) == ["xs", "ws"]
    inferred = onnx.shape_inference.infer_shapes(r, strict_mode=True)
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.output]
    }
    assert shapes[back.output[0]] == shapes[cast.output[0]] == [t.batch, H, W_, K] and shapes["y"][1:] == [H, W_, K]
    assert shapes["xs"] == [] and shapes["xz"] == []

    # onnxruntime, N > 1 and H != W: the int32 sums at each position and the output, as written, bit for bit.
    for n in (N, 3) if t.batch == "N" else (t.batch,):
        feeds = _feeds(n, seed=t.seed)
        acc = _session(model, expose="acc").run(["acc"], feeds)[0]
        acc_4d = _session(r, expose=back.output[0]).run([back.output[0]], feeds)[0]
        assert acc.shape == (n * H * W_, K) and acc_4d.shape == (n, H, W_, K) and len(np.unique(acc)) > 10
        assert acc_4d.reshape(-1, K).tobytes() == acc.tobytes()
        want, got = (_session(m).run(None, feeds)[0] for m in (model, r))
        assert got.shape == want.shape == (n, H, W_, K) and got.tobytes() == want.tobytes()
        # As deployed: onnxruntime fuses MatMulInteger with its rescale (MatMulIntegerToFloat), not ConvInteger, so
        # the float product rounds differently: float32 rounding of the output, no more.
        want, got = (_session(m, optimized=True).run(None, feeds)[0] for m in (model, r))
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


@pytest.mark.parametrize("t", REWRITTEN, ids=lambda t: t.id)
def test_a_dynamic_tensordot_is_proved_and_checked(t: T) -> None:
    """The certificate proves the layer (the moved DynamicQuantizeLinear and the rescale after the second Reshape),
    the layer check finds the original's int32 sums bit for bit, and the outputs agree."""
    model = tensordot(t)
    result = _rewrite(model)
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved and not cert.problems and not cert.unproved, (cert.problems, cert.unproved)
    conv = next(n for n in result.model.graph.node if n.op_type == "ConvInteger")
    layer = cert.originals[conv.name]
    assert isinstance(layer, IntegerLayer)  # the original's integers, not the rewritten ones
    assert layer.weight_kc.T.tobytes() == _init(model, "w").tobytes() and layer.x_zero is None
    check = converter.verify(model, result, input_shapes={"x": [N, H, W_, C]} if t.batch == "N" else None)
    assert check.passed, check.to_dict()
    (layer_check,) = check.layers
    assert (layer_check.structure, layer_check.numbers) == ("proved", "passed")
    assert layer_check.numbers_detail == "integer output equal to the original's, bit for bit"


# --- the certificate's guards on the moved nodes ---------------------------------------------------


def _proved(t: T = T(per_channel=True)) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    model = tensordot(t)
    result = _rewrite(model)
    assert certify(model, result.model, result.report.layers).proved
    return model, result.model, result.report.layers


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def test_the_certificate_does_not_prove_a_rescale_by_another_weight_scale() -> None:
    model, broken, layers = _proved()
    ws = _init(model, "ws")
    broken.graph.initializer.append(numpy_helper.from_array(ws[::-1].copy(), "ws_reversed"))
    next(n for n in broken.graph.node if n.output[0] == "scale").input[1] = "ws_reversed"
    cert = certify(model, broken, layers)
    assert not cert.proved and cert.layers[_node(broken, "ConvInteger").name].status == "proved"  # the rescale is not


def test_the_certificate_does_not_follow_a_rescale_read_in_another_layout() -> None:
    """The Cast reads the int32 tensor still in NCHW while the Mul's scale is as the flat tensor had it: not proved."""
    model, broken, layers = _proved()
    back = next(n for n in broken.graph.node if n.op_type == "Transpose" and n.input[0] == _node(broken, "ConvInteger").output[0])
    cast = _node(broken, "Cast")
    cast.input[0] = back.input[0]
    assert not certify(model, broken, layers).proved


def test_the_certificate_does_not_follow_a_rescale_by_another_tensor() -> None:
    """The moved rescale multiplies by the activation's scale alone (not ``sa * sw``): not proved, at that Mul."""
    model, broken, layers = _proved(T(bias=False))
    next(n for n in broken.graph.node if n.output[0] == "y").input[1] = "xs"
    cert = certify(model, broken, layers)
    assert not cert.proved and any("'xs'" in u and "'scale'" in u for u in cert.unproved), cert.unproved


def test_the_certificate_does_not_follow_the_flat_output_read_twice_in_two_layouts() -> None:
    """The original squares the flat float output (``Mul(t, t)``); the rewritten Mul reads it once in NHWC and once
    in NCHW: not proved."""
    model, broken, layers = _proved(T(bias=False))
    next(n for n in model.graph.node if n.output[0] == "flat").input[1] = "accf"
    conv = _node(broken, "ConvInteger")
    broken.graph.node.append(helper.make_node("Cast", [conv.output[0]], ["acc_nchw_float"], "nchw_cast", to=TensorProto.FLOAT))
    rescale = next(n for n in broken.graph.node if n.output[0] == "y")
    rescale.input[1] = "acc_nchw_float"
    broken.graph.node.remove(rescale)
    broken.graph.node.append(rescale)
    cert = certify(model, broken, layers)
    assert not cert.proved and any("the original reads the flat output" in u for u in cert.unproved), cert.unproved


def test_the_certificate_refutes_a_dynamic_quantize_of_another_tensor() -> None:
    """The moved DynamicQuantizeLinear reads x in another layout (H and W swapped): the layer is not proved."""
    model, broken, layers = _proved()
    to_nchw = next(n for n in broken.graph.node if n.op_type == "Transpose" and n.input[0] == "x")
    del to_nchw.attribute[:]
    to_nchw.attribute.append(helper.make_attribute("perm", [0, 3, 2, 1]))
    cert = certify(model, broken, layers)
    assert not cert.proved and cert.layers[_node(broken, "ConvInteger").name].status != "proved"


@pytest.mark.parametrize("operand", ["computed", "constant"])
def test_the_certificate_does_not_follow_a_rescale_by_a_per_row_tensor(operand: str) -> None:
    """A rescale by a ``[N*H*W, 1]`` tensor (one value per row) broadcasts otherwise on ``[N, H, W, K]``. The rule declines
    it; here both graphs are edited to read one, and the certificate does not prove the moved rescale."""
    model, broken, layers = _proved(T(batch=2))
    rows = 2 * H * W_
    per_row = np.linspace(0.001, 0.01, rows, dtype=np.float32).reshape(rows, 1)
    for m in (model, broken):
        if operand == "computed":  # the scales' Mul: sa * [N*H*W, 1]
            next(t for t in m.graph.initializer if t.name == "ws").CopyFrom(numpy_helper.from_array(per_row, "ws"))
        else:  # the rescale multiplies by a constant [N*H*W, 1] directly
            m.graph.initializer.append(numpy_helper.from_array(per_row, "per_row"))
            rescale = next(n for n in m.graph.node if n.op_type == "Mul" and "scale" in n.input and n.output[0] != "scale")
            rescale.input[1] = "per_row"
        m.graph.ClearField("value_info")
    cert = certify(model, broken, layers)
    assert cert.layers[_node(broken, "ConvInteger").name].status == "proved" and not cert.proved
    assert any("rank 0 or 1" in u or "one value per row" in u for u in cert.unproved), cert.unproved


def test_the_certificate_does_not_end_a_layer_at_a_reshape_to_another_rank() -> None:
    """The original's second Reshape edited to [N, H*W, K]: the rewritten [N, H, W, K] is not its output."""
    model, broken, layers = _proved(T(batch=2, target="static"))
    target = next(t for t in model.graph.initializer if t.name == "target")
    target.CopyFrom(numpy_helper.from_array(np.array([2, H * W_, K], np.int64), "target"))
    model.graph.ClearField("value_info")
    assert not certify(model, broken, layers).proved


# --- the layout cleanup -----------------------------------------------------------------------------


def two_layers(per_channel: bool) -> onnx.ModelProto:
    """Two dynamic Tensordots with a Relu between, as Keras ConvNeXt's pointwise pair (C -> K -> C)."""
    first, second = tensordot(T(per_channel=per_channel, seed=1)), tensordot(T(per_channel=per_channel, seed=2), c=K, k=C)
    graph = onnx.GraphProto()
    graph.CopyFrom(first.graph)
    rename = {n: f"{n}_2" for n in [*(o for n in second.graph.node for o in n.output), *(i.name for i in second.graph.initializer)]}
    rename["x"] = "relu"
    graph.node.append(helper.make_node("Relu", ["out"], ["relu"], "relu"))
    for node in second.graph.node:
        node.name = f"{node.name}_2"
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename[o] for o in node.output]
        graph.node.append(node)
    for t in second.graph.initializer:
        t.name = rename[t.name]
        graph.initializer.append(t)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out_2", TensorProto.FLOAT, None))
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_the_transposes_between_two_layers_cancel(per_channel: bool) -> None:
    """Under the default policy both layers stay rewritten: the cleanup moves the first layer's Transpose back to NHWC
    through its rescale (a per-channel scale through one Unsqueeze), the bias Add and the Relu, where it meets the
    second layer's Transpose to NCHW. What is left are the two at the model's edges (an NHWC input and output)."""
    model = two_layers(per_channel)
    result = converter.rewrite(model)
    assert [d.rewritten for d in result.report.decisions] == [True, True]
    after = count_ops(result.model.graph)
    assert after["Transpose"] == 2 and after["ConvInteger"] == 2 and after.get("Reshape", 0) == 0
    assert after.get("Unsqueeze", 0) == (2 if per_channel else 0)
    made = {o: n for n in result.model.graph.node for o in n.output}
    second = [n for n in result.model.graph.node if n.op_type == "ConvInteger"][1]
    assert made[made[second.input[0]].input[0]].op_type == "Relu"  # Relu (NCHW) -> DynamicQuantizeLinear -> ConvInteger
    check = converter.verify(model, result, input_shapes={"x": [N, H, W_, C]})
    assert check.passed, check.to_dict()
    feeds = _feeds()
    want, got = (_session(m).run(None, feeds)[0] for m in (model, result.model))
    assert got.tobytes() == want.tobytes()


# --- declines -----------------------------------------------------------------------------------------


def _decline(model: onnx.ModelProto, **options: object) -> tuple[str, str, str]:
    result = _rewrite(model, **options)
    assert result.report.rewritten == 0
    (d,) = [d for d in result.report.decisions if not d.rewritten]
    return d.rule, d.reason, d.detail


def _edit(model: onnx.ModelProto, **inputs: tuple[str, int, str]) -> onnx.ModelProto:
    """``node name -> (slot, new input)`` for each keyword (the node named by the key)."""
    for name, (slot, new) in inputs.items():
        next(n for n in model.graph.node if n.name == name).input[slot] = new
    return model


def test_a_varying_per_channel_zero_point_is_declined() -> None:
    """onnxruntime's ConvInteger takes one weight zero point (the rank-4 rule's decline, from the shared core)."""
    rule, reason, detail = _decline(tensordot(T(w_signed=False, per_channel=True, zero_point="varying")))
    assert (rule, reason) == ("integer_sandwich_to_conv", "per_channel_zero_point_unsupported") and "Non per-tensor" in detail


def test_rows_read_elsewhere_are_declined() -> None:
    model = tensordot(T())
    model.graph.node.append(helper.make_node("Cast", ["xq"], ["xq_float"], "side", to=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("xq_float", TensorProto.FLOAT, None))
    assert _decline(model)[:2] == ("integer_sandwich_to_conv", "activation_shared")


def test_flattened_rows_read_elsewhere_are_declined() -> None:
    model = tensordot(T())
    model.graph.node.append(helper.make_node("Relu", ["rows"], ["rows_relu"], "side"))
    model.graph.output.append(helper.make_tensor_value_info("rows_relu", TensorProto.FLOAT, None))
    assert _decline(model)[:2] == ("integer_sandwich_to_conv", "reshape_output_shared")


@pytest.mark.parametrize("what", ["constant_input", "zero_size"])
def test_an_activation_that_never_changes_or_is_empty_is_declined(what: str) -> None:
    model = tensordot(T(batch=2, target="static"))
    if what == "constant_input":  # x read from a constant: the layer's result never changes
        del model.graph.input[:]
        x = np.random.default_rng(0).standard_normal((2, H, W_, C)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(x, "x_value"))
        model.graph.node.insert(0, helper.make_node("Identity", ["x_value"], ["x"], "x"))
    else:
        model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, H, W_, C]))
    model.graph.ClearField("value_info")
    assert _decline(model)[:2] == ("integer_sandwich_to_conv", what)


def test_another_activation_zero_point_is_declined() -> None:
    """The MatMulInteger reads a copy of the zero point made after the DynamicQuantizeLinear (not its own output)."""
    model = tensordot(T())
    at = next(i for i, n in enumerate(model.graph.node) if n.op_type == "MatMulInteger")
    model.graph.node.insert(at, helper.make_node("Identity", ["xz"], ["xz_copy"], "copy"))
    model = _edit(model, matmul=(2, "xz_copy"))
    rule, reason, detail = _decline(model)
    assert (rule, reason) == ("integer_sandwich_to_conv", "activation_zero_point_mismatch") and "'xz_copy'" in detail


@pytest.mark.parametrize(
    "what",
    ["int32_output_is_a_graph_output", "float_output_read_twice", "no_activation_scale", "per_row_weight_scale"],
)
def test_a_rescale_other_than_quantize_dynamic_s_is_declined(what: str) -> None:
    model = tensordot(T(batch=2))
    if what == "int32_output_is_a_graph_output":
        model.graph.output.append(helper.make_tensor_value_info("acc", TensorProto.INT32, None))
    elif what == "float_output_read_twice":
        model.graph.node.append(helper.make_node("Relu", ["accf"], ["side"], "side"))
        model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    elif what == "no_activation_scale":  # the rescale's scale is the weight's alone
        model = _edit(model, scales=(0, "ws"))
    else:  # a scale per row of the flat tensor ([N*H*W, 1]): it does not broadcast the same way on [N, H, W, K]
        rows = 2 * H * W_
        per_row = np.linspace(0.001, 0.01, rows, dtype=np.float32).reshape(rows, 1)
        model.graph.initializer.append(numpy_helper.from_array(per_row, "ws_rows"))
        model = _edit(model, scales=(1, "ws_rows"))
    rule, reason, _ = _decline(model)
    assert (rule, reason) == ("integer_sandwich_to_conv", "rescale_unsupported")


def test_a_second_reshape_that_moves_positions_is_declined() -> None:
    """[N, W, H, K] instead of [N, H, W, K]: the sandwich's own check."""
    model = tensordot(T(target="static", batch=2))
    target = next(t for t in model.graph.initializer if t.name == "target")
    target.CopyFrom(numpy_helper.from_array(np.array([2, W_, H, K], np.int64), "target"))
    model.graph.ClearField("value_info")
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    assert _decline(with_output_shapes(model))[:2] == ("integer_sandwich_to_conv", "not_per_position")


def test_a_channel_count_the_weight_does_not_have_is_declined() -> None:
    """x has 4 channels, the weight 6 rows (the model cannot run): declined, not rewritten into a broken Conv."""
    model = tensordot(T(target="static", batch=2), c=6)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, H, W_, 4]))
    rows = next(t for t in model.graph.initializer if t.name == "rows_shape")
    rows.CopyFrom(numpy_helper.from_array(np.array([-1, 4], np.int64), "rows_shape"))
    model.graph.ClearField("value_info")
    assert _decline(model)[:2] == ("integer_sandwich_to_conv", "shape_mismatch")


def test_a_sandwich_from_rank_4_back_to_rank_3_is_declined_under_tokens() -> None:
    """x [N, H, W, C] flattened to [N*H, W*C] and restored to [N, H, K] with ``tokens``: a layer on x's first two dims
    that the token rule writes only from rank 3 (test_integer_sandwich_tokens.py has the rank-3 one converted)."""
    model = tensordot(T(target="static", batch=2), c=W_ * C, x_shape=(2, H, W_, C))
    target = next(t for t in model.graph.initializer if t.name == "target")
    target.CopyFrom(numpy_helper.from_array(np.array([2, H, K], np.int64), "target"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    model.graph.ClearField("value_info")
    model = with_output_shapes(model)
    assert _decline(model, tokens=True)[:2] == ("integer_sandwich_to_conv", "tokens_quantized")


def test_a_plain_rank_4_matmul_integer_is_left_to_its_own_rule() -> None:
    """No Reshape in front: not this rule's pattern; the rank-4 rule takes it."""
    model = tensordot(T(bias=False, target="static"))
    rows = next(n for n in model.graph.node if n.name == "rows")
    model.graph.node.remove(rows)
    model = _edit(model, x_quantize=(0, "x"))
    restore = next(n for n in model.graph.node if n.name == "restore")
    model.graph.node.remove(restore)
    next(n for n in model.graph.node if n.name == "rescale").output[0] = "y"
    model.graph.ClearField("value_info")
    result = _rewrite(with_output_shapes(model))
    assert [(d.rule, d.rewritten) for d in result.report.decisions] == [("matmul_integer_to_conv", True)]
