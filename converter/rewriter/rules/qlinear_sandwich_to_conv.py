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

Declines: the QLinearMatMul rule's codes, ``activation_quantization_per_axis`` (the QuantizeLinear is
per axis), ``activation_shared`` (the quantized rows are read elsewhere), the float sandwich's
``not_per_position`` / ``reshape_output_shared`` / ``zero_size``, and ``tokens_quantized`` (back to rank 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto

from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import integer_type, require_integer_type
from converter.rewriter.rules._quantized import QuantizedWeight, attrs_of, produced_by, read_params
from converter.rewriter.rules._sandwich import Sandwich, match_sandwich
from converter.rewriter.rules.qlinear_matmul_to_conv import check_qlinear_core, qlinear_conv_nodes


@dataclass
class QLinearSandwichPlan(Plan):
    sandwich: Sandwich | None = None
    weight: QuantizedWeight | None = None
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


class QLinearSandwichToConv(Rule):
    name = "qlinear_sandwich_to_conv"
    op_type = "QLinearMatMul"

    def check(self, node: NodeProto, ctx: Context) -> QLinearSandwichPlan:
        if len(node.input) != 8:
            raise Decline(Decline.NO_PATTERN, "QLinearMatMul without its eight inputs")
        # The quantizer quantizes the rows (Reshape -> QuantizeLinear) or, when x is already quantized, reshapes
        # the quantized x (Reshape -> QLinearMatMul: Keras ConvNeXtTiny, where x comes from a QLinearAdd).
        q = None if produced_by(ctx, node.input[0], "Reshape") is not None else sandwich_entry(ctx, node, "QuantizeLinear")
        rows = node.input[0] if q is not None else ctx.scope.producers[node.input[0]].input[0]  # a Reshape keeps the dtype
        x_type = require_integer_type(ctx, rows, "activation")
        w, notes = check_qlinear_core(ctx, node, x_type, None)
        s = match_sandwich(node, ctx, w.k, q or node, node.output[0], lambda name: integer_type(ctx, name))
        if s.tokens:
            raise Decline("tokens_quantized", "a quantized sandwich back to rank 3 is not rewritten")
        if s.channels not in (w.c, -1):
            raise Decline("shape_mismatch", f"{s.x!r} has {s.channels} channels but the weight expects {w.c}")
        if q is not None and read_params(ctx, q, 1, 2, [None, None], "activation").axis is not None:
            raise Decline(
                "activation_quantization_per_axis", "the activation's QuantizeLinear is per axis; QLinearConv takes one scale"
            )
        removed = [node, *([q] if q is not None else []), s.first, s.last, *s.shape_nodes]
        return QLinearSandwichPlan(removed, [s.last.output[0]], notes, sandwich=s, weight=w, quantize=q, origin=node_label(node))

    def rewrite(self, plan: QLinearSandwichPlan, ctx: Context) -> Replacement:
        s, w, q = plan.sandwich, plan.weight, plan.quantize
        assert s is not None and w is not None
        node = plan.removed[0]
        base = node.name or node.output[0]
        rule, origin = self.name, plan.origin
        quantized = nchw = ctx.names.fresh(f"{base}_nchw")
        nodes = [ctx.node(rule, origin, "Transpose", [s.x], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2])]
        if q is not None:
            quantized = ctx.names.fresh(f"{base}_nchw_quantized")
            nodes.append(
                ctx.node(rule, origin, "QuantizeLinear", [nchw, *q.input[1:]], [quantized], f"{base}_quantize", **attrs_of(q))
            )
        convs, conv = qlinear_conv_nodes(ctx, rule, origin, node, w, quantized, plan.outputs[0])
        released = [w.name, *s.constants]
        vanished = [o for n in plan.removed for o in n.output if o != plan.outputs[0]]
        # The layer claimed for verification: the flat quantized rows to the QLinearMatMul's flat output.
        return Replacement([*nodes, *convs], released=released, vanished=vanished, layer=(node.input[0], node.output[0], conv.name))
