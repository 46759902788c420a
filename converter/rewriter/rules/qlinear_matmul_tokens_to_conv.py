"""A QOperator dense layer on a token sequence is a QLinearConv in (B, C, 1, S) with the same integers (opt-in: ``tokens``).

Before (``quantize_static(..., quant_format=QOperator)`` on a transformer)::

    Y = QLinearMatMul(a, sa, za, Wq, sw, zw, sy, zy)        a: int [B, S, C]; Wq: int [C, K]; sw, zw: scalar or [K]

After::

    a4 = Unsqueeze(Transpose(a, [0, 2, 1]), [2])                               [B, C, 1, S]
    Y4 = QLinearConv(a4, sa, za, Wq^T as [K, C, 1, 1], sw, zw, sy, zy)         [B, K, 1, S]
    Y  = Transpose(Squeeze(Y4, [2]), [0, 2, 1])

because both ops compute ``Y[b, s, k] = saturate(round(sa * sw[k] / sy * sum_c (a[b, s, c] - za) (Wq[c, k] - zw[k])) + zy)``
(``qlinear_matmul_to_conv``), and a 1x1 QLinearConv on ``a4`` computes that sum at every ``(b, 0, s)``. Transposing,
unsqueezing and squeezing move integers without changing them; only ``Wq``'s data moves, every scale and zero
point is the tensor the original reads. The quantizer's bias (a separate ``QLinearAdd``) stays as it is.

The checks and declines are the rank-4 rule's (``check_qlinear_core``): ``weight_*``, ``quantized_dtype_unsupported``,
``weight_rank``, ``quantization_axis_mismatch``, ``quantization_params_mismatch``, ``quantization_params_not_constant``,
``activation_quantization_per_axis``, ``shape_mismatch``, ``runtime_kernel_missing``, plus ``rank_*`` and
``constant_input``. Without ``RuleOptions(tokens=True)``, or on anything but rank 3, it steps aside.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import require_rank, require_varying
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import integer_type, require_integer_type
from converter.rewriter.rules._quantized import QuantizedWeight
from converter.rewriter.rules._tokens import conv_of, token_conv_nodes
from converter.rewriter.rules.qlinear_matmul_to_conv import check_qlinear_core


def require_integer_tokens(ctx: Context, name: str) -> int | str | None:
    """``name`` is a rank-3 token sequence (shape inference's rank, or carried through onnxruntime's quantized ops):
    its channel count (None when symbolic); ``Decline(NO_PATTERN)`` when it is not rank 3 (the rank-4 rule says why)."""
    t = integer_type(ctx, name)
    declared = ctx.scope.type_of(name)
    if t is not None and t.shape is not None and (declared is None or declared.shape is None):
        if len(t.shape) != 3:
            raise Decline(Decline.NO_PATTERN, f"{name!r} is not a rank-3 token sequence")
        return t.shape[2] if isinstance(t.shape[2], int) else None
    if declared is None or declared.shape is None or (declared.rank != 3 and not declared.conflict):
        raise Decline(Decline.NO_PATTERN, f"{name!r} is not a rank-3 token sequence")
    shape = require_rank(ctx, name, 3).shape
    assert shape is not None
    return shape[2] if isinstance(shape[2], int) else None


@dataclass
class QLinearTokensPlan(Plan):
    weight: QuantizedWeight | None = None
    origin: str = ""


class QLinearMatMulTokensToConv(Rule):
    name = "qlinear_matmul_tokens_to_conv"
    op_type = "QLinearMatMul"

    def check(self, node: NodeProto, ctx: Context) -> QLinearTokensPlan:
        if not ctx.options.tokens:
            raise Decline(Decline.NO_PATTERN, "token layers are rewritten only with tokens=True")
        if len(node.input) != 8:
            raise Decline(Decline.NO_PATTERN, "QLinearMatMul without its eight inputs")
        a = node.input[0]
        channels = require_integer_tokens(ctx, a)
        require_varying(ctx, a)
        x_type = require_integer_type(ctx, a, "activation")
        w, notes = check_qlinear_core(ctx, node, x_type, channels if isinstance(channels, int) else None)
        return QLinearTokensPlan([node], [node.output[0]], notes, weight=w, origin=node_label(node))

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        assert isinstance(plan, QLinearTokensPlan)
        node, w = plan.removed[0], plan.weight
        assert w is not None
        base = node.name or node.output[0]
        rule, origin = self.name, plan.origin
        wq = ctx.derived_initializer("conv_weight", w.name, lambda: w.conv(ctx.scope.value_of), like=(w.conv_shape, w.dtype))

        def convolution(x4: str, y4: str) -> list[NodeProto]:
            ins = list(node.input)
            inputs = [x4, *ins[1:3], wq, *ins[4:8]]
            return [ctx.node(rule, origin, "QLinearConv", inputs, [y4], f"{base}_conv", kernel_shape=[1, 1])]

        nodes = token_conv_nodes(ctx, rule, origin, base, node.input[0], "", None, node.output[0], convolution=convolution)
        conv = conv_of(nodes, "QLinearConv")
        return Replacement(nodes, released=[w.name], layer=(node.input[0], node.output[0], conv.name))
