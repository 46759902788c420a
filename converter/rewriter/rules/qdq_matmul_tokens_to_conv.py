"""A quantized (QDQ) dense layer on a token sequence is a quantized 1x1 convolution in (B, C, 1, S) (opt-in: ``tokens``).

Before (``quantize_static(..., quant_format=QDQ)`` on a transformer, or a weight-only quantizer's blocks)::

    x = DequantizeLinear(QuantizeLinear(a, sx, zx), sx, zx)          a: [B, S, C] (the pair is optional)
    W = DequantizeLinear(Wq, sw, zw[, axis][, block_size])           Wq: [C, K]; per tensor, per channel or in blocks
    Y = MatMul(x, W)
    Z = Add(Y, b)       optional: b a float constant, or DequantizeLinear(bq, sb, 0) of an int32 [K]

After::

    a4 = Unsqueeze(Transpose(a, [0, 2, 1]), [2])                     [B, C, 1, S]
    x4 = DequantizeLinear(QuantizeLinear(a4, sx, zx), sx, zx)        the pair's own parameters
    Z4 = Conv(x4, DequantizeLinear(Wq^T as [K, C, 1, 1], sw', zw'), b)
    Z  = Transpose(Squeeze(Z4, [2]), [0, 2, 1])

because ``Z[b, s, k] = sum_c x[b, s, c] W[c, k] + b[k] = Z4[b, k, 0, s]`` (``matmul_tokens_to_conv``), the
dequantized weight is elementwise in ``Wq`` so moving the integers moves ``W`` exactly (``_quantized``: per
channel the same ``sw``, ``zw`` with ``axis`` 1 -> 0; in blocks along C, ``sw`` and ``zw`` moved with the data,
``[ceil(C / B), K]`` -> ``[K, ceil(C / B), 1, 1]``, ``axis`` 0 -> 1; 4-bit data packed as ONNX stores it), and a
per-tensor (or per-channel, axis 2 -> 1) QuantizeLinear/DequantizeLinear gives the same values on the same
elements in any layout. Nothing is requantized: every integer, scale and zero point is the original's.

As in the rank-4 rule (``qdq_matmul_to_conv``), the activation's pair sits directly in front of the Conv (a copy
when others read it too), an int32 bias's DequantizeLinear is written again beside the Conv, and the output's
own QuantizeLinear stays where it is for the layout cleanup. Without ``RuleOptions(tokens=True)``, or on
anything but rank 3, the rule steps aside (the rank-4 rule says why it declines).

Declines (stable codes): those of ``qdq_matmul_to_conv`` (``weight_*``, ``quantized_dtype_unsupported``,
``weight_rank``, ``quantization_axis_mismatch``, ``quantization_params_mismatch``, ``weight_dtype_mismatch``,
``shape_mismatch``, ``runtime_kernel_missing`` when onnxruntime cannot run the weight's DequantizeLinear before
a Conv), plus ``rank_*``, ``constant_input`` and ``dtype_unsupported``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, helper

from converter.rewriter.rules._checks import Bias, find_bias, require_conv_dtype, require_rank, require_varying
from converter.rewriter.rules._conv import conv_bias
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._quantized import (
    ActivationQDQ,
    QuantizedWeight,
    activation_qdq,
    granularity,
    produced_by,
    qdq_bias_node,
    qdq_pair_nodes,
    qdq_weight_node,
    quantized_bias_add,
    require_qdq_weight,
)
from converter.rewriter.rules._tokens import conv_of, token_axis, token_conv_nodes


@dataclass
class QdqTokensPlan(Plan):
    x: str = ""  # the layer's activation as the MatMul reads it (the pair's output when there is one)
    weight: QuantizedWeight | None = None
    weight_dq: NodeProto | None = None
    act: ActivationQDQ | None = None
    bias: Bias | None = None
    bias_dq: NodeProto | None = None
    origin: str = ""


class QdqMatMulTokensToConv(Rule):
    name = "qdq_matmul_tokens_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> QdqTokensPlan:
        if not ctx.options.tokens:
            raise Decline(Decline.NO_PATTERN, "token layers are rewritten only with tokens=True")
        x = node.input[0]
        if produced_by(ctx, node.input[1], "DequantizeLinear") is None:
            raise Decline(Decline.NO_PATTERN, "the weight is not a DequantizeLinear")
        t = ctx.scope.type_of(x)
        if t is None or t.shape is None or (t.rank != 3 and not t.conflict):
            raise Decline(Decline.NO_PATTERN, f"{x!r} is not a rank-3 token sequence")  # the rank-4 rule says why
        xt = require_rank(ctx, x, 3)
        shape = xt.shape
        assert shape is not None  # require_rank says so
        require_varying(ctx, x)
        w, weight_dq = require_qdq_weight(ctx, node, xt.elem_type)
        if isinstance(shape[2], int) and shape[2] != w.c:
            raise Decline("shape_mismatch", f"{x!r} has {shape[2]} channels but the weight expects {w.c}")
        require_conv_dtype(ctx, xt.elem_type)
        act = activation_qdq(ctx, x, list(shape), node)
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
            bias, bias_reason = find_bias(ctx, y, np.dtype(helper.tensor_dtype_to_np_dtype(xt.elem_type)), w.k)
            if bias is not None and len(ctx.scope.constant_tensor(bias.name).dims) > 3:
                bias, bias_reason = None, "bias_not_per_channel"  # [1, 1, 1, K] would make the sum rank 4
            if bias is not None:
                removed.append(bias.add)
        if act is not None and act.exclusive:
            removed += [act.dq, act.q]
        out = y if bias is None else bias.add.output[0]
        notes: dict[str, object] = {"bias_folded": bias is not None, "weight_quantization": granularity(w)}
        if bias_dq is not None:
            notes["bias_quantized"] = True
        if bias_reason:
            notes["bias_reason"] = bias_reason
        return QdqTokensPlan(
            removed, [out], notes, x=x, weight=w, weight_dq=weight_dq, act=act, bias=bias, bias_dq=bias_dq, origin=node_label(node)
        )

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        assert isinstance(plan, QdqTokensPlan)
        w, wdq, matmul = plan.weight, plan.weight_dq, plan.removed[0]
        assert w is not None and wdq is not None
        base = matmul.name or matmul.output[0]
        rule, origin, act = self.name, plan.origin, plan.act
        released = [w.name, w.params.scale] + ([w.params.zero_point] if w.params.zero_point else [])
        vanished = [wdq.output[0]]
        if act is not None and act.exclusive:
            vanished += [plan.x, act.dq.input[0]]
        bias: str | None = None
        bias_nodes: list[NodeProto] = []
        if plan.bias_dq is not None:
            bias_nodes.append(qdq_bias_node(ctx, rule, origin, base, plan.bias_dq))
            bias = bias_nodes[0].output[0]
            if any(n is plan.bias_dq for n in plan.removed):
                vanished.append(plan.bias_dq.output[0])
            vanished.append(matmul.output[0])
        elif plan.bias is not None:
            bias = conv_bias(ctx, plan.bias, w.k)
            released.append(plan.bias.name)
            vanished.append(matmul.output[0])

        def convolution(x4: str, z4: str) -> list[NodeProto]:
            nodes: list[NodeProto] = []
            conv_in = x4
            if act is not None:  # the activation's own pair, directly in front of the Conv
                nodes, conv_in = qdq_pair_nodes(ctx, rule, origin, base, x4, act, token_axis(act.q_params.axis), "nc1t")
            weight = qdq_weight_node(ctx, rule, origin, base, w, wdq)
            inputs = [conv_in, weight.output[0]] + ([bias] if bias is not None else [])
            conv = ctx.node(rule, origin, "Conv", inputs, [z4], f"{base}_conv", kernel_shape=[1, 1])
            return [*nodes, weight, *bias_nodes, conv]

        source = plan.x if act is None else act.a
        nodes = token_conv_nodes(ctx, rule, origin, base, source, "", None, plan.outputs[0], convolution=convolution)
        conv = conv_of(nodes)
        return Replacement(nodes, released=released, vanished=vanished, layer=(plan.x, plan.outputs[0], conv.name))
