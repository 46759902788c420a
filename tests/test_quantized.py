"""Real onnxruntime.quantization output: the zoo's ConvNeXt graphs (small shapes) quantized at test time, converted.

QDQ in every signedness and granularity: every quantized dense layer on a 4D tensor becomes a Conv of a
DequantizeLinear weight, verified (certificate proved, layers checked, outputs compared), with no more
Transposes than the quantized model had, the integer weights those of the original transposed, the
activation's QuantizeLinear -> DequantizeLinear directly in front of each Conv, and onnxruntime's outputs
(default optimizations, as deployed; N > 1, H != W) within one quantization step of the original's.
QOperator and dynamic, every signedness and granularity, under the default layout policy: every QLinearMatMul
becomes a QLinearConv and every MatMulInteger a ConvInteger (but a uint8 per-channel weight zero point, which
onnxruntime's ConvInteger refuses; an int8 weight and its zero point written as uint8 + 128), proved, with no
more Transposes than the original (the cleanup moves them through QLinearAdd / QLinearMul /
DynamicQuantizeLinear and the rescale) and outputs equal to the original's bit for bit (onnxruntime, as written).
tf2onnx's Tensordots (Reshape -> dense -> Reshape, Keras ConvNeXtTiny's) in QDQ, QOperator and dynamic form: the same,
the Reshapes gone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from models import graphs
from models.quantized import QDQ_FORMS, Form, quantize
from tests.conftest import run_command

# The zoo's pytorch_convnext_block and convnext_stage_ln, smaller: (builder, input shape, quantized dense layers)
MODELS = {
    "pytorch_convnext_block": (lambda: graphs.convnext_block(c=16, h=6, w=10), [2, 16, 6, 10], 2),
    "convnext_stage_ln": (lambda: _any_batch(graphs.convnext_stage(32, 12, 10, blocks=2, layernorm=True)), [2, 32, 12, 10], 4),
}


def _any_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The batch dim symbolic, so that the numbers can be compared at N > 1."""
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.ClearField("value_info")
    return model


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(model name, form) -> path of the quantized model, made once per module."""
    folder = tmp_path_factory.mktemp("quantized")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, form: Form) -> Path:
        key = (name, form.name)
        if key not in made:
            build, shape, _ = MODELS[name]
            source = folder / f"{name}.onnx"
            if not source.exists():
                onnx.save(build(), source)
            made[key] = quantize(source, folder / f"{name}_{form.name}.onnx", form, {"x": shape})
        return made[key]

    return get


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feed(shape: list[int]) -> dict[str, np.ndarray]:
    n, c, h, w = shape
    assert n > 1 and h != w
    return {"x": np.random.default_rng(7).standard_normal((n, c, h, w)).astype(np.float32)}


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that writes the graph output: one quantization step of it."""
    graph = model.graph
    dq = next(n for n in graph.node if n.output[0] == graph.output[0].name)
    assert dq.op_type == "DequantizeLinear"
    return float(numpy_helper.to_array(next(t for t in graph.initializer if t.name == dq.input[1])))


@pytest.mark.parametrize("form", QDQ_FORMS, ids=lambda f: f.name)
@pytest.mark.parametrize("name", list(MODELS))
def test_qdq_layers_become_quantized_convs(name: str, form: Form, quantized, tmp_path: Path) -> None:  # noqa: ANN001
    source = quantized(name, form)
    _, shape, layers = MODELS[name]
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.written and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert rw.rewritten == layers and all(d.rule == "qdq_matmul_to_conv" for d in rw.decisions if d.rewritten)
    assert rw.ops_after.get("MatMul", 0) == 0 and rw.ops_after["Conv"] == rw.ops_before.get("Conv", 0) + layers
    assert rw.ops_after.get("Transpose", 0) <= rw.ops_before.get("Transpose", 0)
    # No requantization: as many Q and DQ as the quantizer wrote.
    for op in ("QuantizeLinear", "DequantizeLinear"):
        assert rw.ops_after[op] == rw.ops_before[op], op

    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    o_inits = {t.name: t for t in original.graph.initializer}
    r_inits = {t.name: t for t in result.graph.initializer}
    o_prod = {o: n for n in original.graph.node for o in n.output}
    r_prod = {o: n for n in result.graph.node for o in n.output}
    new_convs = [n for n in result.graph.node if n.op_type == "Conv" and any(p.key == "converter.rule" for p in n.metadata_props)]
    assert len(new_convs) == layers
    for conv in new_convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        assert attrs == {"kernel_shape": [1, 1]}
        w_dq = r_prod[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        ints = numpy_helper.to_array(r_inits[w_dq.input[0]])
        assert ints.dtype == (np.int8 if form.signed else np.uint8)
        # The original layer's integer weight: the MatMul that this Conv's provenance names.
        origin = next(p.value for p in conv.metadata_props if p.key == "converter.rule").split(" from ")[1]
        matmul = next(n for n in original.graph.node if n.name == origin)
        o_dq = o_prod[matmul.input[1]]
        o_ints = numpy_helper.to_array(o_inits[o_dq.input[0]])
        assert ints.shape == (o_ints.shape[1], o_ints.shape[0], 1, 1)
        assert np.ascontiguousarray(ints.reshape(ints.shape[:2]).T).tobytes() == o_ints.tobytes()
        assert list(w_dq.input[1:]) == list(o_dq.input[1:])  # the same scale and zero point tensors
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis")
        assert axis == (0 if form.per_channel else None)
        # QDQ form in front of the Conv: DequantizeLinear(QuantizeLinear(.)) with the original's parameters.
        x_dq = r_prod[conv.input[0]]
        assert x_dq.op_type == "DequantizeLinear" and r_prod[x_dq.input[0]].op_type == "QuantizeLinear"
        o_x_dq = o_prod[matmul.input[0]]
        assert list(x_dq.input[1:]) == list(o_x_dq.input[1:])

    # Numbers as deployed (default optimizations fuse the QDQ groups into integer kernels), N > 1, H != W.
    feeds = _feed(shape)
    want = _session(original).run(None, feeds)[0]
    got = _session(result).run(None, feeds)[0]
    step = _output_step(original)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float(np.abs(got - want).max()) <= step * 1.0001, f"{np.abs(got - want).max() / step} steps"


INTEGER_FORMS = tuple(Form(f, s, p) for f in ("qoperator", "dynamic") for s in (True, False) for p in (True, False))


def _as_written(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# Transposes after the conversion (the original's: 2 in the block, 4 in the stage). The block keeps none: the
# cleanup moves them through QLinearAdd / QLinearMul / DynamicQuantizeLinear and the rescale until they cancel.
# The stage keeps one in front of each LayerNormalization (over C, in NHWC) and one after it, as the float stage.
INTEGER_TRANSPOSES = {"pytorch_convnext_block": (2, 0), "convnext_stage_ln": (4, 4)}


@pytest.mark.parametrize("form", INTEGER_FORMS, ids=lambda f: f.name)
@pytest.mark.parametrize("name", list(MODELS))
def test_integer_layers_become_integer_convs(name: str, form: Form, quantized, tmp_path: Path) -> None:  # noqa: ANN001
    """QLinearMatMul -> QLinearConv, MatMulInteger -> ConvInteger under the default layout policy (never-worse):
    rewritten, not declined, proved, no more Transposes than the original, bit for bit the original's numbers."""
    source = quantized(name, form)
    _, shape, layers = MODELS[name]
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    anchor, conv = ("QLinearMatMul", "QLinearConv") if form.fmt == "qoperator" else ("MatMulInteger", "ConvInteger")
    if form.fmt == "dynamic" and form.per_channel and not form.signed:
        # uint8 per channel: the quantizer's zero points differ per channel, which onnxruntime's ConvInteger refuses.
        assert rw.rewritten == 0 and {d.reason for d in rw.decisions} == {"per_channel_zero_point_unsupported"}
        return
    assert rw.rewritten == layers and rw.ops_after.get(anchor, 0) == 0
    assert not any(d.reason == "layout_cost" for d in rw.decisions), [d.reason for d in rw.decisions]
    assert rw.ops_after[conv] == rw.ops_before.get(conv, 0) + layers
    assert (rw.ops_before["Transpose"], rw.ops_after.get("Transpose", 0)) == INTEGER_TRANSPOSES[name]
    for op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "Mul", "Cast"):
        assert rw.ops_after.get(op, 0) == rw.ops_before.get(op, 0), op  # nothing requantized, the bias adds kept
    # A per-channel rescale ([K] scales) is read in NCHW through one Unsqueeze to [1, K, 1, 1]; a per-tensor one as it is.
    unsqueezes = layers if form.fmt == "dynamic" and form.per_channel else 0
    assert rw.ops_after.get("Unsqueeze", 0) == rw.ops_before.get("Unsqueeze", 0) + unsqueezes
    for check in report.verify.layers:
        assert check.numbers_detail == "integer output equal to the original's, bit for bit", check
    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    if form.fmt == "dynamic":
        _assert_conv_integer_weights(original, result, shifted=form.signed)
    # onnxruntime: as written, the whole model's output is the original's bit for bit (N > 1, H != W);
    # with default optimizations (as deployed) within one step of the output's quantization.
    feeds = _feed(shape)
    want, got = _as_written(original).run(None, feeds)[0], _as_written(result).run(None, feeds)[0]
    assert got.tobytes() == want.tobytes()
    want, got = _session(original).run(None, feeds)[0], _session(result).run(None, feeds)[0]
    if form.fmt == "qoperator":
        assert float(np.abs(got - want).max()) <= _output_step(original) * 1.0001
    else:
        # Float outputs: onnxruntime fuses MatMulInteger with its rescale (MatMulIntegerToFloat), not ConvInteger,
        # so the float rescale is rounded differently: float32 rounding of the output, no more.
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max()), float(np.abs(got - want).max())


def _assert_conv_integer_weights(original: onnx.ModelProto, result: onnx.ModelProto, shifted: bool) -> None:
    """Each ConvInteger's weight and zero point against its MatMulInteger's (named by its provenance): uint8 x int8
    (quantize_dynamic's int8 weights) written as uint8 x uint8, both + 128; uint8 weights as they are."""
    o_inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    r_inits = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    rewritten = [n for n in result.graph.node if any(p.key == "converter.rule" for p in n.metadata_props)]
    convs = [n for n in rewritten if n.op_type == "ConvInteger"]  # not the quantizer's own (the stage's depthwise)
    assert len(convs) == sum(n.op_type == "MatMulInteger" for n in original.graph.node)
    for conv in convs:
        origin = next(p.value for p in conv.metadata_props if p.key == "converter.rule").split(" from ")[1]
        matmul = next(n for n in original.graph.node if n.name == origin)
        w, zw = o_inits[matmul.input[1]], o_inits[matmul.input[3]]
        ints, zero = r_inits[conv.input[1]], r_inits[conv.input[3]]
        assert w.dtype == (np.int8 if shifted else np.uint8) and ints.shape == (w.shape[1], w.shape[0], 1, 1)
        want = (w.astype(np.int16) + 128).astype(np.uint8) if shifted else w
        want_zero = (zw.astype(np.int16) + 128).astype(np.uint8) if shifted else zw
        assert ints.dtype == zero.dtype == np.uint8
        assert ints.reshape(ints.shape[:2]).T.tobytes() == want.tobytes()
        assert zero.size == 1 and (want_zero == zero.reshape(-1)[0]).all()


@pytest.mark.parametrize("fmt", ["qoperator", "dynamic"])
def test_the_integer_forms_keep_their_transposes_without_the_quantized_handlers(
    fmt: str,
    quantized,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Without the handlers for QLinearAdd / QLinearMul and DynamicQuantizeLinear, the layers' Transposes stay and
    the default policy declines them: what the handlers are for."""
    from converter.rewriter.cleanup import handlers

    monkeypatch.setattr(handlers, "OTHER_DOMAINS", {})
    monkeypatch.delitem(handlers.HANDLERS, "DynamicQuantizeLinear")
    source = quantized("pytorch_convnext_block", Form(fmt))
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed
    assert report.rewrite.rewritten == 0 and {d.reason for d in report.rewrite.decisions} == {"layout_cost"}
    assert count_ops(onnx.load(source).graph) == report.rewrite.ops_after


@pytest.mark.parametrize("form", [Form("qoperator", True, True), Form("dynamic", True, True)], ids=lambda f: f.name)
def test_the_command_converts_the_integer_forms(form: Form, quantized, tmp_path: Path) -> None:  # noqa: ANN001
    source = quantized("convnext_stage_ln", form)
    out = tmp_path / "out.onnx"
    done = run_command(source, "-o", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout
    before, after = count_ops(onnx.load(source).graph), count_ops(onnx.load(out).graph)
    conv = "QLinearConv" if form.fmt == "qoperator" else "ConvInteger"
    assert after[conv] == before.get(conv, 0) + MODELS["convnext_stage_ln"][2]
    assert after.get("Transpose", 0) <= before["Transpose"]


def test_the_command_prints_passed(quantized, tmp_path: Path) -> None:  # noqa: ANN001
    source = quantized("convnext_stage_ln", Form("qdq"))
    done = run_command(source, "-o", tmp_path / "out.onnx")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout


# --- tf2onnx's Tensordot (Reshape -> MatMul -> Reshape), quantized: the QDQ sandwich ---------------------


def _sandwich_source(folder: Path) -> Path:
    """A Keras Dense on [N, 3, 4, 6] as tf2onnx writes it (run-time target shape), float, symbolic N."""
    path = folder / "sandwich.onnx"
    onnx.save(graphs.reshape_sandwich(target="runtime", c=6, k=5, h=3, w=4), path)
    return path


@pytest.mark.parametrize("form", QDQ_FORMS, ids=lambda f: f.name)
def test_a_quantized_tensordot_becomes_a_qdq_conv(form: Form, tmp_path: Path) -> None:
    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", form, {"x": [2, 3, 4, 6]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert rw.rewritten == 1 and [d.rule for d in rw.decisions if d.rewritten] == ["qdq_sandwich_to_conv"]
    assert rw.ops_after.get("MatMul", 0) == 0 and rw.ops_after.get("Reshape", 0) == 0 and rw.ops_after["Conv"] == 1
    for op in ("QuantizeLinear", "DequantizeLinear"):  # the same pairs, moved out of the Reshapes: none added
        assert rw.ops_after[op] == rw.ops_before[op], op

    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    r_prod = {o: n for n in result.graph.node for o in n.output}
    r_readers = {i: n for n in result.graph.node for i in n.input}
    r_inits = {t.name: t for t in result.graph.initializer}
    o_inits = {t.name: t for t in original.graph.initializer}
    conv = next(n for n in result.graph.node if n.op_type == "Conv")
    # The QDQ Conv form: DQ(Q(activation)) -> Conv(., DQ(Wq^T)) -> Q -> DQ.
    act_dq = r_prod[conv.input[0]]
    assert act_dq.op_type == "DequantizeLinear" and r_prod[act_dq.input[0]].op_type == "QuantizeLinear"
    out_q = r_readers[conv.output[0]]
    assert out_q.op_type == "QuantizeLinear" and r_readers[out_q.output[0]].op_type == "DequantizeLinear"
    w_dq = r_prod[conv.input[1]]
    ints = numpy_helper.to_array(r_inits[w_dq.input[0]])
    o_matmul = next(n for n in original.graph.node if n.op_type == "MatMul")
    o_wdq = next(n for n in original.graph.node if n.output[0] == o_matmul.input[1])
    o_ints = numpy_helper.to_array(o_inits[o_wdq.input[0]])
    assert ints.dtype == (np.int8 if form.signed else np.uint8) and ints.shape == (5, 6, 1, 1)
    assert np.ascontiguousarray(ints.reshape(5, 6).T).tobytes() == o_ints.tobytes()  # the same integers, moved
    axis = {a.name: a.i for a in w_dq.attribute}.get("axis")
    assert (axis == 0) if form.per_channel else (numpy_helper.to_array(r_inits[w_dq.input[1]]).size == 1)
    for name in (w_dq.input[1], act_dq.input[1], out_q.input[1]):  # scales: the quantizer's, bit for bit
        assert r_inits[name].SerializeToString() == o_inits[name].SerializeToString()

    # Numbers at N > 1, H != W: onnxruntime as deployed (QDQ fused) and as written.
    feed = {"x": np.random.default_rng(3).standard_normal((3, 3, 4, 6)).astype(np.float32)}
    step = _output_step(original)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        want, got = (
            ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for m in (original, result)
        )
        assert got.shape == want.shape == (3, 3, 4, 5)
        assert np.abs(got - want).max() <= step * 1.001, level


def test_a_quantized_tensordot_needs_its_pairs_to_be_the_originals(tmp_path: Path) -> None:
    """The certificate compares the moved pairs with the original's: a changed activation scale is refuted."""
    from converter.verifier.certificate.walk import certify

    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", QDQ_FORMS[0], {"x": [2, 3, 4, 6]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.verify is not None and report.verify.structure["proved"]
    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    conv = next(n for n in result.graph.node if n.op_type == "Conv")
    act_dq = next(n for n in result.graph.node if n.output[0] == conv.input[0])
    scale = next(t for t in result.graph.initializer if t.name == act_dq.input[1])
    changed = onnx.numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), "tampered_scale")
    result.graph.initializer.append(changed)
    act_dq.input[1] = "tampered_scale"
    cert = certify(original, result, report.rewrite.layers)
    assert not cert.proved and cert.refuted


DYNAMIC_FORMS = tuple(f for f in INTEGER_FORMS if f.fmt == "dynamic")


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.parametrize("form", (*QDQ_FORMS, *DYNAMIC_FORMS), ids=lambda f: f.name)
def test_keras_convnext_tiny_quantized_converts(form: Form, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The zoo's Keras ConvNeXtTiny (tf2onnx Tensordots), quantized QDQ or dynamic: all 36 pointwise dense layers
    rewritten (the dynamic uint8 per-channel form aside: ConvInteger takes one weight zero point), verified."""
    pytest.importorskip("tensorflow")
    from models.quantized import keras_convnext_onnx

    folder = tmp_path_factory.getbasetemp() / "keras_convnext"
    folder.mkdir(exist_ok=True)
    source = keras_convnext_onnx(folder / "convnext_tiny.onnx")
    quantized = quantize(source, tmp_path / "q.onnx", form, {onnx.load(source).graph.input[0].name: [1, 64, 48, 3]})
    report = converter.convert(quantized, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    if form.fmt == "dynamic":
        _assert_keras_dynamic(form, report)
        if form == Form("dynamic", True, False):  # quantize_dynamic's defaults, through the command
            command = [sys.executable, "-m", "converter", str(quantized), "-o", str(tmp_path / "cli.onnx")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            summary = "PASSED: rewrote 36 of 37 candidates, verified (36 layers proved by structure and checked by numbers)"
            assert summary in done.stdout, done.stdout
        return
    assert rw.rewritten == 36 and {d.rule for d in rw.decisions if d.rewritten} == {"qdq_sandwich_to_conv"}
    # Left: the classifier head, a Dense on the pooled [N, 768] (rank 2, no 4D tensor to lay out).
    assert rw.ops_after.get("MatMul", 0) == 1 and [d.reason for d in rw.decisions if not d.rewritten] == ["rank_not_4"]
    assert rw.ops_after.get("Transpose", 0) <= rw.ops_before.get("Transpose", 0)


def _assert_keras_dynamic(form: Form, report: converter.ConvertReport) -> None:
    """quantize_dynamic's Tensordots (Reshape -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Reshape):
    36 become ConvIntegers, every layer proved and its int32 sums the original's bit for bit, and the Transposes
    cancel as in the QOperator form (37 -> 1: the one left is tf2onnx's, in front of the stem)."""
    rw = report.rewrite
    declined = [(d.rule, d.reason) for d in rw.decisions if not d.rewritten]
    if form.per_channel and not form.signed:  # the quantizer's uint8 zero points differ per channel
        assert rw.rewritten == 0 and rw.ops_after == rw.ops_before
        assert sorted(set(declined)) == [
            ("integer_sandwich_to_conv", "per_channel_zero_point_unsupported"),
            ("matmul_integer_to_conv", "rank_not_4"),
        ]
        return
    assert rw.rewritten == 36 and {d.rule for d in rw.decisions if d.rewritten} == {"integer_sandwich_to_conv"}
    # Left: the classifier head, a Dense on the pooled [N, 768] (rank 2, no 4D tensor to lay out).
    assert declined == [("matmul_integer_to_conv", "rank_not_4")] and rw.ops_after["MatMulInteger"] == 1
    assert rw.ops_after["ConvInteger"] == rw.ops_before["ConvInteger"] + 36
    assert (rw.ops_before["Transpose"], rw.ops_after["Transpose"]) == (37, 1)
    assert rw.ops_after["Reshape"] == rw.ops_before["Reshape"] - 72  # the Tensordots' two each
    for op in ("Shape", "Gather", "Concat", "ReduceProd"):  # their target shapes, computed at run time, gone with them
        assert rw.ops_after.get(op, 0) == 0, op
    # A per-channel rescale ([K] scales) is read in NCHW through one Unsqueeze to [1, K, 1, 1]; a per-tensor one as it is.
    assert rw.ops_after.get("Unsqueeze", 0) == (36 if form.per_channel else 0)
    for op in ("DynamicQuantizeLinear", "Mul"):  # moved, none added or lost (the rescales read 4D tensors)
        assert rw.ops_after[op] == rw.ops_before[op], op
    assert report.verify is not None and len(report.verify.layers) == 36
    for check in report.verify.layers:
        assert (check.structure, check.numbers) == ("proved", "passed"), check
        assert check.numbers_detail == "integer output equal to the original's, bit for bit", check


def test_a_coarsely_quantized_activation_does_not_fail_the_layer_input_check(tmp_path: Path) -> None:
    """A calibration that saw outliers gives a quantization step near the activation's own size. The Conv of a
    quantized Tensordot reads the activation through its Q/DQ pair, far from the float tensor the layer is
    claimed from (relative error ~0.2; the layer check's limit is 1e-2), but exactly what the original's own
    pair makes of it: that is what the input check compares."""
    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", QDQ_FORMS[0], {"x": [2, 3, 4, 6]})
    model = onnx.load(source)
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")  # the activation's pair
    scale = next(t for t in model.graph.initializer if t.name == first_q.input[1])
    scale.CopyFrom(numpy_helper.from_array(np.array(8.0 / 127, np.float32), scale.name))  # covers +-8; x is ~N(0, 1)
    coarse = tmp_path / "coarse.onnx"
    onnx.save(model, coarse)
    report = converter.convert(coarse, tmp_path / "out.onnx")
    assert report.verify is not None and report.rewrite.rewritten == 1
    (layer,) = report.verify.layers
    assert (layer.structure, layer.numbers) == ("proved", "passed"), report.verify.to_dict()
    assert layer.input_rel_error < 1e-6  # like with like: the pair's own output on both sides
    assert report.verify.passed


# --- tf2onnx's Tensordot, QOperator: Reshape -> QuantizeLinear -> QLinearMatMul -> Reshape -> QLinearAdd ------

QOPERATOR_FORMS = tuple(f for f in INTEGER_FORMS if f.fmt == "qoperator")


@pytest.mark.parametrize("form", QOPERATOR_FORMS, ids=lambda f: f.name)
def test_a_qoperator_tensordot_becomes_a_qlinear_conv(form: Form, tmp_path: Path) -> None:
    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", form, {"x": [2, 3, 4, 6]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    assert [d.rule for d in rw.decisions if d.rewritten] == ["qlinear_sandwich_to_conv"]
    assert rw.ops_after.get("QLinearMatMul", 0) == 0 and rw.ops_after.get("Reshape", 0) == 0 and rw.ops_after["QLinearConv"] == 1
    for op in ("QuantizeLinear", "DequantizeLinear", "QLinearAdd"):  # moved out of the Reshapes, none added
        assert rw.ops_after[op] == rw.ops_before[op], op
    (check,) = report.verify.layers
    assert check.numbers_detail == "integer output equal to the original's, bit for bit", check

    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    o_inits = {t.name: t for t in original.graph.initializer}
    r_inits = {t.name: t for t in result.graph.initializer}
    r_prod = {o: n for n in result.graph.node for o in n.output}
    o_mm = next(n for n in original.graph.node if n.op_type == "QLinearMatMul")
    o_q = next(n for n in original.graph.node if n.output[0] == o_mm.input[0])
    conv = next(n for n in result.graph.node if n.op_type == "QLinearConv")
    q = r_prod[conv.input[0]]
    assert q.op_type == "QuantizeLinear" and r_prod[q.input[0]].op_type == "Transpose" and list(q.input[1:]) == list(o_q.input[1:])
    ints, o_ints = numpy_helper.to_array(r_inits[conv.input[3]]), numpy_helper.to_array(o_inits[o_mm.input[3]])
    assert ints.dtype == o_ints.dtype == (np.int8 if form.signed else np.uint8) and ints.shape == (5, 6, 1, 1)
    assert np.ascontiguousarray(ints.reshape(5, 6).T).tobytes() == o_ints.tobytes()  # the same integers, moved
    assert [conv.input[i] for i in (1, 2, 4, 5, 6, 7)] == [o_mm.input[i] for i in (1, 2, 4, 5, 6, 7)]
    for i in (1, 2, 4, 5, 6, 7):  # scales and zero points: the quantizer's tensors, bit for bit
        assert r_inits[conv.input[i]].SerializeToString() == o_inits[o_mm.input[i]].SerializeToString()

    feed = {"x": np.random.default_rng(3).standard_normal((3, 3, 4, 6)).astype(np.float32)}  # N > 1, H != W
    want, got = _as_written(original).run(None, feed)[0], _as_written(result).run(None, feed)[0]
    assert got.shape == want.shape == (3, 3, 4, 5) and got.tobytes() == want.tobytes()
    want, got = _session(original).run(None, feed)[0], _session(result).run(None, feed)[0]
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("what", ["scale", "weight", "quantize_scale"])
def test_a_qoperator_tensordot_with_a_changed_scale_or_weight_is_refuted(what: str, tmp_path: Path) -> None:
    """The conv's activation scale, its integer weight, or the moved QuantizeLinear's scale changed: not proved."""
    from converter.verifier.certificate.walk import certify

    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", QOPERATOR_FORMS[0], {"x": [2, 3, 4, 6]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.verify is not None and report.verify.structure["proved"]
    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    conv = next(n for n in result.graph.node if n.op_type == "QLinearConv")
    if what == "quantize_scale":
        conv, what = next(n for n in result.graph.node if n.output[0] == conv.input[0]), "scale"
    slot = 1 if what == "scale" else 3  # a scale, or the integer weight
    t = next(t for t in result.graph.initializer if t.name == conv.input[slot])
    v = numpy_helper.to_array(t)
    changed = v * np.float32(1.5) if what == "scale" else v.copy()
    if what == "weight":
        changed.flat[0] ^= 1
    result.graph.initializer.append(numpy_helper.from_array(changed, "tampered"))
    conv.input[slot] = "tampered"
    cert = certify(original, result, report.rewrite.layers)
    assert not cert.proved and cert.refuted


# --- tf2onnx's Tensordot, dynamic: Reshape -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Reshape -----


@pytest.mark.parametrize("form", DYNAMIC_FORMS, ids=lambda f: f.name)
def test_a_dynamic_tensordot_becomes_a_conv_integer(form: Form, tmp_path: Path) -> None:
    source = quantize(_sandwich_source(tmp_path), tmp_path / "q.onnx", form, {"x": [2, 3, 4, 6]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    assert report.verify.structure["proved"]
    rw = report.rewrite
    if form.per_channel and not form.signed:  # uint8 zero points that differ per channel: ConvInteger takes one
        assert rw.rewritten == 0 and {d.reason for d in rw.decisions} == {"per_channel_zero_point_unsupported"}
        return
    assert [d.rule for d in rw.decisions if d.rewritten] == ["integer_sandwich_to_conv"]
    assert rw.ops_after.get("MatMulInteger", 0) == 0 and rw.ops_after.get("Reshape", 0) == 0 and rw.ops_after["ConvInteger"] == 1
    for op in ("DynamicQuantizeLinear", "Mul", "Add"):  # moved out of the Reshapes (the scales' Mul too), none added
        assert rw.ops_after[op] == rw.ops_before[op], op
    assert rw.ops_after["Transpose"] == 2  # into NCHW after the input, back before the output: the model's own layout
    (check,) = report.verify.layers
    assert check.numbers_detail == "integer output equal to the original's, bit for bit", check

    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    _assert_conv_integer_weights(original, result, shifted=form.signed)
    r_prod = {o: n for n in result.graph.node for o in n.output}
    o_mm = next(n for n in original.graph.node if n.op_type == "MatMulInteger")
    o_dq = next(n for n in original.graph.node if n.output[0] == o_mm.input[0])
    conv = next(n for n in result.graph.node if n.op_type == "ConvInteger")
    dq = r_prod[conv.input[0]]  # the activation quantized in NCHW, with the original's scale and zero point names
    assert dq.op_type == "DynamicQuantizeLinear" and r_prod[dq.input[0]].op_type == "Transpose"
    assert list(dq.output[1:]) == list(o_dq.output[1:]) and conv.input[2] == o_mm.input[2]

    feed = {"x": np.random.default_rng(3).standard_normal((3, 3, 4, 6)).astype(np.float32)}  # N > 1, H != W
    want, got = _as_written(original).run(None, feed)[0], _as_written(result).run(None, feed)[0]
    assert got.shape == want.shape == (3, 3, 4, 5) and got.tobytes() == want.tobytes()
    want, got = _session(original).run(None, feed)[0], _session(result).run(None, feed)[0]
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())  # MatMulIntegerToFloat's rounding


# --- Keras ConvNeXtTiny's QOperator Tensordot: x is already quantized (Transpose / QLinearMul -> Reshape) --------


def _quantized_input_source(folder: Path, c: int = 6, k: int = 5, h: int = 6, w: int = 8) -> Path:
    """Keras ConvNeXtTiny's Tensordots, small: in QOperator form x is already quantized where the first Reshape reads
    it (a Transpose of a QLinearConv after a QLinearAdd; a QLinearMul), so onnx's shape inference knows neither x's
    rank nor its dtype. A stride-2 Conv and a SAME_UPPER depthwise Conv before it, as in the stem and the blocks;
    the second layer's first Reshape has a constant target, the first layer's a computed one."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(kind, ins, out, **attrs):
        nodes.append(helper.make_node(kind, ins, [out], name=out, **attrs))
        return out

    def tensordot(x, nhwc_of, perm, cin, cout, tag, runtime_rows):
        shape = op("Shape", [nhwc_of], f"{tag}_shape")  # tf2onnx reads the NCHW side and gathers its NHWC dims
        dims = op(
            "Gather",
            [op("Cast", [shape], f"{tag}_shape32", to=TensorProto.INT32), const(f"{tag}_perm", np.array(perm, np.int64))],
            f"{tag}_dims",
            axis=0,
        )
        head = op("Gather", [dims, const(f"{tag}_free", np.array([0, 1, 2], np.int64))], f"{tag}_head", axis=0)
        if runtime_rows:
            rows_n = op("ReduceProd", [head], f"{tag}_prod", axes=[0], keepdims=1)
            target = op(
                "Cast",
                [op("Concat", [rows_n, const(f"{tag}_c", np.array([cin], np.int32))], f"{tag}_rows_cat", axis=0)],
                f"{tag}_rows",
                to=TensorProto.INT64,
            )
        else:
            target = const(f"{tag}_rows", np.array([-1, cin], np.int64))
        flat = op("Reshape", [x, target], f"{tag}_flat")
        y = op(
            "MatMul", [flat, const(f"{tag}_w", (rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32))], f"{tag}_mm"
        )
        back = op(
            "Cast",
            [op("Concat", [head, const(f"{tag}_k", np.array([cout], np.int32))], f"{tag}_cat", axis=0)],
            f"{tag}_target",
            to=TensorProto.INT64,
        )
        y = op("Reshape", [y, back], f"{tag}_y")
        return op("Add", [y, const(f"{tag}_b", (rng.standard_normal(cout) * 0.1).astype(np.float32))], f"{tag}_out")

    a = op("Add", ["x", const("shift", rng.standard_normal((1, 3, 1, 1)).astype(np.float32))], "shifted")  # QLinearAdd
    s = op(
        "Conv",
        [a, const("stem_w", (rng.standard_normal((c, 3, 2, 2)) * 0.3).astype(np.float32))],
        "stem",
        strides=[2, 2],
        kernel_shape=[2, 2],
    )
    d = op(
        "Conv",
        [s, const("dw_w", (rng.standard_normal((c, 1, 3, 3)) * 0.3).astype(np.float32))],
        "dw",
        group=c,
        kernel_shape=[3, 3],
        auto_pad="SAME_UPPER",
    )
    nhwc = op("Transpose", [d], "nhwc", perm=[0, 2, 3, 1])
    y = tensordot(nhwc, d, [0, 2, 3, 1], c, k, "pw1", True)
    g = op("Mul", [y, const("half", np.array(0.5, np.float32))], "half_y")  # QLinearMul: the second layer's x
    out = tensordot(g, g, [0, 1, 2, 3], k, c, "pw2", False)
    graph = helper.make_graph(
        nodes,
        "quantized_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", h // 2, w // 2, c])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    path = folder / "quantized_input.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("form", QOPERATOR_FORMS, ids=lambda f: f.name)
def test_a_qoperator_tensordot_on_a_quantized_input_becomes_a_qlinear_conv(form: Form, tmp_path: Path) -> None:
    source = quantize(_quantized_input_source(tmp_path), tmp_path / "q.onnx", form, {"x": [2, 3, 6, 8]})
    original = onnx.load(source)
    mms = [n for n in original.graph.node if n.op_type == "QLinearMatMul"]
    o_prod = {o: n for n in original.graph.node for o in n.output}
    assert len(mms) == 2 and all(o_prod[m.input[0]].op_type == "Reshape" for m in mms)  # no QuantizeLinear between
    assert [o_prod[o_prod[m.input[0]].input[0]].op_type for m in mms] == ["Transpose", "QLinearMul"]
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.ok and report.verify is not None and report.verify.passed, report.to_dict()
    rw = report.rewrite
    assert [d.rule for d in rw.decisions if d.rewritten] == ["qlinear_sandwich_to_conv"] * 2
    assert rw.ops_after.get("QLinearMatMul", 0) == 0 and rw.ops_after.get("Reshape", 0) == 0
    assert rw.ops_after["QLinearConv"] == rw.ops_before["QLinearConv"] + 2
    assert rw.ops_after.get("Shape", 0) == 0  # the target shapes, and the DequantizeLinear only they read, went
    assert rw.ops_after["DequantizeLinear"] == rw.ops_before["DequantizeLinear"] - 2
    assert rw.ops_after.get("QuantizeLinear", 0) == rw.ops_before["QuantizeLinear"]  # nothing requantized
    assert (rw.ops_before["Transpose"], rw.ops_after["Transpose"]) == (1, 1)
    assert [(c.structure, c.numbers) for c in report.verify.layers] == [("proved", "passed")] * 2
    assert {c.numbers_detail for c in report.verify.layers} == {"integer output equal to the original's, bit for bit"}

    result = onnx.load(tmp_path / "out.onnx")
    o_inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    r_inits = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    convs = [n for n in result.graph.node if n.op_type == "QLinearConv" and n.input[3] not in o_inits]
    for conv, mm in zip(convs, mms, strict=True):
        ints, o_ints = r_inits[conv.input[3]], o_inits[mm.input[3]]
        assert ints.dtype == o_ints.dtype == (np.int8 if form.signed else np.uint8)
        assert np.ascontiguousarray(ints.reshape(ints.shape[:2]).T).tobytes() == o_ints.tobytes()
        assert [conv.input[i] for i in (1, 2, 4, 5, 6, 7)] == [mm.input[i] for i in (1, 2, 4, 5, 6, 7)]

    feed = {"x": np.random.default_rng(3).standard_normal((3, 3, 6, 8)).astype(np.float32)}  # N > 1, H != W
    want, got = _as_written(original).run(None, feed)[0], _as_written(result).run(None, feed)[0]
    assert got.shape == want.shape == (3, 3, 4, 6) and got.tobytes() == want.tobytes()
    want, got = _session(original).run(None, feed)[0], _session(result).run(None, feed)[0]
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("what", ["weight", "zero_point", "input"])
def test_a_qoperator_tensordot_on_a_quantized_input_with_a_changed_conv_is_refuted(what: str, tmp_path: Path) -> None:
    """The second layer's integer weight, its activation zero point, or its input (the first layer's output
    instead of the QLinearMul's) changed: refuted."""
    from converter.verifier.certificate.walk import certify

    source = quantize(_quantized_input_source(tmp_path), tmp_path / "q.onnx", QOPERATOR_FORMS[0], {"x": [2, 3, 6, 8]})
    report = converter.convert(source, tmp_path / "out.onnx")
    assert report.verify is not None and report.verify.structure["proved"] and len(report.verify.layers) == 2
    original, result = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    o_inits = {t.name for t in original.graph.initializer}
    first, second = [n for n in result.graph.node if n.op_type == "QLinearConv" and n.input[3] not in o_inits]
    if what == "input":
        second.input[0] = next(n for n in result.graph.node if first.output[0] in n.input and n.op_type == "QLinearAdd").output[0]
    else:
        slot = 3 if what == "weight" else 2
        v = numpy_helper.to_array(next(t for t in result.graph.initializer if t.name == second.input[slot])).copy()
        v.flat[0] ^= 1
        result.graph.initializer.append(numpy_helper.from_array(v, "tampered"))
        second.input[slot] = "tampered"
    cert = certify(original, result, report.rewrite.layers)
    assert not cert.proved and cert.refuted


def test_a_contrib_elementwise_op_carries_a_known_size_past_a_symbolic_one() -> None:
    """Broadcasting a symbolic dim with a known size > 1 gives that size (a valid graph's dim is 1 or the result):
    Keras ConvNeXtTiny's GELU multiplies onnx-named dims by the 384 channels, and the next layer needs C = 384."""
    from converter.graph import NameAllocator, Scope, collect_types
    from converter.rewriter.rules import RuleOptions
    from converter.rewriter.rules._engine import Context
    from converter.rewriter.rules._integer import integer_type

    params = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in [("s", 0.5, np.float32), ("z", 3, np.uint8)]]
    mul = helper.make_node("QLinearMul", ["a", "s", "z", "b", "s", "z", "s", "z"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [mul],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, ["N", 2, 3, "c"]),
            helper.make_tensor_value_info("b", TensorProto.UINT8, [1, 1, 1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        params,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    scope = Scope(model.graph, (), collect_types(model).get((), {}))
    ctx = Context(scope, NameAllocator(model), RuleOptions(), 13, model.ir_version, {}, None)
    t = integer_type(ctx, "y")
    assert t is not None and (t.elem_type, t.shape) == (TensorProto.UINT8, ("N", 2, 3, 4))


@pytest.mark.parametrize("core", ["QLinearMatMul", "MatMulInteger"])
def test_an_activation_of_unknown_integer_type_is_declined_not_a_traceback(core: str, tmp_path: Path) -> None:
    """The activation comes out of a com.microsoft QLinearAdd whose output zero point is a graph input: the layer is
    declined with a reason (it was a KeyError traceback, exit 1)."""
    from onnx import TensorProto, helper

    c, k = 4, 6
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "z"),
        numpy_helper.from_array(np.random.default_rng(0).integers(-50, 50, (c, k)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
        numpy_helper.from_array(np.array(5, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("QLinearAdd", ["xq", "s", "z", "xq", "s", "z", "s", "az"], ["qa"], domain="com.microsoft"),
    ]
    if core == "QLinearMatMul":
        nodes += [
            helper.make_node("QLinearMatMul", ["qa", "s", "az", "wq", "ws", "wz", "ys", "yz"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"]),
        ]
    else:
        nodes += [
            helper.make_node("MatMulInteger", ["qa", "wq", "az", "wz"], ["yi"]),
            helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["yf", "ys"], ["out"]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", c]),
            helper.make_tensor_value_info("az", TensorProto.UINT8, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "H", "W", k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    done = run_command(src, "-o", tmp_path / "o.onnx", "--layout", "keep-all", "--dry-run")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    # The zero point is a graph input: its type is the input's (shape inference sees through the QLinearAdd, the
    # stand-in of graph/__init__.py). The QLinearMatMul rule wants the zero point constant: declined for that;
    # ConvInteger takes it as it is: rewritten (proved, and its numbers pass, without --dry-run).
    if core == "QLinearMatMul":
        assert "quantization_params_not_constant" in done.stdout
    else:
        assert "1 of 1 candidates would be rewritten" in done.stdout


# --- edges found by hunting through the real command: correct rewrites that used to end FAILED ---------------


def _hand_qdq(opset: int = 17, weight_scale_shape: tuple = (), dq_output_dtype: int | None = None) -> onnx.ModelProto:
    """``MatMul(DQ(Q(x)), DQ(Wq, sw, zw))`` on x [N, 3, 5, 4], written by hand (int8, per tensor)."""
    from onnx import TensorProto, helper

    c, k = 4, 6
    rng = np.random.default_rng(7)
    extra = {} if dq_output_dtype is None else {"output_dtype": dq_output_dtype}
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.int8), "zx"),
        numpy_helper.from_array(rng.integers(-100, 100, (c, k)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.full(weight_scale_shape, 0.02, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(weight_scale_shape, np.int8), "zw"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], **extra),
        helper.make_node("MatMul", ["xd", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hand_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, k])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: _hand_qdq(weight_scale_shape=(1,)), id="one_element_scale_vector_no_axis"),
        pytest.param(lambda: _hand_qdq(opset=23, dq_output_dtype=onnx.TensorProto.FLOAT), id="output_dtype_float_opset23"),
    ],
)
def test_quantized_weights_onnxruntime_reads_as_one_value_are_proved(model, tmp_path: Path) -> None:  # noqa: ANN001
    """A ``[1]`` weight scale without ``axis`` is one value for the whole tensor (as onnxruntime reads it), and an
    ``output_dtype`` equal to the scale's changes nothing: the certificate computes both as the runtime does."""
    src = tmp_path / "m.onnx"
    onnx.save(model(), src)
    report = converter.convert(src, tmp_path / "out.onnx")
    assert report.rewrite.rewritten == 1
    assert report.verify is not None and report.verify.passed, report.verify.to_dict()


def test_a_qoperator_parameter_callers_may_override_is_declined(quantized, tmp_path: Path) -> None:  # noqa: ANN001
    """An activation scale that is also a graph input (an initializer callers may override) is no constant: the
    layer reading it is declined (the integer check had read it as NaN and reported a layer 2**63 steps off)."""
    model = onnx.load(quantized("pytorch_convnext_block", Form("qoperator", False, False)))
    matmul = next(n for n in model.graph.node if n.op_type == "QLinearMatMul")
    scale = next(t for t in model.graph.initializer if t.name == matmul.input[1])
    model.graph.input.append(onnx.helper.make_tensor_value_info(scale.name, scale.data_type, list(scale.dims)))
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    report = converter.convert(src, tmp_path / "out.onnx", layout="keep-all")
    assert report.verify is not None and report.verify.passed, report.verify.to_dict()
    reasons = {d.reason for d in report.rewrite.decisions if not d.rewritten}
    assert "quantization_params_not_constant" in reasons
