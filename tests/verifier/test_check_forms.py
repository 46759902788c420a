"""``convert ORIGINAL --check CANDIDATE`` on three forms another tool writes for the same computation (issue 22, item
4), each an exact equivalence with a proof rule of its own, beside a similar edit that changes the numbers, which
must never pass:

- a node computed from constants alone, renamed (``ops/on_constants.py``: its counterpart found by value): an
  ``Exp`` of a constant between two layers, a ``Gather`` of a table too large to be folded as shape arithmetic;
  the same renamed with one of its constants changed is not it;
- ``dilations`` on a 1x1 Conv of the original (``ops/convs.py``), written by the candidate or dropped from an
  original that has them, and the other attributes that change nothing (``strides`` and ``pads`` written at their
  neutral values, ``kernel_shape``, ``auto_pad`` VALID); a 3x3 Conv dilated, its pads doubled to keep the shape, is
  another convolution;
- a QLinearConv layer whose int8 weight is written as uint8 ``w + 128`` with its zero point ``zw + 128``
  (``layers/integer.py``: every ``w - zw`` is the same); the weight shifted with its zero point's bits kept is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import converter
from models.graphs import Builder
from tests.bugs import (
    _kept_convs,
    _on_constants,
    _rename_outputs,
    constant_renamed,
    constant_renamed_changed,
    dilations_on_kept_1x1,
    dilations_on_kept_kxk,
    integer_weight_shifted,
    integer_weight_shifted_alone,
)
from tests.conftest import run_command


def _check(tmp_path: Path, original: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[int, str]:
    onnx.save(original, tmp_path / "original.onnx")
    onnx.save(candidate, tmp_path / "candidate.onnx")
    r = run_command(tmp_path / "original.onnx", "--check", tmp_path / "candidate.onnx")
    return r.returncode, r.stdout + r.stderr


def _passed(rc: int, out: str) -> bool:
    return rc == 0 and out.strip().splitlines()[-1].startswith("PASSED:")


def _edited(result: converter.RewriteResult, edit, seed: int = 0) -> onnx.ModelProto:  # noqa: ANN001
    edited = onnx.ModelProto()
    edited.CopyFrom(result.model)
    assert edit(edited, result.report.layers, np.random.default_rng(seed))
    return edited


# -- a node on constants, renamed ----------------------------------------------------------------------------


def _on_constants_model(kind: str) -> onnx.ModelProto:
    """Two dense layers; between them a Mul by ``Exp(s)`` (an op no shape arithmetic folds), or before them an Add of
    rows Gathered from a [600, 6] table by constant indices (past the size shape arithmetic folds)."""
    b = Builder(7)
    x = "x"
    if kind == "gather":
        table = b.const(b.rng.standard_normal((600, 6)).astype(np.float32))
        x = b.op("Add", x, b.op("Gather", table, b.const(np.arange(40)[::-1].copy(), np.int64), axis=0))
    y = b.dense(x, 6, 8)
    if kind == "exp":
        y = b.op("Mul", y, b.op("Exp", b.const(b.rng.standard_normal(8).astype(np.float32) * 0.1)))
    return b.model([("x", [2, 8, 40, 6])], [b.dense(b.op("Relu", y), 8, 4)])


@pytest.mark.parametrize("kind", ["exp", "gather"])
def test_a_node_on_constants_renamed_passes(tmp_path: Path, kind: str) -> None:
    original = _on_constants_model(kind)
    result = converter.rewrite(original, layout="keep-all")
    op = "Exp" if kind == "exp" else "Gather"
    candidate = onnx.ModelProto()
    candidate.CopyFrom(result.model)
    node = next(n for n in _on_constants(candidate) if n.op_type == op)  # the original's own node, kept
    _rename_outputs(candidate, node, np.random.default_rng(0))
    assert node.output[0].startswith("renamed_")
    assert _passed(*_check(tmp_path, original, candidate))
    assert _passed(*_check(tmp_path, original, _edited(result, constant_renamed, seed=1)))  # (the battery's edit)


@pytest.mark.parametrize("kind", ["exp", "gather"])
def test_a_node_on_constants_renamed_with_a_constant_changed_never_passes(tmp_path: Path, kind: str) -> None:
    original = _on_constants_model(kind)
    result = converter.rewrite(original, layout="keep-all")
    rc, out = _check(tmp_path, original, _edited(result, constant_renamed_changed))
    assert rc != 0 and not _passed(rc, out), out


# -- a Conv of the original written another way ---------------------------------------------------------------


def _with_a_conv(kernel: int = 1, **attrs: object) -> onnx.ModelProto:
    """An NCHW input through the original's own Conv (``kernel`` x ``kernel``, ``attrs``), to NHWC, two dense layers."""
    b = Builder(11)
    w = b.const(b.rng.standard_normal((6, 6, kernel, kernel)).astype(np.float32) * 0.3)
    pads = {"pads": [kernel // 2] * 4} if kernel > 1 and "pads" not in attrs else {}
    y = b.op("Conv", "x", w, kernel_shape=[kernel, kernel], **pads, **attrs)
    y = b.op("Relu", b.dense(b.op("Transpose", y, perm=[0, 2, 3, 1]), 6, 8))
    return b.model([("x", [2, 6, 5, 7])], [b.dense(y, 8, 4)])


def _set_attribute(model: onnx.ModelProto, op: str, **attrs: object) -> None:
    node = next(n for n in model.graph.node if n.op_type == op)
    kept = [a for a in node.attribute if a.name not in attrs]
    node.ClearField("attribute")
    node.attribute.extend([*kept, *(helper.make_attribute(k, v) for k, v in attrs.items() if v is not None)])


def test_dilations_written_on_a_1x1_conv_of_the_original_pass(tmp_path: Path) -> None:
    original = _with_a_conv()
    result = converter.rewrite(original, layout="keep-all")
    assert len(_kept_convs(result.model, result.report.layers)) == 1
    assert _passed(*_check(tmp_path, original, _edited(result, dilations_on_kept_1x1)))


def test_a_1x1_conv_of_the_original_with_dilations_passes_without_them(tmp_path: Path) -> None:
    original = _with_a_conv(dilations=[2, 3])
    result = converter.rewrite(original, layout="keep-all")
    candidate = onnx.ModelProto()
    candidate.CopyFrom(result.model)
    _set_attribute(candidate, "Conv", dilations=None)  # the first Conv: the original's, before the layers
    assert _passed(*_check(tmp_path, original, candidate))


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [1, 1], "pads": [0, 0, 0, 0]},
        {"kernel_shape": None, "dilations": [1, 1]},
        {"auto_pad": "VALID"},
        {"auto_pad": "SAME_UPPER"},
    ],
    ids=["neutral-strides-and-pads", "kernel-shape-left-out", "auto-pad-valid", "auto-pad-same"],
)
def test_a_1x1_conv_of_the_original_with_attributes_that_change_nothing_passes(tmp_path: Path, attrs: dict) -> None:
    original = _with_a_conv()
    result = converter.rewrite(original, layout="keep-all")
    candidate = onnx.ModelProto()
    candidate.CopyFrom(result.model)
    kept = _kept_convs(candidate, result.report.layers)[0][0]
    _set_attribute(candidate, kept.op_type, **attrs)
    assert _passed(*_check(tmp_path, original, candidate))


def test_a_3x3_conv_of_the_original_dilated_never_passes(tmp_path: Path) -> None:
    original = _with_a_conv(kernel=3)
    result = converter.rewrite(original, layout="keep-all")
    candidate = _edited(result, dilations_on_kept_kxk)
    rc, out = _check(tmp_path, original, candidate)
    assert rc != 0 and not _passed(rc, out), out


# -- an integer weight shifted with its zero point -------------------------------------------------------------


def _qlinear() -> onnx.ModelProto:
    from tests.rewriter.rules.test_integer_matmul_to_conv import L, integer_dense

    return integer_dense(L(per_channel=True))


def test_a_qlinear_conv_with_its_weight_and_zero_point_shifted_passes(tmp_path: Path) -> None:
    original = _qlinear()
    result = converter.rewrite(original, layout="keep-all")
    candidate = _edited(result, integer_weight_shifted)
    conv = next(n for n in candidate.graph.node if n.op_type == "QLinearConv")
    inits = {t.name: numpy_helper.to_array(t) for t in candidate.graph.initializer}
    assert inits[conv.input[3]].dtype == np.uint8 and inits[conv.input[5]].dtype == np.uint8
    assert _passed(*_check(tmp_path, original, candidate))


def test_a_qlinear_conv_with_its_weight_shifted_alone_never_passes(tmp_path: Path) -> None:
    original = _qlinear()
    result = converter.rewrite(original, layout="keep-all")
    rc, out = _check(tmp_path, original, _edited(result, integer_weight_shifted_alone))
    assert rc != 0 and not _passed(rc, out), out
