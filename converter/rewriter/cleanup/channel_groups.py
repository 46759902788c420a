"""Per-channel ops on a flattened view of a channels-last tensor, run on the channels-first tensor instead.

An exporter that applies ``BatchNorm1d`` to tokens flattens them first (timm's LeViT: ``bn(x.flatten(0, 1))
.reshape_as(x)``), so the normalization reads a rank-2 view whose last axis is the channel axis of the stream.
Such a *group*, from ``x`` (rank 3 or 4, channels last, ``C`` channels)::

    r = Reshape(x, [-1, C])           or Flatten(x, axis=rank-1)       [B, S, C] -> [B*S, C]: rows of channels
    n = BatchNormalization(r, s, b, m, v)                               per channel (axis 1 of a rank-2 tensor)
      | Mul/Add/Sub/Div(r, c)           c: [C], [1, C] or one value    per channel, broadcast along the rows
      ...                               (one or more such ops, each read only by the next)
    y = Reshape(n, target)            target: x's dims (constants), or Shape(x): back to x's shape

computes ``y[..., k] = f_k(x[..., k])`` for each channel ``k``: the flatten and its inverse only let the op see
the channel as the axis it works on. When ``x = Transpose(a, p)`` with ``a`` channels-first (``x``'s last axis is
``a``'s axis 1: ``[B, C, S]`` or ``[N, C, H, W]``), the same is::

    y' = BatchNormalization(a, s, b, m, v)     (a BatchNormalization normalizes axis 1 at any rank)
       | Mul/Add/Sub/Div(a, c')               (c' = c as [C, 1] or [C, 1, 1]: broadcast along axis 1)
    y  = Transpose(y', p)

one op per op of the group, no Reshape, and the Transpose below it, where it can go on (the layout optimizer
counts it as one movable node: layout/problem.py). The per-channel parameters are the same values; only a binary
op's constant changes its shape. :func:`match` says what is a group (the optimizer and the pass share it);
:class:`MoveChannelGroups` rewrites one where the chosen layout says its head runs channels-first. The certificate
proves the result on its own (verifier/certificate/ops/channel_groups.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, NodeProto

from converter.rewriter.cleanup import PassContext, PassResult
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, attribute, make_transpose, normalize_axis
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.cleanup.fold_rearranges import drop_unread

PER_CHANNEL_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
Dims = Callable[[str], Sequence[object] | None]  # a tensor's dims (an int where known), or None


@dataclass(frozen=True)
class Group:
    """A group (see the module docstring): its flatten, its per-channel ops in order, its way back."""

    head: NodeProto
    ops: tuple[NodeProto, ...]
    tail: NodeProto
    channels: int

    @property
    def x(self) -> str:
        return self.head.input[0]

    @property
    def y(self) -> str:
        return self.tail.output[0]

    @property
    def nodes(self) -> tuple[NodeProto, ...]:
        return (self.head, *self.ops, self.tail)

    def shape_of_x(self, ws: Workspace) -> NodeProto | None:
        """The ``Shape(x)`` the way back reads its target from, when that is all that reads it (it goes with the
        group), else None."""
        producer = ws.producer(self.tail.input[1])
        if producer is None or producer.op_type != "Shape" or ws.count_readers(producer.output[0]) != 1:
            return None
        return producer if producer.output[0] not in ws.outputs else None


def match(ws: Workspace, head: NodeProto, dims: Dims) -> Group | None:
    """The group ``head`` starts, or None.

    Args:
        ws: the graph's index (readers, producers, constants).
        head: a Reshape or Flatten, the candidate flatten.
        dims: the dims of a tensor (ints where known), for ``x``'s rank and channel count.
    """
    if not _default(head) or head.op_type not in ("Reshape", "Flatten") or not head.input or len(head.output) != 1:
        return None
    shape = dims(head.input[0])
    if shape is None or len(shape) not in (3, 4):
        return None
    channels = shape[-1]
    if not isinstance(channels, int) or channels <= 0 or not _flattens(ws, head, shape):
        return None
    ops: list[NodeProto] = []
    current = head.output[0]
    while True:
        nxt = _only_reader(ws, current)
        if nxt is None:
            return None
        if nxt.op_type == "Reshape" and _default(nxt) and nxt.input[0] == current:
            if ops and _restores(ws, nxt, head.input[0], shape):
                return Group(head, tuple(ops), nxt, channels)
            return None
        if not _per_channel(ws, nxt, current, channels):
            return None
        ops.append(nxt)
        current = nxt.output[0]


def _default(node: NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def _only_reader(ws: Workspace, name: str) -> NodeProto | None:
    """The one node that reads ``name`` (not a graph output, not read inside a subgraph), or None."""
    readers = ws.readers(name)
    if name in ws.outputs or len(readers) != 1 or ws.reads_inside(readers[0], name):
        return None
    return readers[0]


def _ints(ws: Workspace, name: str) -> list[int] | None:
    if not name or not ws.scope.source(name).is_constant:
        return None
    value = np.asarray(ws.scope.constant_value(name))
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" and value.ndim == 1 else None


def _flattens(ws: Workspace, head: NodeProto, shape: Sequence[object]) -> bool:
    """Whether ``head`` makes the rows of ``x``: rank 2, the last axis kept whole (the channel)."""
    rank = len(shape)
    if head.op_type == "Flatten":
        axis = attribute(head, "axis", 1)
        return isinstance(axis, int) and normalize_axis(axis, rank) == rank - 1
    target = _ints(ws, head.input[1]) if len(head.input) == 2 else None
    if target is None or len(target) != 2 or target[1] != shape[-1]:
        return False
    rows = target[0]
    leading = shape[:-1]
    return rows == -1 or (all(isinstance(d, int) for d in leading) and rows == math.prod(leading))  # type: ignore[arg-type]


def _restores(ws: Workspace, tail: NodeProto, x: str, shape: Sequence[object]) -> bool:
    """Whether ``tail`` reshapes the rows back to ``x``'s shape: ``Shape(x)``, or constants that are its dims (one
    ``-1`` at most, for a dim not known or any one)."""
    if len(tail.input) != 2:
        return False
    target = tail.input[1]
    producer = ws.producer(target)
    if producer is not None and producer.op_type == "Shape" and _default(producer) and producer.input[0] == x:
        return attribute(producer, "start", 0) == 0 and attribute(producer, "end", None) is None
    values = _ints(ws, target)
    if values is None or len(values) != len(shape) or values.count(-1) > 1:
        return False
    return all(v == -1 or (isinstance(d, int) and v == d) for v, d in zip(values, shape, strict=True))


def _per_channel(ws: Workspace, node: NodeProto, current: str, channels: int) -> bool:
    """Whether ``node`` works on the rows ``current`` channel by channel, with constant parameters."""
    if not _default(node) or not node.output or not node.output[0] or any(node.output[1:]):
        return False
    if node.op_type == "BatchNormalization":
        if len(node.input) != 5 or node.input[0] != current or attribute(node, "training_mode", 0):
            return False
        return all(current not in node.input[1:] and _constant_dims(ws, p) == [channels] for p in node.input[1:])
    if node.op_type in PER_CHANNEL_BINARY and len(node.input) == 2 and list(node.input).count(current) == 1:
        other = node.input[1 - list(node.input).index(current)]
        found = _constant_dims(ws, other)
        return found is not None and (math.prod(found) == 1 and len(found) <= 1 or found in ([channels], [1, channels]))
    return False


def _constant_dims(ws: Workspace, name: str) -> list[int] | None:
    if not name or not ws.scope.source(name).is_constant:
        return None
    return list(ws.scope.constant_tensor(name).dims)


class MoveChannelGroups:
    """Rewrite each group whose flatten reads a Transpose from channels-first, where the chosen layout moves it
    (without a chosen layout: wherever the Transpose brings the channel from axis 1, which adds no Transpose)."""

    name = "move_channel_groups"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        ws = ctx.workspace(graph)
        changes = 0
        for t_node in ws.take(self.name):
            if t_node.op_type != "Transpose" or not ws.alive(t_node) or t_node.domain not in DEFAULT_DOMAINS:
                continue
            perm = ws.perm(t_node)
            if perm is None or len(perm) not in (3, 4) or perm[-1] != 1 or ws.scope.source(t_node.input[0]).is_constant:
                continue
            for head in ws.readers(t_node.output[0]):
                if not ws.alive(t_node) or not head.input or head.input[0] != t_node.output[0]:
                    continue
                if ctx.guide is not None and not ctx.guide.moves(head, head.input[0], perm):
                    continue
                group = match(ws, head, lambda name: _dims(ws, name))
                if group is not None:
                    _move(ctx, ws, t_node, group, perm, self.name)
                    changes += 1
        return PassResult(bool(changes), changes)


def _dims(ws: Workspace, name: str) -> list[object] | None:
    t = ws.scope.type_of(name)
    return None if t is None or t.shape is None or t.conflict else list(t.shape)


def _move(ctx: PassContext, ws: Workspace, t_node: NodeProto, group: Group, perm: list[int], pass_name: str) -> None:
    """The group's ops on ``a`` (the Transpose's input), the Transpose after them; the group goes."""
    a, rank = t_node.input[0], len(perm)
    made: list[NodeProto] = []
    current, previous = a, group.head.output[0]
    for op in group.ops:
        out = ctx.names.fresh(f"{op.output[0]}_cf")
        moved = NodeProto()
        moved.CopyFrom(op)
        del moved.output[:]
        moved.output.append(out)
        moved.name = ctx.names.fresh(op.name or out)
        for slot, name in enumerate(op.input):
            if name == previous:
                moved.input[slot] = current
            elif op.op_type in PER_CHANNEL_BINARY:
                moved.input[slot] = _along_axis_1(ctx, ws, name, rank)
        made.append(ctx.tag(moved, pass_name))
        current, previous = out, op.output[0]
    restore = make_transpose(current, group.y, perm, ctx.names.fresh(f"{group.tail.name or group.y}_transpose"))
    made.append(ctx.tag(restore, pass_name))
    ctx.note_type(current, group.y, perm)
    target = group.tail.input[1]
    for node in group.nodes:
        ws.remove(node)
    for node in group.nodes[:-1]:
        ctx.vanished.add(node.output[0])
    ws.add_after(group.tail, made)
    drop_unread(ctx, ws, [target, *(group.head.input[1:])])
    if not ws.alive(t_node):
        return  # (the Shape of x was its last reader: it went with the target's arithmetic)
    if not ws.is_read(t_node.output[0]):
        ws.remove(t_node)
        ctx.vanished.add(t_node.output[0])
    else:
        ws.mark(t_node)


def _along_axis_1(ctx: PassContext, ws: Workspace, name: str, rank: int) -> str:
    """A per-channel constant (``[C]``, ``[1, C]``, or one value) as the channels-first tensor broadcasts it:
    ``[C, 1]`` at rank 3, ``[C, 1, 1]`` at rank 4 (one value stays as it is)."""
    dims = list(ws.scope.constant_tensor(name).dims)
    if math.prod(dims) == 1 and len(dims) <= 1:
        return name
    key = ("channels_first", name, rank)
    if key not in ctx.derived:
        value = np.asarray(ws.scope.constant_value(name)).reshape(-1)
        ctx.derived[key] = ws.add_constant(ctx.names.fresh(f"{name}_cf"), value.reshape((value.size,) + (1,) * (rank - 2)))
    ctx.released.add(name)
    return ctx.derived[key]
