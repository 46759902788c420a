"""A QOperator dense layer on a 4D tensor is a QLinearConv with the same integers.

Before (what ``onnxruntime.quantization.quantize_static(..., quant_format=QOperator)`` writes)::

    Y = QLinearMatMul(a, sa, za, Wq, sw, zw, sy, zy)        a: int [N, H, W, C]; Wq: int [C, K]; sw, zw: scalar or [K]

After::

    Yt = QLinearConv(Transpose(a, [0, 3, 1, 2]), sa, za, Wq^T as [K, C, 1, 1], sw, zw, sy, zy)
    Y  = Transpose(Yt, [0, 2, 3, 1])

because both ops compute ``Y[.., k] = saturate(round(sa * sw[k] / sy * sum_c (a[.., c] - za) (Wq[c, k] - zw[k])) + zy)``:
a 1x1 QLinearConv on the NCHW activation is the same sum at every position, and a per-column
``sw``/``zw`` of the ``[C, K]`` weight is QLinearConv's per-output-channel ``w_scale``/``w_zero_point``
(the same tensors). Only ``Wq``'s data moves; nothing is requantized, and onnxruntime's two kernels
agree bit for bit (measured: int8/uint8, per tensor and per channel, N=2, H != W).

The bias: the quantizer writes it as a separate ``QLinearAdd`` (com.microsoft) of an 8-bit bias with its
own scale, requantized to a new output scale. Folding that into QLinearConv's int32 bias would drop a
rounding step and round the bias anew, so it is not exact: the add is kept as it is, reading the
restored NHWC tensor (the layout cleanup then moves that Transpose through it, ``handlers/qlinear.py``).

Declines (stable codes): ``weight_not_constant`` / ``weight_is_graph_input`` and the same for its scale and
zero point, ``quantized_dtype_unsupported`` (not int8/uint8), ``weight_rank``, ``quantization_axis_mismatch``,
``quantization_params_mismatch``, ``quantization_params_not_constant`` (an activation or output scale or zero
point that is computed or a graph input), ``activation_quantization_per_axis`` (a per-row activation scale or a
per-column output scale: QLinearConv takes one), ``shape_mismatch``, ``runtime_kernel_missing`` (onnxruntime
cannot run that QLinearConv: int8 activations with uint8 weights), plus ``rank_*`` and ``constant_input``.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import require_varying
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import (
    require_integer_rank4,
    require_integer_type,
    require_runs,
    require_scalar,
    weight_types_ok,
)
from converter.rewriter.rules._quantized import QuantizedWeight, require_quantized_weight


@dataclass
class QLinearPlan(Plan):
    weight: QuantizedWeight | None = None
    origin: str = ""


class QLinearMatMulToConv(Rule):
    name = "qlinear_matmul_to_conv"
    op_type = "QLinearMatMul"

    def check(self, node: NodeProto, ctx: Context) -> QLinearPlan:
        if len(node.input) != 8:
            raise Decline(Decline.NO_PATTERN, "QLinearMatMul without its eight inputs")
        a = node.input[0]
        at = require_integer_rank4(ctx, a)
        require_varying(ctx, a)
        x_type = require_integer_type(ctx, a, "activation")
        w, notes = check_qlinear_core(ctx, node, x_type, at.shape[3] if isinstance(at.shape[3], int) else None)
        return QLinearPlan([node], [node.output[0]], notes, weight=w, origin=node_label(node))

    def rewrite(self, plan: QLinearPlan, ctx: Context) -> Replacement:
        node, w = plan.removed[0], plan.weight
        assert w is not None
        base = node.name or node.output[0]
        nchw = ctx.names.fresh(f"{base}_nchw")
        to_nchw = ctx.node(self.name, plan.origin, "Transpose", [node.input[0]], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2])
        nodes, conv = qlinear_conv_nodes(ctx, self.name, plan.origin, node, w, nchw, node.output[0])
        return Replacement([to_nchw, *nodes], released=[w.name], layer=(node.input[0], node.output[0], conv.name))


def check_qlinear_core(ctx: Context, node: NodeProto, x_type: int, channels: int | None) -> tuple[QuantizedWeight, dict]:
    """The checks on the QLinearMatMul itself, wherever its activation comes from: its weight and parameters,
    and whether onnxruntime runs the QLinearConv. ``channels`` is the activation's C where known."""
    w = require_quantized_weight(ctx, node.input[3], 4, 5, node)
    weight_types_ok(w.tensor.data_type)
    if w.params.axis == 0:
        raise Decline("quantization_axis_mismatch", "the weight is quantized per input channel; QLinearConv's axis is K")
    if channels is not None and channels != w.c:
        raise Decline("shape_mismatch", f"{node.input[0]!r} has {channels} channels but the weight expects {w.c}")
    for slot, role in ((1, "activation scale"), (2, "activation zero point"), (6, "output scale"), (7, "output zero point")):
        require_scalar(ctx, node, slot, role)
        name = node.input[slot] if len(node.input) > slot else ""
        if name and not ctx.scope.source(name).is_constant:  # a graph input (callers may override it) or computed
            raise Decline("quantization_params_not_constant", f"the {role} {name!r} is not a constant")
    per_channel = w.params.axis is not None
    require_runs(ctx, "QLinearConv", x_type, w.tensor.data_type, per_channel)
    return w, {"weight_quantization": "per_channel" if per_channel else "per_tensor", "bias_folded": False}


def qlinear_conv_nodes(
    ctx: Context, rule: str, origin: str, node: NodeProto, w: QuantizedWeight, nchw: str, output: str
) -> tuple[list[NodeProto], NodeProto]:
    """``Transpose(QLinearConv(nchw, .. Wq^T ..), [0, 2, 3, 1])`` into ``output``, with ``node``'s parameters;
    returns the nodes and the QLinearConv."""
    base = node.name or node.output[0]
    wq = ctx.derived_initializer("conv_weight", w.name, lambda: w.conv(ctx.scope.value_of), like=(w.conv_shape, w.dtype))
    conv_out = ctx.names.fresh(f"{base}_conv_nchw")
    ins = list(node.input)
    conv = ctx.node(rule, origin, "QLinearConv", [nchw, *ins[1:3], wq, *ins[4:8]], [conv_out], f"{base}_conv", kernel_shape=[1, 1])
    back = ctx.node(rule, origin, "Transpose", [conv_out], [output], f"{base}_to_nhwc", perm=[0, 2, 3, 1])
    return [conv, back], conv
