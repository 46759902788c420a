"""Correct conversions of real exports that the certificate once left unproved (issue 22, item 2): each class with
a model that shows it, proved, and a wrong variant of the same conversion that is not.

- shape arithmetic (TorchScript): a Pad's pads, a Slice's bounds, a Reshape's target computed from constants and
  from ``Shape`` (``Shape -> Gather -> Div -> Concat``): evaluated by the certificate itself, compared by value;
  truly run-time bounds (a dynamic dim) must be the very tensor the original computes;
- dims only a second round of shape inference knows (the Reshape target uses Div and Mod, which onnx's data
  propagation does not follow), which the element-index proofs of folded chains need;
- one original tensor described from two roots (Sequencer's LSTM input, ``permute -> view -> transpose`` beside a
  plain ``view``);
- an elementwise op whose first operand is broadcast from a lower rank (a bias read first, ``Add(b, mm)``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import converter
from converter.verifier.certificate import PROOF_RULES, certify
from converter.verifier.certificate.ops import axis_op, axis_ops
from converter.verifier.certificate.original import _infer, _inferred_shapes
from models.graphs import Builder
from tests.conftest import Dense, dense_model


def _i64(b: Builder, values: object) -> str:
    return b.const(np.array(values), np.int64)


def chunk(axis: int, shape: tuple) -> onnx.ModelProto:
    """fc1 -> two halves along ``axis`` whose bounds TorchScript computes from Shape (``x.chunk(2, axis)``) ->
    ``silu(a) * b`` -> fc2: a GLU MLP. Along the channels the bound is a known size; along H (symbolic) it is
    computed at run time."""
    b = Builder(3)
    c, k = shape[-1], 8
    y = b.dense("x", c, 2 * k if axis == 3 else k)
    n = b.op("Gather", b.op("Shape", y), _i64(b, [axis]), axis=0)
    half = b.op("Div", b.op("Add", n, _i64(b, [1])), _i64(b, [2]))
    first = b.op("Slice", y, _i64(b, [0]), half, _i64(b, [axis]))
    second = b.op("Slice", y, half, b.op("Mul", half, _i64(b, [2])), _i64(b, [axis]))
    gated = b.op("Mul", b.op("Mul", first, b.op("Sigmoid", first)), second)
    return b.model([("x", list(shape))], [b.dense(gated, k, c)])


def _converted(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:  # noqa: ANN003
    result = converter.rewrite(model, **options)
    assert result.report.rewritten >= 1
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()
    return model, result.model, list(result.report.layers)


def _slices(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Slice"]


@pytest.mark.parametrize("shape", [("N", "H", "W", 6), (2, 6, 5, 6)])
def test_a_chunk_along_the_channels_is_proved_by_the_value_of_its_bounds(shape: tuple) -> None:
    model, rewritten, layers = _converted(chunk(3, shape))
    assert converter.verify(model, rewritten, layers=layers).passed
    slice_ = _slices(rewritten)[0]
    rewritten.graph.initializer.append(numpy_helper.from_array(np.array([5], np.int64), "bound_edit"))
    slice_.input[2] = "bound_edit"  # the first half ends at 5, not at 8
    assert not certify(model, rewritten, layers).proved


def test_a_chunk_along_a_dynamic_dim_needs_the_originals_bound_computed_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    model, rewritten, layers = _converted(chunk(1, ("N", "H", "W", 6)))
    first, second = _slices(rewritten)
    assert not any(t.name == first.input[2] for t in rewritten.graph.initializer)  # computed, not a constant
    assert converter.verify(model, rewritten, layers=layers).passed
    # Without accepting the original's run-time tensor as the Slice's bound, the relaid Slice is not proved.
    rule = PROOF_RULES[("", "Slice")]
    monkeypatch.setitem(PROOF_RULES, ("", "Slice"), dataclasses.replace(rule, relaid=axis_op(axis_ops.slice_, params=(1, 2, 3, 4))))
    assert not certify(model, rewritten, layers).proved
    monkeypatch.setitem(PROOF_RULES, ("", "Slice"), rule)
    # Another run-time tensor as the bound (the second half's end where the first half ends): not the original's.
    first.input[2] = second.input[2]
    assert not certify(model, rewritten, layers).proved


def _padded() -> onnx.ModelProto:
    """TorchScript's Swin window padding: pads ``(window - H % window) % window`` computed from Shape, then a Pad
    of the layer's output in NHWC, then another layer."""
    b = Builder(8)
    y = b.dense("x", 6, 8)
    shape = b.op("Shape", y)
    pads = []
    for axis in (1, 2):
        size = b.op("Gather", shape, _i64(b, [axis]), axis=0)
        pads.append(b.op("Mod", b.op("Sub", _i64(b, [4]), b.op("Mod", size, _i64(b, [4]))), _i64(b, [4])))
    zero = _i64(b, [0])
    target = b.op("Concat", zero, zero, zero, zero, zero, pads[0], pads[1], zero, axis=0)
    padded = b.op("Pad", y, target, b.const(np.float32(0)))
    return b.model([("x", [2, 5, 7, 6])], [b.dense(padded, 8, 4)])


def test_pads_computed_from_shapes_are_proved_by_their_value() -> None:
    model, rewritten, layers = _converted(_padded(), layout="keep-all")
    assert converter.verify(model, rewritten, layers=layers).passed
    window = next(t for t in rewritten.graph.initializer if numpy_helper.to_array(t).tolist() == [4])
    window.CopyFrom(numpy_helper.from_array(np.array([3], np.int64), window.name))  # pad to multiples of 3, not 4
    assert not certify(model, rewritten, layers).proved


def test_the_torchscript_swin_pads_written_as_constants_are_proved() -> None:
    """The fixture the issue names: converted, the Pads read constants the rewrite computed; their values are what
    the original's shape arithmetic gives, and a wrong one is not proved."""
    path = Path(__file__).parents[3] / "models" / "fixtures" / "torch_swin_small_static_ts.onnx"
    model, rewritten, layers = _converted(onnx.load(path))
    pad = next(n for n in rewritten.graph.node if n.op_type == "Pad")
    pads = next(t for t in rewritten.graph.initializer if t.name == pad.input[1])
    value = numpy_helper.to_array(pads).copy()  # all zero: the windows divide the image
    value[len(value) // 2 + 2] = 1  # a row of padding at the end of one axis
    pads.CopyFrom(numpy_helper.from_array(value, pads.name))
    assert not certify(model, rewritten, layers).proved


def test_shapes_only_a_second_round_of_inference_knows_are_found() -> None:
    """onnx's data propagation does not follow Div or Mod: the Reshape's dims stay unknown until the certificate
    evaluates its target and runs inference again."""
    b = Builder(1)
    y = b.op("Relu", "x")
    h = b.op("Gather", b.op("Shape", y), _i64(b, [1]), axis=0)
    target = b.op(
        "Concat", _i64(b, [2]), b.op("Div", h, _i64(b, [2])), _i64(b, [2]), b.op("Mod", h, _i64(b, [5])), _i64(b, [-1]), axis=0
    )
    r = b.op("Reshape", y, target)
    model = b.model([("x", [2, 12, 8, 4])], [r])
    assert not all(isinstance(d, int) for d in _infer(model)[r])
    shapes, values = _inferred_shapes(model)
    assert shapes[r] == (2, 6, 2, 2, 16) and values[target].tolist() == [2, 6, 2, 2, -1]


def _two_descriptions() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Sequencer's LSTM input, described from two roots: ``Transpose(Reshape(Transpose(y, [0, 2, 1, 3]), [W, H, C]),
    [1, 0, 2])`` is ``Reshape(y, [H, W, C])`` when the batch is 1. The rewritten graph reads the latter."""
    b = Builder(2)
    y = b.op("Relu", "x")  # [1, H=3, W=4, C=5]
    a = b.op("Transpose", b.op("Reshape", b.op("Transpose", y, perm=[0, 2, 1, 3]), _i64(b, [4, 3, 5])), perm=[1, 0, 2])
    plain = b.op("Reshape", y, _i64(b, [3, 4, 5]))
    model = b.model([("x", [1, 3, 4, 5])], [b.op("Sigmoid", a), b.op("Tanh", plain)])
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    g = rewritten.graph
    sigmoid = next(n for n in g.node if n.op_type == "Sigmoid")
    g.initializer.append(numpy_helper.from_array(np.array([3, 4, 5], np.int64), "target_again"))
    g.node.insert(list(g.node).index(sigmoid), helper.make_node("Reshape", [y, "target_again"], ["folded"], name="folded"))
    sigmoid.input[0] = "folded"
    return model, rewritten


def test_one_tensor_described_from_two_roots_is_one_tensor() -> None:
    model, rewritten = _two_descriptions()
    cert = certify(model, rewritten, [])
    assert cert.proved, cert.to_dict()
    target = next(t for t in rewritten.graph.initializer if t.name == "target_again")
    target.CopyFrom(numpy_helper.from_array(np.array([4, 3, 5], np.int64), "target_again"))  # another order
    assert not certify(model, rewritten, []).proved


def test_an_operand_broadcast_from_a_lower_rank_first_says_nothing_of_the_layout() -> None:
    """The property test's example: ``Add(b, mm)`` with ``b`` an overridable [1], x [1, 1, 2, 1]: the Add runs in
    NCHW with ``b`` through an Unsqueeze; its layout is read from ``mm``, the operand of full rank."""
    o = Dense(
        x_shape=(1, 1, 2, 1), weight_shape=(1, 1), bias="graph_input", bias_shape=(1,), bias_first=True, extra={"h": 1, "w": 2}
    )
    model = dense_model(o)
    model, rewritten, layers = _converted(model, layout="keep-all")
    assert converter.verify(model, rewritten, layers=layers, input_shapes={"x": [1, 1, 2, 1]}).passed
    add = next(n for n in rewritten.graph.node if n.op_type == "Add")
    moved = f"{add.input[1]}_hw"
    rewritten.graph.node.insert(
        list(rewritten.graph.node).index(add), helper.make_node("Transpose", [add.input[1]], [moved], perm=[0, 1, 3, 2])
    )
    add.input[1] = moved  # H and W swapped on the full-rank operand
    assert not certify(model, rewritten, layers).proved
