"""A dense layer applied at every spatial position is a 1x1 convolution.

Before::

    Y = MatMul(X, W)            X: [N, H, W, C]   W: [C, K] (or [1, 1, C, K])
    Z = Add(Y, b)               optional, b broadcasting along the last axis only

After::

    Xt = Transpose(X, perm=[0, 3, 1, 2])                 [N, C, H, W]
    Zt = Conv(Xt, W^T reshaped [K, C, 1, 1], bias=b)     [N, K, H, W]
    Z  = Transpose(Zt, perm=[0, 2, 3, 1])                [N, H, W, K]

because ``Z[n,h,w,k] = sum_c X[n,h,w,c] W[c,k] + b[k] = Conv(Xt)[n,k,h,w]``. The last Transpose
writes the original tensor name, so every consumer and graph output is untouched.

The Add is folded into Conv's bias only when that is provably the same computation: Y feeds
only the Add and is not a graph output, the other operand is a true constant, and it varies
along the last axis only (``[K]``, ``[1, K]``, ``[1, 1, 1, K]``, scalar). Otherwise the Add stays
and the MatMul alone is rewritten; the reason goes into the decision's notes.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import (
    Bias,
    Weight,
    find_bias,
    require_conv_dtype,
    require_rank,
    require_varying,
    require_weight,
)
from converter.rewriter.rules._conv import conv_nodes, conv_parameters
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label


@dataclass
class MatMulPlan(Plan):
    x: str = ""
    weight_name: str = ""
    weight: Weight | None = None
    bias: Bias | None = None
    origin: str = ""


class MatMulAddToConv(Rule):
    name = "matmul_add_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> MatMulPlan:
        x, w_name = node.input[0], node.input[1]
        xt = require_rank(ctx, x, 4)
        require_varying(ctx, x)
        w = require_weight(ctx, w_name, ranks=(2, 3, 4))
        if isinstance(xt.shape[3], int) and xt.shape[3] != w.c:
            raise Decline("shape_mismatch", f"{x!r} has {xt.shape[3]} channels but the weight expects {w.c}")
        require_conv_dtype(ctx, xt.elem_type)
        bias, bias_reason = find_bias(ctx, node.output[0], w.dtype, w.k)
        removed = [node] if bias is None else [node, bias.add]
        out = node.output[0] if bias is None else bias.add.output[0]
        notes = {"bias_folded": bias is not None}
        if bias_reason:
            notes["bias_reason"] = bias_reason
        return MatMulPlan(removed, [out], notes, x=x, weight_name=w_name, weight=w, bias=bias, origin=node_label(node))

    def rewrite(self, plan: MatMulPlan, ctx: Context) -> Replacement:
        w = plan.weight
        assert w is not None
        base = plan.removed[0].name or plan.removed[0].output[0]
        weight, bias, released, vanished = conv_parameters(ctx, plan.weight_name, w, plan.bias, plan.removed[0].output[0])
        nodes = conv_nodes(ctx, self.name, plan.origin, base, plan.x, weight, bias, plan.outputs[0])
        return Replacement(nodes, released=released, vanished=vanished, layer=(plan.x, plan.outputs[0], nodes[1].name))
