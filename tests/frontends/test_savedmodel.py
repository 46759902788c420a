"""TensorFlow input end to end: real Keras models, real SavedModels, real tf2onnx, checked against TensorFlow.

SavedModels are built once per test session (module-scoped fixtures under a session temp folder).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converter
from converter.graph import count_ops
from tests.conftest import CONVERT as CONVERT_SCRIPT

pytestmark = pytest.mark.tf
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

CONVERT = str(CONVERT_SCRIPT)


def _export(model, folder: Path, name: str) -> Path:
    path = folder / name
    model.export(str(path), verbose=False)
    return path


@pytest.fixture(scope="session")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every small SavedModel the tests use, built once."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("savedmodels")
    out: dict[str, Path] = {}
    rand = {"bias_initializer": "random_normal"}

    # The seed notebook: a dense layer with 6 units on a (1, 2, 2, 1) tensor.
    inp = keras.Input((2, 2, 1), batch_size=1)
    out["seed"] = _export(keras.Model(inp, keras.layers.Dense(6, **rand)(inp)), folder, "seed")

    # Dense stack with activations, dynamic batch, H != W; Keras' exact GELU brings Erfc.
    inp = keras.Input((5, 7, 8))
    x = keras.layers.Dense(16, activation="relu", **rand)(inp)
    x = keras.layers.Dense(12, activation=keras.activations.gelu, **rand)(x)
    x = keras.layers.Dense(4, activation="sigmoid", **rand)(x)
    stack = keras.Model(inp, x)
    out["stack"] = _export(stack, folder, "stack")
    stack.save(folder / "stack.keras")
    out["stack_keras"] = folder / "stack.keras"

    # Dense layers between Conv2D layers (and a depthwise conv, which Keras 3 wraps for XLA).
    inp = keras.Input((6, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Dense(16, activation="relu", **rand)(x)
    x = keras.layers.Dense(8, **rand)(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    out["conv_dense_conv"] = _export(keras.Model(inp, x), folder, "conv_dense_conv")

    # An op tf2onnx cannot convert.
    class Unsupported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 3, 4, 2], tf.float32)])
        def __call__(self, x):
            return {"y": tf.math.bessel_i0e(x)}

    module = Unsupported()
    tf.saved_model.save(module, str(folder / "unsupported"), signatures={"serving_default": module.__call__})
    out["unsupported"] = folder / "unsupported"
    return out


def tensorflow_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def test_seed_notebook_from_the_command_line(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seed.onnx"
    r = subprocess.run(
        [CONVERT, str(saved["seed"]), "-o", str(out), "--report", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""  # TensorFlow's native logging does not leak
    ops = count_ops(onnx.load(out).graph)
    assert ops.get("Conv") == 1 and "MatMul" not in ops
    x = np.random.default_rng(1).standard_normal((1, 2, 2, 1)).astype(np.float32)
    expected = tensorflow_outputs(saved["seed"], {"keras_tensor": x})
    actual = onnx_outputs(out, {"keras_tensor": x})
    assert expected.keys() == actual.keys()
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], atol=1e-5)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verify"]["passed"] and report["verify_reference"]["passed"]
    assert report["verify_reference"]["providers"] == ["TensorFlow"]
    assert "Verification: rewritten vs TensorFlow" in r.stdout


@pytest.mark.parametrize(
    ("name", "rewrites", "extra"),
    [
        ("stack", 3, {"input_shapes": {"keras_tensor_1": [3, 5, 7, 8]}}),
        ("stack_keras", 3, {}),
        ("conv_dense_conv", 2, {}),
    ],
)
def test_keras_models_convert_and_match_tensorflow(saved: dict[str, Path], tmp_path: Path, name, rewrites, extra) -> None:
    source = converter.load(saved[name])
    shapes = extra.get("input_shapes")
    if shapes is not None:  # Keras names inputs per model; use whatever this one is called
        shapes = {source.graph.input[0].name: next(iter(shapes.values()))}
    report = converter.convert(saved[name], tmp_path / "out.onnx", input_shapes=shapes)
    assert report.ok and report.written, report.to_dict()
    assert report.rewrite.rewritten == rewrites and report.rewrite.candidates == rewrites
    assert report.verify_reference is not None and report.verify_reference.passed
    ops = report.rewrite.ops_after
    assert "MatMul" not in ops and "Reshape" not in ops and "Shape" not in ops  # Tensordot plumbing is gone
    assert ops.get("Transpose", 0) <= 2
    if shapes:
        assert report.verify_reference.inputs[0].shape[0] == 3  # dynamic batch checked at 3


def test_unconvertible_ops_are_named_and_nothing_is_written(saved: dict[str, Path], tmp_path: Path) -> None:
    # An op outside the allowlist is refused before TensorFlow runs; trusted, tf2onnx names it too.
    command = [CONVERT, str(saved["unsupported"]), "-o", str(tmp_path / "o.onnx")]
    r = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"convert: error: {saved['unsupported']}: refusing to run TensorFlow ops outside the audited")
    assert "BesselI0e (in __inference___call___" in line and line.endswith("pass --trust-model if you trust this model")
    r = subprocess.run([*command, "--trust-model"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"convert: error: {saved['unsupported']}: TensorFlow ops that could not be converted to ONNX: BesselI0e"
    ]
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_signature", "cannot load the SavedModel signature 'nope'"),
        ("corrupt_pb", "saved_model.pb is not a valid SavedModel (malformed protobuf)"),
        ("h5", "legacy .h5 Keras files"),
    ],
)
def test_bad_tensorflow_input_is_one_line(saved: dict[str, Path], tmp_path: Path, setup: str, message: str) -> None:
    args: list[str]
    if setup == "missing_signature":
        args = [str(saved["seed"]), "--signature", "nope"]
    elif setup == "corrupt_pb":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 10)
        args = [str(tmp_path / "broken")]
    else:
        (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n")
        args = [str(tmp_path / "m.h5")]
    r = subprocess.run([CONVERT, *args, "-o", str(tmp_path / "o.onnx")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_convnext_tiny_all_pointwise_layers_become_convs(tmp_path: Path) -> None:
    """Keras 3 ConvNeXt: no-inline XLA functions and Erfc must convert; every pointwise layer becomes a Conv."""
    from models.zoo import build

    # 64x48: the last stage is 2x1. At 1x1 spatial tf2onnx drops a layout Transpose and the pointwise
    # layer reads an NCHW [N, C, 1, 1] tensor, which the rewrite does not prove yet (README, Limits).
    report = converter.convert(build("convnext_tiny", tmp_path / "zoo"), tmp_path / "convnext.onnx")
    assert report.ok and report.written, report.to_dict()
    rw = report.rewrite
    assert rw.rewritten == 36  # every pointwise dense layer of the 18 blocks
    assert rw.skipped_by_reason == {"rank_not_4": 1}  # the classifier head works on [N, C]
    assert rw.ops_after.get("MatMul") == 1 and rw.ops_after["Transpose"] <= rw.ops_before["Transpose"]
    assert report.verify_reference is not None and report.verify_reference.passed
    model = onnx.load(tmp_path / "convnext.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert not {"StatefulPartitionedCall", "PartitionedCall", "Erfc"} & set(count_ops(model.graph))


def test_keras_files_load_in_safe_mode(saved: dict[str, Path]) -> None:
    # A Lambda layer's code is never run: Keras refuses to deserialize it in safe mode.
    inp = keras.Input((2, 3, 4))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    path = saved["stack_keras"].parent / "lambda.keras"
    model.save(path)
    with pytest.raises(converter.InputError, match="cannot load the Keras model"):
        converter.load(path)
    assert os.path.exists(path)


def test_legacy_h5_needs_the_opt_in_and_warns(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 5, 4))
    model = keras.Model(inp, keras.layers.Dense(6, bias_initializer="random_normal")(inp))
    path = tmp_path / "dense.h5"
    model.save(path)
    refused = subprocess.run([CONVERT, str(path)], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--allow-h5" in refused.stderr
    assert not (tmp_path / "dense_conv.onnx").exists()
    r = subprocess.run([CONVERT, str(path), "--allow-h5"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"convert: warning: {path}: loaded a legacy .h5 file with --allow-h5: any Lambda layer code in it has run"
    ]
    assert "Rewritten 1 of 1 candidates" in r.stdout and (tmp_path / "dense_conv.onnx").exists()
