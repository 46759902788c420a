"""Carrying a chosen layout into the graph: the cleanup's passes, told where to move each Transpose.

The rules have rewritten the layers the optimum converts (each with a Transpose in front of its Conv and one
behind). The optimum also says which other nodes run in the other layout (``Solution.moved``), which chains of
Reshapes take a Transpose in (``absorbing``), which chain ends are made in the other layout (``ends``), and which
tensors some readers want in the other layout while it is made as stored (``pairs``). :meth:`Guide.place` puts
the Transposes the last two need into the graph (a Transpose into the other layout and one back, which the
readers then take in); the cleanup's passes then move every Transpose through exactly the nodes the optimum
says (:meth:`Guide.moves`), fold the chains and cancel what meets its inverse. What is left is the optimum's
Transposes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from converter.graph import new_node, transpose_perm
from converter.rewriter.cleanup import PassContext
from converter.rewriter.cleanup._edit import attribute, make_transpose
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.layout.problem import CL, Solution, storage_perm, twin_shape_index


class Guide:
    """The cleanup's guide (``cleanup.Guide``) for one graph, from the optimum's ``Solution``."""

    def __init__(self, solution: Solution) -> None:
        self.solution = solution
        self._placed: dict[str, tuple[int, int]] = {}  # the way back of a placed pair -> (its storage, rank)

    def moves(self, node: NodeProto, read: str, perm: Sequence[int]) -> bool:
        s = self.solution
        if not node.output or node.output[0] not in s.moved:
            return False
        if read in s.cls:
            c, rank = s.cls[read], s.ranks[read]
        elif read in self._placed:
            c, rank = self._placed[read]
        else:  # a tensor a rule made after a layer's way back (channels-last, as every layer writes its result)
            c, rank = CL, len(perm)
        return tuple(perm) == storage_perm(1 - c, c, rank)

    def absorbs(self, node: NodeProto, read: str) -> bool:
        return bool(node.output) and node.output[0] in self.solution.absorbing

    def place(self, ws: object, ctx: PassContext) -> int:
        assert isinstance(ws, Workspace)
        s = self.solution
        placed = 0
        for name, twin in sorted(s.shape_twins.items()):
            _read_twin(ws, ctx, name, twin)
        for name, label in sorted(s.ends.items()):
            if ws.producer(name) is None:
                continue
            back = _pair(ws, ctx, name, s.cls[name], label, s.ranks[name], None)
            placed += self._note(back, s.cls[name], s.ranks[name])
        for name, keys in sorted(s.pairs.items()):
            if name not in s.cls:
                continue
            back = _pair(ws, ctx, name, s.cls[name], 1 - s.cls[name], s.ranks[name], set(keys))
            placed += self._note(back, s.cls[name], s.ranks[name])
        return placed

    def _note(self, back: str | None, stored: int, rank: int) -> int:
        if back is None:
            return 0
        self._placed[back] = (stored, rank)
        return 2


def _pair(ws: Workspace, ctx: PassContext, name: str, stored: int, label: int, rank: int, keys: set[str] | None) -> str | None:
    """``name`` into ``label`` and back: its readers (those whose first output is in ``keys``, or all) read the way
    back, a Transpose the cleanup then moves through them. The way back's name (None when nothing reads it)."""
    readers = [r for r in ws.readers(name) if keys is None or (r.output and r.output[0] in keys)]
    readers = [r for r in readers if name in r.input]  # a read inside a subgraph cannot be rewired here
    if not readers:
        return None
    there = ctx.names.fresh(f"{name}_{'cf' if label else 'cl'}")
    back = ctx.names.fresh(f"{name}_{'cl' if label else 'cf'}_back")
    into = make_transpose(name, there, storage_perm(stored, label, rank), ctx.names.fresh(f"{name}_to_layout"))
    out = make_transpose(there, back, storage_perm(label, stored, rank), ctx.names.fresh(f"{name}_from_layout"))
    anchor = ws.producer(name)
    nodes = [ctx.tag(into, "place_layout"), ctx.tag(out, "place_layout")]
    if anchor is not None:
        ws.add_after(anchor, nodes)
    else:  # a graph input: the Transposes go first
        ws.add_after(ws.nodes()[0], nodes) if ws.nodes() else None
        ws.unordered = True
    for r in readers:
        for slot, inp in enumerate(r.input):
            if inp == name:
                ws.set_input(r, slot, back)
    ctx.note_type(there, name, storage_perm(label, stored, rank))
    ctx.note_type(back, name)
    ctx.placed.update((there, back))
    return back


def _read_twin(ws: Workspace, ctx: PassContext, name: str, twin: str) -> None:
    """The Shapes of ``name = Transpose(x, p)`` read ``twin = Transpose(x, q)`` instead, through a Gather of the dims
    (``problem.shape_twins``), and the Transpose goes."""
    t, other = ws.producer(name), ws.producer(twin)
    if t is None or other is None or t.op_type != "Transpose" or other.op_type != "Transpose" or t.input[0] != other.input[0]:
        return
    perm, theirs = transpose_perm(t), transpose_perm(other)
    readers = ws.readers(name)
    if (
        perm is None
        or theirs is None
        or name in ws.outputs
        or not all(r.op_type == "Shape" and list(r.input) == [name] for r in readers)
    ):
        return
    index = twin_shape_index(list(perm), list(theirs))
    rank = len(index)
    for r in readers:
        given_start, given_end = attribute(r, "start", 0), attribute(r, "end", None)
        start = given_start if isinstance(given_start, int) else 0
        end = given_end if isinstance(given_end, int) else rank
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
        full = ctx.names.fresh(f"{r.output[0]}_of_twin")
        where = ws.add_constant(ctx.names.fresh(f"{r.output[0]}_dims"), np.asarray(index[start:end], dtype=np.int64))
        base = r.name or r.output[0]
        ctx.shape_reads.add(r.output[0])
        made = [
            new_node("Shape", [twin], [full], ctx.names.fresh(base)),
            new_node("Gather", [full, where], [r.output[0]], ctx.names.fresh(f"{base}_gather"), axis=0),
        ]
        ws.remove(r)
        ws.add_after(other, [ctx.tag(n, "place_layout") for n in made])
    ws.remove(t)
    ctx.vanished.add(name)
    ws.unordered = True  # the Shapes' readers may come before the twin
