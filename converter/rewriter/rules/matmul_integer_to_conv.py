"""A dynamically quantized dense layer on a 4D tensor is a ConvInteger with the same integers.

Before (what ``onnxruntime.quantization.quantize_dynamic`` writes)::

    aq, sa, za = DynamicQuantizeLinear(a)                   a: float [N, H, W, C]
    Y  = MatMulInteger(aq, Wq, za, zw)                      Wq: int [C, K]; zw: scalar or [K]; Y: int32
    Z  = Mul(Cast(Y, float), Mul(sa, sw))                   the rescale (and an Add of the bias) read Y

After::

    Yt = ConvInteger(Transpose(aq, [0, 3, 1, 2]), Wq'^T as [K, C, 1, 1], za, zw')
    Y  = Transpose(Yt, [0, 2, 3, 1])                        the rescale reads Y as before

because ``Y[.., k] = sum_c (aq[.., c] - za) (Wq[c, k] - zw[k])`` is, at every position, what a 1x1
ConvInteger computes on the NCHW activation: int32 sums of integer products, exact in both kernels.
``DynamicQuantizeLinear`` and the rescale stay where they are (its scale is over the whole tensor, so a
layout change does not alter it); the layout cleanup moves the Transposes through it (its quantized
output only) and through the Cast and the rescale Mul (``handlers/dynamic.py``).

``Wq'`` and ``zw'``: a uint8 activation with an int8 weight (what ``quantize_dynamic`` writes with its
default int8 weights) becomes uint8 x uint8::

    Wq' = uint8(int16(Wq) + 128)        zw' = uint8(int16(zw) + 128)        (zw absent: zw = 0)

exact for every int8 value (``[-128, 127] + 128`` is ``[0, 255]``), and every factor of every sum is
unchanged: ``Wq' - zw' = (Wq + 128) - (zw + 128) = Wq - zw``. So are the int32 outputs. Why: onnxruntime's
ConvInteger has no fast uint8 x int8 kernel (7-19x slower than MatMulInteger on the same layer), and
runs uint8 x uint8 as fast as MatMulInteger (measured, 1.32 CPU; ``python -m benchmarks.quantized``
prints one layer's figures). Every other signedness pair keeps the weight and its zero point as they are.

One-element zero point: onnxruntime's ConvInteger takes no other (measured, 1.32 CPU), so a ``[K]`` zero
point whose elements are all equal (the symmetric int8 quantization's zeros) becomes a one-element
constant of that value: the same number for every channel, so the same sums. A ``[K]`` zero point that
varies is declined.

Declines (stable codes): ``weight_not_constant`` / ``weight_is_graph_input`` and the same for its zero
point, ``quantized_dtype_unsupported``, ``weight_rank``, ``activation_quantization_per_axis``,
``per_channel_zero_point_unsupported``, ``shape_mismatch``, ``runtime_kernel_missing``, plus ``rank_*``
and ``constant_input``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto

from converter.graph import transpose_2d
from converter.rewriter.rules._checks import require_channels, require_constant_tensor, require_varying
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import (
    require_integer_rank4,
    require_integer_type,
    require_runs,
    require_scalar,
    weight_types_ok,
    weight_zero_point_vector,
)
from converter.rewriter.rules._quantized import QUANTIZED_TYPES

# The shift that turns an int8 weight and its zero point into uint8 with the same differences.
_SHIFT = 128


@dataclass(frozen=True)
class IntegerWeight:
    """What the ConvInteger is made of: the MatMulInteger's ``[C, K]`` weight and how it is written."""

    name: str  # the weight's tensor
    c: int
    k: int
    zero_point: int | None  # a new one-element weight zero point of this value (None: the original's tensor)
    shifted: bool  # int8 weight and zero point written as uint8, both + 128


@dataclass
class IntegerPlan(Plan):
    weight: IntegerWeight | None = None
    origin: str = ""


class MatMulIntegerToConv(Rule):
    name = "matmul_integer_to_conv"
    op_type = "MatMulInteger"

    def check(self, node: NodeProto, ctx: Context) -> IntegerPlan:
        a = node.input[0]
        at = require_integer_rank4(ctx, a)
        require_varying(ctx, a)
        x_type = require_integer_type(ctx, a, "activation")
        w, notes = check_integer_core(ctx, node, x_type, at.shape[3] if isinstance(at.shape[3], int) else None)
        return IntegerPlan([node], [node.output[0]], notes, weight=w, origin=node_label(node))

    def rewrite(self, plan: IntegerPlan, ctx: Context) -> Replacement:
        node, w = plan.removed[0], plan.weight
        assert w is not None
        base = node.name or node.output[0]
        rule, origin = self.name, plan.origin
        nchw, conv_out = ctx.names.fresh(f"{base}_nchw"), ctx.names.fresh(f"{base}_conv_nchw")
        conv, released = conv_integer_node(ctx, rule, origin, node, w, nchw, conv_out)
        nodes = [
            ctx.node(rule, origin, "Transpose", [node.input[0]], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2]),
            conv,
            ctx.node(rule, origin, "Transpose", [conv_out], [node.output[0]], f"{base}_to_nhwc", perm=[0, 2, 3, 1]),
        ]
        return Replacement(nodes, released=released, layer=(node.input[0], node.output[0], conv.name))


def check_integer_core(ctx: Context, node: NodeProto, x_type: int, channels: int | None) -> tuple[IntegerWeight, dict]:
    """The checks on the MatMulInteger itself, wherever its activation comes from: its weight and zero points, and
    whether onnxruntime runs the ConvInteger. ``x_type`` is the activation's integer type, ``channels`` its C where
    known."""
    b = node.input[1]
    t = require_constant_tensor(ctx, b, "weight")
    weight_types_ok(t.data_type)
    if len(t.dims) != 2:
        raise Decline("weight_rank", f"quantized weight {b!r} has rank {len(t.dims)}; a dense layer needs [C, K]")
    c, k = t.dims
    require_channels(b, list(t.dims), c, k)
    if channels is not None and channels != c:
        raise Decline("shape_mismatch", f"{node.input[0]!r} has {channels} channels but the weight expects {c}")
    require_scalar(ctx, node, 2, "activation zero point")
    zw_name = node.input[3] if len(node.input) > 3 else ""
    zero, uniform = 0, False
    if zw_name:
        zw_dims = list(require_constant_tensor(ctx, zw_name, "weight_zero_point").dims)
        if zw_dims not in ([], [1], [k]):
            raise Decline("quantization_axis_mismatch", f"the weight zero point has shape {zw_dims}; [K] = [{k}] or one value")
        zw = weight_zero_point_vector(ctx, zw_name, k)
        assert zw is not None
        if zw_dims == [k] and k > 1:
            if (zw != zw[0]).any():
                raise Decline(
                    "per_channel_zero_point_unsupported",
                    "the weight zero point differs between output channels; onnxruntime's ConvInteger takes one "
                    "zero point for the whole weight (it fails with 'Non per-tensor quantization is not supported')",
                )
            uniform = True
        zero = int(zw[0])
    shifted = x_type == TensorProto.UINT8 and t.data_type == TensorProto.INT8
    w_type = TensorProto.UINT8 if shifted else t.data_type
    require_runs(ctx, "ConvInteger", x_type, w_type, False)
    notes = {"weight_zero_point": "uniform_per_channel_as_one" if uniform else "per_tensor"}
    if shifted:
        notes["weight"] = "int8_as_uint8_plus_128"
    written = zero + _SHIFT if shifted else (zero if uniform else None)
    return IntegerWeight(b, c, k, written, shifted), notes


def conv_integer_node(
    ctx: Context, rule: str, origin: str, node: NodeProto, w: IntegerWeight, x: str, out: str
) -> tuple[NodeProto, list[str]]:
    """The 1x1 ConvInteger of ``node`` (a MatMulInteger that passed check_integer_core) reading ``x`` (NCHW) and
    writing ``out``, and the constants of ``node`` it no longer reads (to release)."""
    base = node.name or node.output[0]
    t = ctx.scope.constant_tensor(w.name)
    dtype = np.dtype(np.uint8) if w.shifted else QUANTIZED_TYPES[t.data_type]
    c, k, shifted = w.c, w.k, w.shifted

    def conv_weight() -> np.ndarray:
        v = transpose_2d(ctx.scope.value_of(t).reshape(c, k)).reshape(k, c, 1, 1)
        return (v.astype(np.int16) + _SHIFT).astype(np.uint8) if shifted else v

    key = "conv_weight_u8" if shifted else "conv_weight"
    wq = ctx.derived_initializer(key, w.name, conv_weight, like=((k, c, 1, 1), dtype))
    released = [w.name]
    ins = list(node.input) + [""] * (4 - len(node.input))
    zw = ins[3]
    if w.zero_point is not None:
        value = w.zero_point
        # An absent zero point (0) is derived from the weight: the one tensor the new constant depends on.
        zw = ctx.derived_initializer("one_zero_point", ins[3] or w.name, lambda: np.array(value, dtype), exact=(value, dtype.str))
        released += [ins[3]] if ins[3] else []
    inputs = [x, wq, ins[2], zw]
    while inputs and not inputs[-1]:
        inputs.pop()
    return ctx.node(rule, origin, "ConvInteger", inputs, [out], f"{base}_conv", kernel_shape=[1, 1]), released
