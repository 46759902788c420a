"""A QOperator Tensordot: a Keras Dense on a 4D tensor, quantized by onnxruntime, becomes a QLinearConv.

Before (tf2onnx's Tensordot after ``quantize_static(..., quant_format=QOperator)``)::

    a = QuantizeLinear(Reshape(x, [-1, C]), sx, zx)                     x: float [N, H, W, C]
      (or a = Reshape(x, [-1, C]) when x is already quantized: Keras ConvNeXtTiny's, after a QLinearAdd)
    y = Reshape(QLinearMatMul(a, sx, zx, Wq, sw, zw, sy, zy), [N, H, W, K])

After::

    at = QuantizeLinear(Transpose(x, [0, 3, 1, 2]), sx, zx)
    y  = Transpose(QLinearConv(at, sx, zx, Wq^T as [K, C, 1, 1], sw, zw, sy, zy), [0, 2, 3, 1])

The Reshapes only flatten and restore the positions (``_sandwich.py`` proves it, as for the float
Tensordot); a per-tensor QuantizeLinear acts on each value alone, so it is the same on the 4D tensor
in any layout, and the QLinearMatMul on the flat rows is, row by row, the QLinearConv at each position
(``qlinear_matmul_to_conv.py`` has the math and the shared checks). Nothing is requantized: the
QuantizeLinear keeps its scale and zero point tensors, the QLinearConv the QLinearMatMul's.

The bias: the quantizer writes it as a ``QLinearAdd`` after the second Reshape; it stays as written
(see qlinear_matmul_to_conv.py), reading the restored NHWC tensor.

With ``RuleOptions(tokens=True)`` a sandwich from rank 3 back to rank 3 (``Reshape(x [B, S, C], [B*S, C]) -> ... ->
Reshape(-> [B, S, K])``, ``_sandwich.match_tokens``) is a token layer, the token rules' nodes (``_tokens.py``)::

    at = QuantizeLinear(Transpose(x, [0, 2, 1]), sx, zx)                  [B, C, S] (no QuantizeLinear: x is quantized)
    y  = Transpose(Squeeze(QLinearConv(Unsqueeze(at, [2]), sx, zx, Wq^T as [K, C, 1, 1], sw, zw, sy, zy), [2]), [0, 2, 1])

by the same argument: the per-tensor QuantizeLinear on ``[B, C, S]``, then the unit axis, and the QLinearConv at
every ``(b, 0, s)`` is the QLinearMatMul's row ``b * S + s``.

The match, the checks and the rewrite are shared with the QGemm sandwich (``qgemm_sandwich_to_conv.py``):
``plan_qlinear_sandwich`` and ``rewrite_qlinear_sandwich`` take the core's checks (``QLinearCore``: the weight and
the names of every parameter, and an int32 bias the core adds itself, which QLinearConv adds in the same place).

Declines: the QLinearMatMul rule's codes, ``activation_quantization_per_axis`` (the QuantizeLinear is
per axis), ``activation_shared`` (the quantized rows are read elsewhere), the float sandwich's
``not_per_position`` / ``reshape_output_shared`` / ``zero_size``, and ``tokens_quantized`` (a sandwich from rank 4
or more back to rank 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import integer_type, require_integer_type
from converter.rewriter.rules._quantized import QuantizedWeight, attrs_of, produced_by, read_params
from converter.rewriter.rules._sandwich import Sandwich, match_sandwich
from converter.rewriter.rules._tokens import SWAP, token_conv_nodes
from converter.rewriter.rules.qlinear_matmul_to_conv import check_qlinear_core


@dataclass(frozen=True)
class QLinearCore:
    """What a QLinearConv is made of, read from the core (QLinearMatMul or QGemm): the weight, the names of the
    activation's, weight's and output's scale and zero point (as QLinearConv takes them), and an int32 ``[K]``
    bias (QLinearConv's input 8; "" when none)."""

    weight: QuantizedWeight
    params: tuple[str, str, str, str, str, str]  # x_scale, x_zero, w_scale, w_zero, y_scale, y_zero
    bias: str = ""


# The core's own checks: the core node and its activation's integer type -> the core and the decision's notes.
CoreCheck = Callable[[Context, NodeProto, int], tuple[QLinearCore, dict]]


@dataclass
class QLinearSandwichPlan(Plan):
    sandwich: Sandwich | None = None
    core: QLinearCore | None = None
    quantize: NodeProto | None = None  # the activation's QuantizeLinear on the flat rows (None: x is quantized)
    origin: str = ""


def sandwich_entry(ctx: Context, node: NodeProto, op_type: str) -> NodeProto:
    """The ``op_type`` node between the first Reshape and ``node`` (it quantizes the flat rows that ``node``
    reads), read by ``node`` alone; ``Decline(NO_PATTERN)`` when there is none."""
    entry = produced_by(ctx, node.input[0], op_type)
    if entry is None or produced_by(ctx, entry.input[0], "Reshape") is None:
        raise Decline(Decline.NO_PATTERN, f"the activation is not a {op_type} of a Reshape")
    scope = ctx.scope
    if [id(n) for n in scope.consumers(node.input[0])] != [id(node)] or node.input[0] in scope.output_names:
        raise Decline("activation_shared", f"the quantized rows {node.input[0]!r} inside the Reshapes are read elsewhere")
    return entry


def plan_qlinear_sandwich(node: NodeProto, ctx: Context, check_core: CoreCheck) -> QLinearSandwichPlan:
    """The plan for an integer sandwich around ``node`` whose own checks are ``check_core``."""
    # The quantizer quantizes the rows (Reshape -> QuantizeLinear) or, when x is already quantized, reshapes
    # the quantized x (Reshape -> QLinearMatMul: Keras ConvNeXtTiny, where x comes from a QLinearAdd).
    q = None if produced_by(ctx, node.input[0], "Reshape") is not None else sandwich_entry(ctx, node, "QuantizeLinear")
    rows = node.input[0] if q is not None else ctx.scope.producers[node.input[0]].input[0]  # a Reshape keeps the dtype
    x_type = require_integer_type(ctx, rows, "activation")
    core, notes = check_core(ctx, node, x_type)
    w = core.weight
    s = match_sandwich(node, ctx, w.k, q or node, node.output[0], lambda name: integer_type(ctx, name))
    if s.tokens and s.x_type.rank != 3:
        raise Decline("tokens_quantized", "a quantized sandwich from rank 4 or more back to rank 3 is not rewritten")
    if s.channels not in (w.c, -1):
        raise Decline("shape_mismatch", f"{s.x!r} has {s.channels} channels but the weight expects {w.c}")
    if q is not None and read_params(ctx, q, 1, 2, [None, None], "activation").axis is not None:
        raise Decline(
            "activation_quantization_per_axis", "the activation's QuantizeLinear is per axis; QLinearConv takes one scale"
        )
    removed = [node, *([q] if q is not None else []), s.first, s.last, *s.shape_nodes]
    return QLinearSandwichPlan(removed, [s.last.output[0]], notes, sandwich=s, core=core, quantize=q, origin=node_label(node))


def rewrite_qlinear_sandwich(rule: Rule, plan: QLinearSandwichPlan, ctx: Context, released: list[str]) -> Replacement:
    """The nodes above for a plan of ``plan_qlinear_sandwich``; ``released``: the core's constants no longer read."""
    s, core, q = plan.sandwich, plan.core, plan.quantize
    assert s is not None and core is not None
    node = plan.removed[0]
    base = node.name or node.output[0]
    name, origin = rule.name, plan.origin
    w = core.weight
    wq = ctx.derived_initializer(w.key, w.name, lambda: w.conv(ctx.scope.value_of), like=(w.conv_shape, w.dtype))
    xs, xz, ws, wz, ys, yz = core.params
    convs: list[NodeProto] = []

    def convolution(x: str, y: str) -> list[NodeProto]:
        inputs = [x, xs, xz, wq, ws, wz, ys, yz, *([core.bias] if core.bias else [])]
        convs.append(ctx.node(name, origin, "QLinearConv", inputs, [y], f"{base}_conv", kernel_shape=[1, 1]))
        return convs[-1:]

    layout = "nct" if s.tokens else "nchw"
    quantized = moved = ctx.names.fresh(f"{base}_{layout}")
    nodes = [ctx.node(name, origin, "Transpose", [s.x], [moved], f"{base}_to_{layout}", perm=SWAP if s.tokens else [0, 3, 1, 2])]
    if q is not None:
        quantized = ctx.names.fresh(f"{base}_{layout}_quantized")
        nodes.append(
            ctx.node(name, origin, "QuantizeLinear", [moved, *q.input[1:]], [quantized], f"{base}_quantize", **attrs_of(q))
        )
    if s.tokens:
        nodes += token_conv_nodes(
            ctx, name, origin, base, quantized, "", None, plan.outputs[0], channels_first=True, convolution=convolution
        )
    else:
        conv_out = ctx.names.fresh(f"{base}_conv_nchw")
        nodes += convolution(quantized, conv_out)
        nodes.append(ctx.node(name, origin, "Transpose", [conv_out], [plan.outputs[0]], f"{base}_to_nhwc", perm=[0, 2, 3, 1]))
    vanished = [o for n in plan.removed for o in n.output if o != plan.outputs[0]]
    # The layer claimed for verification: the flat quantized rows to the core's flat output.
    return Replacement(
        nodes, released=[w.name, *released, *s.constants], vanished=vanished, layer=(node.input[0], node.output[0], convs[0].name)
    )


def _qlinear_matmul_core(ctx: Context, node: NodeProto, x_type: int) -> tuple[QLinearCore, dict]:
    if len(node.input) != 8:
        raise Decline(Decline.NO_PATTERN, "QLinearMatMul without its eight inputs")
    w, notes = check_qlinear_core(ctx, node, x_type, None)
    ins = list(node.input)
    return QLinearCore(w, (ins[1], ins[2], ins[4], ins[5], ins[6], ins[7])), notes


class QLinearSandwichToConv(Rule):
    name = "qlinear_sandwich_to_conv"
    op_type = "QLinearMatMul"

    def check(self, node: NodeProto, ctx: Context) -> QLinearSandwichPlan:
        if len(node.input) != 8:
            raise Decline(Decline.NO_PATTERN, "QLinearMatMul without its eight inputs")
        return plan_qlinear_sandwich(node, ctx, _qlinear_matmul_core)

    def rewrite(self, plan: QLinearSandwichPlan, ctx: Context) -> Replacement:
        return rewrite_qlinear_sandwich(self, plan, ctx, [])
