"""Split and Concat on a transposed tensor: the same op on ``a`` along axis ``perm[axis]``.

- Concat(t_1, ..., t_n, axis=k): every operand must come free in ``a``'s layout (a Transpose by
  the same perm, a constant laid out by the inverse perm, or an existing inverse Transpose of it);
  ``axis -> perm[k]``; output Transpose ``perm``.
- Split(t, split?, axis=k): ``axis -> perm[k]`` (default 0); the sizes (attribute, input or
  ``num_outputs``) are unchanged; every output gets a Transpose ``perm`` (an output nothing reads
  gets none). One Transpose in, several out: made only when every reader of every output is a
  Transpose or an op a handler knows, so that the new ones can go on (the cost check).
"""

from __future__ import annotations

from converter.rewriter.cleanup.handlers._base import (
    Decline,
    HandlerArgs,
    Operand,
    Plan,
    data_input_only,
    one_output,
    operand,
    outputs_move_on,
    simple_node_with_axis,
)


def concat(args: HandlerArgs) -> Plan | Decline:
    if declined := one_output(args):
        return declined
    inputs: dict[int, Operand] = {}
    for slot, name in enumerate(args.node.input):
        new = operand(args, slot)
        if new is None:
            return Decline("operand_in_other_layout", f"Concat input {name} is neither constant nor in the same layout")
        inputs[slot] = new
    return simple_node_with_axis(args, None, inputs)


def split(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or outputs_move_on(args):
        return declined
    return simple_node_with_axis(args, 0)
