"""Ops whose layout lives in axis numbers, read in another layout ``P``: their axes must be the original's seen
through ``P`` (the node's axis ``a`` is the original's axis ``P[a]``; axes normalized first), and then they are
their counterpart with the outputs in layout ``Q``.

- Softmax / LogSoftmax / Hardmax, opset >= 13: ``axis`` maps to the original's; ``Q = P``. Before opset 13
  they flatten the input at ``axis`` (default 1) and normalize each trailing block as one: the same axis,
  and ``P`` keeps the axes ``>= axis`` among themselves (``{P[i] : i >= axis} == {axis..rank-1}``); ``Q = P``.
  Hardmax marks the first of equal maxima of that block, so for it ``P`` keeps those axes in their order.
- Concat / Split: ``axis`` (default 0) maps; Split's sizes (input 1) are the original's; ``Q = P``.
- Gather (constant indices of rank ``m``, no added unit axes): ``axis`` maps; the output holds the data's axes
  before the gathered one, the indices' ``m`` axes, then the rest, so ``Q`` places each of the node's output
  axes where the original's output has it (``P`` itself for ``m == 1``).
- Slice, opset >= 10: starts, ends and steps the original's (constants of the same values, or the very tensor
  the original computes at run time), ``axes`` (input 3, default ``0..n-1``) constants that map in order; ``Q = P``.
- Pad, opset >= 11, no added unit axes: the same mode and value; without ``axes``, ``pads[a] == pads'[P[a]]``
  and ``pads[r + a] == pads'[r + P[a]]``; with ``axes`` (input 3), the same pads and the axes map; ``Q = P``.
- Reduce* and Squeeze: ``axes`` (attribute, or input 1) map as a set. keepdims (not Squeeze): ``Q = P``;
  else ``Q`` is ``P`` without the removed axes (``layouts.dropped``). No axes on both sides: every axis
  reduced (``Q = P`` with keepdims, None without) or, with ``noop_with_empty_axes``, nothing (``Q = P``).

An Unsqueeze needs no rule here: with constant axes it only adds unit axes to its input's fact, whatever the
layout (``ops/layout_ops.py``), which is what moving a Transpose through it means.
"""

from __future__ import annotations

import numpy as np

from converter.verifier.certificate.facts import Const
from converter.verifier.certificate.layouts import Layout, compose, dropped, norm_axis
from converter.verifier.certificate.ops._base import AxisArgs

REDUCE = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()
)


def _same_axis(a: AxisArgs, default: int) -> bool:
    """The same attributes but ``axis``, and ``axis`` (``default`` when absent) the original's under the layout."""
    axis, orig_axis = a.attrs.get_int("axis", default), a.orig_attrs.get_int("axis", default)
    return a.same_attributes("axis") and a.maps([axis], [orig_axis], True)


def softmax(a: AxisArgs) -> Layout | str:
    op, rank, perm = a.node.op_type, a.rank, a.perm
    if a.opset < 13:
        a_r, a_o = norm_axis(a.attrs.get_int("axis", 1), rank), norm_axis(a.orig_attrs.get_int("axis", 1), rank)
        if a.orig_rank != rank or a_r is None or a_r != a_o or not a.same_attributes() or set(perm[a_r:]) != set(range(a_r, rank)):
            return f"{op} before opset 13 flattens its input at the axis: this layout changes what it normalizes"
        if op == "Hardmax" and list(perm[a_r:]) != list(range(a_r, rank)):
            return "Hardmax before opset 13 marks the first maximum of the flattened block: this layout reorders ties"
        return perm
    if not _same_axis(a, -1):
        return f"the {op} axis is not the original's under the layout"
    return perm


def concat(a: AxisArgs) -> Layout | str:
    if not _same_axis(a, 0):
        return "the Concat axis is not the original's under the layout"
    return a.perm


def split(a: AxisArgs) -> Layout | str:
    if not _same_axis(a, 0):
        return "the Split axis is not the original's under the layout"
    if a.ints(1) != a.orig_ints(1):
        return "the split sizes differ"
    return a.perm


def gather(a: AxisArgs) -> Layout | str:
    rank = a.rank
    if a.orig_rank != rank:
        return "Gather read with added unit axes"
    if not _same_axis(a, 0):
        return "the Gather axis is not the original's under the layout"
    indices = a.ins[1]
    if not isinstance(indices, Const):
        return "Gather indices of unknown rank"
    m = np.asarray(indices.get()).ndim
    perm = a.transpose
    a_r = norm_axis(a.attrs.get_int("axis", 0), rank)
    if a_r is None:
        return "the Gather axis is out of range"
    a_o = perm[a_r]
    # The output holds the data's axes before the gathered one, then the indices' m axes, then the rest: each
    # rewritten output axis is found in the original's output through ``perm``.
    q = [0] * (rank - 1 + m)
    for j in range(rank):
        if j != a_r:
            o = perm[j]
            q[j if j < a_r else j + m - 1] = o if o < a_o else o + m - 1
    for d in range(m):
        q[a_r + d] = a_o + d
    return compose(None, tuple(q))


def slice_(a: AxisArgs) -> Layout | str:
    if a.opset < 10 or a.attrs or a.orig_attrs:
        return "Slice before opset 10 in another layout"
    mine, theirs = a.params, a.orig_params
    if mine.get(1) != theirs.get(1) or mine.get(2) != theirs.get(2):
        return "the Slice starts or ends differ"
    axes, orig_axes = a.ints(3), a.orig_ints(3)
    starts = mine.get(1)
    n = len(axes) if axes is not None else len(starts) if isinstance(starts, list) else None
    if n is None:
        return "a Slice with neither constant axes nor constant starts in another layout"
    ones = [1] * n
    if (mine.get(4) or ones) != (theirs.get(4) or ones):
        return "the Slice steps differ"
    default = list(range(n))
    if not a.maps(axes or default, orig_axes or default, True):
        return "the Slice axes are not the original's under the layout"
    return a.perm


def pad(a: AxisArgs) -> Layout | str:
    rank = a.rank
    if a.orig_rank != rank:
        return "Pad read with added unit axes"
    if a.opset < 11 or not a.same_attributes():
        return "Pad with attribute pads, or another mode, in another layout"
    rp, op_ = a.ints(1), a.orig_ints(1)
    if rp is None or op_ is None:
        return "Pad without pads"
    r_axes, o_axes = a.ints(3), a.orig_ints(3)
    if r_axes is None and o_axes is None:
        if len(rp) != 2 * rank or len(op_) != 2 * rank:
            return "Pad pads of the wrong length"
        perm = a.transpose
        if any(rp[x] != op_[perm[x]] or rp[rank + x] != op_[rank + perm[x]] for x in range(rank)):
            return "the pads are not the original's under the layout"
        return perm
    if r_axes is None or o_axes is None or rp != op_ or not a.maps(r_axes, o_axes, True):
        return "the Pad axes are not the original's under the layout"
    return a.perm


def reduce(a: AxisArgs) -> Layout | str:
    """Reduce* and Squeeze (see the module docstring)."""
    op, perm = a.node.op_type, a.perm
    if not a.same_attributes("axes"):
        return f"the {op} attributes differ"
    r_axes, o_axes = a.axes()
    if op == "Squeeze" and (r_axes is None or o_axes is None):
        return "Squeeze without axes in another layout"
    if not r_axes or not o_axes:
        if bool(r_axes) != bool(o_axes):
            return f"the {op} axes differ"
        if a.attrs.get_int("noop_with_empty_axes", 0):
            return perm
        return perm if a.attrs.get_int("keepdims", 1) else None
    if not a.maps(r_axes, o_axes, False):
        return f"the {op} axes are not the original's under the layout"
    if op != "Squeeze" and a.attrs.get_int("keepdims", 1):
        return perm
    return dropped(perm, {n for x in r_axes if (n := norm_axis(x, a.rank)) is not None})
