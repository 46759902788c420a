"""A quantized (QDQ) dense layer on a 4D tensor is a quantized 1x1 convolution.

Before (what ``onnxruntime.quantization.quantize_static(..., quant_format=QDQ)`` writes)::

    x = DequantizeLinear(QuantizeLinear(a, sx, zx), sx, zx)          a: [N, H, W, C] (the pair is optional)
    W = DequantizeLinear(Wq, sw, zw[, axis=1])                       Wq: int [C, K]; sw, zw: scalar or [K]
    Y = MatMul(x, W)
    Z = Add(Y, b)       optional: b a float constant, or DequantizeLinear(bq, sb, 0) of an int32 [K]

After::

    xt = DequantizeLinear(QuantizeLinear(Transpose(a, [0, 3, 1, 2]), sx, zx), sx, zx)
    Zt = Conv(xt, DequantizeLinear(Wq^T as [K, C, 1, 1], sw, zw[, axis=0]), b)
    Z  = Transpose(Zt, [0, 2, 3, 1])

because the dequantized weight is elementwise in ``Wq`` (``W[c, k] = (Wq[c, k] - zw[k]) * sw[k]``), so
transposing the integer data and moving the per-channel axis with it gives ``W^T`` exactly, and
``Z[n,h,w,k] = sum_c x[n,h,w,c] W[c,k] + b[k] = Conv(xt)[n,k,h,w]``; and a per-tensor (or per-channel,
its axis 3 -> 1) QuantizeLinear/DequantizeLinear commutes with a Transpose, value for value.

No value is requantized: ``Wq``, ``sw``, ``zw``, ``sx``, ``zx`` and an int32 bias are the same integers
and the same floats (``Wq`` transposed, the others the same tensors). The activation's pair moves behind
the Transpose, so the Conv reads ``DequantizeLinear`` directly, as quantization tools and NPU compilers
expect (QDQ -> QLinearConv fusion); when other nodes read the pair too, a copy is made for the Conv and
the original stays for them. The output's own QuantizeLinear (if any) is left where it is; the layout
cleanup moves the restoring Transpose through it.

Declines (stable codes): ``weight_not_constant`` / ``weight_is_graph_input`` (the integer data),
``weight_scale_*`` / ``weight_zero_point_*`` (the same for the parameters), ``quantized_dtype_unsupported``
(not int8/uint8/int16/uint16), ``weight_rank``, ``blocked_quantization``, ``quantization_axis_mismatch``,
``quantization_params_mismatch``, ``weight_dtype_mismatch`` (dequantized type is not the activation's),
``shape_mismatch``, plus the plain rule's ``rank_*``, ``constant_input`` and ``dtype_unsupported``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto

from converter.rewriter.rules._checks import Bias, find_bias, require_conv_dtype, require_rank, require_varying
from converter.rewriter.rules._conv import conv_bias
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._quantized import (
    ActivationQDQ,
    QuantizedWeight,
    activation_qdq,
    nchw_axis,
    produced_by,
    qdq_bias_node,
    qdq_pair_nodes,
    qdq_weight_node,
    quantized_bias_add,
    require_qdq_weight,
)


@dataclass
class QdqPlan(Plan):
    x: str = ""
    weight: QuantizedWeight | None = None
    weight_dq: NodeProto | None = None
    act: ActivationQDQ | None = None
    bias: Bias | None = None
    bias_dq: NodeProto | None = None  # the bias is DequantizeLinear(int32 [K]): re-emitted beside the Conv
    origin: str = ""


class QdqMatMulToConv(Rule):
    name = "qdq_matmul_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> QdqPlan:
        x = node.input[0]
        if produced_by(ctx, node.input[1], "DequantizeLinear") is None:
            raise Decline(Decline.NO_PATTERN, "the weight is not a DequantizeLinear")
        xt = require_rank(ctx, x, 4)
        require_varying(ctx, x)
        w, weight_dq = require_qdq_weight(ctx, node, xt.elem_type)
        if isinstance(xt.shape[3], int) and xt.shape[3] != w.c:
            raise Decline("shape_mismatch", f"{x!r} has {xt.shape[3]} channels but the weight expects {w.c}")
        require_conv_dtype(ctx, xt.elem_type)
        act = activation_qdq(ctx, x, list(xt.shape), node)
        y = node.output[0]
        removed = [node, weight_dq]
        bias, bias_dq, bias_reason = None, None, None
        quantized = quantized_bias_add(ctx, y, w.k, xt.elem_type)
        if quantized is not None:
            add, bias_dq = quantized
            bias = Bias(add, bias_dq.output[0], np.zeros(0))
            removed.append(add)
            if [id(n) for n in ctx.scope.consumers(bias_dq.output[0])] == [id(add)]:
                removed.append(bias_dq)
        else:
            bias, bias_reason = find_bias(ctx, y, np.dtype(_np_float(xt.elem_type)), w.k)
            if bias is not None:
                removed.append(bias.add)
        if act is not None and act.exclusive:
            removed += [act.dq, act.q]
        out = y if bias is None else bias.add.output[0]
        notes: dict[str, object] = {
            "bias_folded": bias is not None,
            "weight_quantization": "per_tensor" if w.params.axis is None else "per_channel",
        }
        if bias_dq is not None:
            notes["bias_quantized"] = True
        if bias_reason:
            notes["bias_reason"] = bias_reason
        return QdqPlan(
            removed, [out], notes, x=x, weight=w, weight_dq=weight_dq, act=act, bias=bias, bias_dq=bias_dq, origin=node_label(node)
        )

    def rewrite(self, plan: QdqPlan, ctx: Context) -> Replacement:
        w, wdq, matmul = plan.weight, plan.weight_dq, plan.removed[0]
        assert w is not None and wdq is not None
        base = matmul.name or matmul.output[0]
        rule, origin = self.name, plan.origin
        nodes: list[NodeProto] = []
        released = [w.name, w.params.scale] + ([w.params.zero_point] if w.params.zero_point else [])
        vanished = [wdq.output[0]]
        # The activation, in NCHW, through its own quantization pair when it has one.
        act = plan.act
        source = plan.x if act is None else act.a
        nchw = ctx.names.fresh(f"{base}_nchw")
        nodes.append(ctx.node(rule, origin, "Transpose", [source], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2]))
        conv_in = nchw
        if act is not None:
            pair, conv_in = qdq_pair_nodes(ctx, rule, origin, base, nchw, act, nchw_axis(act.q_params.axis), "nchw")
            nodes += pair
            if act.exclusive:
                vanished += [plan.x, act.dq.input[0]]
        weight_node = qdq_weight_node(ctx, rule, origin, base, w, wdq)
        nodes.append(weight_node)
        weight = weight_node.output[0]
        bias = None
        if plan.bias_dq is not None:
            dq = plan.bias_dq
            nodes.append(qdq_bias_node(ctx, rule, origin, base, dq))
            bias = nodes[-1].output[0]
            if any(n is dq for n in plan.removed):
                vanished.append(dq.output[0])
            vanished.append(matmul.output[0])
        elif plan.bias is not None:
            bias = conv_bias(ctx, plan.bias, w.k)
            released.append(plan.bias.name)
            vanished.append(matmul.output[0])
        conv_out = ctx.names.fresh(f"{base}_conv_nchw")
        inputs = [conv_in, weight] + ([bias] if bias is not None else [])
        conv = ctx.node(rule, origin, "Conv", inputs, [conv_out], f"{base}_conv", kernel_shape=[1, 1])
        nodes.append(conv)
        nodes.append(ctx.node(rule, origin, "Transpose", [conv_out], [plan.outputs[0]], f"{base}_to_nhwc", perm=[0, 2, 3, 1]))
        return Replacement(nodes, released=released, vanished=vanished, layer=(plan.x, plan.outputs[0], conv.name))


def _np_float(elem_type: int) -> type:
    return {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}.get(
        elem_type, np.float32
    )
