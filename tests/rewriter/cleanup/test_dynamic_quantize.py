"""A Transpose moves through DynamicQuantizeLinear (its quantized output only) and through the rescale of a
dynamically quantized layer, whose scale is computed: ``Mul(DynamicQuantizeLinear's scale, w_scale)``.

By hand, what ``quantize_dynamic`` writes around a layer that a rule has made an NCHW ConvInteger: x goes to NHWC
and is quantized; the quantized tensor goes back to NCHW for the ConvInteger; its int32 output is cast, goes to
NHWC and is rescaled; the result goes back to NCHW. The four Transposes cancel; a per-channel rescale ([K]) is
read through one Unsqueeze to [1, K, 1, 1], a per-tensor one (a scalar) as it is. Proved by structure, by
onnxruntime's numbers (bit for bit) and by the structural certificate.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.rewriter.cleanup.handlers import Decline, Plan
from converter.verifier.certificate.walk import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, constant, nodes_of, plan_for, same_numbers, transposes
from tests.rewriter.cleanup._quantized_graphs import NCHW, NHWC, model_of

C, K = 6, 5


def layer(
    per_channel: bool = True, signed: bool = False, opset: int = 17, scale_dims: tuple[int, ...] | None = None
) -> onnx.ModelProto:
    """x -> Transpose -> DynamicQuantizeLinear -> Transpose -> ConvInteger -> Cast -> Transpose -> Mul(Cast, Mul(s, ws))
    -> Transpose. ``scale_dims``: the weight scale's shape (default [K] per channel, [] per tensor)."""
    b = Builder(3)
    rng = np.random.default_rng(4)
    t = b.op("Transpose", "x", perm=NHWC)
    q = b.op("DynamicQuantizeLinear", t)
    node = b.nodes[-1]
    node.output.extend([f"{q}_scale", f"{q}_zero_point"])
    wdt = np.int8 if signed else np.uint8
    w = b.const(rng.integers(-60, 60, (K, C, 1, 1)) if signed else rng.integers(70, 190, (K, C, 1, 1)), wdt)
    wz = b.const(np.array(0 if signed else 128), wdt)
    nchw = b.op("Transpose", q, perm=NCHW)
    y = b.op("Cast", b.op("ConvInteger", nchw, w, f"{q}_zero_point", wz, kernel_shape=[1, 1]), to=onnx.TensorProto.FLOAT)
    dims = scale_dims if scale_dims is not None else ((K,) if per_channel else ())
    w_scale = b.const(rng.uniform(0.002, 0.01, dims).astype(np.float32))
    scales = b.op("Mul", f"{q}_scale", w_scale)
    out = b.op("Transpose", b.op("Mul", b.op("Transpose", y, perm=NHWC), scales), perm=NCHW)
    return model_of(b, [("x", [N, C, H, W])], [out], opset=opset, shape=[N, K, H, W])


@pytest.mark.parametrize("opset", [11, 17])  # Unsqueeze's axes: an attribute before opset 13, an input after
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_the_layer_loses_its_transposes(per_channel: bool, signed: bool, opset: int) -> None:
    model = layer(per_channel, signed, opset)
    out, _ = cleaned(model)
    assert transposes(model) == 4 and transposes(out) == 0
    (dql,) = nodes_of(out, "DynamicQuantizeLinear")
    assert dql.input[0] == "x"
    assert nodes_of(out, "ConvInteger")[0].input[2] == dql.output[2]  # the zero point as it was: never laid out
    unsqueezes = nodes_of(out, "Unsqueeze")
    assert len(unsqueezes) == (1 if per_channel else 0)
    if per_channel:
        (u,) = unsqueezes
        axes = attr(u, "axes") if opset < 13 else constant(out, u.input[1]).tolist()
        assert list(axes) == [0, 2, 3]  # [K] -> [1, K, 1, 1]
    same_numbers(model, out, rtol=0, atol=0)
    assert certify(model, out, []).proved


def test_the_handler_lays_out_only_the_quantized_output() -> None:
    plan = plan_for(layer(), "DynamicQuantizeLinear")
    assert isinstance(plan, Plan) and plan.outputs == [tuple(NHWC), None, None]


def test_a_quantized_output_read_by_an_op_no_handler_knows_keeps_the_transpose() -> None:
    """MatMulInteger (the layer no rule rewrote) reads it: the Transpose would stay, after the op instead of at the
    model's edge."""
    b = Builder(3)
    t = b.op("Transpose", "x", perm=NHWC)
    q = b.op("DynamicQuantizeLinear", t)
    b.nodes[-1].output.extend([f"{q}_scale", f"{q}_zero_point"])
    w = b.const(np.random.default_rng(0).integers(0, 255, (C, K)), np.uint8)
    mm = b.op("MatMulInteger", q, w, f"{q}_zero_point")
    y = b.op("Mul", b.op("Cast", mm, to=onnx.TensorProto.FLOAT), f"{q}_scale")
    model = model_of(b, [("x", [N, C, H, W])], [b.op("Transpose", y, perm=NCHW)], shape=[N, K, H, W])
    verdict = plan_for(model, "DynamicQuantizeLinear")
    assert isinstance(verdict, Decline) and verdict.code == "outputs_stay_transposed", verdict
    out, _ = cleaned(model)
    assert transposes(out) == 2


def test_a_rescale_whose_axes_would_need_a_transpose_is_not_moved() -> None:
    """A [H, W] weight scale (made up: its two axes would swap places in NCHW) is not read through an Unsqueeze."""
    model = layer(scale_dims=(W, K))
    out, _ = cleaned(model)
    assert nodes_of(out, "Unsqueeze") == [] and transposes(out) == 2  # the rescale's Transposes stay
    same_numbers(model, out, rtol=0, atol=0)


def test_a_computed_operand_that_is_no_quantization_parameter_is_not_moved() -> None:
    """The rescale's scale computed from something else (here ReduceMax of the data): operand_in_other_layout, as
    for any computed operand of a float model."""
    model = layer()
    mul = next(n for n in nodes_of(model, "Mul") if n.input[0].startswith("dynamicquantizelinear"))
    model.graph.node.insert(0, onnx.helper.make_node("ReduceMax", ["x"], ["not_a_parameter"], keepdims=0))
    mul.input[0] = "not_a_parameter"
    out, _ = cleaned(model)
    assert nodes_of(out, "Unsqueeze") == [] and transposes(out) == 2
    same_numbers(model, out, rtol=0, atol=0)


def test_the_certificate_refutes_a_rescale_laid_out_on_the_wrong_axis() -> None:
    model = layer()
    out, _ = cleaned(model)
    (u,) = nodes_of(out, "Unsqueeze")
    for t in out.graph.initializer:
        if t.name == u.input[1]:
            t.CopyFrom(onnx.numpy_helper.from_array(np.array([0, 1, 2], np.int64), t.name))  # [1, 1, 1, K]: along W
    cert = certify(model, out, [])
    assert not cert.proved and any("Mul" in u for u in cert.unproved), cert.to_dict()
