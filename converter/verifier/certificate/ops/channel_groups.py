"""A per-channel op the original applies to flattened rows, read channels-first instead (LeViT's BatchNorm1d on tokens).

The original flattens a channels-last tensor ``x`` (rank ``k``, ``C`` channels in its last axis) into rows and
applies an op that works channel by channel::

    v = Flatten(x, axis=k-1) | Reshape(x, [R, C])        v[i, c] = x[..., c]: the last axis kept whole
    n = BatchNormalization(v, s, b, m, v_)               n[i, c] = f_c(v[i, c]), f_c from the c-th parameters
      | Add/Sub/Mul/Div(v, c0)                           c0 of shape [C], [1, C], or one value (either side)

The rewritten graph applies the same op to a tensor ``r`` that is ``Transpose(x, P)`` with ``r``'s axis 1 being
``x``'s last axis (``P[1] == k-1``: ``[B, C, S]``, ``[N, C, H, W]``): a BatchNormalization normalizes axis 1 at any
rank, so ``BN(r)[.., c, ..] = f_c(x[..., c])``, with every parameter bit for bit the original's and the same
attributes; a binary op's constant must be the original's values along axis 1 (``[C, 1]``, ``[1, C, 1, 1]``), or
the same one value. Then ``BN(r) = Transpose(y, P)`` where ``y`` is ``n`` reshaped back to ``x``'s shape: when the
original does that itself (a Reshape of ``n`` to ``Shape(x)``, or to constants that are ``x``'s dims), the output
is that original tensor under ``P``; otherwise a view of ``n`` (:mod:`..views`) that a later rearrangement resolves.

A second per-channel op of the same rows (``Mul`` then ``Add``) reads such a view of the first op's original
output: ``n`` reshaped to ``x``'s dims and laid out by ``P`` (``P[1] == k-1``), with ``n`` made from the original's
flatten of ``x`` through per-channel ops alone; it is proved the same way, and its output is the next original
tensor read back the same way. The certificate's own reading: nothing here comes from the rewrite's code.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.elements import Step
from converter.verifier.certificate.facts import VIEW, Const, Fact, SameAs
from converter.verifier.certificate.layouts import Layout, compose, lifted, norm_axis, relative
from converter.verifier.certificate.nodes import Attributes, is_default, plain_attributes

BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
OPS = BINARY | {"BatchNormalization"}


def per_channel(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """The fallback of BatchNormalization, Add, Sub, Mul and Div: the node is an original per-channel op of
    flattened rows, read channels-first (see the module docstring); True when its output's fact is set."""
    slot = _data_slot(node, ins)
    if slot is None or len(node.output) != 1 or not node.output[0]:
        return False
    r = ins[slot]
    assert isinstance(r, SameAs)
    if lifted(r.layout):
        return False
    if r.root.startswith(VIEW):
        return _read_from_view(ctx, node, ins, slot, r)
    if r.root.startswith("\0"):
        return False
    return _read_from_rows(ctx, node, ins, slot, r)


def _data_slot(node: NodeProto, ins: list[Fact]) -> int | None:
    """The input that carries the tensor: BatchNormalization's first (its parameters constants), or the one computed
    operand of a binary op whose other operand is a constant."""
    if not is_default(node) or node.op_type not in OPS:
        return None
    if node.op_type == "BatchNormalization":
        ok = len(ins) == 5 and isinstance(ins[0], SameAs) and ins[0].root and all(isinstance(f, Const) for f in ins[1:])
        return 0 if ok else None
    if len(ins) != 2:
        return None
    computed = [i for i, f in enumerate(ins) if isinstance(f, SameAs) and f.root]
    if len(computed) != 1 or not isinstance(ins[1 - computed[0]], Const):
        return None
    return computed[0]


def _read_from_rows(ctx: Context, node: NodeProto, ins: list[Fact], slot: int, r: SameAs) -> bool:
    """``r`` is an original tensor ``x`` under a layout; the candidates read rows flattened from ``x``."""
    for head, _ in ctx.orig.consumers_by_root(r.root):
        if not is_default(head) or head.op_type not in ("Flatten", "Reshape") or not head.input or len(head.output) != 1:
            continue
        x0 = ctx.orig.canon(head.input[0])
        shape = ctx.orig.shape(head.input[0])
        if not isinstance(x0, SameAs) or x0.root != r.root or lifted(x0.layout) or shape is None:
            continue
        rank = len(shape)
        try:
            p = relative(x0.layout, r.layout)
        except ValueError:
            continue
        if p is None or len(p) != rank or p[1] != rank - 1 or not _keeps_last_axis(ctx, head, shape):
            continue  # r's axis 1 must be x's last: the channel, as the flatten keeps it whole
        channels = shape[-1]
        assert isinstance(channels, int)
        for cand, cand_slot in ctx.orig.consumers_by_root(head.output[0]):
            if cand_slot != slot or not _same_op(ctx, node, cand, ins, slot, channels, rank):
                continue
            ctx.facts[node.output[0]] = _output(ctx, cand.output[0], head.input[0], shape, p)
            return True
    return False


def _read_from_view(ctx: Context, node: NodeProto, ins: list[Fact], slot: int, r: SameAs) -> bool:
    """``r`` is a view of an original ``[R, C]`` tensor ``n`` (the output of the group's op before, made by this rule:
    ``n`` back in ``x``'s shape, laid out by ``P``); the candidates read ``n`` itself."""
    root, steps = ctx.views.steps(r.root)
    head = _head_before(ctx, root)
    if r.layout is not None or head is None or len(steps) != 2 or steps[1][0] != "layout":
        return False
    x0, shape = head.input[0], ctx.orig.shape(head.input[0])
    if shape is None or steps[0] != ("reshape", tuple(_dim(d, x0, i) for i, d in enumerate(shape)), True):
        return False
    p = steps[1][1]
    rank = len(shape)
    if not isinstance(p, tuple) or None in p or len(p) != rank or p[1] != rank - 1 or not _keeps_last_axis(ctx, head, shape):
        return False
    channels = shape[-1]
    assert isinstance(channels, int)
    for cand, cand_slot in ctx.orig.consumers_by_root(root):
        if cand_slot != slot or ctx.orig.canon(cand.input[slot]) != SameAs(root):
            continue
        if _same_op(ctx, node, cand, ins, slot, channels, rank):
            ctx.facts[node.output[0]] = _output(ctx, cand.output[0], x0, shape, p)
            return True
    return False


def _head_before(ctx: Context, n: str) -> NodeProto | None:
    """The original's flatten that ``n`` is made from through per-channel ops (each reading the one before), or None."""
    node = ctx.orig.producers.get(n)
    for _ in range(16):
        if node is None or not is_default(node) or ctx.orig.canon(node.output[0]) != SameAs(node.output[0]):
            return None
        if node.op_type in ("Flatten", "Reshape"):
            return node
        if node.op_type not in OPS:
            return None
        computed = [i for i in node.input if i and not isinstance(ctx.orig.canon(i), Const)]
        if len(computed) != 1 or (node.op_type == "BatchNormalization" and computed[0] != node.input[0]):
            return None
        node = ctx.orig.producers.get(computed[0])
    return None


def _keeps_last_axis(ctx: Context, head: NodeProto, shape: tuple[int | str | None, ...]) -> bool:
    """Whether the original's flatten makes rows of ``x`` with its last axis whole (a known number of channels)."""
    rank, channels = len(shape), shape[-1]
    if not isinstance(channels, int) or channels <= 0:
        return False
    if head.op_type == "Flatten":
        return norm_axis(Attributes(head).get_int("axis", 1), rank) == rank - 1
    target = ctx.orig.canon(head.input[1]) if len(head.input) == 2 else None
    if not isinstance(target, Const):
        return False
    t = np.asarray(target.get())
    if t.dtype.kind not in "iu" or t.shape != (2,) or int(t[1]) != channels:
        return False
    leading = [d for d in shape[:-1] if isinstance(d, int)]
    return int(t[0]) == -1 or (len(leading) == rank - 1 and int(t[0]) == math.prod(leading))


def _same_op(ctx: Context, node: NodeProto, cand: NodeProto, ins: list[Fact], slot: int, channels: int, rank: int) -> bool:
    """Whether ``node`` is ``cand`` read channels-first: the same op, attributes and parameters (a binary op's
    constant the original's values along axis 1)."""
    if not is_default(cand) or cand.op_type != node.op_type or len(cand.input) != len(node.input) or len(cand.output) != 1:
        return False
    if plain_attributes(cand, ctx.orig.opset) != plain_attributes(node, ctx.orig.opset):
        return False
    for i, name in enumerate(cand.input):
        if i == slot:
            continue
        o, f = ctx.orig.canon(name), ins[i]
        if not isinstance(o, Const) or not isinstance(f, Const):
            return False
        want, got = np.asarray(o.get()), np.asarray(f.get())
        if node.op_type == "BatchNormalization":
            if want.shape != (channels,) or differs(got, want, "parameter") is not None:
                return False
        elif not _along_axis_1(got, want, channels, rank):
            return False
    return True


def _along_axis_1(got: np.ndarray, want: np.ndarray, channels: int, rank: int) -> bool:
    """Whether a constant broadcast against the channels-first tensor (rank ``rank``) gives channel ``c`` what the
    original's broadcast against ``[R, C]`` rows gives it: one value both, or ``C`` values along axis 1 here and
    along the last axis there."""
    if got.ndim > rank or want.ndim > 2:
        return False
    if want.size == 1 and got.size == 1:
        return differs(got.reshape(-1), want.reshape(-1), "constant") is None and got.dtype == want.dtype
    padded = (1,) * (rank - got.ndim) + got.shape
    expected = tuple(channels if i == 1 else 1 for i in range(rank))
    if padded != expected or want.shape not in ((channels,), (1, channels)):
        return False
    return differs(got.reshape(-1), want.reshape(-1), "constant") is None


def _output(ctx: Context, n: str, x: str, shape: tuple[int | str | None, ...], p: Layout) -> Fact:
    """The fact of the op's output: ``n`` (the original's output, rows) back in ``x``'s shape, laid out by ``p``."""
    for back, back_slot in ctx.orig.consumers_by_root(n):
        if back_slot != 0 or not is_default(back) or back.op_type != "Reshape" or len(back.input) != 2:
            continue
        if ctx.orig.canon(back.input[0]) != SameAs(n) or not _restores(ctx, back, x, shape):
            continue
        y = ctx.orig.canon(back.output[0])
        if isinstance(y, SameAs) and y.root and not lifted(y.layout):
            try:
                return SameAs(y.root, compose(y.layout, p))
            except ValueError:
                break
    steps: tuple[Step, ...] = (("reshape", tuple(_dim(d, x, i) for i, d in enumerate(shape)), True), ("layout", p))
    return ctx.views.add(n, steps)


def _dim(d: int | str | None, x: str, i: int) -> int | str:
    return d if isinstance(d, int | str) and d != "" else f"?{x}:{i}"


def _restores(ctx: Context, back: NodeProto, x: str, shape: tuple[int | str | None, ...]) -> bool:
    """Whether the original's Reshape ``back`` gives the rows ``x``'s shape: its target is ``Shape(x)`` (of the whole
    tensor), or constants equal to ``x``'s dims with at most one ``-1`` (the dim left over, whichever it is)."""
    target = back.input[1]
    producer = ctx.orig.producers.get(target)
    if producer is not None and is_default(producer) and producer.op_type == "Shape" and len(producer.input) == 1:
        attrs = Attributes(producer)
        whole = "start" not in attrs and "end" not in attrs
        return whole and ctx.orig.canon(producer.input[0]) == ctx.orig.canon(x)
    t = ctx.orig.canon(target)
    if not isinstance(t, Const):
        return False
    values = np.asarray(t.get())
    if values.dtype.kind not in "iu" or values.shape != (len(shape),) or int(np.count_nonzero(values == -1)) > 1:
        return False
    return all(int(v) == -1 or (isinstance(d, int) and int(v) == d) for v, d in zip(values, shape, strict=True))
