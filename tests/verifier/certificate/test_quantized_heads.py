"""An attention block's head split and merge, rewritten around quantized projections, proved and never loosely.

Under ``--tokens`` the rewrite folds the head split's and the head merge's Transposes into Reshapes of the Conv's
``[B, C, 1, S]`` layout. Read by a quantized chain (quantize_dynamic's DynamicQuantizeLinear -> ConvInteger,
MatMulNBitsQuantizer's blocked DequantizeLinear -> Conv, quantize_static's QLinear ops) such a Reshape was left
unproved on real exports ("no counterpart in the original"). Here the three quantizers' forms of one block convert,
onnxruntime's numbers agree, the certificate proves them, and every Reshape and Transpose the rewrite wrote is
load-bearing: one with two entries of its target or perm swapped is not proved.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate import certify

B, C, HEADS = 2, 64, 4
D = C // HEADS


def float_attention() -> onnx.ModelProto:
    """x [B, S, C] -> q, k, v Linears -> heads [B, h, S, d] (k as [B, h, d, S]) -> softmax(q k * d^-0.5) v -> merged
    [B, S, C] -> the output Linear; shapes inferred into the graph, as exporters write them (opset 21: MatMulNBits'
    blocked DequantizeLinear needs it)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([0, 0, HEADS, D], np.int64), "split"),
        numpy_helper.from_array(np.array([0, 0, C], np.int64), "merge"),
        numpy_helper.from_array(np.array(D**-0.5, np.float32), "scale"),
    ]
    nodes = []
    for p in "qkvo":
        inits.append(numpy_helper.from_array((rng.standard_normal((C, C)) * 0.2).astype(np.float32), f"{p}_w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(C) * 0.05).astype(np.float32), f"{p}_b"))
    for p in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"{p}_w"], [f"{p}_mm"], f"{p}_proj"),
            helper.make_node("Add", [f"{p}_mm", f"{p}_b"], [f"{p}_lin"], f"{p}_bias"),
            helper.make_node("Reshape", [f"{p}_lin", "split"], [f"{p}_heads"], f"{p}_split"),
            helper.make_node("Transpose", [f"{p}_heads"], [f"{p}_t"], f"{p}_perm", perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], "scores"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], "scaled"),
        helper.make_node("Softmax", ["scaled"], ["attn"], "softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v_t"], ["ctx"], "context"),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], "merge_perm", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge"], ["merged"], "merge"),
        helper.make_node("MatMul", ["merged", "o_w"], ["o_mm"], "o_proj"),
        helper.make_node("Add", ["o_mm", "o_b"], ["y"], "o_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, "S", C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, "S", C])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _through_files(model: onnx.ModelProto, quantize: Callable[[str, str], None]) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, src)
        quantize(str(src), str(out))
        return onnx.load(str(out))


def _dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _through_files(model, lambda src, out: quantize_dynamic(src, out, weight_type=QuantType.QInt8))


def _nbits(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    q = mq.MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, bits=4)
    q.process()
    return q.model.model


def _qoperator(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": np.random.default_rng(i).standard_normal((B, 5, C)).astype(np.float32)} for i in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return _through_files(model, lambda src, out: quantize_static(src, out, Feeds(), quant_format=QuantFormat.QOperator))


QUANTIZERS = {
    "quantize_dynamic": (_dynamic, "ConvInteger"),
    "MatMulNBits": (_nbits, "Conv"),
    "QOperator": (_qoperator, "QLinearConv"),
}


@pytest.fixture(scope="module", params=list(QUANTIZERS))
def converted(request: pytest.FixtureRequest) -> tuple[str, onnx.ModelProto, converter.RewriteResult]:
    pytest.importorskip("onnxruntime.quantization")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    quantize, conv = QUANTIZERS[request.param]
    model = quantize(float_attention())
    result = converter.rewrite(model, tokens=True, matmul_nbits=True)
    assert result.report.rewritten >= 3, [(d.node, d.reason) for d in result.report.decisions]
    assert sum(n.op_type == conv for n in result.model.graph.node) == result.report.rewritten
    return request.param, model, result


def test_the_quantized_block_is_proved_and_its_numbers_agree(
    converted: tuple[str, onnx.ModelProto, converter.RewriteResult],
) -> None:
    _, model, result = converted
    report = converter.verify(model, result)
    assert report.verdict == "passed" and report.structure["proved"], report.to_dict()


def _swapped(values: list[int]) -> list[int]:
    """``values`` with its last two entries that differ swapped (same entries, another order)."""
    j = max(k for k in range(1, len(values)) if values[k] != values[k - 1])
    return [*values[: j - 1], values[j], values[j - 1], *values[j + 1 :]]


def _broken(model: onnx.ModelProto, at: int) -> onnx.ModelProto:
    """``model`` with the Reshape's target or the Transpose's perm at node ``at`` in another order."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    node = broken.graph.node[at]
    if node.op_type == "Transpose":
        perm = _swapped(list(helper.get_attribute_value(node.attribute[0])))
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("perm", perm))
    else:
        target = next(t for t in broken.graph.initializer if t.name == node.input[1])
        edited = numpy_helper.from_array(
            np.array(_swapped(numpy_helper.to_array(target).tolist()), np.int64), f"{target.name}_edit"
        )
        broken.graph.initializer.append(edited)
        node.input[1] = edited.name
    return broken


def test_every_reshape_and_transpose_the_rewrite_wrote_is_needed(
    converted: tuple[str, onnx.ModelProto, converter.RewriteResult],
) -> None:
    name, model, result = converted
    theirs = {n.name for n in model.graph.node}
    written = [i for i, n in enumerate(result.model.graph.node) if n.op_type in ("Reshape", "Transpose") and n.name not in theirs]
    reshapes = [result.model.graph.node[i].name for i in written if result.model.graph.node[i].op_type == "Reshape"]
    # The head splits folded into Reshapes of [B, C, 1, S] (q, k and v at least; the head merge into the output
    # projection's too where that one converts): each must be needed.
    assert len(reshapes) >= 3, reshapes
    for i in written:
        cert = certify(model, _broken(result.model, i), result.report.layers)
        assert not cert.proved, (result.model.graph.node[i].name, cert.to_dict())
