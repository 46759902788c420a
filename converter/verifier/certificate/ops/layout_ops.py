"""Ops that only re-lay a tensor: their output's fact comes from their input's, with no counterpart needed.

- Transpose(x, p) of ``SameAs(r, l)``: ``SameAs(r, compose(l, p))`` (a constant's or a perm-less one: matched
  as any node); an unknown input stays unknown.
- Identity(x): ``x``'s fact. A Constant: its value (``Const``).
- Unsqueeze(x, axes): ``x`` with unit axes added; Squeeze(x, axes) of only added unit axes: ``x`` without
  them (:func:`canonical.unit_axes`, the original's canonical form too).
- Reshape(x, [0, 0, c]): ``x`` with its trailing axes merged, a root of its own (:func:`canonical.merge_fact`),
  which a token layer whose activation is rank 4 reads (``nn.MultiheadAttention``'s heads ``[S, B, H, D]``).
- ``Expand(c', Gather(shape, idx))`` is an original ``Expand(c, shape)`` read in layout ``idx`` when ``c'`` is
  ``c`` (padded with leading 1s to the rank) transposed by ``idx``, ``idx`` is a permutation of that rank and
  ``shape`` has that many entries: Expand broadcasts dim by dim, so reordering the constant's dims and the
  shape's entries alike reorders the result (ViT's class token moved into the patches' layout).
- A Reshape, Transpose, Squeeze or Unsqueeze no counterpart explains (the fallback) that only moves the
  elements of an original tensor ``R``: an original tensor made from ``R`` by such ops, under a layout, when
  the element indices say so (:mod:`.elements`); else a view of ``R`` that a later one may resolve.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.canonical import merge_fact, unit_axes
from converter.verifier.certificate.constants import constant_node_fact, differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.elements import Step, elements, rearrange_step, relate, same_elements
from converter.verifier.certificate.facts import Const, Fact, SameAs, Unknown
from converter.verifier.certificate.layouts import compose, lifted, plain
from converter.verifier.certificate.nodes import Attributes, is_default, transpose_layout


def transpose(ctx: Context, node: NodeProto) -> bool:
    if len(node.input) != 1:
        return False
    perm = transpose_layout(node)
    inner = ctx.fact(node.input[0])
    if isinstance(perm, bool) or isinstance(inner, Const):
        return False  # no perm, or a transposed constant: only an identical node in the original explains it
    if isinstance(inner, SameAs):
        try:
            ctx.facts[node.output[0]] = SameAs(inner.root, compose(inner.layout, perm))
        except ValueError:
            ctx.unknown(node, "a Transpose of the wrong rank")
        return True
    ctx.facts[node.output[0]] = inner
    return True


def identity(ctx: Context, node: NodeProto) -> bool:
    if len(node.input) != 1:
        return False
    ctx.facts[node.output[0]] = ctx.fact(node.input[0])
    return True


def constant(ctx: Context, node: NodeProto) -> bool:
    fact = constant_node_fact(node, ctx.key(node.output[0]))
    if not isinstance(fact, Const):
        return False
    ctx.facts[node.output[0]] = fact
    return True


def unit_axis(ctx: Context, node: NodeProto) -> bool:
    """Unsqueeze, or Squeeze of added unit axes only."""
    if len(node.output) != 1 or not node.input:
        return False
    unit = unit_axes(node, ctx.fact(node.input[0]), ctx.fact, ctx.orig.rank)
    if unit is None:
        return False
    ctx.facts[node.output[0]] = unit
    return True


def merge(ctx: Context, node: NodeProto) -> bool:
    """``Reshape(x, [0, 0, c])`` (copy the first two dims, merge the rest; ``allowzero`` 0) of a known tensor."""
    if len(node.input) != 2:
        return False
    merged = merge_fact(node, ctx.fact(node.input[0]), ctx.fact(node.input[1]), ctx.orig.rank)
    if merged is None:
        return False
    ctx.facts[node.output[0]] = merged
    return True


def relaid_expand(ctx: Context, node: NodeProto) -> bool:
    """``Expand(c', Gather(shape, idx))``: an original ``Expand(c, shape)`` read in layout ``idx``."""
    if len(node.input) != 2:
        return False
    data = ctx.fact(node.input[0])
    if not isinstance(data, Const):
        return False
    g = ctx.producer(node.input[1])
    if g is None or not is_default(g) or g.op_type != "Gather" or len(g.input) != 2 or Attributes(g).get_int("axis", 0):
        return False
    idx, shape = ctx.fact(g.input[1]), ctx.fact(g.input[0])
    if not isinstance(idx, Const) or isinstance(shape, Unknown):
        return False
    order = np.asarray(idx.get())
    if order.dtype.kind not in "iu" or order.ndim != 1 or sorted(order.tolist()) != list(range(order.size)):
        return False
    perm = tuple(int(i) for i in order)
    for cand in ctx.orig.graph.node:
        if not (is_default(cand) and cand.op_type == "Expand" and len(cand.input) == 2 and len(cand.output) == 1):
            continue
        o_shape, o_data, o_out = (ctx.orig.canon(n) for n in (cand.input[1], cand.input[0], cand.output[0]))
        same_shape = o_shape == shape or (
            isinstance(o_shape, Const) and isinstance(shape, Const) and differs(shape.get(), o_shape.get(), "shape") is None
        )
        if not same_shape or not isinstance(o_data, Const) or not isinstance(o_out, SameAs) or not o_out.root:
            continue
        if ctx.orig.rank(cand.output[0]) != len(perm) or ctx.same_laid_out(data, o_data, perm) is not None:
            continue
        ctx.facts[node.output[0]] = SameAs(o_out.root, compose(o_out.layout, perm))
        return True
    return False


def rearranged(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """A Reshape, Transpose, Squeeze or Unsqueeze with no counterpart that only moves the elements of an
    original tensor ``R``: its output is an original tensor made from ``R`` by such ops, under a layout
    (or, until one is found further on, a root of its own: ``R`` and the steps from it)."""
    x = ins[0] if ins else None
    if len(node.output) != 1 or not isinstance(x, SameAs) or not x.root:
        return False
    step = rearrange_step(node, ctx.fact, lambda name: None)
    if step is None:
        return False
    root, steps = ctx.views.steps(x.root)
    if root.startswith("\0"):
        return False  # a merged or flat root: no sizes to follow
    if x.layout is not None:
        steps = (*steps, ("layout", x.layout))
    steps = (*steps, step)
    dims = ctx.views.dims(root)
    ours = None if dims is None else elements(dims, steps)
    if dims is None or ours is None:
        return False
    found = ctx.views.original_rearrangements(root)
    # The same tensor may be several original tensors under layouts; the one of the same name first
    # (a folded chain keeps its last tensor's name), so that what reads it finds its counterpart.
    found.sort(key=lambda f: f[0] != node.output[0])
    for name, theirs in found:
        if _found(ctx, node, dims, steps, name, theirs, ours):
            return True
    ctx.facts[node.output[0]] = ctx.views.add(root, steps)
    return True


def _found(
    ctx: Context,
    node: NodeProto,
    dims: list[int | str],
    steps: tuple[Step, ...],
    name: str,
    theirs: tuple[Step, ...],
    ours: np.ndarray,
) -> bool:
    """Whether the node's result is the original ``name`` (made by ``theirs``) under a layout (its fact set)."""
    m = relate(ours, elements(dims, theirs))
    canon = ctx.orig.canon(name) if m is not None else None
    if m is None or not isinstance(canon, SameAs) or not canon.root or lifted(canon.layout):
        return False
    if not same_elements(dims, steps, (*theirs, ("layout", m))):
        return False  # the same at one set of sizes only
    try:
        ctx.facts[node.output[0]] = SameAs(canon.root, compose(canon.layout, plain(m)))
    except ValueError:
        return False
    return True
