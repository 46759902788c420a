"""A real export's quantized token sandwiches (slow tier; skipped without torch and timm).

timm's ResMLP (a small MlpMixer with ResBlock and Affine, random weights) exported by torch.onnx (TorchScript, opset
17), then ``quant_pre_process`` (its MatMulAddFusion writes every rank-3 Linear as ``Reshape -> Gemm -> Reshape``) and
onnxruntime's quantizers: ``quantize_dynamic`` (DynamicQuantizeLinear -> MatMulInteger -> rescale -> bias Add inside
the Reshapes) and ``quantize_static`` in the QOperator format (QGemm). Under ``tokens`` every such layer converts
(keep-all: the optimizer keeps fewer, for fewer Transposes), the verification is PASSED, and onnxruntime's outputs
equal the quantized original's (every layer's integers bit for bit; the model's output within float32 rounding).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from tests._onnxruntime import first_output as _run

pytestmark = pytest.mark.slow

LAYERS = 6  # two blocks: linear_tokens, mlp_channels.fc1, mlp_channels.fc2
SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def pre_processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    mlp_mixer = pytest.importorskip("timm.models.mlp_mixer")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    model = mlp_mixer.MlpMixer(
        img_size=64, patch_size=16, num_blocks=2, embed_dim=64, mlp_ratio=4, block_layer=mlp_mixer.ResBlock,
        norm_layer=mlp_mixer.Affine, stem_norm=False, num_classes=10,
    ).eval()  # fmt: skip
    with torch.no_grad():  # Affine starts at alpha 1, beta 0: perturbed, so that no layer sees a plain copy
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("resmlp")
    exported = folder / "resmlp.onnx"
    x = torch.randn(*SHAPE)
    torch.onnx.export(model, x, str(exported), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    out = folder / "resmlp.pre.onnx"
    logging.disable(logging.WARNING)
    try:
        quant_pre_process(str(exported), str(out))
    finally:
        logging.disable(logging.NOTSET)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("Gemm") >= LAYERS  # the sandwiches this test is about
    return out


class _Reader:
    def __init__(self) -> None:
        self.feeds = iter([{"x": np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)} for i in range(4)])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def _quantized(pre: Path, form: str) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    out = pre.with_name(f"resmlp.{form}.onnx")
    logging.disable(logging.WARNING)
    try:
        if form.startswith("dynamic"):
            quantize_dynamic(str(pre), str(out), per_channel=form.endswith("channel"), weight_type=QuantType.QInt8)
        else:
            reader = type("Reader", (_Reader, CalibrationDataReader), {})()
            quantize_static(
                str(pre), str(out), reader, quant_format=QuantFormat.QOperator, per_channel=form.endswith("channel"),
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    return onnx.load(out)


@pytest.mark.parametrize(
    ("form", "rule", "conv"),
    [
        ("dynamic", "integer_sandwich_to_conv", "ConvInteger"),
        ("dynamic_channel", "integer_sandwich_to_conv", "ConvInteger"),
        ("qoperator", "qgemm_sandwich_to_conv", "QLinearConv"),
        ("qoperator_channel", "qgemm_sandwich_to_conv", "QLinearConv"),
    ],
)
def test_every_quantized_token_sandwich_of_resmlp_converts_and_passes(pre_processed: Path, form: str, rule: str, conv: str) -> None:
    model = _quantized(pre_processed, form)
    before = [n.op_type for n in model.graph.node].count(conv)
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    ours = [d for d in result.report.decisions if d.rule == rule]
    assert len(ours) == LAYERS and all(d.rewritten for d in ours), [(d.node, d.reason) for d in ours]
    assert [n.op_type for n in result.model.graph.node].count(conv) == before + LAYERS
    report = converter.verify(model, result)
    assert report.verdict == "passed", report.to_dict()
    # Each layer's integer output is the original's, bit for bit, on the same input (the layer checks).
    assert all(layer.numbers_detail == "integer output equal to the original's, bit for bit" for layer in report.layers)
    x = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    want, got = _run(model, x), _run(result.model, x)
    # The model's output: within float32 rounding (the layout cleanup moves the head's mean over the tokens, whose
    # float sum then runs in another order); the hand-built sandwiches' tests assert bit for bit.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Under the layout optimizer the conversion is kept only where it saves Transposes; whatever it keeps passes.
    chosen = converter.rewrite(model, tokens=True)
    assert chosen.report.rewritten >= 1
    assert converter.verify(model, chosen).verdict == "passed"
