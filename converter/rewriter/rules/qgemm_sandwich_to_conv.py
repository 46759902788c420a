"""A QOperator Gemm sandwich: onnxruntime's QGemm between two Reshapes becomes a QLinearConv with the same integers.

Before (``quant_pre_process`` fuses a Linear on a 4D or rank-3 tensor into ``Reshape -> Gemm -> Reshape``, and
``quantize_static(..., quant_format=QOperator)`` writes the Gemm as com.microsoft's QGemm)::

    rows = Reshape(x, [-1, C])                                  x: int [N, H, W, C] (or [B, S, C]), already quantized
      (or rows = QuantizeLinear(Reshape(x, [-1, C]), sx, zx) of a float x)
    y = Reshape(QGemm(rows, sx, zx, Wq, sw, zw, b, sy, zy, transB), [N, H, W, K])       Wq: int [C, K] ([K, C]: transB)

After (the QOperator sandwich's nodes, ``qlinear_sandwich_to_conv.py``, the bias inside the QLinearConv)::

    y = Transpose(QLinearConv(Transpose(x, [0, 3, 1, 2]), sx, zx, Wq' as [K, C, 1, 1], sw, zw, sy, zy, b), [0, 2, 3, 1])

and with ``RuleOptions(tokens=True)``, from rank 3 back to rank 3, the token layer's nodes (``Unsqueeze`` into
``[B, C, 1, S]``, the QLinearConv, ``Squeeze`` and ``Transpose`` back).

Why it is the same layer: QGemm computes ``Y[m, n] = saturate(round(sx * sw[n] / sy * (sum_c (rows[m, c] - zx)
(W[c, n] - zw[n]) + b[n])) + zy)`` with ``alpha = 1`` (``b`` is the int32 bias quantized with scale ``sx * sw`` and
zero point 0, as onnxruntime's quantizer writes it), and QLinearConv computes exactly that at every position with a
``[K]`` int32 bias of the same scale (ONNX's definition): the same sums, the same bias in the same place, the same
requantization. ``Wq'`` is ``Wq^T`` (``transB=0``) or ``Wq`` itself (``transB=1``, stored ``[K, C]``), moved, not
changed; a per-column ``sw``/``zw`` (one per output, ``[K]``, whichever way the weight is stored) is QLinearConv's
per-output-channel one, the same tensors. onnxruntime 1.32's two kernels agree bit for bit (measured: uint8
activations, int8 and uint8 weights, per tensor and per channel, ``transB`` 0 and 1, with the bias).

Declines, besides the QOperator sandwich's: ``qgemm_float_output`` (no output scale: QGemm then writes float,
QLinearConv cannot), ``gemm_trans_a``, ``gemm_alpha`` (``alpha != 1`` scales the sums before requantizing:
requantizing anew), ``bias_not_per_channel`` / ``bias_not_constant`` / ``bias_is_graph_input`` (QLinearConv's bias is
a constant int32 ``[K]``), ``weight_*``, ``quantized_dtype_unsupported``, ``weight_rank``, ``quantization_axis_mismatch``,
``quantization_params_mismatch``, ``quantization_params_not_constant``, ``activation_quantization_per_axis``,
``runtime_kernel_missing``.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from converter.rewriter.rules._checks import require_channels, require_constant_tensor
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule
from converter.rewriter.rules._integer import require_runs, require_scalar, weight_types_ok
from converter.rewriter.rules._quantized import QUANTIZED_TYPES, Params, QuantizedWeight
from converter.rewriter.rules._sandwich import attr_value
from converter.rewriter.rules.qlinear_sandwich_to_conv import (
    QLinearCore,
    QLinearSandwichPlan,
    plan_qlinear_sandwich,
    rewrite_qlinear_sandwich,
)

_CONTRIB = "com.microsoft"


def check_qgemm_core(ctx: Context, node: NodeProto, x_type: int) -> tuple[QLinearCore, dict]:
    """The checks on the QGemm itself, wherever its activation comes from (see the module docstring)."""
    ins = list(node.input) + [""] * (9 - len(node.input))
    if not ins[7]:
        raise Decline("qgemm_float_output", "the QGemm has no output scale, so it writes float; QLinearConv writes integers")
    if attr_value(node, "transA", 0):
        raise Decline("gemm_trans_a", "QGemm with transA=1 multiplies the transposed activation")
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
    if alpha != 1.0:
        raise Decline("gemm_alpha", f"QGemm with alpha={alpha:g} scales the sums before requantizing (requantizing anew)")
    trans_b = bool(attr_value(node, "transB", 0))
    w = _weight(ctx, ins[3], ins[4], ins[5], trans_b)
    for slot, role in ((1, "activation scale"), (2, "activation zero point"), (7, "output scale"), (8, "output zero point")):
        require_scalar(ctx, node, slot, role)
        if ins[slot] and not ctx.scope.source(ins[slot]).is_constant:  # a graph input (callers may override it) or computed
            raise Decline("quantization_params_not_constant", f"the {role} {ins[slot]!r} is not a constant")
    bias = _bias(ctx, ins[6], w.k)
    per_channel = w.params.axis is not None
    require_runs(ctx, "QLinearConv", x_type, w.tensor.data_type, per_channel)
    notes = {"weight_quantization": "per_channel" if per_channel else "per_tensor", "bias_folded": bool(bias)}
    if trans_b:
        notes["weight"] = "stored_kc"
    return QLinearCore(w, (ins[1], ins[2], ins[4], ins[5], ins[7], ins[8]), bias), notes


def _weight(ctx: Context, name: str, scale: str, zero: str, trans_b: bool) -> QuantizedWeight:
    """The constant integer weight (``[C, K]``, ``[K, C]`` with ``trans_b``) and its per-tensor or per-output scale and
    zero point (QGemm's are per column of the product: one per K, however the weight is stored)."""
    t = require_constant_tensor(ctx, name, "weight")
    weight_types_ok(t.data_type)
    dims = list(t.dims)
    if len(dims) != 2:
        raise Decline("weight_rank", f"quantized weight {name!r} has rank {len(dims)}; a dense layer needs [C, K]")
    c, k = (dims[1], dims[0]) if trans_b else (dims[0], dims[1])
    require_channels(name, dims, c, k)
    s = require_constant_tensor(ctx, scale, "weight_scale")
    shapes = [list(s.dims)]
    if zero:
        shapes.append(list(require_constant_tensor(ctx, zero, "weight_zero_point").dims))
    sizes = {1 if all(d == 1 for d in sh) and len(sh) <= 1 else (sh[0] if len(sh) == 1 else -1) for sh in shapes}
    if len(sizes) != 1 or sizes.pop() not in (1, k):
        raise Decline(
            "quantization_axis_mismatch", f"the weight's scale and zero point have shapes {shapes}; one value or [K] = [{k}]"
        )
    per_k = list(s.dims) == [k] and k > 1
    axis = (0 if trans_b else 1) if per_k else None  # K's dim in the stored weight
    return QuantizedWeight(t, name, c, k, QUANTIZED_TYPES[t.data_type], Params(scale, zero, axis, s.data_type), trans_b)


def _bias(ctx: Context, name: str, k: int) -> str:
    """QGemm's C as QLinearConv's bias: a constant int32 ``[K]`` (``[1, K]`` reshaped); "" when absent."""
    if not name:
        return ""
    t = require_constant_tensor(ctx, name, "bias")
    dims = list(t.dims)
    if t.data_type != TensorProto.INT32 or dims not in ([k], [1, k]):
        raise Decline("bias_not_per_channel", f"the QGemm's bias {name!r} is not an int32 [K] = [{k}] vector ({dims})")
    if dims == [k]:
        return name
    return ctx.derived_initializer(
        "bias_k", name, lambda: np.asarray(ctx.scope.value_of(t)).reshape(k), like=((k,), np.dtype(np.int32))
    )


class QGemmSandwichToConv(Rule):
    name = "qgemm_sandwich_to_conv"
    op_type = "QGemm"
    domain = _CONTRIB

    def check(self, node: NodeProto, ctx: Context) -> QLinearSandwichPlan:
        return plan_qlinear_sandwich(node, ctx, check_qgemm_core)

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        assert isinstance(plan, QLinearSandwichPlan)
        core = plan.core
        assert core is not None
        node = plan.removed[0]
        # The bias is read by the QLinearConv (or its [K] copy): the original released only when it is not.
        released = [node.input[6]] if len(node.input) > 6 and node.input[6] and core.bias != node.input[6] else []
        return rewrite_qlinear_sandwich(self, plan, ctx, released)
