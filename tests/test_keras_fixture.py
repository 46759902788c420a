"""Real Keras + tf2onnx output in the fast tier, without TensorFlow: the committed small Keras ConvNeXt.

``models/fixtures/keras_convnext_small.onnx`` is Keras's own ConvNeXt application code at narrow widths (one block
per stage, 8 pointwise Dense layers on [N, H, W, C]), converted by the TensorFlow front end (tf2onnx); built by
``python -m models.keras_fixture``. The slow tier converts the full Keras ConvNeXtTiny built fresh
(tests/test_zoo.py, tests/test_quantized.py::test_keras_convnext_tiny_quantized_converts); here the same promises
hold for the same exporter's patterns: every Tensordot (Reshape -> MatMul -> Reshape) becomes a Conv, float and
quantized by onnxruntime (QDQ, dynamic), verified, and the layout Transposes cancel down to tf2onnx's own one in
front of the stem.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import converter
from converter.graph import count_ops
from models.keras_fixture import DENSE_LAYERS, DIMS, INPUT_SHAPE
from models.quantized import QDQ_FORMS, Form, quantize
from tests.conftest import run_command

FIXTURE = Path(__file__).resolve().parent.parent / "models" / "fixtures" / "keras_convnext_small.onnx"
DYNAMIC_FORMS = tuple(Form("dynamic", s, p) for s in (True, False) for p in (True, False))
INPUT = "keras_tensor"  # what tf2onnx names a Keras 3 model's input
SHAPE = [1, *INPUT_SHAPE]


def test_the_fixture_is_tf2onnx_output_with_a_tensordot_per_dense_layer() -> None:
    model = onnx.load(FIXTURE)
    assert model.producer_name == "tf2onnx" and FIXTURE.stat().st_size < 300_000
    assert [i.name for i in model.graph.input] == [INPUT]
    ops = count_ops(model.graph)
    assert ops["MatMul"] == DENSE_LAYERS + 1  # and the head's Dense on the pooled [N, C]
    assert ops["Transpose"] == 1 + DENSE_LAYERS  # tf2onnx's NHWC -> NCHW around each Conv, as ConvNeXtTiny's 37
    widths = sorted({t.dims[0] for t in model.graph.initializer if len(t.dims) == 2 and t.dims[1] == 4 * t.dims[0]})
    assert widths == DIMS  # each block's first pointwise Dense: C -> 4C


def test_float_tensordots_become_convs(tmp_path: Path) -> None:
    report = converter.convert(FIXTURE, tmp_path / "out.onnx", input_shapes={INPUT: [2, *INPUT_SHAPE]})
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"] and len(report.verify.layers) == DENSE_LAYERS
    rw = report.rewrite
    assert rw.rewritten == DENSE_LAYERS and {d.rule for d in rw.decisions if d.rewritten} == {"tensordot_to_conv"}
    assert [(d.rule, d.reason) for d in rw.decisions if not d.rewritten] == [("matmul_add_to_conv", "rank_not_4")]
    assert (rw.ops_before["Transpose"], rw.ops_after["Transpose"]) == (1 + DENSE_LAYERS, 1)
    assert rw.ops_after["Reshape"] == rw.ops_before["Reshape"] - 2 * DENSE_LAYERS  # the Tensordots' two each
    assert rw.ops_after["MatMul"] == 1 and rw.ops_after["Conv"] == rw.ops_before["Conv"] + DENSE_LAYERS


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("keras-quantized")
    made: dict[Form, Path] = {}

    def get(form: Form) -> Path:
        if form not in made:
            made[form] = quantize(FIXTURE, folder / f"{form.name}.onnx", form, {INPUT: SHAPE})
        return made[form]

    return get


# One QDQ form in the fast tier (each calibrates and checks ~100 quantized nodes: seconds); the other three in the slow.
QDQ = [pytest.param(f, marks=[] if f == Form("qdq") else [pytest.mark.slow]) for f in QDQ_FORMS]


@pytest.mark.parametrize("form", QDQ, ids=lambda f: f.name)
def test_qdq_tensordots_become_qdq_convs(form: Form, quantized, tmp_path: Path) -> None:  # noqa: ANN001
    report = converter.convert(quantized(form), tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert rw.rewritten == DENSE_LAYERS and {d.rule for d in rw.decisions if d.rewritten} == {"qdq_sandwich_to_conv"}
    assert rw.ops_after.get("MatMul", 0) == 1 and [d.reason for d in rw.decisions if not d.rewritten] == ["rank_not_4"]
    assert (rw.ops_before["Transpose"], rw.ops_after["Transpose"]) == (1 + DENSE_LAYERS, 1)


@pytest.mark.parametrize("form", DYNAMIC_FORMS, ids=lambda f: f.name)
def test_dynamic_tensordots_become_conv_integers(form: Form, quantized, tmp_path: Path) -> None:  # noqa: ANN001
    report = converter.convert(quantized(form), tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    rw = report.rewrite
    declined = [(d.rule, d.reason) for d in rw.decisions if not d.rewritten]
    if form.per_channel and not form.signed:  # the quantizer's uint8 zero points differ per channel
        assert rw.rewritten == 0 and rw.ops_after == rw.ops_before
        assert sorted(set(declined)) == [
            ("integer_sandwich_to_conv", "per_channel_zero_point_unsupported"),
            ("matmul_integer_to_conv", "rank_not_4"),
        ]
        return
    assert rw.rewritten == DENSE_LAYERS and {d.rule for d in rw.decisions if d.rewritten} == {"integer_sandwich_to_conv"}
    assert declined == [("matmul_integer_to_conv", "rank_not_4")] and rw.ops_after["MatMulInteger"] == 1
    assert rw.ops_after["ConvInteger"] == rw.ops_before["ConvInteger"] + DENSE_LAYERS
    assert (rw.ops_before["Transpose"], rw.ops_after["Transpose"]) == (1 + DENSE_LAYERS, 1)
    assert rw.ops_after["Reshape"] == rw.ops_before["Reshape"] - 2 * DENSE_LAYERS
    for op in ("Shape", "Gather", "Concat", "ReduceProd"):  # their target shapes, computed at run time, gone with them
        assert rw.ops_after.get(op, 0) == 0, op
    assert report.verify is not None and len(report.verify.layers) == DENSE_LAYERS
    for check in report.verify.layers:
        assert (check.structure, check.numbers) == ("proved", "passed"), check
        assert check.numbers_detail == "integer output equal to the original's, bit for bit", check


def test_the_command_converts_quantize_dynamics_defaults(quantized, tmp_path: Path) -> None:  # noqa: ANN001
    r = run_command(quantized(Form("dynamic", True, False)), "-o", tmp_path / "out.onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = f"PASSED: rewrote {DENSE_LAYERS} of {DENSE_LAYERS + 1} candidates, verified ({DENSE_LAYERS} layers proved by"
    assert summary in r.stdout, r.stdout
