"""The layout problem of one graph: every tensor channels-last or channels-first, chosen for the whole graph at once.

A dense layer becomes a 1x1 Conv, which reads and writes channels-first (CF: ``[N, C, H, W]``, or ``[B, C, S]``
for a token sequence); what the export computes stays channels-last (CL: ``[N, H, W, C]``, ``[B, S, C]``) unless
it has a channels-first form. A Transpose is paid exactly where a tensor is made in one layout and read in the
other. So each tensor gets a label, CL or CF (absolute: where its channel axis is stored, not whether it changed),
and the cost is the number of Transposes the labels imply. Written as a sum of costs over binary labels, every
term is submodular, so a minimum cut finds the optimum exactly (mincut.py): this module writes the terms.

Which tensors take part (the domain), and their storage in the original (the class): seeded by the candidate
layers (their activation and result are CL), carried through

- a Transpose that moves the channel axis between last and second (``[0, 2, 3, 1]``, ``[0, 3, 1, 2]``, or
  ``[0, 2, 1]`` at rank 3): its input and output are one tensor in two storages (a *semantic*), so the
  Transpose costs nothing where both sides agree;
- a node the cleanup's handler table moves Transposes through (rewriter/cleanup/handlers): the handler itself is
  asked (cleanup/probe.py) whether the node runs in the other layout and in which layout its outputs come. A
  node that can is *movable*: its label is free, its inputs are wanted in its label, its outputs made in it;
  outputs with no layout left (``Shape``, a reduction over every axis but the batch) are *layout-free*;
- a per-channel op on the flattened rows of a tensor and the Reshape back (LeViT's BatchNorm1d on tokens,
  cleanup/channel_groups.py): one movable node from the flatten to the way back, which channels-first is the op
  alone (a Shape of the tensor that only gives the way back its target goes with it);
- a chain of Reshapes, Transposes, Squeezes and Unsqueezes (a window partition, a head split or merge, a patch
  merge, a flatten): the chain's own permutation changes to absorb a Transpose at either end. What each of
  the four label pairs of its ends costs is read off the chain's element mapping (rearrange.py), as the fold
  pass (fold_rearranges.py) will compute it, and only where that pass can write the fold (``fold_rearranges.plan``;
  else the run it can fold, or none). A Transpose that reads the chain's end beside other readers goes with the
  chain (``Chain.branches``): it merges into the fold's Transpose, and vanishes when the two compose to nothing.
  A chain runs on through per-tensor QuantizeLinear and DequantizeLinear (the pairs a QDQ export puts around
  each of its ops): they act element by element, so they commute with any rearrangement; such a chain is priced
  stretch by stretch, as the fold pass writes it (``fold_rearranges.plan_through``).

Everything else keeps its layout (a fixed node: it wants its inputs as stored and makes its outputs as stored),
and so do the graph's inputs and outputs (the interface does not change).

The costs, in integer weights (mincut.py's capacities): a Transpose inside the graph ``W_T``; a Transpose at the
graph's edge (on a graph input, or making a graph output: feeding the model channels-first removes it)
``W_EDGE``; a LayerNormalization written out channels-first ``EPSILON`` per node it adds (more nodes, slower on a
CPU); and a bonus ``DELTA`` for each layer converted. ``W_T`` outweighs all the others together, so the optimum
has the fewest Transposes inside the graph; among those, the most layers converted; then the fewest at the edge
and the fewest LayerNorms written out. One Transpose serves every reader that wants a tensor in the other
layout (two auxiliary labels per tensor express "some reader wants the other layout").
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field

from onnx import GraphProto, NodeProto

from converter.graph import Scope, transpose_perm
from converter.rewriter.cleanup import PassContext
from converter.rewriter.cleanup import rearrange as ra
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, is_identity
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.cleanup.channel_groups import match as match_group
from converter.rewriter.cleanup.fold_rearranges import per_tensor as fold_per_tensor
from converter.rewriter.cleanup.fold_rearranges import plan as fold_plan
from converter.rewriter.cleanup.fold_rearranges import plan_through, segments, shape_reads_only_targets, stop_after, stop_before
from converter.rewriter.cleanup.fold_rearranges import step as chain_step
from converter.rewriter.cleanup.handlers import Decline, handler_for
from converter.rewriter.cleanup.probe import probe
from converter.rewriter.layout.mincut import INFINITE, SINK, SOURCE, Energy
from converter.rewriter.rules._engine import Candidate

CL, CF = 0, 1
_CHAIN_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})
_CHAIN_ANCHORS = frozenset({"Reshape", "Transpose"})  # a Squeeze or Unsqueeze alone is moved by its handler


def storage_perm(src: int, dst: int, rank: int) -> tuple[int, ...]:
    """The perm ``P`` with ``x in dst = Transpose(x in src, P)`` (the identity when ``src == dst``)."""
    if src == dst:
        return tuple(range(rank))
    if rank == 3:
        return (0, 2, 1)
    return (0, 2, 3, 1) if src == CF else (0, 3, 1, 2)


@dataclass
class Chain:
    """Reshapes, Transposes, Squeezes and Unsqueezes from ``start`` to ``end``, each tensor between read only by the next."""

    nodes: list[NodeProto]
    start: str
    end: str
    # (storage read at the start, storage made at the end) -> Transposes after folding; a side whose tensor is
    # outside the domain has only its stored layout
    costs: dict[tuple[int, int], int] = field(default_factory=dict)
    # Transposes that read the end (outside the domain) beside other readers: the fold makes the end a Transpose of
    # its pieces, and each of these merges into it (cancel_transposes), none left when they compose to nothing
    branches: list[NodeProto] = field(default_factory=list)


@dataclass
class Movable:
    node: NodeProto
    cls: int  # the storage of its inputs and outputs in the original
    extra: int = 0  # nodes the move adds (a LayerNormalization written out)
    free: bool = False  # no output keeps a layout: it follows its input at no cost


@dataclass
class Semantic:
    """One tensor in one or two storages (joined by a channel-moving Transpose of the original)."""

    members: list[str] = field(default_factory=list)
    root: str = ""  # the member its producer writes (the others are Transposes of it)
    edge: bool = False  # the root is a graph input


@dataclass
class Weights:
    """The integer weight of each kind of cost; each kind outweighs everything below it (when that fits 31 bits)."""

    transpose: int
    delta: int
    edge: int
    epsilon: int
    move: int = 1

    @classmethod
    def for_problem(cls, layers: int, added: int, edges: int, movable: int) -> Weights:
        """Weights that order the goals strictly (see the module docstring): moving a node needlessly costs the
        least (``move``), then a node a LayerNorm written out adds, a Transpose at the edge, a layer left out,
        and a Transpose inside the graph the most, each more than all the kinds below it together."""
        move = 1
        epsilon = movable * move + 1
        edge = added * epsilon + movable * move + 1
        delta = 2 * (edges + 1) * edge + added * epsilon + movable * move + 1
        transpose = (layers + 1) * delta + 1
        if transpose * 8 * (layers + edges + 8) < INFINITE:
            return cls(transpose, delta, edge, epsilon, move)
        # Too large to order every goal strictly within 31 bits: the same order, no longer strict.
        return cls(1 << 16, 1 << 8, 1 << 6, 1 << 2, 1)


@dataclass
class Solution:
    """What the optimum says, in the terms the rewrite and the cleanup use."""

    cls: dict[str, int]  # storage class of every domain tensor in the original
    converted: set[str]  # layer anchors to rewrite
    moved: set[str]  # first outputs of the nodes that run in the other layout
    absorbing: set[str]  # first outputs of the chain heads that take a Transpose in
    ends: dict[str, int]  # chain ends to be made in the other layout: tensor -> the layout
    pairs: dict[str, list[str]]  # tensor -> first outputs of readers that want it in the other layout
    ranks: dict[str, int]  # the rank of every domain tensor
    inside: int = 0  # Transposes inside the graph at the optimum
    edge: int = 0  # at its inputs and outputs
    written_out: int = 0  # LayerNormalizations written out channels-first
    value: int = 0
    # A Transpose read only by Shapes -> a Transpose of the same tensor whose shape they read instead (ShapeTwin)
    shape_twins: dict[str, str] = field(default_factory=dict)


_QUANTIZERS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
_STOPS = frozenset({"QuantizeLinear", "DequantizeLinear"})  # in a chain: per tensor (fold_rearranges.per_tensor)


class Problem:
    """The layout problem of one graph, built from the graph before any rewrite and the prepared candidates.

    Args:
        graph: the graph, as the original has it.
        scope: its index (producers, readers, constants, types).
        ws: the cleanup's index of the same graph, for probing handlers.
        ctx: a pass context for the probes (options, opset, the main graph's types).
        candidates: the layers the rules accepted in this graph.
        keep_all: every layer is converted, whatever it costs (the optimum places the Transposes).
    """

    def __init__(
        self,
        graph: GraphProto,
        scope: Scope,
        ws: Workspace,
        ctx: PassContext,
        candidates: list[Candidate],
        keep_all: bool,
        untwinned: frozenset[int] = frozenset(),
    ) -> None:
        self.graph, self.scope, self.ws, self.ctx = graph, scope, ws, ctx
        # Transposes read only by Shapes that read a twin's shape instead (see ``shape_twins``): no reader sees them
        self.twins: dict[int, tuple[NodeProto, NodeProto]] = shape_twins(scope, untwinned)
        self.keep_all = keep_all
        self.layers: dict[str, Candidate] = {c.anchor: c for c in candidates if c.layer is not None}
        self.interior: dict[int, str] = {}  # node id -> the anchor of the layer it belongs to
        for c in self.layers.values():
            for n in c.plan.removed:
                self.interior[id(n)] = c.anchor
        self.outputs = set(scope.output_names)
        # A graph that quantizes activations keeps its quantized tensors bit for bit: nothing in it is written out
        # in another form (a LayerNorm stays native). The whole graph, not only what reaches a quantizer: simpler,
        # and a quantized model's float LayerNorms nearly all feed one.
        self.quantized = any(n.op_type in _QUANTIZERS for n in graph.node)
        self._ranks: dict[str, int] = {}  # ranks shape inference did not find
        self._inferred_rank: dict[str, int | None] = {}  # rank() memo of what inference found (None: nothing)
        self.cls: dict[str, int] = {}
        self.parent: dict[str, str] = {}  # union-find over tensors: the members of a semantic
        self.merges: set[int] = set()  # channel-moving Transposes (ids)
        self.movable: dict[int, Movable] = {}
        self.member: dict[int, int] = {}  # a channel group's nodes after its head -> id of the head (its Movable)
        self.fixed: set[int] = set()
        self.chains: dict[int, Chain] = {}  # by id of the chain's first node
        self.in_chain: dict[int, Chain] = {}  # every node of a chain -> its chain
        self.boundary: dict[str, tuple[str, str]] = {}  # layer anchor -> (what it reads, what it makes)
        self._queue: deque[str] = deque()
        self._branch_ids: set[int] = set()  # Transposes priced with a chain (``Chain.branches``)
        self._root: list[ra.Dim] = []  # the dims of the last chain start ``_view`` read
        self._classify()
        misread = self._misread_twins()
        if misread:  # (rare) a twin the layout moves or folds away: built again, those Transposes seen as they are
            self.__init__(graph, scope, ws, ctx, candidates, keep_all, untwinned | misread)  # type: ignore[misc]

    # -- what the graph is ------------------------------------------------------------------------------

    def rank(self, name: str) -> int | None:
        """The tensor's rank as shape inference found it, or as a handler's plan showed it (ops of other domains
        that shape inference does not know, such as com.microsoft's QLinearAdd)."""
        inferred = self._inferred_rank.get(name, -1)
        if inferred == -1:  # asked first (a type lookup walks the scopes): kept, the types do not change here
            t = self.scope.type_of(name)
            inferred = self._inferred_rank[name] = None if t is None or t.shape is None or t.conflict else len(t.shape)
        return inferred if inferred is not None else self._ranks.get(name)

    def dims(self, name: str) -> list[ra.Dim] | None:
        """The tensor's dims (a symbol for each one not known; one per axis when only the rank is known)."""
        t = self.scope.type_of(name)
        if t is None or t.shape is None or t.conflict:
            rank = self._ranks.get(name)
            return None if rank is None else [f"?{name}:{i}" for i in range(rank)]
        return [d if isinstance(d, int | str) and d != "" else f"?{name}:{i}" for i, d in enumerate(t.shape)]

    def _runtime(self, name: str) -> bool:
        """Whether ``name`` is computed at run time: a tensor computed from constants alone is not (onnxruntime folds
        it, and any layout of it, before anything runs)."""
        return bool(name) and not self.scope.is_constant_expression(name)

    def _readers(self, name: str) -> list[NodeProto]:
        readers = self.scope.consumers(name)
        if self.twins and any(id(r) in self.twins for r in readers):
            return [r for r in readers if id(r) not in self.twins]
        return readers

    def _misread_twins(self) -> frozenset[int]:
        """The twins whose Shapes could not read the twin's output once the layout is carried in: the twin is a
        channel move (it goes when both sides agree) or inside a chain (its output vanishes in the fold), or the
        tensor both read is in the domain (it may be made in the other layout)."""
        bad = set()
        for key, (t, twin) in self.twins.items():
            chain = self.in_chain.get(id(twin))
            if id(twin) in self.merges or t.input[0] in self.cls or (chain is not None and chain.nodes[-1] is not twin):
                bad.add(key)
        return frozenset(bad)

    def find(self, name: str) -> str:
        root = name
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(name, name) != root:
            self.parent[name], name = root, self.parent[name]
        return root

    def _assign(self, name: str, c: int) -> bool:
        """Give ``name`` its class; False when it has the other one already (a conflict)."""
        if not self._runtime(name) or self.rank(name) not in (3, 4):
            return False
        if name in self.cls:
            return self.cls[name] == c
        self.cls[name] = c
        self.parent.setdefault(name, name)
        self._queue.append(name)
        return True

    def _boundary(self, c: Candidate) -> tuple[str, str]:
        """The tensors a layer reads and makes, as the layout sees them: its claim's, unless the layer's replacement
        reads another tensor through its first Transpose: the flattened rows inside a Reshape sandwich (rank 2) have
        the 4D tensor before the Reshape, and a QDQ layer that takes in its activation's QuantizeLinear and
        DequantizeLinear (they are removed, and made again behind the Transpose) has the float tensor before them.
        What it makes: the plan's output where the claim's is read only inside the layer (the rows a sandwich's
        last Reshape takes, whose rank inference may not know)."""
        x, y = c.layer.input, c.layer.output  # type: ignore[union-attr]
        removed = {id(n) for n in c.plan.removed}
        made_by_layer = (p := self.scope.producers.get(x)) is not None and id(p) in removed
        if made_by_layer or (self.rank(x) is not None and self.rank(x) not in (3, 4)):
            made = {o for n in c.replacement.nodes for o in n.output}
            first = next((n for n in c.replacement.nodes if n.op_type == "Transpose" and n.input[0] not in made), None)
            x = first.input[0] if first is not None else x
        readers = self._readers(y)
        inner = (  # the rows a sandwich's last Reshape takes, of a rank inference did not find
            self.rank(y) is None and bool(readers) and all(id(r) in removed and r.op_type == "Reshape" for r in readers)
        )
        if (inner or (self.rank(y) is not None and self.rank(y) not in (3, 4))) and c.plan.outputs:
            y = c.plan.outputs[0]
        return x, y

    def _classify(self) -> None:
        for c in self.layers.values():
            x, y = self.boundary[c.anchor] = self._boundary(c)
            rank = self.rank(x) or self.rank(y) or _replacement_rank(c)
            for name in (x, y):  # shape inference may not know them (ops of other domains): a layer keeps the rank
                if self.rank(name) is None and rank is not None:
                    self._ranks[name] = rank
            self._assign(x, CL)
            self._assign(y, CL)
        while self._queue:
            t = self._queue.popleft()
            producer = self.scope.producers.get(t)
            if producer is not None:
                self._visit(producer, t)
            for reader in self._readers(t):
                self._visit(reader, t)

    def _visit(self, node: NodeProto, t: str) -> None:
        key = self.member.get(id(node), id(node))  # a channel group stands for all its nodes
        if key in self.fixed or key in self.merges or key in self.movable or key in self.in_chain:
            if key in self.movable and self.movable[key].cls != self.cls[t]:
                self._fix(self.movable[key].node)
            return
        if node.domain not in DEFAULT_DOMAINS:
            if handler_for(node) is None:
                self.fixed.add(key)
                return
        op = node.op_type
        c, r = self.cls[t], self.rank(t)
        assert r is not None
        if op == "Transpose" and node.domain in DEFAULT_DOMAINS:
            perm = tuple(transpose_perm(node) or range(r)[::-1])
            for side in (node.input[0], node.output[0]):
                if self.rank(side) is None and len(perm) == r:
                    self._ranks[side] = r  # a Transpose keeps the rank
            if node.input[0] == t and perm == storage_perm(c, 1 - c, r) and self._assign(node.output[0], 1 - c):
                self._merge(node, t, node.output[0])
                return
            if node.output[0] == t and perm == storage_perm(1 - c, c, r) and self._assign(node.input[0], 1 - c):
                self._merge(node, node.input[0], t)
                return
        if key in self.interior:
            return  # a layer's own node: the layer stands for it
        if op in ("Reshape", "Flatten") and node.domain in DEFAULT_DOMAINS and self._group(node, t):
            return
        if op in _CHAIN_ANCHORS and node.domain in DEFAULT_DOMAINS and self._chain(node, t):
            return
        if handler_for(node) is not None:
            if self._probe(node, t):
                return
            if t not in node.input:
                return  # not from its output: it may still be reached from an input
        self._fix(node)

    def _merge(self, node: NodeProto, a: str, b: str) -> None:
        self.merges.add(id(node))
        ra_, rb = self.find(a), self.find(b)
        if ra_ != rb:
            self.parent[rb] = ra_

    def _fix(self, node: NodeProto) -> None:
        self.movable.pop(id(node), None)
        self.fixed.add(id(node))

    # -- movable nodes: ask the handler -----------------------------------------------------------------

    def _probe(self, node: NodeProto, t: str) -> bool:
        c, r = self.cls[t], self.rank(t)
        if t not in node.input:  # reached from an output: take the first computed input of the same rank
            ins = [i for i in node.input if self._runtime(i) and self.rank(i) == r]
            if not ins or not all(i not in self.cls or self.cls[i] == c for i in ins):
                return False
            read = ins[0]
        else:
            read = t
        co = [i for i in node.input if i != read and self._runtime(i) and self.rank(i) == r]
        plan = probe(self.ws, self.ctx, node, read, storage_perm(1 - c, c, r), assume=co)
        if isinstance(plan, Decline):
            return False
        if plan.replace is not None and node.op_type == "LayerNormalization" and self.quantized:
            return False  # a written-out LayerNorm rounds differently in the last bit, which a quantizer makes a step
        outs: list[str] = []
        for out, q in zip(node.output, plan.outputs, strict=False):
            if not out:
                continue
            rank = self.rank(out)
            if q is None or is_identity(q):
                continue  # no layout left
            if rank is None and len(q) in (3, 4):
                rank = self._ranks[out] = len(q)
            if rank not in (3, 4) or tuple(q) != storage_perm(1 - c, c, rank) or not self._runtime(out):
                return False
            outs.append(out)
        # Co-inputs the handler took as given (not as a constant laid out, an Expand, a lower-rank operand):
        # they take part, in the same class.
        taken = [node.input[s] for s, v in plan.inputs.items() if isinstance(v, str) and s < len(node.input) and v == node.input[s]]
        if any(self.cls.get(i, c) != c for i in [*taken, *outs, read]):
            return False
        for name in [read, *taken, *outs]:
            self._assign(name, c)
        extra = 0
        if plan.replace is not None and node.op_type == "LayerNormalization":
            extra = 7  # ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div (+ scale and bias, as before)
        self.movable[id(node)] = Movable(node, c, extra, free=not outs)
        return True

    def _group(self, head: NodeProto, t: str) -> bool:
        """A per-channel op on the flattened rows of ``t`` and the Reshape back (cleanup/channel_groups.py): one
        movable node from its head to its way back, with no layout-free output."""
        if not head.input or head.input[0] != t:
            return False
        group = match_group(self.ws, head, self.dims)
        if group is None or any(id(n) in self.interior for n in group.nodes):
            return False
        c, y, rank = self.cls[t], group.y, self.rank(t)
        if self.rank(y) is None and rank is not None:
            self._ranks[y] = rank  # the way back makes x's shape
        if self.rank(y) != rank or not self._assign(y, c):
            return False
        self.movable[id(head)] = Movable(head, c)
        shape = group.shape_of_x(self.ws)  # the way back's target, read from x: it goes with the group
        for n in [*group.nodes[1:], *([shape] if shape is not None else [])]:
            self.movable.pop(id(n), None)
            self.member[id(n)] = id(head)
        return True

    # -- chains of Reshapes and Transposes ------------------------------------------------------------

    def _single(self, name: str, shapes: bool = True) -> NodeProto | None:
        """The one reader that carries a chain on from ``name`` (with ``shapes``, Shapes aside: see ``_chain``)."""
        r = self._one_reader(name, shapes)
        return r if r is not None and r.op_type in _CHAIN_OPS else None

    def _one_reader(self, name: str, shapes: bool) -> NodeProto | None:
        """The one reader of ``name`` (with ``shapes``, Shapes aside), of the default domain, reading it first."""
        readers = self._readers(name)
        if shapes:
            readers = [r for r in readers if not (r.op_type == "Shape" and r.domain in DEFAULT_DOMAINS)]
        if name in self.outputs or len(readers) != 1:
            return None
        r = readers[0]
        if r.domain not in DEFAULT_DOMAINS or not r.input or r.input[0] != name:
            return None
        return None if id(r) in self.interior else r

    def _through_stops(self, nodes: list[NodeProto], shapes: bool, forward: bool) -> list[NodeProto] | None:
        """The per-tensor QuantizeLinear and DequantizeLinear past the run's end (or before its start) and the chain
        op after them (``fold_rearranges.stop_before``): a QDQ export's pairs between a head split's Reshape and
        its Transpose. None when there is none, or it leaves the run's tensors outside the domain."""

        def is_op(n: NodeProto) -> bool:
            return n.op_type in _CHAIN_OPS and id(n) not in self.in_chain and not self._is_merge(n)

        def is_stop(n: NodeProto) -> bool:
            free = id(n) not in self.in_chain and id(n) not in self.movable and id(n) not in self.fixed
            return free and n.output[0] not in self.cls and fold_per_tensor(self.ws, n)

        def made_by(name: str) -> NodeProto | None:
            p = self.scope.producers.get(name)
            if p is None or name in self.cls or len(p.output) != 1 or self._one_reader(name, shapes) is None:
                return None
            return p if id(p) not in self.interior and p.domain in DEFAULT_DOMAINS else None

        def single(name: str) -> NodeProto | None:
            return self._one_reader(name, shapes) if name not in self.cls else None

        if forward:
            found = stop_before(single, is_op, is_stop, nodes[-1].output[0])
        else:
            found = stop_after(made_by, is_op, is_stop, nodes[0].input[0])
        ids = {id(n) for n in nodes}
        return None if found is None or any(id(n) in ids for n in found) else found

    def _chain(self, node: NodeProto, t: str) -> bool:
        """Find the chain ``node`` is in, from the tensor ``t`` it reads or makes; False when it is no chain."""
        nodes = self._run(node, shapes=True)
        if not shape_reads_only_targets(self._readers, self.outputs, nodes):
            # A Shape of a tensor inside feeds more than the chain's own targets (the fold drops only those): the
            # chain is the run of tensors each read by the next alone.
            nodes = self._run(node, shapes=False)
        chain = Chain(nodes, nodes[0].input[0], nodes[-1].output[0])
        for n in nodes:
            self.in_chain[id(n)] = chain
        self.chains[id(nodes[0])] = chain
        for side in (chain.start, chain.end):
            if side not in self.cls:
                found = self._class_through(chain, side)
                if found is not None:
                    self._assign(side, found)
        return True

    def _run(self, node: NodeProto, shapes: bool) -> list[NodeProto]:
        """The run of chain ops through ``node``, each tensor between read by the next alone (with ``shapes``, and
        by Shapes), up to the tensors already in the domain."""
        nodes = [node]
        while nodes[0].input and nodes[0].input[0] not in self.cls:  # back to the first op of the run
            prev = self.scope.producers.get(nodes[0].input[0])
            if (
                prev is None
                or self._single(nodes[0].input[0], shapes) is not nodes[0]
                or prev.op_type not in _CHAIN_OPS
                or prev.domain not in DEFAULT_DOMAINS
                or id(prev) in self.interior
                or self._is_merge(prev)
                or id(prev) in self.in_chain
            ):
                through = self._through_stops(nodes, shapes, forward=False)
                if through is None:
                    break
                nodes[:0] = through
                continue
            nodes.insert(0, prev)
        while nodes[-1].output[0] not in self.cls:
            nxt = self._single(nodes[-1].output[0], shapes)
            if nxt is None or self._is_merge(nxt) or id(nxt) in self.in_chain:
                through = self._through_stops(nodes, shapes, forward=True)
                if through is None:
                    break
                nodes.extend(through)
                continue
            nodes.append(nxt)
        return nodes

    def _is_merge(self, node: NodeProto) -> bool:
        """Whether ``node`` is a Transpose that moves the channel axis of a tensor in the domain (at rank 3, [0, 2, 1]
        swaps any two axes: only a tensor known to have channels makes it a channel move)."""
        if node.op_type != "Transpose" or not node.input:
            return False
        if node.input[0] not in self.cls and node.output[0] not in self.cls:
            return False
        r = self.rank(node.input[0])
        perm = tuple(transpose_perm(node) or ())
        return r in (3, 4) and perm in (storage_perm(CL, CF, r), storage_perm(CF, CL, r))

    def _view(self, chain: Chain, start: int | None, end: int | None) -> tuple[ra.View, int] | None:
        """The end's view of the start when the start is read in ``start`` and the end made in ``end`` (None: as
        stored), and how many Transposes that takes before folding (``self._root``: the start's dims as read)."""
        dims = self.dims(chain.start)
        if dims is None:
            return None
        c0 = self.cls.get(chain.start)
        transposes = sum(n.op_type == "Transpose" for n in chain.nodes)
        if start is not None and c0 is not None and start != c0:
            r = len(dims)
            p = storage_perm(c0, start, r)
            dims = [dims[i] for i in p]  # the start as read
            view: ra.View | None = ra.transpose(ra.identity(dims), storage_perm(start, c0, r))
            transposes += 1
        else:
            view = ra.identity(dims)
        self._root = list(dims)
        for n in chain.nodes:
            view = chain_step(self.ws, self.ctx, n, view) if view is not None else None
        c1 = self.cls.get(chain.end)
        if view is not None and end is not None and c1 is not None and end != c1:
            view = ra.transpose(view, storage_perm(c1, end, len(view)))
            transposes += 1
        return (view, transposes) if view is not None else None

    def _class_through(self, chain: Chain, side: str) -> int | None:
        """The end's class from the start's (or the start's from the end's): where the channel axis lands whole."""
        if side == chain.end:
            c0 = self.cls.get(chain.start)
            found = self._view(chain, None, None)
            if c0 is None or found is None:
                return None
            view, _ = found
            r0 = len(self.dims(chain.start) or [])
            channel = r0 - 1 if c0 == CL else 1
            size = (self.dims(chain.start) or [])[channel]
            whole = ((channel, 1, ra.size_of(size)),)
            if len(view) not in (3, 4):
                return None
            if view[-1] == whole:
                return CL
            if view[1] == whole:
                return CF
            return None
        # from the end back: read the start's axes in the end's view
        c1 = self.cls.get(chain.end)
        found = self._view(chain, None, None)
        if c1 is None or found is None:
            return None
        view, _ = found
        if len(view) not in (3, 4):
            return None
        channel_axis = view[-1] if c1 == CL else view[1]
        dims = self.dims(chain.start) or []
        if len(channel_axis) != 1 or len(dims) not in (3, 4):
            return None
        root_axis, stride, size = channel_axis[0]
        if stride != 1 or size != ra.size_of(dims[root_axis]):
            return None  # a piece of an axis, not the whole of it
        return CL if root_axis == len(dims) - 1 else CF if root_axis == 1 else None

    def _branches(self, chain: Chain) -> list[NodeProto]:
        """The Transposes that read a chain's end beside other readers (DeBERTa's ``K^T`` of the keys its relative
        positions also read), when the end is outside the domain: they go with the chain's cost (see ``Chain``)."""
        if chain.end in self.cls:
            return []
        found = []
        for r in self._readers(chain.end):
            if r.op_type != "Transpose" or r.domain not in DEFAULT_DOMAINS or not r.input or r.input[0] != chain.end:
                continue
            if id(r) in self.merges or id(r) in self.in_chain or id(r) in self.interior or transpose_perm(r) is None:
                continue
            found.append(r)
        return found

    def _chain_costs(self, chain: Chain) -> dict[tuple[int, int], int]:
        starts = [CL, CF] if chain.start in self.cls else [None]
        ends = [CL, CF] if chain.end in self.cls else [None]
        branch_ids = {id(n) for n in chain.branches}
        # The end made as the fold makes it is paid when something other than the branches reads it.
        read = chain.end in self.outputs or any(id(r) not in branch_ids for r in self._readers(chain.end))
        costs: dict[tuple[int, int], int] = {}
        stops = any(n.op_type in _STOPS for n in chain.nodes)
        for a in starts:
            for b in ends:
                transposes = (
                    sum(n.op_type == "Transpose" for n in chain.nodes)
                    + (a is not None and a != self.cls[chain.start])
                    + (b is not None and b != self.cls[chain.end])
                )
                sa = a if a is not None else self.cls.get(chain.start, CL)
                sb = b if b is not None else self.cls.get(chain.end, CL)
                if stops:
                    costs[(sa, sb)] = self._through_cost(chain, a, b, transposes, read)
                    continue
                found = self._view(chain, a, b)
                planned = None
                if found is not None and found[1] >= 2:  # the fold pass folds it, when it can write the targets
                    planned = self._plan(chain, self._root, found[0], a, b)
                if planned is not None and found is not None:
                    view = found[0]
                    cost = _unsorted(view) if read or not chain.branches else 0
                    for n in chain.branches:
                        perm = transpose_perm(n) or []
                        moved = ra.transpose(view, perm) if sorted(perm) == list(range(len(view))) else None
                        cost += 0 if moved is not None and planned[2] is None and not _unsorted(moved) else 1
                else:
                    cost = self._suffix_cost(chain, a, b, transposes) + len(chain.branches)
                costs[(sa, sb)] = cost
        return costs

    def _through_cost(self, chain: Chain, a: int | None, b: int | None, transposes: int, read: bool) -> int:
        """The Transposes a chain through per-tensor QuantizeLinear and DequantizeLinear (a QDQ export's head split
        or merge) leaves when its start is read in ``a`` and its end made in ``b`` (None: as stored): folded stretch
        by stretch, each stop reading its tensor in the order that takes fewest (``fold_rearranges.plan_through``,
        as the fold pass writes it); when that is no fewer than the chain has, the fold pass leaves it, and so
        does the price."""
        dims = self.dims(chain.start)
        unfolded = transposes + len(chain.branches)
        if dims is None:
            return unfolded
        c0, c1 = self.cls.get(chain.start), self.cls.get(chain.end)
        root, view = list(dims), ra.identity(dims)
        if a is not None and c0 is not None and a != c0:
            root = [dims[i] for i in storage_perm(c0, a, len(dims))]  # the start as read
            moved = ra.transpose(ra.identity(root), storage_perm(a, c0, len(dims)))
            if moved is None:
                return unfolded
            view = moved

        def finish(v: ra.View) -> ra.View | None:
            if b is not None and c1 is not None and b != c1:
                return ra.transpose(v, storage_perm(c1, b, len(v)))
            return v

        stretches, _ = segments(chain.nodes)
        found = plan_through(root, view, stretches, lambda n, v: chain_step(self.ws, self.ctx, n, v), finish)
        if found is None or found.transposes >= transposes:
            return unfolded
        last = found.last[1]
        cost = found.transposes - _unsorted(last) + (_unsorted(last) if read or not chain.branches else 0)
        for n in chain.branches:  # merged into the fold's last Transpose (see _chain_costs)
            perm = transpose_perm(n) or []
            moved = ra.transpose(last, perm) if sorted(perm) == list(range(len(last))) else None
            cost += 0 if moved is not None and found.last[2][2] is None and not _unsorted(moved) else 1
        return cost

    def _plan(self, chain: Chain, root: list[ra.Dim], view: ra.View, a: int | None, b: int | None) -> tuple | None:
        """What the fold pass writes for the chain (``fold_rearranges.plan``), None when it cannot write a target.
        A token layer's Conv works on ``[B, C, 1, S]``: a rank-3 side channels-first that a layer makes (the start)
        or alone reads (the end) may reach the fold with that unit axis, which lets a 0 copy ``S`` where the rank-3
        form needs two -1s; either form is taken (the rules' Squeeze and Unsqueeze sit where the fold meets them)."""
        planned = fold_plan(root, view)
        if planned is not None:
            return planned
        start_unit = a == CF and len(root) == 3 and self.cls.get(chain.start) == CL and self._made_by_layer(chain.start)
        end_unit = b == CF and len(view) == 3 and self.cls.get(chain.end) == CL and self._read_by_layer(chain.end)
        if not (start_unit or end_unit):
            return None
        if start_unit:
            root = [*root[:2], 1, *root[2:]]
            view = tuple(tuple((x + (x >= 2), st, z) for x, st, z in axis) for axis in view)
        if end_unit:
            view = (*view[:2], (), *view[2:])
        return fold_plan(root, view)

    def _suffix_cost(self, chain: Chain, a: int | None, b: int | None, transposes: int) -> int:
        """The Transposes left when the whole chain does not fold: the fold pass may still fold a run that starts
        after one of its Reshapes (a tensor a Shape reads stops its run there), the nodes before staying as they are.
        The fewest over where that run may start; ``transposes`` (nothing folded) at most."""
        best = transposes
        if a is not None and a != self.cls.get(chain.start):
            return best  # a Transpose taken in at the start stays in front of any later run: nothing gained here
        for i in range(1, len(chain.nodes)):
            if chain.nodes[i - 1].op_type != "Reshape":
                continue
            dims = self.dims(chain.nodes[i - 1].output[0])
            if dims is None:
                continue
            stepped: ra.View | None = ra.identity(dims)
            for n in chain.nodes[i:]:
                stepped = chain_step(self.ws, self.ctx, n, stepped) if stepped is not None else None
            c1 = self.cls.get(chain.end)
            if stepped is None:
                continue
            view: ra.View = stepped
            after = sum(n.op_type == "Transpose" for n in chain.nodes[i:])
            if b is not None and c1 is not None and b != c1:
                moved = ra.transpose(view, storage_perm(c1, b, len(view)))
                if moved is None:
                    continue
                view = moved
                after += 1
            before = sum(n.op_type == "Transpose" for n in chain.nodes[:i])
            if after < 2 or self._plan(chain, list(dims), view, None, b) is None:
                continue
            best = min(best, before + _unsorted(view))
        return best

    def _made_by_layer(self, name: str) -> bool:
        p = self.scope.producers.get(name)
        return p is not None and id(p) in self.interior

    def _read_by_layer(self, name: str) -> bool:
        readers = self._readers(name)
        return name not in self.outputs and len(readers) == 1 and id(readers[0]) in self.interior

    # -- the costs ---------------------------------------------------------------------------------

    def semantics(self) -> dict[str, Semantic]:
        out: dict[str, Semantic] = {}
        for name in self.cls:
            out.setdefault(self.find(name), Semantic()).members.append(name)
        for sem in out.values():
            for m in sem.members:
                producer = self.scope.producers.get(m)
                if producer is None or id(producer) not in self.merges:
                    sem.root = m
            if not sem.root:
                sem.root = sem.members[0]
            # At the graph's edge exactly (not through elementwise ops, as the census counts an edge Transpose):
            # the optimum then puts such a Transpose right on the input or output, where a caller who feeds or
            # reads the model in the other layout can drop it.
            sem.edge = self._is_input(sem.root)
        return out

    def solve(self, pin: set[str] | None = None, original: bool = False) -> Solution:
        """The optimum.

        Args:
            pin: layers (anchors) converted whatever it costs.
            original: every label as the original has it (no layer converted, nothing moved): the original's count.
        """
        energy = Energy()
        for chain in self.chains.values():  # now that both ends' classes are known
            chain.branches = self._branches(chain)
            chain.costs = self._chain_costs(chain)
        sems = self.semantics()
        layer_var = {a: energy.variable() for a in self.layers}
        node_var = {k: energy.variable() for k, m in self.movable.items() if not m.free}
        chain_var = {k: energy.variable() for k, ch in self.chains.items() if ch.end in self.cls}
        added = sum(m.extra for m in self.movable.values())
        graph_inputs = sum(1 for s in sems.values() if s.edge)
        graph_outputs = sum(1 for m in self.cls if m in self.outputs)
        w = Weights.for_problem(len(self.layers), added, graph_inputs + graph_outputs, len(node_var) + len(chain_var))
        self._w = w

        def producer_var(sem: Semantic) -> int:
            p = self.scope.producers.get(sem.root)
            if p is None:
                return energy.fixed(self.cls[sem.root])
            anchor = self.interior.get(id(p))
            if anchor is not None and anchor in layer_var:
                return layer_var[anchor]
            key = self.member.get(id(p), id(p))  # a channel group's way back: the group's variable
            if key in node_var:
                return node_var[key]
            chain = self.in_chain.get(id(p))
            if chain is not None and chain.end == sem.root and id(chain.nodes[0]) in chain_var:
                return chain_var[id(chain.nodes[0])]
            return energy.fixed(self.cls[sem.root])

        sem_var = {root: producer_var(s) for root, s in sems.items()}
        records: list[tuple] = []  # what the value counts, to tell the Transposes apart in the report
        for root, sem in sems.items():
            x = sem_var[root]
            wants: list[int] = []  # the layout each reader wants, as a variable (a fixed one for a fixed label)
            outputs: list[int] = []  # the same for the graph outputs among the members
            for m in sem.members:
                if m in self.outputs:
                    outputs.append(energy.fixed(self.cls[m]))
                for reader in self._readers(m):
                    if id(reader) in self.merges and self.find(reader.output[0]) == root:
                        continue
                    anchor = self.interior.get(id(reader))
                    if anchor is not None:
                        x_in = self.boundary[anchor][0]
                        if anchor in layer_var and x_in in self.cls and self.find(x_in) == root:
                            wants.append(layer_var[anchor])
                        else:
                            wants.append(energy.fixed(self.cls[m]))
                        continue
                    key = self.member.get(id(reader), id(reader))  # (a channel group's Shape of x: the group's)
                    if key in node_var:
                        wants.append(node_var[key])
                        continue
                    if id(reader) in self.movable:  # layout-free: follows at no cost
                        continue
                    chain = self.chains.get(id(reader))
                    if chain is not None and chain.start == m:
                        self._chain_terms(energy, chain, x, chain_var.get(id(reader)), w, records)
                        continue
                    wants.append(energy.fixed(self.cls[m]))
            if sem.edge:  # a graph input: whatever reads it in the other layout, the Transpose sits on the input
                for direction, aux in self._wants(energy, x, [*wants, *outputs], w.edge).items():
                    records.append(("copy", x, direction, aux, None))
            else:  # counted once (``edge``), and as one inside the graph when a reader other than an output wants it
                anyone = self._wants(energy, x, [*wants, *outputs], w.edge)
                inner = self._wants(energy, x, wants, w.transpose - w.edge)
                for direction, aux in anyone.items():
                    records.append(("copy", x, direction, aux, inner.get(direction)))
        for k, chain in self.chains.items():  # chains whose start is outside the domain: a cost on the end alone
            if chain.start in self.cls:
                continue
            y = chain_var.get(k)
            full = self._full_costs(chain)
            if y is not None:
                for b in (CL, CF):
                    energy.pay_if(y, b, full[(CL, b)] * w.transpose)
            records.append(("chain", chain, None, y))
        for anchor, v in layer_var.items():
            if original:
                energy.pay_if(v, CF, INFINITE)
            elif self.keep_all or (pin and anchor in pin):
                energy.pay_if(v, CL, INFINITE)
            energy.pay_if(v, CL, w.delta)
        for k, v in node_var.items():
            m = self.movable[k]
            energy.pay_if(v, 1 - m.cls, INFINITE if original else m.extra * w.epsilon + w.move)
        for k, v in chain_var.items():
            energy.pay_if(v, 1 - self.cls[self.chains[k].end], INFINITE if original else w.move)
        labels, value = energy.solve()
        return self._solution(labels, value, sems, sem_var, layer_var, node_var, chain_var, records, original)

    def _wants(self, energy: Energy, x: int, wants: list[int], weight: int) -> dict[int, int]:
        """Cost ``weight`` once per direction when some reader wants the tensor (made in ``x``) in the other layout:
        one Transpose serves every such reader. The auxiliary label of each direction (CF: 1 when some reader wants
        channels-first; CL: 0 when some reader wants channels-last)."""
        wants = list(dict.fromkeys(wants))
        aux: dict[int, int] = {}
        if weight <= 0:
            return aux
        if any(v != SOURCE for v in wants) and x != SINK:
            a = aux[CF] = energy.variable()
            for v in wants:
                energy.pay_if_0_then_1(a, v, INFINITE)
            energy.pay_if_0_then_1(x, a, weight)
        if any(v != SINK for v in wants) and x != SOURCE:
            b = aux[CL] = energy.variable()
            for v in wants:
                energy.pay_if_0_then_1(v, b, INFINITE)
            energy.pay_if_0_then_1(b, x, weight)
        return aux

    def _full_costs(self, chain: Chain) -> dict[tuple[int, int], int]:
        """The chain's cost for every label pair (a side outside the domain keeps its stored layout)."""
        costs = chain.costs
        c0, c1 = self.cls.get(chain.start, CL), self.cls.get(chain.end, CL)
        out = {}
        for a in (CL, CF):
            for b in (CL, CF):
                sa = a if chain.start in self.cls else c0
                sb = b if chain.end in self.cls else c1
                out[(a, b)] = costs.get((sa, sb), 0)
        return out

    def _is_input(self, name: str) -> bool:
        """Whether ``name`` is an input of this graph, or (in a subgraph) a name of an outer graph that is one of its
        inputs: a Transpose right on it sits at the model's edge."""
        scope: Scope | None = self.scope
        while scope is not None:
            if name in scope.producers or name in scope.initializers:
                return False
            if name in scope.input_names:
                return True
            scope = scope.parent
        return False

    def _chain_weight(self, chain: Chain, w: Weights) -> int:
        """A chain that ends in a graph output (or starts at a graph input): what it costs beyond the original's
        Transposes sits at the model's edge."""
        return w.edge if chain.end in self.outputs or self._is_input(chain.start) else w.transpose

    def _chain_terms(self, energy: Energy, chain: Chain, x: int, y: int | None, w: Weights, records: list) -> None:
        full = self._full_costs(chain)
        c0, c1 = self.cls.get(chain.start, CL), self.cls.get(chain.end, CL)
        base = full[(c0, c1)]  # the original's own: a constant
        weight = self._chain_weight(chain, w)
        cost = {k: (v - base) * weight if v >= base else (v - base) * w.transpose for k, v in full.items()}
        if y is None:  # the end keeps its layout: a cost on the start's label alone
            for a in (CL, CF):
                energy.pay_if(x, a, cost[(a, c1)]) if cost[(a, c1)] >= 0 else energy.pay_if(x, 1 - a, -cost[(a, c1)])
        elif not energy.table(x, y, *(cost[(a, b)] for a in (CL, CF) for b in (CL, CF))):
            energy.pay_if(y, 1 - c1, INFINITE)  # not submodular (no chain we know of): the end keeps its layout
            for a in (CL, CF):
                energy.pay_if(x, a, max(cost[(a, c1)], 0))
        records.append(("chain", chain, x, y))

    def _solution(self, labels, value, sems, sem_var, layer_var, node_var, chain_var, records, original=False) -> Solution:  # noqa: ANN001
        converted = {a for a, v in layer_var.items() if labels[v] == CF}
        moved: set[str] = set()
        for anchor in converted:  # what a layer's replacement computes after its Conv's way back (a sandwich's rescale)
            y = self.boundary[anchor][1]
            if y in self.cls and labels[sem_var[self.find(y)]] != self.cls[y]:
                moved.update(_trailers(self.layers[anchor]))
        for k, v in node_var.items():
            m = self.movable[k]
            if labels[v] != m.cls:
                moved.add(m.node.output[0])
        sem_label = {root: labels[v] for root, v in sem_var.items()}
        for m in self.movable.values():
            if m.free:  # follows its input
                read = next((i for i in m.node.input if i in self.cls), None)
                if read is not None and sem_label[self.find(read)] != self.cls[read]:
                    moved.add(m.node.output[0])
        absorbing: set[str] = set()
        ends: dict[str, int] = {}
        for k, chain in self.chains.items():
            end_label = labels[chain_var[k]] if k in chain_var else self.cls.get(chain.end, CL)
            if chain.start in self.cls:
                x = sem_label[self.find(chain.start)]
                full = self._full_costs(chain)
                pure = full[(CL, CL)] == 0 and full[(CF, CF)] == 0 and full[(CL, CF)] and full[(CF, CL)]
                if x != self.cls[chain.start] and (not pure or end_label == x):
                    absorbing.add(chain.nodes[0].output[0])
            if k in chain_var and end_label != self.cls[chain.end]:
                ends[chain.end] = end_label
        pairs: dict[str, list[str]] = defaultdict(list)
        for root, sem in sems.items():
            x = sem_label[root]
            for m in sem.members:
                producer = self.scope.producers.get(m)
                if x != self.cls[m] or (producer is not None and id(producer) in self.merges):
                    continue
                for reader in self._readers(m):
                    if id(reader) in node_var and labels[node_var[id(reader)]] != self.cls[m]:
                        pairs[m].append(reader.output[0])
        inside = edge = 0
        for record in records:
            if record[0] == "chain":
                _, chain, x, y = record
                if original:
                    # The original as it is: when nothing is converted the cleanup does not run, so a chain keeps
                    # every Transpose it has (folding them into one is the cleanup's, paid for by a conversion).
                    inside += _raw_transposes(chain)
                    continue
                a = labels[x] if x is not None else CL  # (a start outside the domain keeps its layout: any label)
                b = labels[y] if y is not None else self.cls.get(chain.end, CL)
                full = self._full_costs(chain)
                here = full[(a, b)]
                if self._chain_weight(chain, self._w) == self._w.edge and self._w.edge != self._w.transpose:
                    base = full[(self.cls.get(chain.start, CL), self.cls.get(chain.end, CL))]
                    edge += max(here - base, 0)
                    here = min(here, base)
                inside += here
                continue
            _, x, direction, anyone, inner = record
            made = labels[anyone] == 1 and labels[x] == 0 if direction == CF else labels[anyone] == 0 and labels[x] == 1
            if not made:
                continue
            within = inner is not None and (labels[inner] == 1 if direction == CF else labels[inner] == 0)
            if within:
                inside += 1
            else:
                edge += 1
        self._branch_ids = {id(n) for chain in self.chains.values() for n in chain.branches}
        inside += self._untouched(original)
        written = sum(1 for k, v in node_var.items() if self.movable[k].extra and labels[v] != self.movable[k].cls)
        ranks = {name: self.rank(name) or 0 for name in self.cls}
        twins = {t.output[0]: twin.output[0] for t, twin in self.twins.values()}
        return Solution(dict(self.cls), converted, moved, absorbing, ends, dict(pairs), ranks, inside, edge, written, value, twins)

    def _untouched(self, original: bool = False) -> int:
        """The graph's Transposes of computed tensors that no label changes (neither a channel-moving one nor part
        of a chain): they stay as they are, whatever the optimum. A Transpose read only by Shapes that read its
        twin instead goes whenever the cleanup runs (it is the original's own when nothing is converted)."""
        count = 0
        for node in self.scope.nodes:
            if node.op_type != "Transpose" or node.domain not in DEFAULT_DOMAINS or not node.input:
                continue
            if id(node) in self.twins and not original:
                continue
            if id(node) in self.merges or id(node) in self.in_chain or not self._runtime(node.input[0]):
                continue
            if id(node) in self._branch_ids:
                continue  # priced with its chain
            if id(node) in self.interior:
                continue  # a layer's own (its rule folds it in)
            count += 1
        return count

    @property
    def weights(self) -> Weights:
        return self._w


def shape_twins(scope: Scope, excluded: frozenset[int] = frozenset()) -> dict[int, tuple[NodeProto, NodeProto]]:
    """Transposes read only by Shapes whose input another Transpose (the twin) also reads, by id: the Shapes can
    read the twin's output instead, ``Shape(Transpose(x, p)) = Gather(Shape(Transpose(x, q)), q^-1[p])``, and the
    Transpose goes. TorchScript's attention with a mask reads the size of the head-split keys ``[B, H, S, D]``
    while ``K^T`` is a Transpose of its own from the split: left as it is, that Transpose would hold the split,
    which a chain folds with ``K^T`` alone.

    Args:
        scope: the graph's index.
        excluded: Transposes (ids) not to take.
    """
    found: dict[int, tuple[NodeProto, NodeProto]] = {}
    outputs = set(scope.output_names)
    for node in scope.nodes:
        if node.op_type != "Transpose" or node.domain not in DEFAULT_DOMAINS or not node.input or id(node) in excluded:
            continue
        perm = transpose_perm(node)
        out = node.output[0]
        readers = scope.consumers(out)
        if perm is None or out in outputs or not readers or scope.is_constant_expression(node.input[0]):
            continue
        if not all(r.op_type == "Shape" and r.domain in DEFAULT_DOMAINS and list(r.input) == [out] for r in readers):
            continue
        for twin in scope.consumers(node.input[0]):
            if twin is node or twin.op_type != "Transpose" or twin.domain not in DEFAULT_DOMAINS or id(twin) in found:
                continue
            theirs = transpose_perm(twin)
            if theirs is None or len(theirs) != len(perm) or twin.output[0] in outputs or twin.input[0] != node.input[0]:
                continue
            if all(r.op_type == "Shape" for r in scope.consumers(twin.output[0])):
                continue  # read by Shapes alone too: it would go as well
            found[id(node)] = (node, twin)
            break
    return found


def twin_shape_index(perm: list[int], theirs: list[int]) -> list[int]:
    """The dims of ``Shape(Transpose(x, theirs))`` that make ``Shape(Transpose(x, perm))``."""
    inverse = [0] * len(theirs)
    for i, p in enumerate(theirs):
        inverse[p] = i
    return [inverse[p] for p in perm]


def _raw_transposes(chain: Chain) -> int:
    """The Transposes a chain holds as the graph has it (before the fold pass makes them one, or none), its
    branches with them."""
    return sum(n.op_type == "Transpose" for n in chain.nodes) + len(chain.branches)


def _unsorted(view: ra.View) -> int:
    """The Transposes a folded view takes: none when its pieces come in the root's order (Reshapes alone), else one."""
    pieces = [p for axis in view for p in axis]
    return 0 if pieces == sorted(pieces, key=lambda p: (p[0], -p[1])) else 1


def _trailers(c: Candidate) -> list[str]:
    """The first outputs of the nodes a layer's replacement puts after its last Transpose."""
    nodes = c.replacement.nodes
    last = max((i for i, n in enumerate(nodes) if n.op_type == "Transpose"), default=None)
    return [] if last is None else [n.output[0] for n in nodes[last + 1 :] if n.output]


def _replacement_rank(c: Candidate) -> int | None:
    """The rank of a layer's activation as its replacement reads it: the first Transpose's."""
    for n in c.replacement.nodes:
        if n.op_type == "Transpose":
            perm = transpose_perm(n)
            return len(perm) if perm else None
    return None


def layer_cost_sentence(extra: int) -> str:
    """Why a layer is declined, with the number: what converting it would cost at the optimum."""
    more = f"{extra} more Transpose{'s' * (extra != 1)}" if extra > 0 else "more Transposes"
    return f"converting it would cost {more} than leaving it, even with every tensor's layout chosen for the whole graph"


def ceil_units(value: int, unit: int) -> int:
    return math.ceil(value / unit) if unit else 0
