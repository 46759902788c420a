"""QLinearMatMul on a token sequence [B, S, C] -> Transpose, Unsqueeze, QLinearConv in [B, C, 1, S], Squeeze,
Transpose (``qlinear_matmul_tokens_to_conv``, with ``tokens``).

The rank-4 rule's hand-built layers (test_integer_matmul_to_conv.py: every signedness onnxruntime runs, per tensor
and per channel, symmetric and asymmetric) on a token sequence, and what ``quantize_static(..., QOperator)`` writes
for a transformer MLP; proved by structure (op counts, the integer weight bit for bit, the parameters the same
tensors) and numbers (onnxruntime, the certificate and the integer layer checks, symbolic batch and sequence).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate.walk import certify
from tests.conftest import C, K, assert_rewritten
from tests.rewriter.rules.test_integer_matmul_to_conv import QLINEAR, L, integer_dense

N, S = 2, 7
SHAPES = {"x": [N, S, C]}
TOKEN_OPS = {"Transpose": 2, "Unsqueeze": 1, "Squeeze": 1}


def on_tokens(q: L) -> onnx.ModelProto:
    """``integer_dense(q)`` with its activation a token sequence ``[batch, sequence, C]``."""
    model = integer_dense(q)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    for d in ("batch", "sequence", C):
        dims.add(**({"dim_param": d} if isinstance(d, str) else {"dim_value": d}))
    model.graph.ClearField("output")
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", K]))
    onnx.checker.check_model(model, full_check=True)
    return model


def _convolution(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


@pytest.mark.parametrize("q", QLINEAR, ids=lambda q: q.id)
def test_a_qlinear_token_layer_becomes_a_qlinearconv(q: L) -> None:
    model = on_tokens(q)
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    ops = TOKEN_OPS | {"QuantizeLinear": 1, "QLinearConv": 1, "DequantizeLinear": 1}
    assert_rewritten(model, result, ops, input_shapes=SHAPES)
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == "qlinear_matmul_tokens_to_conv"
    conv = _convolution(result.model, "QLinearConv")
    matmul = next(n for n in model.graph.node if n.op_type == "QLinearMatMul")
    assert [conv.input[i] for i in (1, 2, 4, 5, 6, 7)] == [matmul.input[i] for i in (1, 2, 4, 5, 6, 7)]  # the same tensors
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    assert inits[conv.input[3]].dtype == w.dtype and inits[conv.input[3]].reshape(K, C).T.tobytes() == w.tobytes()


def test_onnxruntimes_qoperator_mlp_converts_bit_for_bit() -> None:
    """quantize_static(QOperator) of a two-layer MLP on tokens: QLinearMatMul, QLinearAdd, ..., every layer a
    QLinearConv, the outputs byte for byte the quantized original's (optimizations off)."""
    model = quantized_mlp("qoperator")
    result = converter.rewrite(model, tokens=True)
    assert [d.rule for d in result.report.decisions if d.rewritten] == ["qlinear_matmul_tokens_to_conv"] * 2
    check = converter.verify(model, result, input_shapes=SHAPES)
    assert check.passed and check.structure["proved"] and all(layer.verified for layer in check.layers), check.to_dict()
    assert all(out.max_abs_error == 0 for out in check.outputs)


def quantized_mlp(form: str) -> onnx.ModelProto:
    """A two-layer MLP on tokens ``[batch, sequence, C]`` (MatMul, Add, Relu, MatMul, Add) quantized by onnxruntime:
    ``dynamic`` (quantize_dynamic), ``qoperator`` or ``qdq`` (quantize_static, per tensor)."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((C, K)) / 2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(K) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((K, C)) / 2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(C) * 0.1).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], "fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], "fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], "act"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], "fc2"),
        helper.make_node("Add", ["o", "b2"], ["y"], "fc2_bias"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", C]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], inits)
    float_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{"x": rng.standard_normal((N, S, C)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.left, None)

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(float_model, src)
        if form == "dynamic":
            quantize_dynamic(src, dst)
        else:
            fmt = QuantFormat.QOperator if form == "qoperator" else QuantFormat.QDQ
            quantize_static(src, dst, Batches(), quant_format=fmt)
        return onnx.load(dst)


def test_steps_aside_without_tokens_and_on_rank_4() -> None:
    model = on_tokens(L())
    d = converter.rewrite(model).report.decisions[0]
    assert not d.rewritten and d.reason == "rank_not_4"
    d = converter.rewrite(integer_dense(L()), tokens=True).report.decisions[0]
    assert d.rewritten and d.rule == "qlinear_matmul_to_conv"


def test_declines_with_the_rank_4_rules_reasons() -> None:
    model = on_tokens(L(x_signed=True, w_signed=False))
    d = converter.rewrite(model, tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "runtime_kernel_missing"
    wide = on_tokens(L())
    wide.graph.input[0].type.tensor_type.shape.dim[2].dim_value = C + 1
    d = converter.rewrite(wide, tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "shape_mismatch"


def test_the_certificate_refutes_a_token_layer_read_in_nchw() -> None:
    """The QLinearConv must read the tokens as [B, C, 1, S]: reading them as [B, C, S, 1] (the unit axis last) is not it."""
    model = on_tokens(L())
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    unsqueeze = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
    result.model.graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), "axis_last"))
    unsqueeze.input[1] = "axis_last"
    squeeze = next(n for n in result.model.graph.node if n.op_type == "Squeeze")
    squeeze.input[1] = "axis_last"
    cert = certify(model, result.model, result.report.layers)
    (proof,) = cert.layers.values()
    assert proof.status == "refuted", cert.to_dict()
