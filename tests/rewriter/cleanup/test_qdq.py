"""A Transpose moves through QuantizeLinear / DequantizeLinear, and through elementwise ops whose constant
operand is a DequantizeLinear of constants (a QDQ model's layer scale or bias). Per-tensor parameters stay
as they are; per-axis parameters keep their values and the axis follows its dim through the perm.
Proved by structure, by onnxruntime's numbers (bit for bit: the same integers, the same scales) and by the
structural certificate.
"""

from __future__ import annotations

import numpy as np
import pytest

from converter.rewriter.cleanup.handlers import Decline, Plan
from converter.verifier.certificate.walk import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import H, N, W, attr, cleaned, nodes_of, plan_for, same_numbers, transposes

C = 6
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def qdq_between(per_axis: int | None, signed: bool = True, opset: int = 17):
    """NCHW x -> Transpose to NHWC -> QuantizeLinear -> DequantizeLinear -> Transpose back."""
    b = Builder(3)
    dtype = np.int8 if signed else np.uint8
    n = C if per_axis is not None else None
    scale = b.const(np.linspace(0.02, 0.05, n) if n else np.array(0.03))
    zero = b.const(np.arange(n) % 5 + (0 if signed else 120) if n else np.array(2 if signed else 128), dtype)
    attrs = {"axis": per_axis} if per_axis is not None else {}
    t = b.op("Transpose", "x", perm=NHWC)
    q = b.op("QuantizeLinear", t, scale, zero, **attrs)
    dq = b.op("DequantizeLinear", q, scale, zero, **attrs)
    y = b.op("Transpose", dq, perm=NCHW)
    return b.model([("x", [N, C, H, W])], [y], opset=opset)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_axis", [None, 3, -1])
def test_the_pair_is_crossed_and_the_transposes_cancel(per_axis: int | None, signed: bool) -> None:
    model = qdq_between(per_axis, signed)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    for op in ("QuantizeLinear", "DequantizeLinear"):
        (node,) = nodes_of(out, op)
        assert attr(node, "axis") == (None if per_axis is None else 1)  # C of NHWC is axis 1 of NCHW
    same_numbers(model, out, rtol=0, atol=0)
    assert certify(model, out, []).proved


def test_the_handler_maps_the_axis_through_the_perm() -> None:
    plan = plan_for(qdq_between(3), "QuantizeLinear")
    assert isinstance(plan, Plan) and plan.attrs == {"axis": 1} and plan.outputs == [tuple(NHWC)]
    plan = plan_for(qdq_between(None), "QuantizeLinear")
    assert isinstance(plan, Plan) and plan.attrs == {}


def test_a_computed_scale_is_declined() -> None:
    b = Builder(3)
    t = b.op("Transpose", "x", perm=NHWC)
    scale = b.op("Abs", b.const(np.array(0.03)))
    y = b.op("Transpose", b.op("QuantizeLinear", t, scale), perm=NCHW)
    model = b.model([("x", [N, C, H, W])], [y])
    verdict = plan_for(model, "QuantizeLinear")
    assert isinstance(verdict, Decline) and verdict.code == "scale_not_constant"


def layer_scale(per_tensor_scale: bool = True, scalar: bool = False):
    """Transpose -> Mul by DequantizeLinear(int8 layer scale) -> Add DequantizeLinear(scalar) -> Transpose back."""
    b = Builder(4)
    ints = b.const(np.array(3, np.int8) if scalar else (np.arange(C) * 7 - 20).astype(np.int8), np.int8)
    scale = b.const(np.array(0.01) if per_tensor_scale else np.full(C, 0.01))
    attrs = {} if per_tensor_scale else {"axis": 0}
    gamma = b.op("DequantizeLinear", ints, scale, **attrs)
    one = b.op("DequantizeLinear", b.const(np.array(100, np.int8), np.int8), b.const(np.array(0.01)))
    t = b.op("Transpose", "x", perm=NHWC)
    y = b.op("Transpose", b.op("Add", b.op("Mul", t, gamma), one), perm=NCHW)
    return b.model([("x", [N, C, H, W])], [y])


@pytest.mark.parametrize("scalar", [False, True])
def test_a_quantized_constant_operand_is_laid_out_by_its_integers(scalar: bool) -> None:
    model = layer_scale(scalar=scalar)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    dqs = nodes_of(out, "DequantizeLinear")
    assert len(dqs) == 2  # the old layer scale's DequantizeLinear went with its only reader
    inits = {t.name: t for t in out.graph.initializer}
    mul = nodes_of(out, "Mul")[0]
    gamma = next(n for n in dqs if n.output[0] == mul.input[1])
    assert list(inits[gamma.input[0]].dims) == ([] if scalar else [1, C, 1, 1])
    same_numbers(model, out, rtol=0, atol=0)
    assert certify(model, out, []).proved


def test_a_per_axis_quantized_operand_is_not_moved() -> None:
    model = layer_scale(per_tensor_scale=False)
    verdict = plan_for(model, "Mul")
    assert isinstance(verdict, Decline) and verdict.code == "operand_in_other_layout"


def test_the_certificate_refutes_a_per_axis_pair_whose_axis_was_not_mapped() -> None:
    model = qdq_between(3)
    out, _ = cleaned(model)
    for node in nodes_of(out, "QuantizeLinear"):
        next(a for a in node.attribute if a.name == "axis").i = 3  # would be H after the move, not C
    cert = certify(model, out, [])
    assert not cert.proved and any("QuantizeLinear" in u for u in cert.unproved), cert.to_dict()
