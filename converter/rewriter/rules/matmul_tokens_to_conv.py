"""A dense layer on a token sequence is a 1x1 convolution in the (B, C, 1, S) layout (opt-in: ``tokens``).

Before::

    Y = MatMul(X, W)            X: [B, S, C]   W: [C, K] (or [1, C, K])
    Z = Add(Y, b)               optional, b broadcasting along the last axis only

After::

    Xc = Transpose(X, perm=[0, 2, 1])                    [B, C, S]
    X4 = Unsqueeze(Xc, axes=[2])                         [B, C, 1, S]
    Z4 = Conv(X4, W^T reshaped [K, C, 1, 1], bias=b)     [B, K, 1, S]
    Zc = Squeeze(Z4, axes=[2])                           [B, K, S]
    Z  = Transpose(Zc, perm=[0, 2, 1])                   [B, S, K]

because ``Z[b,s,k] = sum_c X[b,s,c] W[c,k] + b[k] = Conv(X4)[b,k,0,s]``. B and S may be symbolic.
The layout Transposes are rank 3 and sit outside the Squeeze/Unsqueeze pair, so those of two
consecutive layers meet directly (through a GELU, a residual Add, a LayerNorm carried into the
channel axis) and the cleanup cancels them; the ``Squeeze -> Unsqueeze`` left between two Convs
only drops and restores a unit axis.

A Transpose [0, 2, 1] next to the layer is its inverse, so it is folded in:

- input side: ``X = Transpose(X', [0, 2, 1])`` (MLP-Mixer's token mixing, ``x.transpose(1, 2)``
  in front of a Linear over the tokens) makes ``X4 = Unsqueeze(X', [2])``: the tokens are the
  Conv's channels. The Transpose goes when the layer is its only reader, else it stays for the others;
- output side: when ``Z``'s only reader is ``Transpose(Z, [0, 2, 1])`` (the token mixing's way
  back), the Squeeze writes that Transpose's output (a graph output too) and both go. Not when that Transpose feeds a
  MatMul: the next layer folds it on its input side instead (one node, one rewrite).

The nodes come from ``_tokens.token_conv_nodes`` (the Reshape sandwiches under ``tokens`` write the
same). The bias rules, declines and provenance are the rank-4 rule's (``matmul_add_to_conv``). Without
``RuleOptions(tokens=True)`` the rule never matches, and a rank-3 layer stays ``rank_not_4``.
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
from converter.rewriter.rules._conv import conv_parameters
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._tokens import SWAP, conv_of, token_conv_nodes


@dataclass
class TokensPlan(Plan):
    x: str = ""  # the layer's activation [B, S, C], as the original reads it
    channels_first: str = ""  # [B, C, S]: the input Transpose's input when it is folded, else ""
    weight_name: str = ""
    weight: Weight | None = None
    bias: Bias | None = None
    out: str = ""  # the layer's result [B, S, K] in the original (the MatMul's or the bias Add's output)
    origin: str = ""


class MatMulTokensToConv(Rule):
    name = "matmul_tokens_to_conv"
    op_type = "MatMul"

    def check(self, node: NodeProto, ctx: Context) -> TokensPlan:
        if not ctx.options.tokens:
            raise Decline(Decline.NO_PATTERN, "token layers are rewritten only with tokens=True")
        x, w_name = node.input[0], node.input[1]
        t = ctx.scope.type_of(x)
        if t is None or t.shape is None or (t.rank != 3 and not t.conflict):
            raise Decline(Decline.NO_PATTERN, f"{x!r} is not a rank-3 token sequence")  # the rank-4 rule says why
        xt = require_rank(ctx, x, 3)
        require_varying(ctx, x)
        # A rank-4 weight would broadcast the result up to rank 4: not a layer on tokens.
        w = require_weight(ctx, w_name, ranks=(2, 3))
        if isinstance(xt.shape[2], int) and xt.shape[2] != w.c:
            raise Decline("shape_mismatch", f"{x!r} has {xt.shape[2]} channels but the weight expects {w.c}")
        require_conv_dtype(ctx, xt.elem_type)
        bias, bias_reason = find_bias(ctx, node.output[0], w.dtype, w.k)
        if bias is not None and len(ctx.scope.constant_tensor(bias.name).dims) > 3:
            bias, bias_reason = None, "bias_not_per_channel"  # [1, 1, 1, K] would make the sum rank 4
        removed = [node] if bias is None else [node, bias.add]
        out = node.output[0] if bias is None else bias.add.output[0]
        notes: dict[str, object] = {"bias_folded": bias is not None}
        if bias_reason:
            notes["bias_reason"] = bias_reason
        folded = []
        channels_first = ""
        before = _swap(ctx, x)
        if before is not None:
            channels_first = before.input[0]
            folded.append("input")
            if _only_reader(ctx, x, node):
                removed.append(before)
        produced = out
        after = _sole_swap_reader(ctx, out)
        if after is not None:
            removed.append(after)
            produced = after.output[0]
            folded.append("output")
        if folded:
            notes["folded_transposes"] = folded
        return TokensPlan(
            removed,
            [produced],
            notes,
            x=x,
            channels_first=channels_first,
            weight_name=w_name,
            weight=w,
            bias=bias,
            out=out,
            origin=node_label(node),
        )

    def rewrite(self, plan: TokensPlan, ctx: Context) -> Replacement:
        w = plan.weight
        assert w is not None
        anchor = plan.removed[0]
        base = anchor.name or anchor.output[0]
        weight, bias, released, vanished = conv_parameters(ctx, plan.weight_name, w, plan.bias, anchor.output[0])
        folded_out = plan.outputs[0] != plan.out
        if folded_out:
            vanished.append(plan.out)
        if plan.channels_first and any(n.output[0] == plan.x for n in plan.removed[1:]):
            vanished.append(plan.x)
        nodes = token_conv_nodes(
            ctx,
            self.name,
            plan.origin,
            base,
            plan.channels_first or plan.x,
            weight,
            bias,
            plan.outputs[0],
            channels_first=bool(plan.channels_first),
            fold_out=folded_out,
        )
        conv = conv_of(nodes)
        return Replacement(nodes, released=released, vanished=vanished, layer=(plan.x, plan.out, conv.name))


def _swap(ctx: Context, name: str) -> NodeProto | None:
    """The ``Transpose(., [0, 2, 1])`` that produces ``name``, if one does."""
    node = ctx.scope.producers.get(name)
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
        return None
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return node if perm == SWAP else None


def _only_reader(ctx: Context, name: str, node: NodeProto) -> bool:
    return name not in ctx.scope.output_names and all(c is node for c in ctx.scope.consumers(name))


def _sole_swap_reader(ctx: Context, name: str) -> NodeProto | None:
    """The one reader of ``name`` when it is a ``Transpose(., [0, 2, 1])`` that no MatMul reads (that one's to fold)."""
    readers = ctx.scope.consumers(name)
    if name in ctx.scope.output_names or len(readers) != 1:
        return None
    t = readers[0]
    if _swap(ctx, t.output[0]) is not t:
        return None
    if any(c.op_type == "MatMul" for c in ctx.scope.consumers(t.output[0])):
        return None
    return t
