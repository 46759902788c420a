"""One graph's index while the cleanup passes edit it: built once, kept current by every edit.

The passes used to rebuild the graph's index and its node list after every change, and the
manager serialized every node to be able to put a worse graph back. Here every edit goes through
the workspace, which keeps the producer and reader maps current, remembers which nodes each pass
still has to look at (a worklist: only what a change touched), saves a node's bytes before its
first edit (undo) and writes the node list back once, at the end.

What callers can rely on:
- ``graph.node`` is not reordered or resized before :meth:`commit`; nodes are edited in place;
- :meth:`revert` puts every edited node back as it was and forgets the new nodes and constants;
- :meth:`commit` writes live nodes in an order where every tensor is made before it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, numpy_helper

from converter.graph import (
    FOLDABLE,
    GRAPH_OPS,
    Scope,
    TensorType,
    iter_graphs,
    referenced_names,
    set_transpose_perm,
    subgraphs,
    transpose_perm,
)
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS

_DROPPABLE = FOLDABLE | {"Constant"}  # nodes that only make a constant


class Workspace:
    """The live index of one graph: producers, readers (subgraph reads included), node order, worklists, undo."""

    def __init__(
        self,
        graph: GraphProto,
        value_of: Callable[[onnx.TensorProto], np.ndarray] | None = None,
        opset: int | None = None,
        types: Mapping[str, TensorType] | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.graph = graph
        # Scope answers "is this a constant, and what is it" (the shape of a tensor whose every dim ``types`` knows is
        # a constant too); its producer map is kept current here. A caller that indexed the graph already (as it
        # is now, nothing edited since) hands its index over, and reads it again after the passes.
        if scope is None or scope.graph is not graph:
            scope = Scope(graph, (), types if types is not None else {}, value_of=value_of, opset=opset)
        self.scope = scope
        self.producers = self.scope.producers
        self.outputs = self.scope.output_names
        self._readers: dict[str, dict[int, NodeProto]] = {}  # made from scope.uses when first asked
        self._order = self.scope.nodes  # the original order; new nodes hang after an anchor
        self._after: dict[int, list[NodeProto]] = {}
        self._removed: set[int] = set()
        self._new: set[int] = set()
        self._saved: dict[int, tuple[NodeProto, bytes]] = {}
        self._pending: dict[str, dict[int, NodeProto]] = {}
        self._perms: dict[int, list[int] | None] = {}
        self.new_initializers: list[onnx.TensorProto] = []
        self._transposes: list[NodeProto] = []  # the original ones, for each pass's first look
        self._inner_reads: dict[int, set[str]] = {}  # nodes holding subgraphs: the names those read
        self._holders: list[NodeProto] = []
        for n in self._order:
            op = n.op_type
            if op == "Transpose":
                self._transposes.append(n)
            elif op in GRAPH_OPS or n.domain not in DEFAULT_DOMAINS:
                inner = subgraphs(n)
                if inner:
                    self._inner_reads[id(n)] = set().union(*(referenced_names(g) for _, g in inner))
                    self._holders.append(n)
        self.transposes = len(self._transposes)
        self.reshaped = False  # nodes were added or removed
        # Every edit but one keeps "made before read" in the list order: reading an existing copy may not.
        self.unordered = False

    # -- reading ---------------------------------------------------------------------------------

    def readers(self, name: str) -> list[NodeProto]:
        """Live nodes that read ``name``, directly or inside one of their subgraphs, in a stable order."""
        return list(self._reader_map(name).values())

    def count_readers(self, name: str) -> int:
        return len(self._reader_map(name))

    def is_read(self, name: str) -> bool:
        return bool(self._reader_map(name)) or name in self.outputs

    def alive(self, node: NodeProto) -> bool:
        return id(node) not in self._removed

    def producer(self, name: str) -> NodeProto | None:
        return self.producers.get(name)

    def perm(self, node: NodeProto) -> list[int] | None:
        """A Transpose's perm (None when left to the default); read once per node."""
        key = id(node)
        if key not in self._perms:
            self._perms[key] = transpose_perm(node)
        return self._perms[key]

    def set_perm(self, node: NodeProto, perm: list[int]) -> None:
        self.touch(node)
        set_transpose_perm(node, perm)
        self._perms[id(node)] = list(perm)

    def transposed(self, name: str, perm: list[int]) -> str | None:
        """The output of an existing Transpose of ``name`` by ``perm``, if there is one."""
        for r in self._reader_map(name).values():
            if r.op_type == "Transpose" and r.input[0] == name and self.perm(r) == perm:
                self.unordered = True  # that Transpose may come after the node that will read it
                return r.output[0]
        return None

    def holds_graphs(self, node: NodeProto) -> bool:
        return id(node) in self._inner_reads

    def reads_inside(self, node: NodeProto, name: str) -> bool:
        """Whether one of ``node``'s subgraphs reads ``name`` (renaming its inputs would not reach it)."""
        inner = self._inner_reads.get(id(node))
        return inner is not None and name in inner

    def names_in_use(self) -> set[str]:
        """Every name this graph and the graphs inside it use: what NameAllocator would gather, mostly from the index."""
        g = self.graph
        taken = set(self.producers) | set(self.scope.uses) | set(self.scope.initializers)
        taken |= self.scope.input_names | self.outputs
        taken.update(t.values.name for t in g.sparse_initializer)
        taken.update(v.name for v in g.value_info)
        taken.update(n.name for n in self._order)
        for holder in self._holders:
            for _, sub in subgraphs(holder):
                for _, inner in iter_graphs(sub):
                    taken.update(i.name for i in inner.input)
                    taken.update(o.name for o in inner.output)
                    taken.update(t.name for t in inner.initializer)
                    taken.update(t.values.name for t in inner.sparse_initializer)
                    taken.update(v.name for v in inner.value_info)
                    for node in inner.node:
                        taken.add(node.name)
                        taken.update(node.input)
                        taken.update(node.output)
        return taken

    # -- the worklist ----------------------------------------------------------------------------

    def take(self, who: str) -> list[NodeProto]:
        """The Transposes pass ``who`` has to look at: on its first call all of them, then those marked since."""
        pending = self._pending.get(who)
        self._pending[who] = {}
        if pending is None:
            new = [n for after in self._after.values() for n in after if n.op_type == "Transpose"]
            return [n for n in self._transposes + new if id(n) not in self._removed]
        return list(pending.values())

    def mark(self, node: NodeProto) -> None:
        for pending in self._pending.values():
            pending[id(node)] = node

    def mark_around(self, name: str) -> None:
        """A Transpose of ``name`` appeared: the Transposes feeding ``name``'s readers may now move."""
        for r in self._reader_map(name).values():
            for inp in r.input:
                p = self.producers.get(inp)
                if p is not None and p.op_type == "Transpose":
                    self.mark(p)

    # -- editing ---------------------------------------------------------------------------------

    def touch(self, node: NodeProto) -> None:
        """Save ``node`` before its first edit (new nodes need no saving)."""
        key = id(node)
        if key not in self._saved and key not in self._new:
            self._saved[key] = (node, node.SerializeToString())

    def set_input(self, node: NodeProto, slot: int, name: str) -> None:
        old = node.input[slot] if slot < len(node.input) else ""
        if old == name:
            return
        self.touch(node)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name
        if old and old not in node.input and not (id(node) in self._inner_reads and self.reads_inside(node, old)):
            self._reader_map(old).pop(id(node), None)
        if name:
            self._reader_map(name)[id(node)] = node
            producer = self.producers.get(name)
            if producer is not None and producer.op_type == "Transpose":
                self.mark(producer)
        if node.op_type == "Transpose":
            self.mark(node)
            self.mark_around(name)

    def set_output(self, node: NodeProto, slot: int, name: str) -> None:
        old = node.output[slot]
        self.touch(node)
        node.output[slot] = name
        if self.producers.get(old) is node:
            del self.producers[old]
        self._made_by(name, node)

    def _made_by(self, name: str, node: NodeProto) -> None:
        """``node`` now makes ``name``: Transposes reading it may merge with it (and what was computed may now be a
        constant expression: the scope forgets what it found not to be one)."""
        self.producers[name] = node
        self.scope.edited()
        for r in self._reader_map(name).values():
            if r.op_type == "Transpose":
                self.mark(r)

    def retype(self, node: NodeProto, op_type: str) -> None:
        """Turn ``node`` into another op with no attributes (an identity Transpose into an Identity)."""
        self.touch(node)
        self.transposes += (op_type == "Transpose") - (node.op_type == "Transpose")
        node.op_type = op_type
        node.ClearField("attribute")

    def add_after(self, anchor: NodeProto, nodes: Iterable[NodeProto]) -> None:
        """Insert ``nodes`` (in order) right after ``anchor`` in the final node list."""
        slot = self._after.setdefault(id(anchor), [])
        for node in nodes:
            slot.append(node)
            self._new.add(id(node))
            for out in node.output:
                if out:
                    self._made_by(out, node)
            for name in node.input:
                if name:
                    self._reader_map(name)[id(node)] = node
            if node.op_type == "Transpose":
                self.transposes += 1
                self.mark(node)
                self.mark_around(node.input[0])
        self.reshaped = True

    def remove(self, node: NodeProto) -> None:
        key = id(node)
        self._removed.add(key)
        for name in node.input:
            if name:
                self._reader_map(name).pop(key, None)
        for name in self._inner_reads.get(key, ()):
            self._reader_map(name).pop(key, None)
        for out in node.output:
            if self.producers.get(out) is node:
                del self.producers[out]
        self.transposes -= node.op_type == "Transpose"
        self.reshaped = True

    def add_constant(self, name: str, value: np.ndarray) -> str:
        """A new initializer (written at commit if something still reads it)."""
        tensor = numpy_helper.from_array(np.array(value, order="C"), name)  # (ascontiguousarray makes a scalar 1-D)
        self.new_initializers.append(tensor)
        self.scope.initializers[name] = tensor
        return name

    # -- finishing -------------------------------------------------------------------------------

    def nodes(self) -> list[NodeProto]:
        """Live nodes: the original order, each followed by the nodes inserted after it."""
        out: list[NodeProto] = []
        for root in self._order:
            stack = [root]
            while stack:
                node = stack.pop()
                if id(node) not in self._removed:
                    out.append(node)
                after = self._after.get(id(node))
                if after:
                    stack.extend(reversed(after))
        return out

    def drop_released(self, released: set[str], vanished: set[str]) -> set[str]:
        """Released constants that nothing reads any more, with the Constant or ``FOLDABLE`` nodes that made
        them (and in turn what only those read: an Identity chain down to its initializer); returns the names."""
        dead: set[str] = set()
        frontier = [name for name in released if not self.is_read(name)]
        while frontier:
            name = frontier.pop()
            if name in dead:
                continue
            node = self.producers.get(name)
            if node is None:
                if name not in self.scope.input_names:
                    dead.add(name)  # an initializer (one this graph does not hold is not found at commit)
                continue
            if node.domain not in DEFAULT_DOMAINS or node.op_type not in _DROPPABLE:
                continue
            if any(self.is_read(out) for out in node.output if out):
                continue
            outs = [out for out in node.output if out]
            dead.update(outs)
            vanished.update(outs)
            self.remove(node)
            frontier.extend(inp for inp in node.input if inp and not self.is_read(inp))
        return dead

    def commit(self, dead: set[str], vanished: set[str]) -> None:
        """Write the node list and the new constants that are read; drop the ``dead`` constants and the
        value_info of ``vanished`` tensors that nothing reads or makes."""
        graph = self.graph
        if self.reshaped:
            nodes = self.nodes()
            if self.unordered:
                nodes = _made_before_read(nodes, self.producers)
            graph.ClearField("node")
            graph.node.extend(nodes)
        graph.initializer.extend(t for t in self.new_initializers if self.is_read(t.name))
        gone = {n for n in vanished | dead if not self.is_read(n) and n not in self.producers}
        _delete_named(graph.initializer, dead)
        _delete_named(graph.value_info, gone)

    def revert(self) -> None:
        for node, data in self._saved.values():
            node.ParseFromString(data)

    def _reader_map(self, name: str) -> dict[int, NodeProto]:
        found = self._readers.get(name)
        if found is None:
            found = {id(n): n for n in self.scope.uses.get(name, ()) if id(n) not in self._removed}
            self._readers[name] = found
        return found


def _delete_named(items: object, names: set[str]) -> None:
    if not names:
        return
    at = [i for i, item in enumerate(items) if item.name in names]  # type: ignore[attr-defined]
    if len(at) > 64:
        # One by one is quadratic in a long list: keep the others instead (value_info entries are small).
        kept = [item for item in items if item.name not in names]  # type: ignore[attr-defined]
        del items[:]  # type: ignore[index]
        items.extend(kept)  # type: ignore[attr-defined]
        return
    for i in reversed(at):
        del items[i]  # type: ignore[index]


def _made_before_read(nodes: list[NodeProto], producers: dict[str, NodeProto]) -> list[NodeProto]:
    """``nodes`` as they are when every input is made before it is read, else a stable topological order.

    Only names made by a node of this graph count (graph inputs, constants and outer names are
    there from the start).
    """
    made: set[str] = set()
    for node in nodes:
        if any(name in producers and name not in made for name in node.input if name):
            break
        made.update(node.output)
    else:
        return nodes
    # Depth first: each node after the producers of its inputs, otherwise in the given order.
    live = {id(n) for n in nodes}
    entered: set[int] = set()
    out: list[NodeProto] = []
    for root in nodes:
        stack: list[tuple[NodeProto, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if ready:
                out.append(node)
                continue
            if id(node) in entered:
                continue
            entered.add(id(node))
            stack.append((node, True))
            for name in reversed(node.input):
                p = producers.get(name) if name else None
                if p is not None and id(p) in live and id(p) not in entered:
                    stack.append((p, False))
    return out
