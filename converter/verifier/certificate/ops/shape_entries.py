"""Integer vectors picked out of run-time shapes: two tensors that hold the same dims of the same tensors are equal.

An exporter reads sizes as ``Shape -> Gather -> Unsqueeze -> Concat``; another tool may write the same read in
another form, and the rewrite composes some (``Gather(Gather(Shape(a), p), i)`` is ``Gather(Shape(a), p[i])``:
onnxruntime's transpose optimizer writes the first, the cleanup's ``compose_shape_reads`` the second). Neither
reads a constant, so neither is a value the certificate can compare; what both hold is known symbolically.

A tensor's *entries* are its shape (rank 0 or 1) and, for each element, either an integer or ``(root, axis)``:
the run-time size of axis ``axis`` of the original tensor ``root`` (a dim shape inference knows is its integer,
read as :meth:`original.Original.shape` reads it, so checked against onnxruntime). They are computed, the same way
on both sides, through the ops that only select or arrange elements, never through arithmetic:

- ``Shape(x)`` (``start`` / ``end`` honoured), with ``x`` the original ``root`` laid out by ``P``:
  ``[(root, P[0]), (root, P[1]), ...]``, a unit axis the layout adds being a 1;
- ``Gather`` (axis 0, constant indices) and ``Slice`` (constant bounds) of a vector: the entries they pick;
- ``Concat`` (axis 0) of vectors: the entries one after the other;
- ``Unsqueeze`` of a scalar into ``[1]``, ``Squeeze`` of ``[1]`` into a scalar: the same entry;
- a small integer constant: its values.

Each is exact: the ops move int64 elements and change none. So a rewritten Gather (this rule is its second
fallback, after :func:`.shape.gathered_shape`) whose entries have a ``(root, axis)`` in them, when no counterpart
explains it, is the original tensor that has the same entries: the one of the same name first, then the first in
graph order. Entries with no symbolic element are constants, which other rules compare by value.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.context import Context
from converter.verifier.certificate.expressions import SMALL, picked
from converter.verifier.certificate.facts import EMPTY, SHAPE, Const, Fact, SameAs
from converter.verifier.certificate.nodes import Attributes, is_default
from converter.verifier.certificate.original import Original

Entry = int | tuple[str, int]  # an integer, or (root, axis): the run-time size of that axis of that original tensor
Entries = tuple[tuple[int, ...], tuple[Entry, ...]]  # (shape: () or (n,), the elements in order)

# The ops whose outputs' entries are followed (Shape aside): each only selects or arranges int64 elements.
SELECTING = frozenset({"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Identity"})


def same_entries(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """``node`` (no counterpart explained it) holds the entries of an original tensor: its output is that tensor.

    Args:
        ctx: the walk.
        node: the rewritten node.
        ins: the facts of its inputs.
    """
    if len(node.output) != 1 or not node.output[0] or not is_default(node) or node.op_type not in SELECTING:
        return False
    mine = _apply(node, lambda i, constant: _of_fact(ctx.orig, ins[i], constant), ctx.orig.opset)
    if mine is None or all(isinstance(e, int) for e in mine[1]):
        return False
    found = _index(ctx.orig).get(mine)
    if not found:
        return False
    name = node.output[0] if node.output[0] in found else found[0]
    ctx.facts[node.output[0]] = ctx.orig.canon(name)
    return True


# --- entries on both sides -------------------------------------------------------------------------------


class _Memo:
    """One original graph's entries, by tensor name (None: not a vector of entries), and its index by entries."""

    def __init__(self) -> None:
        self.of: dict[str, Entries | None] = {}
        self.by_entries: dict[Entries, list[str]] | None = None


_MEMOS: weakref.WeakKeyDictionary[Original, _Memo] = weakref.WeakKeyDictionary()


def _memo(orig: Original) -> _Memo:
    memo = _MEMOS.get(orig)
    if memo is None:
        memo = _MEMOS[orig] = _Memo()
    return memo


def _index(orig: Original) -> dict[Entries, list[str]]:
    """The tensors of ``orig``'s graph that Shape or a selecting op makes, by their entries (those with a
    symbolic element only), in graph order."""
    memo = _memo(orig)
    if memo.by_entries is None:
        index: dict[Entries, list[str]] = {}
        for n in orig.graph.node:
            if not is_default(n) or (n.op_type != "Shape" and n.op_type not in SELECTING) or len(n.output) != 1:
                continue
            value = _of_fact(orig, orig.canon(n.output[0]))
            if value is not None and not all(isinstance(e, int) for e in value[1]):
                index.setdefault(value, []).append(n.output[0])
        memo.by_entries = index
    return memo.by_entries


def _of_fact(orig: Original, fact: Fact, constant: bool = True) -> Entries | None:
    """The entries of a tensor known by ``fact`` (of either graph), or None (``constant`` False: None for a
    constant, whose value is then not read: the data of a Gather may be a weight)."""
    if isinstance(fact, Const):
        if not constant:
            return None
        array = np.asarray(fact.get())
        if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > SMALL:
            return None
        return (tuple(array.shape), tuple(int(v) for v in array.reshape(-1)))
    if not isinstance(fact, SameAs) or not fact.root or fact == EMPTY:
        return None
    if fact.root.startswith(SHAPE):  # the rewritten graph's whole Shape of a tensor in a layout (ops/shape.py)
        return _shape_of(orig, fact.root[len(SHAPE) :], fact.layout, 0, None)
    if fact.root.startswith("\0"):
        return None
    value = _of_root(orig, fact.root)
    if value is None or fact.layout is None:
        return value
    shape, entries = value
    if fact.layout == (None,) and shape == ():
        return ((1,), entries)  # a scalar with a unit axis: [x]
    if fact.layout == (0,) and len(shape) == 1:
        return value
    return None


def _of_root(orig: Original, root: str) -> Entries | None:
    """The entries of the original tensor ``root`` (a canonical root: its own fact), from the node that makes it."""
    scope = orig.owner(root)
    if scope is None:
        return None
    memo = _memo(scope)
    if root in memo.of:
        return memo.of[root]
    memo.of[root] = None  # (a cycle, in a malformed graph, ends here)
    node = scope.producers.get(root)
    value = None
    if node is not None and is_default(node) and len(node.output) == 1:
        if node.op_type == "Shape" and len(node.input) == 1:
            x = scope.canon(node.input[0])
            if isinstance(x, SameAs) and x.root and not x.root.startswith("\0"):
                attrs = Attributes(node)
                try:
                    start, end = attrs.get_int("start", 0), (attrs.get_int("end", 0) if "end" in attrs else None)
                    value = _shape_of(scope, x.root, x.layout, start, end)
                except TypeError:  # an attribute of another type (a malformed node)
                    value = None
        elif node.op_type in SELECTING:
            value = _apply(node, lambda i, constant: _of_fact(scope, scope.canon(node.input[i]), constant), scope.opset)
    memo.of[root] = value
    return value


def _shape_of(orig: Original, root: str, layout: tuple[int | None, ...] | None, start: int, end: int | None) -> Entries | None:
    """``Shape(x, start, end)`` of ``x`` = the original ``root`` laid out by ``layout``."""
    dims = orig.shape(root)
    if dims is None:
        return None
    axes = tuple(layout) if layout is not None else tuple(range(len(dims)))
    if any(a is not None and not 0 <= a < len(dims) for a in axes) or sum(a is not None for a in axes) != len(dims):
        return None
    rank = len(axes)
    lo = min(max(start + rank if start < 0 else start, 0), rank)
    hi = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    entries: list[Entry] = []
    for a in axes[lo:hi]:
        if a is None:
            entries.append(1)  # a unit axis the layout adds
            continue
        d = dims[a]
        entries.append(d if isinstance(d, int) else (root, a))
    return ((len(entries),), tuple(entries))


def _apply(node: NodeProto, entries_of: Callable[[int, bool], Entries | None], opset: int) -> Entries | None:
    """The entries of ``node``'s output from its inputs'. ``entries_of(i, constant)``: input ``i``'s (None: not known;
    ``constant`` False: None for a constant too). The first input must be a run-time vector (so that no weight is
    read); the others are read only then, and only when needed."""
    op = node.op_type
    if not node.input or not all(node.input[:1]) or (op == "Concat" and not all(node.input)):
        return None
    values: list[Entries | None]
    if op == "Concat":  # a run-time vector among the pieces first; the constant ones read only then
        runtime = [entries_of(i, False) for i in range(len(node.input))]
        if all(v is None for v in runtime):
            return None
        values = [v if v is not None else entries_of(i, True) for i, v in enumerate(runtime)]
    else:
        first = entries_of(0, False)
        if first is None:
            return None
        values = [first, *(entries_of(i, True) if node.input[i] else None for i in range(1, len(node.input)))]
    data = values[0]
    if data is None:
        return None
    shape, entries = data
    try:
        attrs = Attributes(node, opset)
        if op == "Identity":
            return data
        if op in ("Gather", "Slice"):
            if len(shape) != 1 or any(v is not None and not _all_ints(v) for v in values[1:]):
                return None
            params = [None if v is None else np.array(v[1], np.int64).reshape(v[0]) for v in values[1:]]
            chosen = picked(node, tuple(range(shape[0])), params)  # the positions it picks (checked in range)
            if chosen is None:
                return None
            return (tuple(chosen.shape), tuple(entries[int(i)] for i in chosen.reshape(-1)))
        if op == "Concat":
            if attrs.get_int("axis", 0) not in (0, -1) or any(v is None or len(v[0]) != 1 for v in values):
                return None
            joined = tuple(e for v in values if v is not None for e in v[1])
            return ((len(joined),), joined)
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get_ints("axes")
            if axes is None and len(values) > 1:
                axes = [e for e in values[1][1] if isinstance(e, int)] if values[1] is not None and _all_ints(values[1]) else None
                if axes is None and len(node.input) > 1 and node.input[1]:
                    return None  # axes computed at run time
            if op == "Unsqueeze" and shape == () and axes in ([0], [-1]):
                return ((1,), entries)
            if op == "Squeeze" and shape == (1,) and axes in (None, [0], [-1]):
                return ((), entries)
    except (TypeError, ValueError):  # an attribute of another type (a malformed node)
        return None
    return None


def _all_ints(value: Entries) -> bool:
    return all(isinstance(e, int) for e in value[1])
