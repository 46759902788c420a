"""A quantized (QDQ) Tensordot: a Keras Dense on a 4D tensor, quantized by onnxruntime, becomes a quantized 1x1 Conv.

Before (tf2onnx's Tensordot after ``quantize_static(..., quant_format=QDQ)``; each pair is optional)::

    rows = DequantizeLinear(QuantizeLinear(Reshape(x, [-1, C]), sx, zx), sx, zx)     x: [N, H, W, C]
    flat = MatMul(rows, DequantizeLinear(Wq, sw, zw[, axis=1]))                      Wq: int [C, K]
    y    = Reshape(DequantizeLinear(QuantizeLinear(flat, sy, zy), sy, zy), [N, H, W, K])

After::

    xt = DequantizeLinear(QuantizeLinear(Transpose(x, [0, 3, 1, 2]), sx, zx), sx, zx)
    yt = Conv(xt, DequantizeLinear(Wq^T as [K, C, 1, 1], sw, zw[, axis=0]))
    y  = Transpose(DequantizeLinear(QuantizeLinear(yt, sy, zy), sy, zy), [0, 2, 3, 1])

The Reshapes only flatten and restore the positions (``_sandwich.py`` proves it, as for the float
Tensordot), and a per-tensor pair, or one per axis along the channels (flat axis 1, NCHW axis 1), acts on
each value alone, so it is the same pair on the 4D tensor in any layout. The weight is moved as the QDQ
MatMul rule moves it (``_quantized.qdq_weight_node``); nothing is requantized: every integer, scale and
zero point is the quantizer's. The Conv sits between its activation's DequantizeLinear and its output's
QuantizeLinear, the QDQ Conv form that QDQ fusion and NPU compilers expect.

The bias: tf2onnx adds it after the second Reshape, and the quantizer puts a pair between (and quantizes
the bias vector itself to 8 bits), so there is no Add beside the MatMul to fold; it stays as written.

With ``RuleOptions(tokens=True)`` a sandwich from rank 3 back to rank 3 (``quant_pre_process`` writes a rank-3
Linear as ``Reshape -> Gemm -> Reshape``; ``_sandwich.match_tokens``) is a token layer: the token rule's nodes
(``_tokens.py``), ``Unsqueeze(Transpose(x, [0, 2, 1]), [2])`` into ``[B, C, 1, S]``, the activation's pair, the
Conv, the output's pair, then ``Transpose(Squeeze(., [2]), [0, 2, 1])``. A flat pair per channel (axis 1) is per
channel on ``[B, C, 1, S]`` too (axis 1), so the pairs are the same there as on the 4D tensor.

The rule's match and rewrite are shared with the QDQ Gemm sandwich (``qdq_gemm_sandwich_to_conv.py``):
``plan_qdq_sandwich`` and ``rewrite_qdq_sandwich``, which also fold a bias the core adds itself.

Declines: the QDQ MatMul rule's weight codes, ``activation_not_quantized`` (no pair on the flattened
activation: the quantizer always writes one, and the certificate proves a quantized sandwich by it, so
the layer would only fail verification), ``quantization_axis_mismatch`` (a pair per axis along the
rows), ``activation_shared`` (a pair inside the sandwich read elsewhere), the float sandwich's
``not_per_position`` / ``reshape_output_shared`` / ``zero_size``, and ``tokens_quantized`` (a quantized
sandwich from rank 4 back to rank 3, not handled).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import Bias, require_conv_dtype
from converter.rewriter.rules._conv import conv_bias
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._quantized import (
    ActivationQDQ,
    QuantizedWeight,
    produced_by,
    qdq_bias_node,
    qdq_pair_nodes,
    qdq_weight_node,
    read_params,
    require_qdq_weight,
)
from converter.rewriter.rules._sandwich import Sandwich, match_sandwich
from converter.rewriter.rules._tokens import token_conv_nodes


@dataclass
class QdqSandwichPlan(Plan):
    sandwich: Sandwich | None = None
    weight: QuantizedWeight | None = None
    weight_dq: NodeProto | None = None
    act: ActivationQDQ | None = None  # the activation's pair inside the sandwich
    out: ActivationQDQ | None = None  # the output's pair inside the sandwich
    bias: Bias | None = None  # a float bias the core adds (Gemm's C), folded into the Conv
    bias_dq: NodeProto | None = None  # the bias the core adds is DequantizeLinear(int32 [K]): re-emitted beside the Conv
    origin: str = ""


def _flat_pair(ctx: Context, dq: NodeProto | None, q: NodeProto | None, reader: NodeProto | None, role: str) -> ActivationQDQ:
    """The pair ``DequantizeLinear(QuantizeLinear(t))`` on a flat ``[rows, C]`` tensor inside the sandwich."""
    assert dq is not None and q is not None
    scope = ctx.scope
    only = [id(n) for n in scope.consumers(q.output[0])] == [id(dq)] and q.output[0] not in scope.output_names
    if reader is not None:
        only = only and [id(n) for n in scope.consumers(dq.output[0])] == [id(reader)]
    if not only or dq.output[0] in scope.output_names:
        raise Decline("activation_shared", f"the {role}'s QuantizeLinear/DequantizeLinear inside the Reshapes is read elsewhere")
    q_params = read_params(ctx, q, 1, 2, [None, None], role)
    dq_params = read_params(ctx, dq, 1, 2, [None, None], role)
    if 0 in (q_params.axis, dq_params.axis):
        raise Decline("quantization_axis_mismatch", f"the {role} is quantized per row, not per tensor or per channel")
    return ActivationQDQ(q, dq, q.input[0], q_params, dq_params, True)


def plan_qdq_sandwich(node: NodeProto, ctx: Context, transposed: bool = False) -> QdqSandwichPlan:
    """The plan for a QDQ sandwich around ``node`` (MatMul, or Gemm whose weight is ``[K, C]`` when ``transposed``),
    before any bias the core adds itself (the caller sets ``bias`` / ``bias_dq`` and their notes)."""
    if produced_by(ctx, node.input[1], "DequantizeLinear") is None:
        raise Decline(Decline.NO_PATTERN, "the weight is not a DequantizeLinear")
    # The activation: Reshape -> Q -> DQ -> core, or Reshape -> core.
    entry, act = node, None
    in_dq = produced_by(ctx, node.input[0], "DequantizeLinear")
    in_q = produced_by(ctx, in_dq.input[0], "QuantizeLinear") if in_dq is not None else None
    if in_q is not None and produced_by(ctx, in_q.input[0], "Reshape") is not None:
        entry = in_q
    elif produced_by(ctx, node.input[0], "Reshape") is None:
        raise Decline(Decline.NO_PATTERN, "the input is not a Reshape, nor a quantized Reshape")
    # The output: core -> Q -> DQ -> Reshape, or core -> Reshape.
    flat_out, out_q, out_dq = node.output[0], None, None
    readers = ctx.scope.consumers(node.output[0])
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and readers[0].domain in ("", "ai.onnx"):
        after = ctx.scope.consumers(readers[0].output[0])
        if len(after) == 1 and after[0].op_type == "DequantizeLinear" and after[0].domain in ("", "ai.onnx"):
            out_q, out_dq = readers[0], after[0]
            flat_out = out_dq.output[0]
    x_type = ctx.scope.type_of(ctx.scope.producers[entry.input[0]].input[0])
    if x_type is None or x_type.rank not in ((3, 4) if ctx.options.tokens else (4,)):
        raise Decline(Decline.NO_PATTERN, "the flattened tensor is not known to be rank 4 (or 3, with tokens)")
    w, weight_dq = require_qdq_weight(ctx, node, x_type.elem_type, transposed)
    s = match_sandwich(node, ctx, w.k, entry, flat_out)
    if s.tokens and s.x_type.rank != 3:
        raise Decline("tokens_quantized", "a quantized sandwich from rank 4 back to rank 3 is not rewritten")
    if not s.tokens and s.x_type.rank != 4:
        raise Decline(Decline.NO_PATTERN, "the flattened tensor is not known to be rank 4")
    if s.channels not in (w.c, -1):
        raise Decline("shape_mismatch", f"{s.x!r} has {s.channels} channels but the weight expects {w.c}")
    require_conv_dtype(ctx, s.x_type.elem_type)
    if entry is node:
        raise Decline(
            "activation_not_quantized",
            "the flattened activation has no QuantizeLinear/DequantizeLinear pair, by which the certificate proves "
            "a quantized sandwich",
        )
    act = _flat_pair(ctx, in_dq, in_q, node, "activation")
    out = _flat_pair(ctx, out_dq, out_q, None, "output") if out_q is not None else None
    removed = [node, weight_dq, s.first, s.last, *s.shape_nodes]
    for pair in (act, out):
        if pair is not None:
            removed += [pair.q, pair.dq]
    notes: dict[str, object] = {
        "bias_folded": False,
        "bias_reason": "bias_outside_quantized_sandwich",
        "weight_quantization": "per_tensor" if w.params.axis is None else "per_channel",
    }
    return QdqSandwichPlan(
        removed, [s.last.output[0]], notes, sandwich=s, weight=w, weight_dq=weight_dq, act=act, out=out, origin=node_label(node)
    )


def rewrite_qdq_sandwich(rule: Rule, plan: QdqSandwichPlan, ctx: Context) -> Replacement:
    s, w, wdq = plan.sandwich, plan.weight, plan.weight_dq
    assert s is not None and w is not None and wdq is not None
    core = plan.removed[0]
    base = core.name or core.output[0]
    name, origin = rule.name, plan.origin
    if s.tokens:
        return _rewrite_tokens(rule, plan, ctx)
    nchw = ctx.names.fresh(f"{base}_nchw")
    nodes = [ctx.node(name, origin, "Transpose", [s.x], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2])]
    conv_in = nchw
    if plan.act is not None:  # a flat pair per channel (axis 1) is per channel in NCHW too (axis 1)
        pair, conv_in = qdq_pair_nodes(ctx, name, origin, base, nchw, plan.act, 1, "nchw")
        nodes += pair
    weight = qdq_weight_node(ctx, name, origin, base, w, wdq)
    nodes.append(weight)
    released = [w.name, w.params.scale, *([w.params.zero_point] if w.params.zero_point else []), *s.constants]
    inputs = [conv_in, weight.output[0]]
    if plan.bias_dq is not None:
        nodes.append(qdq_bias_node(ctx, name, origin, base, plan.bias_dq))
        inputs.append(nodes[-1].output[0])
    elif plan.bias is not None:
        inputs.append(conv_bias(ctx, plan.bias, w.k))
        released.append(plan.bias.name)
    conv_out = ctx.names.fresh(f"{base}_conv_nchw")
    conv = ctx.node(name, origin, "Conv", inputs, [conv_out], f"{base}_conv", kernel_shape=[1, 1])
    nodes.append(conv)
    if plan.out is not None:
        pair, conv_out = qdq_pair_nodes(ctx, name, origin, base, conv_out, plan.out, 1, "output")
        nodes += pair
    nodes.append(ctx.node(name, origin, "Transpose", [conv_out], [plan.outputs[0]], f"{base}_to_nhwc", perm=[0, 2, 3, 1]))
    vanished = [o for n in plan.removed for o in n.output if o != plan.outputs[0]]
    # The layer claimed for verification ends at the core's flat output, what the Conv computes before its
    # output's pair: its numbers then compare the Conv with the unrequantized product.
    return Replacement(nodes, released=released, vanished=vanished, layer=(s.x, core.output[0], conv.name))


def _rewrite_tokens(rule: Rule, plan: QdqSandwichPlan, ctx: Context) -> Replacement:
    """The sandwich back to rank 3 (``RuleOptions(tokens=True)``): the token layer's nodes (``_tokens.py``), the pairs
    and the Conv in ``[B, C, 1, S]`` (a flat pair per channel, axis 1, is per channel there too: axis 1)."""
    s, w, wdq = plan.sandwich, plan.weight, plan.weight_dq
    assert s is not None and w is not None and wdq is not None
    core = plan.removed[0]
    base = core.name or core.output[0]
    name, origin = rule.name, plan.origin
    released = [w.name, w.params.scale, *([w.params.zero_point] if w.params.zero_point else []), *s.constants]
    bias: str | None = None
    bias_nodes: list[NodeProto] = []
    if plan.bias_dq is not None:
        bias_nodes.append(qdq_bias_node(ctx, name, origin, base, plan.bias_dq))
        bias = bias_nodes[0].output[0]
    elif plan.bias is not None:
        bias = conv_bias(ctx, plan.bias, w.k)
        released.append(plan.bias.name)
    found: list[NodeProto] = []

    def convolution(x4: str, z4: str) -> list[NodeProto]:
        nodes: list[NodeProto] = []
        conv_in = x4
        if plan.act is not None:
            nodes, conv_in = qdq_pair_nodes(ctx, name, origin, base, x4, plan.act, 1, "nc1t")
        weight = qdq_weight_node(ctx, name, origin, base, w, wdq)
        inputs = [conv_in, weight.output[0]] + ([bias] if bias is not None else [])
        conv_out = z4 if plan.out is None else ctx.names.fresh(f"{base}_conv_nc1t")
        conv = ctx.node(name, origin, "Conv", inputs, [conv_out], f"{base}_conv", kernel_shape=[1, 1])
        found.append(conv)
        nodes += [weight, *bias_nodes, conv]
        if plan.out is not None:  # the output's pair inside the sandwich, on the Conv's result (axis 1 = K)
            pair, _ = qdq_pair_nodes(ctx, name, origin, base, conv_out, plan.out, 1, "output")
            pair[-1].output[0] = z4
            nodes += pair
        return nodes

    nodes = token_conv_nodes(ctx, name, origin, base, s.x, "", None, plan.outputs[0], convolution=convolution)
    vanished = [o for n in plan.removed for o in n.output if o != plan.outputs[0]]
    return Replacement(nodes, released=released, vanished=vanished, layer=(s.x, core.output[0], found[0].name))


class QdqSandwichToConv(Rule):
    name = "qdq_sandwich_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> QdqSandwichPlan:
        return plan_qdq_sandwich(node, ctx)

    def rewrite(self, plan: QdqSandwichPlan, ctx: Context) -> Replacement:
        return rewrite_qdq_sandwich(self, plan, ctx)
