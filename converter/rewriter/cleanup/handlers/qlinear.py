"""onnxruntime's quantized elementwise ops (com.microsoft), per tensor: QLinearAdd / QLinearMul, and the unary
QLinearSigmoid / QLinearLeakyRelu.

Before::  t = Transpose(a, p); y = QLinearAdd(t, sa, za, b, sb, zb, sy, zy)
After::   y' = QLinearAdd(a, sa, za, b', sb, zb, sy, zy); y = Transpose(y', p)

(QLinearMul the same.) Each computes, at every position after broadcasting,
``y = saturate(round((sa (A - za) op sb (B - zb)) / sy) + zy)`` with one scale and zero point per
operand: the op has no axis, so it is the same on either side of the Transpose. The data inputs are
0 and 3; ``b'`` is what ``elementwise.broadcast`` makes of an operand (a constant, quantized integers
included, laid out by the inverse perm; the input of a Transpose by the same perm; an existing
Transpose of it by the inverse perm).

Before::  t = Transpose(a, p); y = QLinearSigmoid(t, sx, zx, sy, zy)
After::   y' = QLinearSigmoid(a, sx, zx, sy, zy); y = Transpose(y', p)

(QLinearLeakyRelu the same, its ``alpha`` kept.) ``y = saturate(round(f(sx (X - zx)) / sy) + zy)`` element by
element (onnxruntime computes it through a 256-entry table of ``f`` on the dequantized values): no axis, so
the same on either side of the Transpose. The data input is 0 only. All five inputs must be there (a zero point
may be "", zero): onnxruntime 1.32 aborts on a node with four (its kernel reads input 4 unconditionally).

For every op the scales and zero points stay as they are, and must be one-element constants: a parameter
along an axis would have to move with it, and a computed one cannot be checked.

Cost check: the move is made only when every reader of ``y`` is a Transpose or an op a handler
knows (as for QuantizeLinear: the layout census does not see through onnxruntime's contrib ops, so a
Transpose left after one would count where the one before it did not).
"""

from __future__ import annotations

import math

from converter.rewriter.cleanup.handlers._base import Decline, HandlerArgs, Operand, Plan, one_output, operand, outputs_move_on

DATA = (0, 3)
PARAMETERS = (1, 2, 4, 5, 6, 7)  # a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point
UNARY_PARAMETERS = (1, 2, 3, 4)  # x_scale, x_zero_point, y_scale, y_zero_point


def qlinear_binary(args: HandlerArgs) -> Plan | Decline:
    node = args.node
    if declined := one_output(args):
        return declined
    if len(node.input) != 8:
        return Decline("no_pattern", f"{node.op_type} without its eight inputs")
    if any(slot not in DATA for slot in args.slots):
        return Decline("not_data_input", f"{node.op_type} reads the Transpose as a scale or zero point")
    if declined := _per_tensor(args, PARAMETERS):
        return declined
    inputs: dict[int, Operand] = {}
    for slot in DATA:
        new = operand(args, slot)
        if new is None:
            return Decline(
                "operand_in_other_layout", f"{node.op_type} input {node.input[slot]} is neither constant nor in the same layout"
            )
        inputs[slot] = new
    if declined := outputs_move_on(args):
        return declined
    return Plan(inputs, [args.perm])


def qlinear_unary(args: HandlerArgs) -> Plan | Decline:
    """QLinearSigmoid, QLinearLeakyRelu: one data input (0), its scale and zero point, the output's."""
    node = args.node
    if declined := one_output(args):
        return declined
    if len(node.input) != 5:
        return Decline("no_pattern", f"{node.op_type} without its five inputs")
    if args.slots != (0,):
        return Decline("not_data_input", f"{node.op_type} reads the Transpose as a scale or zero point")
    if declined := _per_tensor(args, UNARY_PARAMETERS) or outputs_move_on(args):
        return declined
    return Plan({0: args.a}, [args.perm])


def _per_tensor(args: HandlerArgs, slots: tuple[int, ...]) -> Decline | None:
    """Why the parameters at ``slots`` are not each a one-element constant (an absent one is fine: a zero point of 0)."""
    node, ws = args.node, args.ws
    for slot in slots:
        name = node.input[slot]
        if not name:
            continue  # an absent zero point: zero
        if not ws.scope.source(name).is_constant:
            return Decline("scale_not_constant", f"{node.op_type}'s parameter {name} is computed, not constant")
        if math.prod(ws.scope.constant_tensor(name).dims) != 1:
            return Decline("per_axis_parameters", f"{node.op_type}'s parameter {name} has more than one element")
    return None
