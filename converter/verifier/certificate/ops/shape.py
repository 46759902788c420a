"""Reading a shape in another layout: ``Gather(Shape(x'), idx)``.

``Shape(Transpose(a, P))[i] = Shape(a)[P[i]]``, so where ``x'`` is an original tensor ``R`` laid out by ``P``,
``Gather(Shape(x'), idx)`` is the dims ``P[idx]`` of ``R`` (an added unit axis: a dim of 1). That is the
output of an original ``Shape(y, start, end)`` with ``y`` = ``R`` laid out by ``Q`` when
``Q[start:end] == P[idx]``; and it is a constant when every dim it picks is known (onnx's shape inference on
the original: a dynamic export's channel count), compared by value wherever it is read (:mod:`..expressions`).
A Shape without start or end alone gets a fact of its own (``SHAPE + R`` in ``P``), which only such a Gather
reads. Both are fallbacks: tried when no counterpart explains the node.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.context import Context
from converter.verifier.certificate.expressions import laid_out_dims, picked
from converter.verifier.certificate.facts import SHAPE, Const, Fact, SameAs
from converter.verifier.certificate.nodes import Attributes, is_default


def shape(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """A whole Shape of a known original tensor: that tensor's shape vector, in its layout."""
    x = ins[0] if ins else None
    attrs = Attributes(node)
    if len(node.output) != 1 or "start" in attrs or "end" in attrs or not isinstance(x, SameAs) or not x.root:
        return False
    if x.root.startswith("\0"):
        return False
    ctx.facts[node.output[0]] = SameAs(f"{SHAPE}{x.root}", x.layout)
    return True


def picked_dims(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """``Gather`` of the shape vector of ``R`` in ``P`` (a fact of :func:`shape`) that picks only dims that are
    known: a constant."""
    if not ins or not isinstance(ins[0], SameAs) or not ins[0].root.startswith(SHAPE) or len(node.output) != 1:
        return False
    root, perm = ins[0].root[len(SHAPE) :], ins[0].layout
    dims = laid_out_dims(ctx.orig.shape(root), perm)
    if dims is None:
        return False
    vector = tuple(d if isinstance(d, int) else None for d in dims)
    params = [np.asarray(f.get()) if isinstance(f, Const) else None for f in ins[1:]]
    value = picked(node, vector, params)
    if value is None:
        return False
    ctx.facts[node.output[0]] = Const(ctx.key(node.output[0]), partial(np.array, value))
    return True


def gathered_shape(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """``Gather(shape vector of R in P, idx)``: a constant when the dims it picks are known
    (:func:`picked_dims`), else the output of an original Shape that reads the same dims, or of an original
    ``Gather`` of such a Shape that picks them (the same dims, in an index of the same shape)."""
    if len(ins) != 2 or not isinstance(ins[0], SameAs) or not ins[0].root.startswith(SHAPE):
        return False
    if picked_dims(ctx, node, ins):
        return True
    if Attributes(node).get_int("axis", 0) or not isinstance(ins[1], Const):
        return False
    root, perm = ins[0].root[len(SHAPE) :], ins[0].layout
    rank = len(perm) if perm is not None else ctx.orig.rank(root)
    idx = np.asarray(ins[1].get())
    if rank is None or idx.dtype.kind not in "iu" or idx.ndim > 1 or not all(-rank <= i < rank for i in idx.reshape(-1)):
        return False
    axes = tuple(perm if perm is not None else range(rank))
    picked = tuple(axes[int(i) % rank] for i in idx.reshape(-1))  # None: an added unit axis, a dim of 1
    # Equal shapes may be several original tensors: the one of the same name first (see layout_ops.rearranged).
    cands = sorted(ctx.orig.consumers_by_root(root), key=lambda c: c[0].output[0] != node.output[0])
    for cand, slot in cands:
        if cand.op_type != "Shape" or not is_default(cand) or slot != 0:
            continue
        q = ctx.orig.canon(cand.input[0])
        if not isinstance(q, SameAs):
            continue
        c_attrs = Attributes(cand)
        q_rank = len(q.layout) if q.layout is not None else ctx.orig.rank(root)
        if q_rank is None:
            continue
        theirs = tuple(q.layout if q.layout is not None else range(q_rank))
        start, end = c_attrs.get_int("start", 0), c_attrs.get_int("end", q_rank)
        vector = theirs[slice(start, end)]
        if idx.ndim == 1 and vector == picked:
            ctx.facts[node.output[0]] = ctx.orig.canon(cand.output[0])
            return True
        # Or a Gather of that Shape that picks the same dims, in an index of the same shape (a dynamic bound).
        for g in ctx.orig.graph.node:
            if g.op_type != "Gather" or not is_default(g) or len(g.input) != 2 or g.input[0] != cand.output[0]:
                continue
            their_idx = ctx.orig.canon(g.input[1])
            if Attributes(g).get_int("axis", 0) or not isinstance(their_idx, Const):
                continue
            j = np.asarray(their_idx.get())
            if j.dtype.kind not in "iu" or j.shape != idx.shape or not all(-len(vector) <= i < len(vector) for i in j.reshape(-1)):
                continue
            if tuple(vector[int(i)] for i in j.reshape(-1)) == picked:
                ctx.facts[node.output[0]] = ctx.orig.canon(g.output[0])
                return True
    return False
