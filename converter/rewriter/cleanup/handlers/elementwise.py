"""Elementwise ops: no axis anywhere, so the op is the same on either side of the Transpose.

Before::  t = Transpose(a, p); y = Op(t, c)
After::   y' = Op(a, c'); y = Transpose(y', p)

where every other operand is
- a constant: ``c'`` is ``c`` broadcast to the rank of ``a`` and laid out by the inverse perm
  (a one-element constant of rank <= 1 stays as it is);
- the output of a Transpose with the same perm: ``Op`` reads that Transpose's input instead;
- a tensor that some Transpose already brings into ``a``'s layout (the residual of a block whose
  input was transposed for the rewrite): ``Op`` reads that Transpose's output.
No attribute changes. A move never adds a Transpose on another operand.
"""

from __future__ import annotations

from converter.rewriter.cleanup.handlers._base import Decline, HandlerArgs, Operand, Plan, data_input_only, one_output, operand

UNARY = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid HardSwish "
    "Identity IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus Softsign "
    "Sqrt Tan Tanh ThresholdedRelu".split()
)
BINARY = frozenset(
    "Add And BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less LessOrEqual Mod Mul Or Pow PRelu Sub Xor".split()
)
VARIADIC = frozenset("Max Mean Min Sum Where".split())  # any number of broadcast operands (Where: exactly 3)


def unary(args: HandlerArgs) -> Plan | Decline:
    """Clip's min/max are scalars and stay; every other unary op has one input."""
    return data_input_only(args) or one_output(args) or Plan({0: args.a}, [args.perm])


def broadcast(args: HandlerArgs) -> Plan | Decline:
    op = args.node
    if declined := one_output(args):
        return declined
    if op.op_type == "PRelu" and 0 not in args.slots:
        return Decline("not_data_input", "PRelu takes the Transpose only on its data input")
    inputs: dict[int, Operand] = {}
    for slot in range(len(op.input)):
        new = operand(args, slot)
        if new is None:
            return Decline(
                "operand_in_other_layout", f"{op.op_type} input {op.input[slot]} is neither constant nor in the same layout"
            )
        inputs[slot] = new
    return Plan(inputs, [args.perm])
