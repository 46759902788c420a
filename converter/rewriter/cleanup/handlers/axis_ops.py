"""Ops whose layout lives in axis numbers: the same op on ``a``, its axes mapped through the perm.

With ``t = Transpose(a, perm)`` (axis ``i`` of ``t`` is axis ``perm[i]`` of ``a``), axes normalized
to ``[0, rank)`` first:

- Softmax / LogSoftmax / Hardmax, opset >= 13: ``axis -> perm[axis]``; output Transpose ``perm``.
  Before opset 13 they flatten to 2D at ``axis`` (default 1); the move is made only when ``perm``
  keeps the axes ``>= axis`` among themselves (``{perm[i] : i >= axis} == {axis..rank-1}``); the
  axis stays. Hardmax marks the first of equal maxima, so for it ``perm`` keeps those axes in order.
- Slice: ``axes -> [perm[x] for x in axes]`` (input 3 from opset 10, attribute before; when absent,
  ``axes = 0..len(starts)-1`` is made explicit); starts, ends, steps unchanged; output ``perm``.
- Pad: ``pads`` (input 1 from opset 11, attribute before), ``[b_0..b_{r-1}, e_0..e_{r-1}]``
  becomes ``b'[perm[i]] = b[i], e'[perm[i]] = e[i]``; with an ``axes`` input (opset 18) only the
  axes are remapped, ``perm[x]``, and pads stay; mode and constant value unchanged; output ``perm``.
- Squeeze: ``axes -> sorted(perm[x])`` (input 1 from opset 13, attribute before; required here);
  output Transpose ``squeezed_perm(perm, axes)``, none when that is the identity.
- Unsqueeze: axes unchanged (normalized against the output rank); output Transpose
  ``unsqueezed_perm(perm, axes)``: ``q[P[j]] = P[perm[j]]`` for ``P`` the positions that are not
  new, ``q[x] = x`` for new ``x``.
- Gather (data input only, constant indices of rank ``m``): ``axis -> perm[axis]``; output
  Transpose ``gathered_perm(perm, axis, m)`` (``perm`` itself for ``m == 1``).
"""

from __future__ import annotations

import numpy as np

from converter.rewriter.cleanup._edit import attribute, gathered_perm, is_identity, squeezed_perm, unsqueezed_perm
from converter.rewriter.cleanup.handlers._base import (
    Decline,
    Fresh,
    HandlerArgs,
    Plan,
    axes_of,
    axis_of,
    constant_ints,
    data_input_only,
    data_plan,
    ints_like,
    one_output,
    optional_input,
    simple_node_with_axis,
)


def softmax(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    if args.opset >= 13:
        return simple_node_with_axis(args, -1)
    k = axis_of(args, attribute(args.node, "axis", 1))  # type: ignore[arg-type]
    if isinstance(k, Decline):
        return k
    if {args.perm[i] for i in range(k, args.rank)} != set(range(k, args.rank)):
        return Decline(
            "softmax_axis_coerced",
            f"before opset 13 {args.node.op_type} normalizes over the axes from {k} on together; perm {list(args.perm)} mixes them",
        )
    if args.node.op_type == "Hardmax" and list(args.perm[k:]) != list(range(k, args.rank)):
        return Decline(
            "softmax_axis_coerced",
            f"before opset 13 Hardmax marks the first maximum of the axes from {k} on: perm {list(args.perm)} reorders ties",
        )
    return data_plan(args)


def slice_(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    node = args.node
    if args.opset < 10:
        starts = attribute(node, "starts", [])
        axes = axes_of(args, attribute(node, "axes", None) or range(len(starts)))  # type: ignore[arg-type]
        if isinstance(axes, Decline):
            return axes
        return data_plan(args, axes=[args.perm[x] for x in axes])
    given = optional_input(node, 3)
    if given:
        values = constant_ints(args, 3, "axes")
    else:
        values = constant_ints(args, 1, "starts")  # its length says how many leading axes are sliced
        if not isinstance(values, Decline):
            values = list(range(len(values)))
    if isinstance(values, Decline):
        return values
    axes = axes_of(args, values)
    if isinstance(axes, Decline):
        return axes
    new = [args.perm[x] for x in axes]
    plan = data_plan(args)
    plan.inputs[3] = (
        ints_like(given, "axes", args.perm, new) if given else Fresh(f"{node.output[0]}_axes", np.asarray(new, dtype=np.int64))
    )
    return plan


def pad(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    node, r = args.node, args.rank
    if args.opset < 11:
        pads = attribute(node, "pads", None)
        if pads is None or len(pads) != 2 * r:  # type: ignore[arg-type]
            return Decline("pads_not_constant", "Pad has no pads of the input's rank")
        return data_plan(args, pads=_pads(list(pads), args.perm))  # type: ignore[arg-type]
    axes_name = optional_input(node, 3)
    if axes_name:
        values = constant_ints(args, 3, "axes")
        axes = values if isinstance(values, Decline) else axes_of(args, values)
        if isinstance(axes, Decline):
            return axes
        plan = data_plan(args)
        plan.inputs[3] = ints_like(axes_name, "axes", args.perm, [args.perm[x] for x in axes])
        return plan
    pads = constant_ints(args, 1, "pads")
    if isinstance(pads, Decline):
        return pads
    if len(pads) != 2 * r:
        return Decline("bad_axes", f"Pad has {len(pads)} pads for rank {r}")
    plan = data_plan(args)
    plan.inputs[1] = ints_like(node.input[1], "pads", args.perm, _pads(pads, args.perm))
    return plan


def _pads(pads: list[int], perm: tuple[int, ...]) -> list[int]:
    r = len(perm)
    out = [0] * (2 * r)
    for i, p in enumerate(perm):
        out[p], out[r + p] = pads[i], pads[r + i]
    return out


def squeeze(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    node = args.node
    from_input = args.opset >= 13
    if from_input:
        if not optional_input(node, 1):
            return Decline("axes_not_constant", "Squeeze without axes squeezes what the shape says; the shape is not known here")
        values = constant_ints(args, 1, "axes")
    else:
        values = attribute(node, "axes", None)  # type: ignore[assignment]
        if values is None:
            return Decline("axes_not_constant", "Squeeze without axes squeezes what the shape says; the shape is not known here")
    if isinstance(values, Decline):
        return values
    axes = axes_of(args, values)
    if isinstance(axes, Decline):
        return axes
    new = sorted(args.perm[x] for x in axes)
    out = squeezed_perm(args.perm, axes)
    plan = data_plan(args, [None if is_identity(out) else out])
    if from_input:
        plan.inputs[1] = ints_like(node.input[1], "squeeze", args.perm, new)
    else:
        plan.attrs["axes"] = new
    return plan


def unsqueeze(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    node = args.node
    if args.opset >= 13:
        values = constant_ints(args, 1, "axes") if optional_input(node, 1) else Decline("axes_not_constant", "no axes")
    else:
        values = attribute(node, "axes", None)  # type: ignore[assignment]
        if values is None:
            return Decline("axes_not_constant", "Unsqueeze has no axes")
    if isinstance(values, Decline):
        return values
    axes = axes_of(args, values, args.rank + len(values))
    if isinstance(axes, Decline):
        return axes
    out = unsqueezed_perm(args.perm, axes)
    return data_plan(args, [None if is_identity(out) else out])


def gather(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    indices = args.node.input[1]
    if not args.ws.scope.source(indices).is_constant:
        return Decline("indices_not_constant", "Gather's indices are computed: their rank is not known here")
    m = len(args.ws.scope.constant_tensor(indices).dims)
    k = axis_of(args, attribute(args.node, "axis", 0))  # type: ignore[arg-type]
    if isinstance(k, Decline):
        return k
    out = gathered_perm(args.perm, k, m)
    return data_plan(args, [None if is_identity(out) else out], axis=args.perm[k])
