"""A Transpose moves through onnxruntime's QLinearSigmoid / QLinearLeakyRelu (com.microsoft) with per-tensor parameters.

By hand: a quantized NCHW activation goes to NHWC, through the activation, and back; the Transposes cancel, the
activation reads the quantized tensor itself, its scales, zero points and ``alpha`` unchanged. For real:
``quantize_static`` in QOperator format writes both ops for a float ``Transpose -> Linear -> Sigmoid -> Linear ->
LeakyRelu -> Linear -> Transpose`` (every signedness and granularity), and ``convert`` rewrites its three
QLinearMatMuls into QLinearConvs with no Transpose left, proved. Numbers: onnxruntime as written, bit for bit
(N > 1, H != W). The declines by their codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converter
from converter.rewriter.cleanup.handlers import Decline, Plan
from converter.verifier.certificate.walk import certify
from models.graphs import Builder
from models.quantized import Form, quantize
from tests.rewriter.cleanup._harness import H, N, W, cleaned, nodes_of, plan_for, same_numbers, transposes
from tests.rewriter.cleanup._quantized_graphs import MS, NCHW, NHWC, model_of, params

C = 6
ACTIVATIONS = {"QLinearSigmoid": {}, "QLinearLeakyRelu": {"alpha": 0.1}}


def chain(
    op: str,
    signed: bool = True,
    x_scale_values: int = 1,
    zero_points: bool = True,
    reader: bool = False,
    outputs: int = 1,
) -> onnx.ModelProto:
    """x -> QuantizeLinear -> Transpose to NHWC -> ``op`` -> Transpose back -> DequantizeLinear.

    ``x_scale_values`` > 1: the activation's X_scale is a vector (per axis); ``zero_points`` False: the op's two
    zero points "" (absent: zero); ``reader``: a MaxPool (no handler) before the Transpose
    back; ``outputs`` 2: the op writes a second output."""
    b = Builder(5)
    dt = np.int8 if signed else np.uint8
    z0 = 0 if signed else 128
    p_x, p_y = params(b, 0.04, z0 + 3, dt), params(b, 1 / 256 if op == "QLinearSigmoid" else 0.03, z0 - 4, dt)
    xq = b.op("QuantizeLinear", "x", *p_x)
    t = b.op("Transpose", xq, perm=NHWC)
    x_scale = p_x[0] if x_scale_values == 1 else b.const(np.full(x_scale_values, 0.04, np.float32))
    ins = [t, x_scale, p_x[1], *p_y] if zero_points else [t, x_scale, "", p_y[0], ""]
    y = b.op(op, *ins, domain=MS, **ACTIVATIONS[op])
    if outputs > 1:
        b.nodes[-1].output.append("extra")
    last = b.op("MaxPool", y, kernel_shape=[1, 1]) if reader else y
    back = b.op("Transpose", last, perm=NCHW)
    out = b.op("DequantizeLinear", back, *p_y) if zero_points else b.op("DequantizeLinear", back, p_y[0])
    return model_of(b, [("x", [N, C, H, W])], [out])


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_the_transposes_cancel_through_the_activation(op: str, signed: bool) -> None:
    model = chain(op, signed)
    out, _ = cleaned(model)
    assert transposes(model) == 2 and transposes(out) == 0
    before, after = nodes_of(model, op)[0], nodes_of(out, op)[0]
    assert after.input[0] == nodes_of(model, "QuantizeLinear")[0].output[0]  # the quantized NCHW tensor itself
    assert list(after.input[1:]) == list(before.input[1:])  # the same scale and zero point tensors
    assert list(after.attribute) == list(before.attribute)  # alpha kept
    assert nodes_of(out, "DequantizeLinear")[0].input[0] == after.output[0]
    same_numbers(model, out, rtol=0, atol=0)
    assert certify(model, out, []).proved


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_absent_zero_points_are_zero(op: str) -> None:
    """X_zero_point and Y_zero_point "": nothing to check, the move is the same."""
    model = chain(op, zero_points=False)
    plan = plan_for(model, op)
    assert isinstance(plan, Plan) and set(plan.inputs) == {0} and plan.outputs == [tuple(NHWC)]
    out, _ = cleaned(model)
    assert transposes(out) == 0
    same_numbers(model, out, rtol=0, atol=0)


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_a_per_axis_parameter_is_declined(op: str) -> None:
    """An X_scale along an axis (which onnxruntime's kernel refuses anyway) would have to follow the layout."""
    model = chain(op, x_scale_values=C)
    verdict = plan_for(model, op)
    assert isinstance(verdict, Decline) and verdict.code == "per_axis_parameters", verdict
    out, _ = cleaned(model)
    assert transposes(out) == 2


@pytest.mark.parametrize("slot", [1, 2, 3, 4])
def test_a_computed_parameter_is_declined(slot: int) -> None:
    model = chain("QLinearSigmoid")
    node = nodes_of(model, "QLinearSigmoid")[0]
    # Computed at run time (from an input of the model): an Abs of the constant would be a constant expression,
    # which the cleanup evaluates and may move like any constant.
    dtype = next(t.data_type for t in model.graph.initializer if t.name == node.input[slot])
    model.graph.input.append(onnx.helper.make_tensor_value_info("runtime", dtype, []))
    model.graph.node.insert(0, onnx.helper.make_node("Max", [node.input[slot], "runtime"], ["computed"]))
    node.input[slot] = "computed"
    verdict = plan_for(model, "QLinearSigmoid")
    assert isinstance(verdict, Decline) and verdict.code == "scale_not_constant", verdict


def test_a_transpose_read_as_a_parameter_is_declined() -> None:
    model = chain("QLinearLeakyRelu")
    node = nodes_of(model, "QLinearLeakyRelu")[0]
    node.input[2] = node.input[0]  # the Transpose as a zero point: not data
    verdict = plan_for(model, "QLinearLeakyRelu")
    assert isinstance(verdict, Decline) and verdict.code == "not_data_input", verdict


def test_an_output_read_by_an_op_no_handler_knows_keeps_the_transpose() -> None:
    model = chain("QLinearSigmoid", reader=True)
    verdict = plan_for(model, "QLinearSigmoid")
    assert isinstance(verdict, Decline) and verdict.code == "outputs_stay_transposed", verdict
    out, _ = cleaned(model)
    assert transposes(out) == transposes(model)
    same_numbers(model, out, rtol=0, atol=0)


def test_other_than_five_inputs_is_declined() -> None:
    """Four inputs (Y_zero_point left off, which the schema allows) abort onnxruntime 1.32: not moved."""
    model = chain("QLinearSigmoid")
    del nodes_of(model, "QLinearSigmoid")[0].input[4]
    verdict = plan_for(model, "QLinearSigmoid")
    assert isinstance(verdict, Decline) and verdict.code == "no_pattern", verdict


def test_a_second_output_is_declined() -> None:
    verdict = plan_for(chain("QLinearLeakyRelu", outputs=2), "QLinearLeakyRelu")
    assert isinstance(verdict, Decline) and verdict.code == "outputs", verdict


# -- onnxruntime.quantization's own output ----------------------------------------------------------


def _float_model(c: int = 16, h: int = 6, w: int = 10) -> onnx.ModelProto:
    """NCHW in and out; three Linears on the NHWC view, Sigmoid and LeakyRelu between (N symbolic)."""
    b = Builder(3)
    y = b.op("Transpose", "x", perm=NHWC)
    y = b.op("Sigmoid", b.dense(y, c, 24))
    y = b.op("LeakyRelu", b.dense(y, 24, 20), alpha=0.1)
    out = b.op("Transpose", b.dense(y, 20, c), perm=NCHW)
    return b.model([("x", ["N", c, h, w])], [out])


@pytest.mark.parametrize("form", [Form("qoperator", s, p) for s in (True, False) for p in (True, False)], ids=lambda f: f.name)
def test_quantize_static_qoperator_converts_with_no_transpose_left(form: Form, tmp_path: Path) -> None:
    source = tmp_path / "float.onnx"
    onnx.save(_float_model(), source)
    quantized = quantize(source, tmp_path / "q.onnx", form, {"x": [2, 16, 6, 10]})
    ops = [(n.domain, n.op_type) for n in onnx.load(quantized).graph.node]
    assert (MS, "QLinearSigmoid") in ops and (MS, "QLinearLeakyRelu") in ops  # what the quantizer writes
    report = converter.convert(quantized, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert rw.rewritten == 3 and rw.ops_after.get("QLinearMatMul", 0) == 0 and rw.ops_after["QLinearConv"] == 3
    assert (rw.ops_before["Transpose"], rw.ops_after.get("Transpose", 0)) == (2, 0)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 16, 6, 10)).astype(np.float32)}
    want, got = (
        ort.InferenceSession(p.read_bytes(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for p in (quantized, tmp_path / "out.onnx")
    )
    assert got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()
