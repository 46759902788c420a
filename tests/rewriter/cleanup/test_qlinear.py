"""A Transpose moves through onnxruntime's QLinearAdd / QLinearMul (com.microsoft) with per-tensor parameters.

The QOperator form of a ConvNeXt block, by hand: the quantized activation goes to NHWC, a bias and a layer scale
are added and multiplied as quantized constants ([C] integers), GELU's fan-out reads the same quantized tensor
twice, and the result goes back to NCHW. The Transposes cancel; the integer constants are laid out as
[1, C, 1, 1], the scales and zero points stay. Proved by structure, by onnxruntime's numbers (bit for bit) and by
the structural certificate; the declines by their codes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.rewriter.cleanup import handlers
from converter.rewriter.cleanup.handlers import Plan
from converter.verifier.certificate.walk import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, cleaned, constant, nodes_of, plan_for, same_numbers, transposes
from tests.rewriter.cleanup._quantized_graphs import NCHW, NHWC, model_of, params, qlinear

C = 6


def block(
    signed: bool = True,
    scalar_scale: bool = False,
    gelu: bool = True,
    b_scale_values: int = 1,
    reader: bool = False,
    layer_scale: bool = True,
    computed_bias: bool = False,
) -> onnx.ModelProto:
    """x -> QuantizeLinear -> Transpose to NHWC -> QLinearAdd(bias) [-> GELU's fan-out] -> QLinearMul(layer scale)
    -> Transpose back -> DequantizeLinear. ``b_scale_values`` > 1: the bias's scale is a vector (per axis);
    ``reader``: a MaxPool (no handler) before the Transpose back; ``computed_bias``: the bias is quantized from a
    second input ``b`` [C] at run time."""
    b = Builder(5)
    dt = np.int8 if signed else np.uint8
    z0 = 0 if signed else 128
    lo, hi = (-100, 100) if signed else (20, 230)
    p_x, p_bias, p_add = params(b, 0.04, z0 + 3, dt), params(b, 0.01, z0 - 2, dt), params(b, 0.05, z0 + 1, dt)
    if b_scale_values > 1:
        p_bias = (b.const(np.full(b_scale_values, 0.01, np.float32)), p_bias[1])
    xq = b.op("QuantizeLinear", "x", *p_x)
    t = b.op("Transpose", xq, perm=NHWC)
    bias = b.const(np.random.default_rng(1).integers(lo, hi, C), dt)
    if computed_bias:
        bias = b.op("QuantizeLinear", "b", *p_bias)
    y, p_y = qlinear(b, "QLinearAdd", t, p_x, bias, p_bias, p_add), p_add
    if gelu:  # y * (1 + erf(y / sqrt 2)), quantized as the QOperator quantizer writes it
        p_e, p_one, p_gelu = params(b, 0.008, z0, dt), params(b, 0.016, z0 - 5, dt), params(b, 0.06, z0, dt)
        e = b.op("Erf", b.op("Div", b.op("DequantizeLinear", y, *p_add), b.const(np.array(1.4142135))))
        eq = b.op("QuantizeLinear", e, *p_e)
        one = qlinear(b, "QLinearAdd", eq, p_e, b.const(np.array(z0 + 125), dt), p_e, p_one)
        y, p_y = qlinear(b, "QLinearMul", y, p_add, one, p_one, p_gelu), p_gelu
    p_out = params(b, 0.03, z0 + 4, dt)
    if layer_scale:
        gamma = b.const(np.array(90) if scalar_scale else np.random.default_rng(2).integers(lo, hi, C), dt)
        y, p_y = qlinear(b, "QLinearMul", y, p_y, gamma, params(b, 0.002, z0, dt), p_out), p_out
    last = b.op("MaxPool", y, kernel_shape=[1, 1]) if reader else y
    back = b.op("Transpose", last, perm=NCHW)
    out = b.op("DequantizeLinear", back, *p_y)
    return model_of(b, [("x", [N, C, H, W]), *([("b", [C])] if computed_bias else [])], [out])


@pytest.mark.parametrize("scalar_scale", [False, True])
@pytest.mark.parametrize("signed", [True, False])
def test_the_block_loses_its_transposes(signed: bool, scalar_scale: bool) -> None:
    model = block(signed, scalar_scale)
    out, _ = cleaned(model)
    assert transposes(model) == 2 and transposes(out) == 0
    add = nodes_of(out, "QLinearAdd")[0]
    bias = constant(out, add.input[3])
    assert bias.shape == (1, C, 1, 1) and bias.dtype == (np.int8 if signed else np.uint8)
    assert bias.reshape(-1).tolist() == constant(model, nodes_of(model, "QLinearAdd")[0].input[3]).tolist()
    assert list(add.input[1:3]) + list(add.input[4:]) == list(nodes_of(model, "QLinearAdd")[0].input[1:3]) + list(
        nodes_of(model, "QLinearAdd")[0].input[4:]
    )  # the scales and zero points are the same tensors
    gamma = constant(out, nodes_of(out, "QLinearMul")[-1].input[3])
    assert gamma.shape == (() if scalar_scale else (1, C, 1, 1))
    same_numbers(model, out, rtol=0, atol=0)
    assert certify(model, out, []).proved


def test_the_fan_out_of_gelu_is_crossed_as_elementwise_fan_out_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Transpose after the bias is read by DequantizeLinear and by QLinearMul, whose other operand is not in the
    layout yet: the copy into DequantizeLinear is made as it is for elementwise ops (handlers.PER_ELEMENT)."""
    model = block()
    out, _ = cleaned(model)
    assert transposes(out) == 0
    monkeypatch.setattr(handlers, "PER_ELEMENT", frozenset())
    out, _ = cleaned(model)
    assert transposes(out) == 2


def test_the_handler_lays_out_the_constant_and_keeps_the_parameters() -> None:
    plan = plan_for(block(gelu=False), "QLinearAdd")
    assert isinstance(plan, Plan) and set(plan.inputs) == {0, 3} and plan.outputs == [tuple(NHWC)]


def test_a_per_axis_parameter_is_declined() -> None:
    verdict = plan_for(block(gelu=False, b_scale_values=C), "QLinearAdd")
    assert verdict.code == "per_axis_parameters", verdict
    out, _ = cleaned(block(gelu=False, b_scale_values=C))
    assert transposes(out) == 2


def test_a_computed_parameter_is_declined() -> None:
    model = block(gelu=False)
    add = nodes_of(model, "QLinearAdd")[0]
    model.graph.node.insert(0, onnx.helper.make_node("Abs", [add.input[6]], ["computed_scale"]))
    add.input[6] = "computed_scale"
    verdict = plan_for(model, "QLinearAdd")
    assert verdict.code == "scale_not_constant", verdict


def test_a_transpose_read_as_a_parameter_is_declined() -> None:
    model = block(gelu=False)
    add = nodes_of(model, "QLinearAdd")[0]
    add.input[2] = add.input[0]  # the Transpose as a zero point: not data
    verdict = plan_for(model, "QLinearAdd")
    assert verdict.code == "not_data_input", verdict


def test_an_output_read_by_an_op_no_handler_knows_keeps_the_transpose() -> None:
    model = block(gelu=False, layer_scale=False, reader=True)
    verdict = plan_for(model, "QLinearAdd")
    assert verdict.code == "outputs_stay_transposed", verdict
    out, _ = cleaned(model)
    assert transposes(out) == transposes(model)
    same_numbers(model, out, rtol=0, atol=0)


def test_an_operand_in_another_layout_is_declined() -> None:
    model = block(gelu=False, computed_bias=True)  # computed, [C], in no Transpose's layout
    verdict = plan_for(model, "QLinearAdd")
    assert verdict.code == "operand_in_other_layout", verdict
