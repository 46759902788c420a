"""Reductions over constant axes: the same reduction on ``a`` over the axes mapped through the perm.

- Reduce* (Mean Sum Max Min Prod L1 L2 LogSum LogSumExp SumSquare): ``axes -> sorted(perm[x])``;
  the axes are an attribute before opset 18 (ReduceSum: 13) and a constant input (1) after.
  keepdims=1 (default): output Transpose ``perm``. keepdims=0: output Transpose
  ``squeezed_perm(perm, axes)`` (the perm on the axes that are kept), none when the identity.
  No axes: with noop_with_empty_axes=1 the op is an identity (output ``perm``); otherwise every axis
  is reduced and nothing changes but the input (output ``perm`` with keepdims, none without).
"""

from __future__ import annotations

from converter.rewriter.cleanup._edit import attribute, is_identity, squeezed_perm
from converter.rewriter.cleanup.handlers._base import (
    Decline,
    HandlerArgs,
    Plan,
    axes_of,
    constant_ints,
    data_input_only,
    data_plan,
    ints_like,
    one_output,
    optional_input,
)

REDUCE = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()
)


def reduce(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    node = args.node
    keepdims = attribute(node, "keepdims", 1)
    from_input = args.opset >= (13 if node.op_type == "ReduceSum" else 18)
    if from_input:
        values = constant_ints(args, 1, "axes") if optional_input(node, 1) else []
    else:
        values = attribute(node, "axes", None) or []  # type: ignore[assignment]
    if isinstance(values, Decline):
        return values
    if not values:
        every_axis = not (from_input and attribute(node, "noop_with_empty_axes", 0))
        return data_plan(args, [None if every_axis and not keepdims else args.perm])
    axes = axes_of(args, values)
    if isinstance(axes, Decline):
        return axes
    new = sorted(args.perm[x] for x in axes)
    out = args.perm if keepdims else squeezed_perm(args.perm, axes)
    plan = data_plan(args, [None if is_identity(out) else out])
    if from_input:
        plan.inputs[1] = ints_like(node.input[1], "axes", args.perm, new)
    else:
        plan.attrs["axes"] = new
    return plan
