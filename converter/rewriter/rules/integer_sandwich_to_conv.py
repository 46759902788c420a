"""A dynamically quantized Tensordot: a Keras Dense on a 4D tensor after ``quantize_dynamic`` becomes a ConvInteger.

Before (tf2onnx's Tensordot after ``onnxruntime.quantization.quantize_dynamic``)::

    aq, sa, za = DynamicQuantizeLinear(Reshape(x, [-1, C]))        x: float [N, H, W, C]
    Y  = MatMulInteger(aq, Wq, za, zw)                              Wq: int [C, K]; Y: int32 [N*H*W, K]
    sm = Mul(sa, sw)                                                sw: the weight's scale, one value or [K]
    y  = Reshape(Mul(Cast(Y, float), sm), [N, H, W, K])            (tf2onnx's bias Add, if any, reads y)

After::

    aq', sa, za = DynamicQuantizeLinear(Transpose(x, [0, 3, 1, 2]))
    sm = Mul(sa, sw)
    Y' = Transpose(ConvInteger(aq', Wq'^T as [K, C, 1, 1], za, zw'), [0, 2, 3, 1])      int32 [N, H, W, K]
    y  = Mul(Cast(Y', float), sm)

The Reshapes only flatten and restore the positions (``_sandwich.py`` proves it, as for the float
Tensordot). DynamicQuantizeLinear computes its scale and zero point from the minimum and maximum of the
whole tensor, then quantizes each element alone with them. The flat rows and x in NCHW hold the same
values, only in another order, and no order changes a minimum or a maximum: the same ``sa`` and ``za``
(written under the original's names, so every reader keeps reading them) and the same integers, moved.
The MatMulInteger on the rows is, row by row, the ConvInteger at each position (``matmul_integer_to_conv.py``
has the math, the int8 weight written as uint8 + 128, the one-element zero point, and the shared checks
and node builder). The Transpose goes in front of the DynamicQuantizeLinear, which then sits right before
the ConvInteger, as the QOperator sandwich puts its QuantizeLinear: an inverse Transpose coming down from
the layer before (the layout cleanup) cancels against it directly.

The rescale is kept, moved past the second Reshape: the Cast and the Mul act on each element alone, and
``sm`` (one value or ``[K]``) broadcasts along the last axis of both ``[N*H*W, K]`` and ``[N, H, W, K]``, so
they read, element for element, what they read before, and the Mul writes ``y`` at its positions: the rest
of the graph is unchanged, the bias Add after it too. ``quantize_dynamic`` puts the ``sm`` Mul between the
DynamicQuantizeLinear and the MatMulInteger, so it is written again too, and every new node goes where the
DynamicQuantizeLinear was: ahead of every reader of ``sa``, ``za`` and ``sm``. The layout cleanup moves the
Transposes through the Cast and the rescale Mul (``cleanup/handlers/dynamic.py``), so that between two
layers they cancel (Keras ConvNeXtTiny: 36 of 37 layers, Transposes 37 -> 1, as in the QOperator form).

The bias inside the Reshapes: ``quant_pre_process`` fuses a Linear's MatMul and Add into a Gemm between two
Reshapes, and ``quantize_dynamic`` writes that Gemm as the MatMulInteger, its rescale, then ``Add(., b)`` on the
flat ``[rows, K]`` tensor before the second Reshape. A constant ``b`` with one value per output channel or one
value (``[K]``, ``[1, K]``, ``[]``) broadcasts along the last axis alike on the rows and on the restored tensor,
so the Add moves past the second Reshape with the rescale, unchanged.

With ``RuleOptions(tokens=True)`` a sandwich from rank 3 back to rank 3 (``Reshape(x [B, S, C], [B*S, C]) ->
... -> Reshape(-> [B, S, K])``, ``_sandwich.match_tokens``) is a token layer, the token rules' nodes
(``_tokens.py``)::

    aq', sa, za = DynamicQuantizeLinear(Transpose(x, [0, 2, 1]))          [B, C, S]
    sm = Mul(sa, sw)
    Y  = Transpose(Squeeze(ConvInteger(Unsqueeze(aq', [2]), Wq'^T as [K, C, 1, 1], za, zw'), [2]), [0, 2, 1])
    y  = Add(Mul(Cast(Y, float), sm), b)                                 (the Add only where the original has it)

by the same argument: ``[B, C, S]`` holds the flat rows' values in another order (the same ``sa``, ``za`` and
integers), a 1x1 ConvInteger on ``[B, C, 1, S]`` is the MatMulInteger at every ``(b, 0, s)``, and the rescale
and bias act on the int32 ``Y`` ``[B, S, K]`` as they did on ``[B*S, K]``, element for element. The
DynamicQuantizeLinear goes before the unit axis: the layout cleanup then cancels the Transpose against one coming
from the layer before, and leaves the Unsqueeze alone (with the Transpose and the Unsqueeze together in front of it,
it may fold both into Reshapes, whose result the certificate cannot tell from the flat rows when B is 1).

Declines: the MatMulInteger rule's codes (``check_integer_core``), ``activation_shared`` (the quantized
rows are read elsewhere), ``activation_zero_point_mismatch`` (the MatMulInteger reads another zero point
than its DynamicQuantizeLinear's), ``rescale_unsupported`` (the int32 output is not rescaled as
``quantize_dynamic`` writes it, Cast then Mul by the activation scale times a constant weight scale, before
the second Reshape), ``bias_not_per_channel`` / ``bias_not_constant`` / ``bias_is_graph_input`` (an Add after
the rescale inside the Reshapes that is not such a bias), the float sandwich's ``not_per_position`` /
``reshape_output_shared`` / ``zero_size`` / ``constant_input``, and ``tokens_quantized`` (a sandwich from rank 4
or more back to rank 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._checks import require_constant_tensor
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import require_integer_type
from converter.rewriter.rules._quantized import attrs_of, produced_by
from converter.rewriter.rules._sandwich import Sandwich, match_sandwich
from converter.rewriter.rules._tokens import SWAP, token_conv_nodes
from converter.rewriter.rules.matmul_integer_to_conv import IntegerWeight, check_integer_core, conv_integer_node
from converter.rewriter.rules.qlinear_sandwich_to_conv import sandwich_entry

_DEFAULT = ("", "ai.onnx")


@dataclass(frozen=True)
class Rescale:
    """What ``quantize_dynamic`` writes after a MatMulInteger: ``Mul(Cast(Y), scales)``, ``scales = Mul(sa, sw)``,
    and, for a Gemm's bias inside the Reshapes, ``Add(., b)`` after it (``bias``)."""

    cast: NodeProto
    mul: NodeProto
    scales: NodeProto
    bias: NodeProto | None = None

    @property
    def end(self) -> NodeProto:
        """The last node of the rescale: what the second Reshape reads."""
        return self.bias or self.mul


@dataclass
class IntegerSandwichPlan(Plan):
    sandwich: Sandwich | None = None
    weight: IntegerWeight | None = None
    quantize: NodeProto | None = None  # the DynamicQuantizeLinear of the flat rows
    rescale: Rescale | None = None
    origin: str = ""


def _only_reader(ctx: Context, name: str, op_type: str) -> NodeProto | None:
    readers = ctx.scope.consumers(name)
    if len(readers) != 1 or readers[0].op_type != op_type or readers[0].domain not in _DEFAULT or name in ctx.scope.output_names:
        return None
    return readers[0]


def match_rescale(ctx: Context, node: NodeProto, quantize: NodeProto, k: int) -> Rescale:
    """The rescale of ``node``'s int32 output (see the module docstring), or ``Decline("rescale_unsupported")``."""
    y = node.output[0]
    cast = _only_reader(ctx, y, "Cast")
    mul = _only_reader(ctx, cast.output[0], "Mul") if cast is not None else None
    if cast is None or mul is None or len(mul.input) != 2:
        raise Decline(
            "rescale_unsupported",
            f"the int32 output {y!r} is not read by one Cast and that by one Mul (the rescale quantize_dynamic writes)",
        )
    other = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    scales = produced_by(ctx, other, "Mul")
    sa = quantize.output[1] if len(quantize.output) > 1 else ""
    if scales is None or not sa or len(scales.input) != 2 or sa not in scales.input or scales.input[0] == scales.input[1]:
        raise Decline(
            "rescale_unsupported",
            f"the rescale multiplies by {other!r}, not by the activation scale {sa!r} times the weight's scale",
        )
    sw = scales.input[1] if scales.input[0] == sa else scales.input[0]
    dims = list(require_constant_tensor(ctx, sw, "weight_scale").dims)
    if dims not in ([], [1], [k]):
        raise Decline(
            "rescale_unsupported",
            f"the weight scale has shape {dims}; one value or [K] = [{k}] broadcasts alike on the rows and in 4D",
        )
    return Rescale(cast, mul, scales, _bias_add(ctx, mul, k))


def _bias_add(ctx: Context, mul: NodeProto, k: int) -> NodeProto | None:
    """The Add of a constant bias after the rescale ``mul``, when it alone reads it and one Reshape reads the Add
    (quantize_dynamic's Gemm inside the Reshapes); None when no Add follows. A bias that is not one value per output
    channel, or one value, is declined: it would not broadcast alike on the rows and on the restored tensor."""
    add = _only_reader(ctx, mul.output[0], "Add")
    if add is None or len(add.input) != 2 or add.input[0] == add.input[1]:
        return None
    readers = ctx.scope.consumers(add.output[0])
    if len(readers) != 1 or readers[0].op_type != "Reshape" or readers[0].input[0] != add.output[0]:
        return None  # not inside the Reshapes: the sandwich's match says why
    b = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
    dims = list(require_constant_tensor(ctx, b, "bias").dims)
    if len(dims) > 2 or any(d != 1 for d in dims[:-1]) or (dims and dims[-1] not in (1, k)):
        raise Decline("bias_not_per_channel", f"the bias {b!r} inside the Reshapes has shape {dims}, not [K] = [{k}] or one value")
    return add


class IntegerSandwichToConv(Rule):
    name = "integer_sandwich_to_conv"
    op_type = "MatMulInteger"

    def check(self, node: NodeProto, ctx: Context) -> IntegerSandwichPlan:
        q = sandwich_entry(ctx, node, "DynamicQuantizeLinear")
        x_type = require_integer_type(ctx, node.input[0], "activation")
        w, notes = check_integer_core(ctx, node, x_type, None)
        za = q.output[2] if len(q.output) > 2 else ""
        if len(node.input) < 3 or not za or node.input[2] != za:
            given = node.input[2] if len(node.input) > 2 else ""
            raise Decline(
                "activation_zero_point_mismatch",
                f"the MatMulInteger reads {given!r} as its activation's zero point, not its DynamicQuantizeLinear's {za!r}",
            )
        r = match_rescale(ctx, node, q, w.k)
        s = match_sandwich(node, ctx, w.k, q, r.end.output[0])
        if s.tokens and s.x_type.rank != 3:
            raise Decline("tokens_quantized", "a quantized sandwich from rank 4 or more back to rank 3 is not rewritten")
        if s.channels not in (w.c, -1):
            raise Decline("shape_mismatch", f"{s.x!r} has {s.channels} channels but the weight expects {w.c}")
        # The DynamicQuantizeLinear first: the new nodes go where it was, before every reader of its scale and zero point.
        removed = [q, node, r.scales, r.cast, r.mul, *([r.bias] if r.bias else []), s.first, s.last, *s.shape_nodes]
        outputs = [s.last.output[0], *q.output[1:], r.scales.output[0]]
        notes["rescale"] = "after_the_second_reshape"
        if r.bias is not None:
            notes["bias"] = "after_the_second_reshape"
        return IntegerSandwichPlan(removed, outputs, notes, sandwich=s, weight=w, quantize=q, rescale=r, origin=node_label(node))

    def rewrite(self, plan: IntegerSandwichPlan, ctx: Context) -> Replacement:
        s, w, q, r = plan.sandwich, plan.weight, plan.quantize, plan.rescale
        assert s is not None and w is not None and q is not None and r is not None
        node = plan.removed[1]
        base = node.name or node.output[0]
        rule, origin = self.name, plan.origin
        released: list[str] = []
        # The activation as the Conv reads it, channels second: [N, C, H, W], or [B, C, S] (unsqueezed after).
        moved = ctx.names.fresh(f"{base}_{'nct' if s.tokens else 'nchw'}")
        quantized = ctx.names.fresh(f"{moved}_quantized")
        perm = SWAP if s.tokens else [0, 3, 1, 2]
        nodes = [
            ctx.node(rule, origin, "Transpose", [s.x], [moved], f"{base}_to_{'nct' if s.tokens else 'nchw'}", perm=perm),
            ctx.node(rule, origin, "DynamicQuantizeLinear", [moved], [quantized, *q.output[1:]], f"{base}_quantize"),
            ctx.node(rule, origin, "Mul", list(r.scales.input), [r.scales.output[0]], f"{base}_scales"),
        ]
        conv: list[NodeProto] = []

        def convolution(x: str, y: str) -> list[NodeProto]:
            made, names = conv_integer_node(ctx, rule, origin, node, w, x, y)
            conv.append(made)
            released.extend(names)
            return [made]

        acc, acc_float = (ctx.names.fresh(f"{base}_{what}") for what in ("restored", "restored_float"))
        if s.tokens:
            nodes += token_conv_nodes(
                ctx, rule, origin, base, quantized, "", None, acc, channels_first=True, convolution=convolution
            )
        else:
            conv_out = ctx.names.fresh(f"{base}_conv_nchw")
            nodes += convolution(quantized, conv_out)
            nodes.append(ctx.node(rule, origin, "Transpose", [conv_out], [acc], f"{base}_to_nhwc", perm=[0, 2, 3, 1]))
        rescaled = plan.outputs[0] if r.bias is None else ctx.names.fresh(f"{base}_rescaled")
        nodes += [
            ctx.node(rule, origin, "Cast", [acc], [acc_float], f"{base}_cast", **attrs_of(r.cast)),
            ctx.node(
                rule, origin, "Mul", [acc_float if i == r.cast.output[0] else i for i in r.mul.input], [rescaled], f"{base}_rescale"
            ),
        ]
        if r.bias is not None:
            bias_in = [rescaled if i == r.mul.output[0] else i for i in r.bias.input]
            nodes.append(ctx.node(rule, origin, "Add", bias_in, [plan.outputs[0]], f"{base}_bias"))
        vanished = [o for n in plan.removed for o in n.output if o and o not in plan.outputs]
        # The layer claimed for verification: the flat quantized rows to the MatMulInteger's flat int32 output.
        return Replacement(
            nodes, released=[*released, *s.constants], vanished=vanished, layer=(node.input[0], node.output[0], conv[0].name)
        )
