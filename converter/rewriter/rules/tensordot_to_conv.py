"""TensorFlow's Tensordot: a Keras Dense on a 4D tensor, as tf2onnx writes it, becomes a 1x1 Conv.

Before::

    rows = Reshape(x, [-1, C])                       x: [N, H, W, C]
    y    = Reshape(MatMul(rows, W), [N, H, W, K])    target constant, or Concat(Shape(x)[0:3], [K])
    z    = Add(y, b)                                 optional per-channel bias

After::

    z = Transpose(Conv(Transpose(x, [0, 3, 1, 2]), W^T as [K, C, 1, 1], b), [0, 2, 3, 1])

See ``_sandwich.py`` for what proves the Reshapes keep every position's channels together.

With ``tokens``, a sandwich back to rank 3 (``Reshape(x, [R, C]) -> MatMul -> Reshape(-> [d0, d1, K])``,
``_sandwich.match_tokens``) is a token layer and gets the token rule's nodes (``_tokens.py``)::

    z = Transpose(Squeeze(Conv(Unsqueeze(Transpose(x3, [0, 2, 1]), [2]), W^T, b), [2]), [0, 2, 1])

where x3 is x itself when it is rank 3, else ``Reshape(x, [0, 0, C])``: x's dims after the first two
are the layer's channels (MultiheadAttention's heads [S, B, H, D] -> [S, B, H*D]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from converter.rewriter.rules._checks import Bias, Weight, find_bias, require_conv_dtype, require_weight
from converter.rewriter.rules._conv import conv_bias, conv_nodes
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._sandwich import Sandwich, match_sandwich
from converter.rewriter.rules._tokens import conv_of, token_conv_nodes


@dataclass
class SandwichPlan(Plan):
    sandwich: Sandwich | None = None
    weight_key: str = "conv_weight"
    weight_name: str = ""
    weight: Weight | None = None
    bias: Bias | None = None
    origin: str = ""


def plan_sandwich(
    rule: Rule, core: NodeProto, ctx: Context, weight_name: str, w: Weight, key: str, core_bias: Bias | None
) -> SandwichPlan:
    """The plan shared by the MatMul and Gemm sandwiches once the core's weight is known."""
    c, k = w.c, w.k
    s = match_sandwich(core, ctx, k)
    if s.channels not in (c, -1):
        raise Decline("shape_mismatch", f"{s.x!r} has {s.channels} channels but the weight expects {c}")
    require_conv_dtype(ctx, s.x_type.elem_type)
    bias, bias_reason = core_bias, None
    if bias is None:
        bias, bias_reason = find_bias(ctx, s.last.output[0], w.dtype, k)
        if s.tokens and bias is not None and len(ctx.scope.constant_tensor(bias.name).dims) > 3:
            bias, bias_reason = None, "bias_not_per_channel"  # [1, 1, 1, K] would make the sum rank 4
    removed = [core, s.first, s.last, *s.shape_nodes] + ([bias.add] if bias is not None and bias is not core_bias else [])
    out = bias.add.output[0] if bias is not None and bias is not core_bias else s.last.output[0]
    notes: dict[str, object] = {"bias_folded": bias is not None}
    if bias_reason:
        notes["bias_reason"] = bias_reason
    if s.tokens:
        notes["tokens"] = True
    return SandwichPlan(
        removed, [out], notes, sandwich=s, weight_key=key, weight_name=weight_name, weight=w, bias=bias, origin=node_label(core)
    )


def rewrite_sandwich(rule: Rule, plan: SandwichPlan, ctx: Context) -> Replacement:
    s, w = plan.sandwich, plan.weight
    assert s is not None and w is not None
    core = plan.removed[0]
    weight = ctx.derived_initializer(
        plan.weight_key, plan.weight_name, w.conv, like=(w.conv_shape, w.dtype), exact=(w.stored_kc, w.alpha)
    )
    bias = conv_bias(ctx, plan.bias, w.k) if plan.bias is not None else None
    released = [plan.weight_name, *s.constants] + ([plan.bias.name] if plan.bias is not None else [])
    vanished = [o for n in plan.removed for o in n.output if o != plan.outputs[0]]
    base = core.name or core.output[0]
    if not s.tokens:
        nodes = conv_nodes(ctx, rule.name, plan.origin, base, s.x, weight, bias, plan.outputs[0])
        return Replacement(nodes, released=released, vanished=vanished, layer=(s.x, plan.outputs[0], nodes[1].name))
    nodes, x3 = [], s.x
    if s.x_type.rank > 3:  # x's dims after the first two are the channels: [d0, d1, ...] -> [d0, d1, C]
        c = w.c
        x3 = ctx.names.fresh(f"{base}_merged")
        shape = ctx.derived_initializer("channels", "tokens", lambda: np.array([0, 0, c], np.int64), exact=(c,))
        nodes.append(ctx.node(rule.name, plan.origin, "Reshape", [s.x, shape], [x3], f"{base}_merge_channels"))
    nodes += token_conv_nodes(ctx, rule.name, plan.origin, base, x3, weight, bias, plan.outputs[0])
    return Replacement(nodes, released=released, vanished=vanished, layer=(s.x, plan.outputs[0], conv_of(nodes).name))


class TensordotToConv(Rule):
    name = "tensordot_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> SandwichPlan:
        if ctx.scope.producers.get(node.input[0]) is None or ctx.scope.producers[node.input[0]].op_type != "Reshape":
            raise Decline(Decline.NO_PATTERN, "the input is not a Reshape")
        w = require_weight(ctx, node.input[1])
        return plan_sandwich(self, node, ctx, node.input[1], w, "conv_weight", None)

    def rewrite(self, plan: SandwichPlan, ctx: Context) -> Replacement:
        return rewrite_sandwich(self, plan, ctx)
