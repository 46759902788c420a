"""A dynamically quantized dense layer on a token sequence is a ConvInteger in (B, C, 1, S) (opt-in: ``tokens``).

Before (``quantize_dynamic`` on a transformer: BERT-like encoders, decoders)::

    aq, sa, za = DynamicQuantizeLinear(a)                   a: float [B, S, C]
    Y  = MatMulInteger(aq, Wq, za, zw)                      Wq: int [C, K]; zw: scalar or [K]; Y: int32 [B, S, K]
    Z  = Mul(Cast(Y, float), Mul(sa, sw))                   the rescale (and the bias) read Y

After::

    a4 = Unsqueeze(Transpose(aq, [0, 2, 1]), [2])           [B, C, 1, S]
    Y4 = ConvInteger(a4, Wq'^T as [K, C, 1, 1], za, zw')    [B, K, 1, S], int32
    Y  = Transpose(Squeeze(Y4, [2]), [0, 2, 1])             the rescale reads Y as before

because ``Y[b, s, k] = sum_c (aq[b, s, c] - za) (Wq[c, k] - zw[k])`` is what a 1x1 ConvInteger computes at every
``(b, 0, s)``: int32 sums of integer products, exact in both kernels. ``Wq'`` and ``zw'`` are the rank-4 rule's
(``matmul_integer_to_conv``): an int8 weight read by a uint8 activation is written uint8 ``+ 128`` with its zero
point, a uniform ``[K]`` zero point as its one value. ``DynamicQuantizeLinear`` and the rescale stay where they are.

The checks and declines are the rank-4 rule's (``check_integer_core``): ``weight_*``, ``quantized_dtype_unsupported``,
``weight_rank``, ``activation_quantization_per_axis``, ``per_channel_zero_point_unsupported``, ``shape_mismatch``,
``runtime_kernel_missing``, plus ``rank_*`` and ``constant_input``. Without ``RuleOptions(tokens=True)``, or on
anything but rank 3, it steps aside.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import require_varying
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import require_integer_type
from converter.rewriter.rules._tokens import conv_of, token_conv_nodes
from converter.rewriter.rules.matmul_integer_to_conv import IntegerWeight, check_integer_core, conv_integer_node
from converter.rewriter.rules.qlinear_matmul_tokens_to_conv import require_integer_tokens


@dataclass
class IntegerTokensPlan(Plan):
    weight: IntegerWeight | None = None
    origin: str = ""


class MatMulIntegerTokensToConv(Rule):
    name = "matmul_integer_tokens_to_conv"
    op_type = "MatMulInteger"

    def check(self, node: NodeProto, ctx: Context) -> IntegerTokensPlan:
        if not ctx.options.tokens:
            raise Decline(Decline.NO_PATTERN, "token layers are rewritten only with tokens=True")
        a = node.input[0]
        channels = require_integer_tokens(ctx, a)
        require_varying(ctx, a)
        x_type = require_integer_type(ctx, a, "activation")
        w, notes = check_integer_core(ctx, node, x_type, channels if isinstance(channels, int) else None)
        return IntegerTokensPlan([node], [node.output[0]], notes, weight=w, origin=node_label(node))

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        assert isinstance(plan, IntegerTokensPlan)
        node, w = plan.removed[0], plan.weight
        assert w is not None
        base = node.name or node.output[0]
        rule, origin = self.name, plan.origin
        released: list[str] = []

        def convolution(x4: str, y4: str) -> list[NodeProto]:
            conv, names = conv_integer_node(ctx, rule, origin, node, w, x4, y4)
            released.extend(names)
            return [conv]

        nodes = token_conv_nodes(ctx, rule, origin, base, node.input[0], "", None, node.output[0], convolution=convolution)
        conv = conv_of(nodes, "ConvInteger")
        return Replacement(nodes, released=released, layer=(node.input[0], node.output[0], conv.name))
