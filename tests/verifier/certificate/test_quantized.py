"""The certificate and onnxruntime's quantized elementwise ops read in another layout (QLinearAdd / QLinearMul).

A moved QLinearAdd is proved when each scale and zero point is one constant value, bit for bit the original's,
and its data inputs are the original's in the same layout (constants compared laid out). Anything else is not
proved: a changed scale, a parameter along an axis, a computed parameter, a constant operand not laid out.
The positive cases (and DynamicQuantizeLinear's) are in tests/cleanup/test_qlinear.py and test_dynamic_quantize.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from converter.verifier.certificate import certify
from tests.rewriter.cleanup._harness import cleaned, nodes_of
from tests.rewriter.cleanup.test_qlinear import C, block


def _moved() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = block(gelu=False, layer_scale=False)
    out, _ = cleaned(model)
    assert certify(model, out, []).proved
    return model, out


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))


def _not_proved(model: onnx.ModelProto, out: onnx.ModelProto, words: str) -> None:
    cert = certify(model, out, [])
    assert not cert.proved, cert.to_dict()
    assert any("QLinearAdd" in u and words in u for u in cert.unproved), cert.to_dict()


def test_a_moved_qlinear_add_with_another_output_scale_is_not_proved() -> None:
    model, out = _moved()
    add = nodes_of(out, "QLinearAdd")[0]
    out.graph.initializer.append(numpy_helper.from_array(np.array(0.051, np.float32), "other_scale"))
    add.input[6] = "other_scale"
    _not_proved(model, out, "input 6")


def test_a_moved_qlinear_add_with_a_parameter_along_an_axis_is_not_proved() -> None:
    """The same [C] scale on both sides: equal, but a parameter along an axis does not move with the layout."""
    model, out = _moved()
    name = nodes_of(model, "QLinearAdd")[0].input[4]
    for m in (model, out):
        _set(m, name, np.full(C, 0.01, np.float32))
    _not_proved(model, out, "along an axis")


def test_a_moved_qlinear_add_with_a_computed_zero_point_is_not_proved() -> None:
    model, out = _moved()
    nodes_of(out, "QLinearAdd")[0].input[7] = "x"  # a tensor of the original, where the original has a constant
    _not_proved(model, out, "not a constant")


def test_a_moved_qlinear_add_whose_constant_was_not_laid_out_is_not_proved() -> None:
    model, out = _moved()
    add = nodes_of(out, "QLinearAdd")[0]
    original_bias = nodes_of(model, "QLinearAdd")[0].input[3]
    add.input[3] = original_bias  # [C]: along W in NCHW, not along C
    if not any(t.name == original_bias for t in out.graph.initializer):
        out.graph.initializer.extend(t for t in model.graph.initializer if t.name == original_bias)
    _not_proved(model, out, "constant")
