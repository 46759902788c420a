"""Every zoo model converted end to end with verification on (pytest -m zoo).

The ONNX-built entries are in the fast tier; the Keras applications (built, exported and run in TensorFlow) are
marked ``tf`` and so run in the slow one (python -m pytest -m slow). tests/test_keras_fixture.py converts a small
Keras ConvNeXt committed as tf2onnx output, the same code paths as the Keras ConvNeXtTiny here, in the fast tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import converter
from models.zoo import ZOO, build

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.tf] if e.tensorflow else []) for n, e in ZOO.items()])
def test_zoo_model_converts_and_verifies(name: str, zoo_cache: Path, tmp_path: Path) -> None:
    entry = ZOO[name]
    if entry.tensorflow:
        pytest.importorskip("tensorflow")
    source = build(name, zoo_cache)
    feeds = entry.inputs() if entry.inputs else None
    report = converter.convert(source, tmp_path / "out.onnx", input_shapes=entry.input_shapes or None, inputs=feeds)
    assert report.ok and report.written, report.to_dict()
    rw = report.rewrite
    assert rw.rewritten == entry.expected_rewrites, rw.to_dict()
    assert report.verify is not None and report.verify.passed
    assert all(o.passed for o in report.verify.outputs)
    if entry.tensorflow:
        assert report.verify_reference is not None and report.verify_reference.passed
    assert rw.ops_after.get("Transpose", 0) <= rw.ops_rewritten.get("Transpose", rw.ops_before.get("Transpose", 0))
    assert report.verify.interface_problems == []  # same inputs and outputs as the model converted
    if entry.expected_rewrites == 0:
        # Nothing to rewrite: behaviourally identical (verified above) with the interface intact.
        assert rw.ops_after == rw.ops_before
    if not entry.tensorflow:
        original, saved = converter.load(source), converter.load(tmp_path / "out.onnx")
        assert list(saved.graph.input) == list(original.graph.input)
        assert list(saved.graph.output) == list(original.graph.output)
        assert saved.metadata_props == original.metadata_props and saved.opset_import == original.opset_import
