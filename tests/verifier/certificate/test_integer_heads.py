"""A dynamically quantized projection after an attention head merge, under ``--tokens`` (layers/integer.py).

onnxruntime's ``quantize_dynamic`` puts a DynamicQuantizeLinear between the head merge (Transpose, then a Reshape
to ``[B, S, C]``) and the projection's MatMulInteger. A Reshape before the quantizer is a Tensordot's rows only
when it makes rank 2; read as rows, the proof of this token layer refuted a correct conversion (FAILED).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter

B, H, S, D, K = 2, 4, 5, 8, 16


def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([0, 0, H * D], np.int64), "merged"),
        numpy_helper.from_array((rng.standard_normal((H * D, K)) * 0.2).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal(K) * 0.1 + 0.05).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["heads"], ["by_token"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["by_token", "merged"], ["tokens"]),
        helper.make_node("MatMul", ["tokens", "w"], ["projected"]),
        helper.make_node("Add", ["projected", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heads_merged",
        [helper.make_tensor_value_info("heads", TensorProto.FLOAT, [B, H, S, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, K])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_dynamically_quantized_projection_after_a_head_merge_is_proved(tmp_path: Path) -> None:
    quantization = pytest.importorskip("onnxruntime.quantization")
    src, quantized = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_float_model(), src)
    quantization.quantize_dynamic(str(src), str(quantized), weight_type=quantization.QuantType.QInt8)
    model = onnx.load(str(quantized))
    assert any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node)
    result = converter.rewrite(model, tokens=True)
    assert result.report.rewritten == 1, [(d.node, d.reason) for d in result.report.decisions]
    report = converter.verify(model, result)
    assert report.verdict == "passed", report.structure


def test_an_integer_layer_the_walk_never_reached_is_unchecked_not_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the structure walk stops before an integer layer (unproved), what the original layer is cannot be read:
    its numbers are not checked (the model's outputs still are), and the verdict is INCOMPLETE, not a FAILED that
    claims mismatches no number shows."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from converter.verifier import run as verifier_run
    from converter.verifier.certificate.proofs import LayerProof

    src, quantized = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_float_model(), src)
    quantization.quantize_dynamic(str(src), str(quantized), weight_type=quantization.QuantType.QInt8)
    model = onnx.load(str(quantized))
    result = converter.rewrite(model, tokens=True)
    real = verifier_run.certify

    def walk_stopped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        cert = real(*args, **kwargs)
        for conv in list(cert.originals):
            cert.originals.pop(conv)
            cert.layers[conv] = LayerProof("unproved", "its input is not known: (the walk stopped before it)")
        return cert

    monkeypatch.setattr(verifier_run, "certify", walk_stopped)
    report = converter.verify(model, result)
    assert report.verdict == "incomplete", report.to_dict()["layers"]
    (layer,) = report.to_dict()["layers"]
    assert layer["numbers"] == "not exercised" and "could not be read" in layer["numbers_detail"]
