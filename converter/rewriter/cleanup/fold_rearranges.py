"""Fold a chain of Reshapes, Squeezes and Unsqueezes that holds two Transposes or more into one Transpose.

Before (ViT's attention after ``--tokens``: the token layout meets the heads' split)::

    t = Transpose(Squeeze(qkv_conv, [2]), [0, 2, 1])          [B, 3C, 1, S] -> [B, S, 3C]
    v = Reshape(t, [-1, S, 3, H, D])
    y = Transpose(v, [2, 0, 3, 1, 4])                         [3, B, H, S, D]

After::

    y = Transpose(Reshape(qkv_conv, [0, 3, H, D, S]), [1, 0, 2, 4, 3])

Any chain of those ops only moves elements, so ``rearrange.py`` can say where every element of its
last tensor comes from in its first: a list of pieces of the first tensor's axes. Splitting the first
tensor into those pieces (a Reshape), putting them in the order the last tensor reads them (one
Transpose) and merging them into its axes (a Reshape) is the same tensor. Each Reshape is left out when
it would do nothing, and the Transpose when its order is the identity (``k``'s way to ``K^T``:
``[B,H,S,D] -> [B*H,S,D] -> [B*H,D,S] -> [B,H,D,S]`` from a laid-out ``[B,H,D,S]`` needs none).

A chain: nodes each read by the next alone, none of their outputs a graph output, at least two
Transposes. A tensor inside the chain may also be read by a ``Shape`` whose dims go only into the chain's own
computed Reshape targets (dynamo's ``K^T`` on a dynamic sequence reads ``[B*H, S, D]`` back from the shape of
``[B, H, S, D]``): folded, nothing reads those targets, and the expression goes with the chain.

Sizes come from shape inference (``PassContext.types``: the original's tensors keep their values under the
rewrite, so their shapes stand); a symbolic dim is kept whole (``rearrange.py``). A computed Reshape target
is read as the dims inference found for its output: numbers with one left for what the others leave, or
numbers and products of the inputs' symbols (``[N, S, 4, 16]`` on a dynamic sequence), which the fold writes
as 0 and -1, so the result holds at any size. A chain whose sizes are not known, or whose Reshape cuts a
symbolic dim, stays as it is.

Through quantization: a QDQ export wraps each rearrangement in its own pairs (``DQ -> Reshape -> Q -> DQ ->
Transpose -> Q``). A QuantizeLinear or DequantizeLinear with a scalar scale and zero point (:func:`per_tensor`)
computes each element from that element alone, so it gives the same tensor in any layout: a chain runs on
through such nodes (only between two of its ops: a pair in front of a Conv keeps its place). Each stretch of them
(a *stop*) is folded where it stands: the nodes before it are written as a Reshape (and a Transpose only where
none will do) into the tensor the stop reads *in some order of its axes*, the stop's nodes are copied onto that
tensor, and the order left over is carried into the next stretch, where it folds with the chain's next Transpose
(:func:`plan_through` chooses the orders). Each copied node so reads a Transpose of the tensor it read before,
which is what the certificate proves a per-tensor QuantizeLinear by; gathered at the chain's end instead, they
would read tensors the original never had.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, NodeProto

from converter.rewriter.cleanup import PassContext, PassResult
from converter.rewriter.cleanup import rearrange as ra
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, attribute, inverse, is_identity, make_transpose, new_node
from converter.rewriter.cleanup._workspace import Workspace

_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze"})
_PER_ELEMENT = frozenset({"QuantizeLinear", "DequantizeLinear"})
# A stop whose tensor cannot be had without a Transpose tries every order of its axes up to this rank (else
# the original's own order alone).
_ORDERS_UP_TO_RANK = 5


class FoldRearranges:
    name = "fold_rearranges"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        ws = ctx.workspace(graph)
        if not ctx.types or graph is not ctx.model.graph:
            return PassResult(False)  # sizes are known for the main graph only
        changes = 0
        for t_node in ws.take(self.name):
            if t_node.op_type != "Transpose" or not ws.alive(t_node):
                continue
            folded, tried = None, None
            # Through tensors Shapes read, else (when that does not fold) not; through stops, else (the chain's own
            # stretch alone, as before stops were run through) not.
            for shapes, stops in ((True, True), (False, True), (True, False), (False, False)):
                nodes = _chain(ws, t_node, shapes, stops)
                if nodes == tried:
                    continue
                tried = nodes
                transposes = sum(n.op_type == "Transpose" for n in nodes)
                if any(n.op_type in _PER_ELEMENT for n in nodes):
                    if not transposes:
                        continue  # (through stops: folded only where it leaves fewer Transposes, see _fold)
                    if ctx.guide is not None and not ctx.settled:
                        # A Transpose the chosen layout moves through a stop's pair is in such a chain on its way
                        # (between the Q and the DQ): folded now, it would stop there. Such chains fold once the
                        # moves are done.
                        ctx.postponed.append(t_node)
                        break
                elif transposes < 2 or all(n.op_type == "Transpose" for n in nodes):
                    continue  # (Transposes alone merge in cancel_transposes, and leave no Reshape behind)
                if _awaits(ctx, ws, nodes):
                    ctx.postponed.append(t_node)
                    break
                folded = _fold(ctx, ws, nodes)
                if folded is not None:
                    break
            if folded is None:
                continue
            nodes, made = folded
            anchor = nodes[-1]
            for n in nodes:
                ws.remove(n)
            for n in nodes[:-1]:
                ctx.vanished.add(n.output[0])
            ws.add_after(anchor, [ctx.tag(n, self.name) for n in made])
            drop_unread(ctx, ws, [name for n in nodes for name in n.input[1:] if name])
            changes += 1
        return PassResult(bool(changes), changes)


def _awaits(ctx: PassContext, ws: Workspace, nodes: list[NodeProto]) -> bool:
    """Whether the chain's head is to take in a Transpose (the chosen layout's ``absorbs``) that has not reached it
    yet: the moves bring it one node a round, and a fold made before would leave it in front of the chain. Once the
    moves are done (``ctx.settled``) nothing waits."""
    guide, head = ctx.guide, nodes[0]
    if guide is None or ctx.settled or head.op_type == "Transpose" or not head.input:
        return False
    producer = ws.producer(head.input[0])
    return (producer is None or producer.op_type != "Transpose") and guide.absorbs(head, head.input[0])


def drop_unread(ctx: PassContext, ws: Workspace, names: list[str]) -> None:
    """What computed the folded nodes' targets and axes, now read by nothing (an exporter's
    ``Shape -> Slice -> Concat``): its nodes go, its constants are released."""
    frontier = list(names)
    while frontier:
        name = frontier.pop()
        if ws.is_read(name):
            continue
        node = ws.producer(name)
        if node is None:
            ctx.released.add(name)  # an initializer: dropped at the end when nothing reads it
            continue
        outs = [out for out in node.output if out]
        if node.domain not in DEFAULT_DOMAINS or ws.holds_graphs(node) or any(ws.is_read(out) for out in outs):
            continue
        ws.remove(node)
        ctx.vanished.update(outs)
        frontier.extend(inp for inp in node.input if inp)


def _movable(ws: Workspace, node: NodeProto) -> bool:
    return node.op_type in _OPS and node.domain in DEFAULT_DOMAINS and len(node.output) == 1 and not ws.holds_graphs(node)


def per_tensor(ws: Workspace, node: NodeProto) -> bool:
    """Whether ``node`` is a QuantizeLinear or DequantizeLinear with a constant scalar scale and zero point: each
    element from that element alone, the same in any layout (a chain runs on through it)."""
    if node.op_type not in _PER_ELEMENT or node.domain not in DEFAULT_DOMAINS or len(node.output) != 1:
        return False
    if len(node.input) < 2 or not node.input[1] or attribute(node, "block_size", 0):
        return False
    for name in node.input[1:3]:
        if name and (not ws.scope.source(name).is_constant or len(ws.scope.constant_tensor(name).dims) != 0):
            return False
    return True


def stop_before(
    single: Callable[[str], NodeProto | None], is_op: Callable[[NodeProto], bool], is_stop: Callable[[NodeProto], bool], name: str
) -> list[NodeProto] | None:
    """The per-tensor nodes (a stop) from ``name`` on and the chain op after them: ``[Q, DQ, op]`` when ``name`` is
    read by a QuantizeLinear alone, it by a DequantizeLinear alone and that by a chain op alone. None when the
    stretch does not end in a chain op (the pair then stays where it is, outside the chain).

    Args:
        single: the one reader that may carry a chain on from a tensor, or None.
        is_op: whether a node is a chain op.
        is_stop: whether a node is one a chain runs through (:func:`per_tensor`).
        name: the tensor the stretch starts from.
    """
    found: list[NodeProto] = []
    while len(found) < 8:
        node = single(name)
        if node is None or not node.input or node.input[0] != name:
            return None
        found.append(node)
        if is_op(node):
            return found if len(found) > 1 else None
        if not is_stop(node):
            return None
        name = node.output[0]
    return None


def stop_after(
    made_by: Callable[[str], NodeProto | None], is_op: Callable[[NodeProto], bool], is_stop: Callable[[NodeProto], bool], name: str
) -> list[NodeProto] | None:
    """The chain op and the per-tensor nodes after it up to ``name`` (``[op, Q, DQ]``), looking back from the
    tensor a chain op reads; None when the stretch does not start at a chain op.

    Args:
        made_by: the producer of a tensor when that tensor may vanish into a chain (read by the next node alone),
            else None.
        is_op: whether a node is a chain op.
        is_stop: whether a node is one a chain runs through (:func:`per_tensor`).
        name: the tensor the chain op after the stretch reads.
    """
    found: list[NodeProto] = []
    while len(found) < 8:
        node = made_by(name)
        if node is None or not node.input:
            return None
        found.insert(0, node)
        if is_op(node):
            return found if len(found) > 1 else None
        if not is_stop(node):
            return None
        name = node.input[0]
    return None


def _inner(ws: Workspace, name: str, shapes: bool) -> bool:
    """Whether ``name`` may vanish: read by one node (with ``shapes``, besides Shapes: see
    :func:`shape_reads_only_targets`), directly, and not a graph output."""
    readers = _next_readers(ws.readers(name), shapes)
    return name not in ws.outputs and len(readers) == 1 and not ws.reads_inside(readers[0], name)


def _next_readers(readers: list[NodeProto], shapes: bool) -> list[NodeProto]:
    """The readers of a chain's tensor that may carry the chain on: all but the Shapes (with ``shapes``)."""
    return [r for r in readers if not (shapes and r.op_type == "Shape" and r.domain in DEFAULT_DOMAINS)]


def shape_reads_only_targets(
    readers: Callable[[str], list[NodeProto]], outputs: Collection[str], nodes: list[NodeProto], limit: int = 64
) -> bool:
    """Whether every ``Shape`` that reads a tensor inside the chain ``nodes`` (not its first input or last output)
    feeds, through shape arithmetic read by nothing else, only the computed targets of the chain's own Reshapes:
    then the chain folds with them and the arithmetic goes (``drop_unread``).

    Args:
        readers: the nodes that read a tensor (the graph's index).
        outputs: the graph's outputs.
        nodes: the chain, in order.
        limit: the most nodes of arithmetic followed.
    """
    ours = {id(n) for n in nodes}
    targets = {(id(n), name) for n in nodes if n.op_type == "Reshape" for name in n.input[1:2]}
    inner = [n.output[0] for n in nodes[:-1]]
    frontier = [r for name in inner for r in readers(name) if id(r) not in ours]
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > limit or node.domain not in DEFAULT_DOMAINS or any(a.g.node or a.graphs for a in node.attribute):
            return False
        if node.op_type in _OPS and node.input and node.input[0] in inner:
            return False  # a second reader of the chain's data
        for out in node.output:
            if not out:
                continue
            if out in outputs:
                return False
            for r in readers(out):
                if (id(r), out) in targets and r.input[0] != out:
                    continue
                if id(r) in ours:
                    return False
                frontier.append(r)
    return True


def _chain(ws: Workspace, t_node: NodeProto, shapes: bool, stops: bool = True) -> list[NodeProto]:
    """The longest run of chain ops through ``t_node``, each read only by the next (with ``shapes``, and by Shapes
    that feed only the run's own targets; with ``stops``, on through per-tensor stops)."""
    nodes = _run(ws, t_node, shapes, stops)
    if not shapes or shape_reads_only_targets(ws.readers, ws.outputs, nodes):
        return nodes
    return _run(ws, t_node, False, stops)


def _run(ws: Workspace, t_node: NodeProto, shapes: bool, stops: bool = True) -> list[NodeProto]:
    """The longest run of chain ops through ``t_node``, each tensor between read by the next alone (with
    ``shapes``, and by Shapes; with ``stops``, on through per-tensor QuantizeLinear and DequantizeLinear)."""
    nodes = [t_node]

    def made_by(name: str) -> NodeProto | None:
        prev = ws.producer(name)
        return prev if prev is not None and len(prev.output) == 1 and _inner(ws, name, shapes) else None

    def single(name: str) -> NodeProto | None:
        return _next_readers(ws.readers(name), shapes)[0] if _inner(ws, name, shapes) else None

    def is_op(node: NodeProto) -> bool:
        return _movable(ws, node)

    def is_stop(node: NodeProto) -> bool:
        return stops and per_tensor(ws, node)

    while True:
        prev = ws.producer(nodes[0].input[0])
        if prev is None or not _movable(ws, prev) or not _inner(ws, prev.output[0], shapes):
            through = stop_after(made_by, is_op, is_stop, nodes[0].input[0])
            if through is None or any(id(n) in {id(m) for m in nodes} for n in through):
                break
            nodes[:0] = through
            continue
        nodes.insert(0, prev)
    while _inner(ws, nodes[-1].output[0], shapes):
        (nxt,) = _next_readers(ws.readers(nodes[-1].output[0]), shapes)
        if not _movable(ws, nxt) or nxt.input[0] != nodes[-1].output[0]:
            through = stop_before(single, is_op, is_stop, nodes[-1].output[0])
            if through is None or any(id(n) in {id(m) for m in nodes} for n in through):
                break
            nodes.extend(through)
            continue
        nodes.append(nxt)
    return nodes


def _dims(ctx: PassContext, name: str) -> list[ra.Dim] | None:
    t = ctx.types.get(name) if ctx.types else None
    if t is None or t.shape is None or t.conflict:
        return None
    # A dim nothing knows is a size of its own: a symbol no other dim has.
    return [d if isinstance(d, int | str) and d != "" else f"?{name}:{i}" for i, d in enumerate(t.shape)]


def _told(d: ra.Dim, names: frozenset[str]) -> ra.Size | None:
    """A dim of a computed Reshape target as a size: a number, or a product of numbers and ``names`` (the graph
    inputs' symbols: the input's ``S`` of a head split's ``[N, S, heads, dh]``, a window partition's ``4*N``);
    None for anything else (one inference made up, or an expression such as ``T//20 - 1`` that the certificate's
    own inference does not tell either)."""
    if isinstance(d, int):
        return (d, ())
    size = ra.size_of(d)
    return size if size[1] and set(size[1]) <= names else None


def _input_symbols(ctx: PassContext) -> frozenset[str]:
    """The symbolic dims of the model's inputs."""
    return frozenset(
        d.dim_param
        for vi in ctx.model.graph.input
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
        for d in vi.type.tensor_type.shape.dim
        if d.dim_param
    )


def _computed_reshape(ctx: PassContext, node: NodeProto, view: ra.View) -> ra.View | None:
    """The view after a Reshape whose target is computed: the sizes inference found for its output, numbers with
    one size left for what the others leave (a dynamic batch), else each a number or a product of numbers and the
    graph inputs' symbols (``[N, S, 4, 16]`` of a head split that reads ``N`` and
    ``S`` from ``Shape``), the one it cannot tell what the others leave. Only sizes so told are followed: the
    certificate tells the same ones with its own inference, and proves what the fold writes from them."""
    out = _dims(ctx, node.output[0])
    if out is None:
        return None
    numbers = ra.resolve(view, [(d, ()) if isinstance(d, int) else None for d in out])
    after = None if numbers is None else ra.reshape(view, numbers)
    if after is not None:
        return after  # every size a number but one (a dynamic batch)
    names = _input_symbols(ctx)
    if any(s[1] and not set(s[1]) <= names for s in ra.dims_of(view)):
        return None  # the chain's own sizes are not all told
    sizes = ra.resolve(view, [_told(d, names) for d in out])
    return None if sizes is None else ra.reshape(view, sizes)


def _axes(ws: Workspace, node: NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name in ("axes", "perm"):
            return list(a.ints)
    if len(node.input) > 1 and node.input[1] and ws.scope.source(node.input[1]).is_constant:
        value = np.asarray(ws.scope.constant_value(node.input[1]))
        if value.dtype.kind in "iu" and value.ndim <= 1:
            return [int(v) for v in value.reshape(-1)]
    return None


def step(ws: Workspace, ctx: PassContext, node: NodeProto, view: ra.View) -> ra.View | None:
    """The view after ``node``; None when it cannot be told."""
    if node.op_type in _PER_ELEMENT:
        return view if per_tensor(ws, node) else None  # each element from itself: the same view
    args = _axes(ws, node)
    if node.op_type == "Reshape":
        if any(a.name == "allowzero" and a.i for a in node.attribute) and args is not None and 0 in args:
            return None
        if args is None:  # a computed target: the sizes inference found for the output
            return _computed_reshape(ctx, node, view)
        sizes = ra.target_sizes(view, args)
        return None if sizes is None else ra.reshape(view, sizes)
    if args is None:
        return None
    if node.op_type == "Transpose":
        return ra.transpose(view, args)
    return ra.unsqueeze(view, args) if node.op_type == "Unsqueeze" else ra.squeeze(view, args)


def _start(ws: Workspace, ctx: PassContext, nodes: list[NodeProto]) -> tuple[int, list[ra.Dim]] | None:
    """Where the chain can start and the first tensor's dims: found at the first tensor with known dims,
    carried back through the Transposes, Squeezes and Unsqueezes before it."""
    names = [nodes[0].input[0], *(n.output[0] for n in nodes)]
    for i, name in enumerate(names):
        dims = _dims(ctx, name)
        if dims is None:
            continue
        j = i
        while j > 0 and nodes[j - 1].op_type != "Reshape":
            back = _back(ws, nodes[j - 1], dims)
            if back is None:
                break
            dims, j = back, j - 1
        return j, dims
    return None


def _back(ws: Workspace, node: NodeProto, dims: list[ra.Dim]) -> list[ra.Dim] | None:
    """The input's dims from the output's, through a Transpose, Squeeze or Unsqueeze (or a per-tensor stop)."""
    if node.op_type in _PER_ELEMENT:
        return list(dims)
    args = _axes(ws, node)
    if args is None:
        return None
    if node.op_type == "Transpose":
        if sorted(args) != list(range(len(dims))):
            return None
        out: list[ra.Dim] = [0] * len(dims)
        for i, p in enumerate(args):
            out[p] = dims[i]
        return out
    if node.op_type == "Unsqueeze":
        gone = {a + len(dims) if a < 0 else a for a in args}
        return [d for i, d in enumerate(dims) if i not in gone]
    rank = len(dims) + len(args)
    added = {a + rank if a < 0 else a for a in args}
    rest = iter(dims)
    return [1 if i in added else next(rest) for i in range(rank)]


def _fold(ctx: PassContext, ws: Workspace, nodes: list[NodeProto]) -> tuple[list[NodeProto], list[NodeProto]] | None:
    """The nodes of the chain that fold (from where its sizes are known) and what replaces them."""
    found = _start(ws, ctx, nodes)
    if found is None:
        return None
    first, dims = found
    nodes = nodes[first:]
    while nodes and nodes[0].op_type in _PER_ELEMENT:
        nodes = nodes[1:]  # (a chain starts at one of its ops: a stop's node keeps the dims)
    if any(n.op_type in _PER_ELEMENT for n in nodes):
        return _fold_through(ctx, ws, nodes, dims)
    if sum(n.op_type == "Transpose" for n in nodes) < 2:
        return None
    if not shape_reads_only_targets(ws.readers, ws.outputs, nodes):
        return None  # (from where its sizes are known, a Shape inside feeds a target before it)
    source = ra.identity(dims)
    view: ra.View | None = source
    for node in nodes:
        view = step(ws, ctx, node, view)  # type: ignore[arg-type]
        if view is None:
            return None
    made = _write(ctx, ws, nodes, dims, view)
    return None if made is None else (nodes, made)


def segments(nodes: Sequence[NodeProto]) -> tuple[list[list[NodeProto]], list[list[NodeProto]]]:
    """A chain split at its stops: the stretches of chain ops, and the stops between them (one fewer)."""
    stretches: list[list[NodeProto]] = [[]]
    stops: list[list[NodeProto]] = []
    for n in nodes:
        if n.op_type in _PER_ELEMENT:
            if stretches[-1]:
                stops.append([])
                stretches.append([])
            stops[-1].append(n)
        else:
            stretches[-1].append(n)
    return stretches, stops


@dataclass
class Through:
    """What the fold writes for a chain through stops (:func:`plan_through`)."""

    transposes: int  # the Transposes it writes
    # per stop: the dims of the tensor the stretch before it starts from, the order ``q`` of the axes the stop reads
    # its tensor in (``Transpose(tensor, q)``), the fold's plan of the stretch (``plan``) and the view it makes
    stops: list[tuple[list[ra.Dim], tuple[int, ...], tuple, ra.View]]
    last: tuple[list[ra.Dim], ra.View, tuple]  # the last stretch: its start's dims, the end's view, the plan


def unsorted(view: ra.View) -> int:
    """The Transposes a folded view takes: none when its pieces come in the root's order (Reshapes alone), else one."""
    pieces = [p for axis in view for p in axis]
    return 0 if pieces == sorted(pieces, key=lambda p: (p[0], -p[1])) else 1


def plan_through(
    dims: list[ra.Dim],
    view: ra.View,
    stretches: Sequence[Sequence[NodeProto]],
    advance: Callable[[NodeProto, ra.View], ra.View | None],
    finish: Callable[[ra.View], ra.View | None] = lambda v: v,
) -> Through | None:
    """The fewest Transposes a chain with stops folds into, and how (None when a stretch cannot be told or written).

    At each stop the stretch before it is folded into the stop's tensor in an order of its axes: where one order
    takes no Transpose (its pieces in the root's order: Reshapes alone), that one, and the order left over goes on
    into the next stretch (a Transpose later is never worse than one now); where every order takes one, each order
    is tried with what it leaves the stretches after it (up to rank ``_ORDERS_UP_TO_RANK``; above, the tensor's
    own order).

    Args:
        dims: the dims of the chain's first tensor.
        view: the view of the first stretch's input from that tensor (the identity, or a Transpose taken in).
        stretches: the chain's stretches of ops (:func:`segments`), one more than its stops.
        advance: the view after a node (:func:`step`).
        finish: what the chain's end goes through after the last stretch (a Transpose into another layout).
    """
    memo: dict[tuple[int, tuple[int, ...]], Through | None] = {}

    def walk(k: int, dims: list[ra.Dim], view: ra.View | None) -> Through | None:
        for n in stretches[k]:
            view = advance(n, view) if view is not None else None
        if view is None:
            return None
        if k == len(stretches) - 1:
            final = finish(view)
            planned = plan(dims, final) if final is not None else None
            return None if final is None or planned is None else Through(unsorted(final), [], (dims, final, planned))
        order = _in_order(view)
        in_order = ra.transpose(view, order) if order is not None else None
        if order is not None and in_order is not None and plan(dims, in_order) is not None:
            orders = [order]
        elif len(view) <= _ORDERS_UP_TO_RANK:
            orders = [tuple(q) for q in itertools.permutations(range(len(view)))]
        else:
            orders = [tuple(range(len(view)))]
        best: Through | None = None
        for q in orders:
            laid = ra.transpose(view, q)
            planned = plan(dims, laid) if laid is not None else None
            if laid is None or planned is None:
                continue
            if (k, q) not in memo:
                after = [_dim(s) for s in ra.dims_of(laid)]
                memo[(k, q)] = walk(k + 1, after, ra.transpose(ra.identity(after), inverse(q)))
            rest = memo[(k, q)]
            if rest is None:
                continue
            cost = unsorted(laid) + rest.transposes
            if best is None or cost < best.transposes:
                best = Through(cost, [(dims, q, planned, laid), *rest.stops], rest.last)
        return best

    return walk(0, dims, view)


def _in_order(view: ra.View) -> tuple[int, ...] | None:
    """The order of ``view``'s axes that puts its pieces in the root's order (unit axes after the axis before
    them), when there is one."""
    keys: list[tuple[tuple[int, int], int]] = []
    last = (-1, 0)
    for i, axis in enumerate(view):
        if axis:
            last = (axis[0][0], -axis[0][1])
        keys.append((last, i))
    order = tuple(sorted(range(len(view)), key=lambda i: keys[i]))
    laid = ra.transpose(view, order)
    return order if laid is not None and not unsorted(laid) else None


def _dim(size: ra.Size) -> ra.Dim:
    """A size as a dim (:func:`rearrange.size_of` reads it back)."""
    known, names = size
    if not names:
        return known
    if known == 1 and len(names) == 1:
        return names[0]
    return "*".join([*([str(known)] if known != 1 else []), *names])


def _fold_through(
    ctx: PassContext, ws: Workspace, nodes: list[NodeProto], dims: list[ra.Dim]
) -> tuple[list[NodeProto], list[NodeProto]] | None:
    """A chain with stops folded stretch by stretch (:func:`plan_through`), when that leaves fewer Transposes. The
    stretches at either end that stay as they are (no Transpose, read and made in their own order: a layer's
    Squeeze before its output's pair) are left out of the fold, nodes and all. What is removed and what replaces it."""
    if not shape_reads_only_targets(ws.readers, ws.outputs, nodes):
        return None
    stretches, stops = segments(nodes)
    if not stops or any(not s for s in stretches):
        return None
    found = plan_through(dims, ra.identity(dims), stretches, lambda n, v: step(ws, ctx, n, v))
    if found is None or found.transposes >= sum(n.op_type == "Transpose" for n in nodes):
        return None
    orders = [q for _, q, _, _ in found.stops]
    kept = [
        not any(n.op_type == "Transpose" for n in stretch)
        and (k == 0 or is_identity(orders[k - 1]))
        and (k == len(stops) or is_identity(orders[k]))
        for k, stretch in enumerate(stretches)
    ]
    lo = next(k for k, keep in enumerate(kept) if not keep)  # (some stretch changes: fewer Transposes)
    hi = max(k for k, keep in enumerate(kept) if not keep)
    removed = [n for k in range(lo, hi + 1) for n in (*stretches[k], *(stops[k] if k < hi else ()))]
    if not shape_reads_only_targets(ws.readers, ws.outputs, removed):  # a Shape inside feeds a target left out
        lo, hi = 0, len(stretches) - 1
        removed = nodes
    x, out = stretches[lo][0].input[0], stretches[hi][-1].output[0]
    base = stretches[hi][-1].name or out
    made: list[NodeProto] = []
    for k in range(lo, hi):
        start, q, planned, view = found.stops[k]
        if _unchanged(start, view):
            laid = x  # the tensor in that order already
        else:
            laid = ctx.names.fresh(f"{stops[k][0].input[0]}_{''.join(map(str, q))}")
            made.extend(_write_plan(ctx, ws, x, laid, planned, base))
            ctx.note_type(laid, stops[k][0].input[0], inverse(q))
        for n in stops[k]:
            copy = NodeProto()
            copy.CopyFrom(n)  # attributes and metadata kept; its name, what it reads and what it writes are new
            copy.name = ctx.names.fresh(n.name or n.output[0])
            del copy.input[0], copy.output[:]
            copy.input.insert(0, laid)
            laid = ctx.names.fresh(f"{n.output[0]}_{''.join(map(str, q))}")
            copy.output.append(laid)
            ctx.note_type(laid, n.output[0], inverse(q))
            made.append(copy)
        x = laid
    if hi < len(stops):  # the stretches after it stay: the stop after ``hi`` reads its tensor as it is
        start, q, planned, view = found.stops[hi]
    else:
        start, view, planned = found.last
    if not _unchanged(start, view):
        made.extend(_write_plan(ctx, ws, x, out, planned, base))
    elif made:
        made[-1].output[0] = out  # the last stop makes the end as it is
    else:
        return None
    return removed, made


def _unchanged(dims: list[ra.Dim], view: ra.View) -> bool:
    """Whether ``view`` is the tensor of ``dims`` itself (its pieces in order, its dims the same): nothing to write."""
    return not unsorted(view) and ra.dims_of(view) == [ra.size_of(d) for d in dims]


def plan(dims: list[ra.Dim], final: ra.View) -> tuple[list[int] | None, list[int], list[int] | None] | None:
    """What the fold writes for a chain from a tensor of ``dims`` to the view ``final``: the target of the Reshape
    into the pieces (None: not needed), the Transpose's perm (the identity: none), the target of the Reshape into
    the final axes (None: the Transpose makes them). None when a target cannot be written (two symbolic sizes that no 0 copies:
    the chain then stays as it is). The layout problem asks it too, so that it prices only the folds made.

    Args:
        dims: the chain's first tensor's dims.
        final: its last tensor's view of the first.
    """
    pieces = [p for axis in final for p in axis]
    ordered = sorted(pieces, key=lambda p: (p[0], -p[1]))  # the first tensor's order
    perm = [ordered.index(p) for p in pieces]
    split = [p[2] for p in ordered]
    into = None
    if is_identity(perm):  # no Transpose: one Reshape from the first tensor to the last, where it can be written
        direct = _target(ra.dims_of(final), [ra.size_of(d) for d in dims])
        if direct is not None:
            return None, perm, direct
    if split != [ra.size_of(d) for d in dims]:
        into = _target(split, [ra.size_of(d) for d in dims])
        if into is None:
            return None
    final_sizes = ra.dims_of(final)
    back = None
    if is_identity(perm) or final_sizes != split_after(split, perm):  # (no Transpose: the last tensor is a Reshape)
        back = _target(final_sizes, split_after(split, perm))
        if back is None:
            return None
    return into, perm, back


def _write(ctx: PassContext, ws: Workspace, nodes: list[NodeProto], dims: list[ra.Dim], final: ra.View) -> list[NodeProto] | None:
    """Reshape into the pieces, one Transpose into the final order, Reshape into the final axes."""
    planned = plan(dims, final)
    if planned is None:
        return None
    return _write_plan(ctx, ws, nodes[0].input[0], nodes[-1].output[0], planned, nodes[-1].name or nodes[-1].output[0])


def _write_plan(ctx: PassContext, ws: Workspace, x: str, out: str, planned: tuple, base: str) -> list[NodeProto]:
    """The nodes of a fold's ``plan`` from ``x`` to ``out`` (none when ``x`` is ``out``'s tensor already)."""
    into, perm, back = planned
    made: list[NodeProto] = []
    if into is not None:
        y = ctx.names.fresh(f"{base}_pieces")
        made.append(_reshape(ctx, ws, x, y, into, base))
        x = y
    if not is_identity(perm):
        y = out if back is None else ctx.names.fresh(f"{base}_ordered")
        made.append(make_transpose(x, y, perm, ctx.names.fresh(f"{base}_transpose")))
        x = y
    if x != out:
        assert back is not None
        made.append(_reshape(ctx, ws, x, out, back, base))
    return made


def split_after(split: list[ra.Size], perm: list[int]) -> list[ra.Size]:
    return [split[p] for p in perm]


def _target(sizes: list[ra.Size], inputs: list[ra.Size]) -> list[int] | None:
    """A Reshape target for ``sizes`` from a tensor of ``inputs``: known sizes as they are, a symbolic one
    as 0 where the input has it at the same index, else as the one -1."""
    out: list[int] = []
    for i, s in enumerate(sizes):
        if not s[1]:
            out.append(s[0])
        elif i < len(inputs) and inputs[i] == s:
            out.append(0)
        else:
            out.append(-1)
    return out if out.count(-1) <= 1 else None


def _reshape(ctx: PassContext, ws: Workspace, x: str, y: str, target: list[int], base: str) -> NodeProto:
    shape = ws.add_constant(ctx.names.fresh(f"{base}_shape"), np.array(target, dtype=np.int64))
    return new_node("Reshape", [x, shape], [y], ctx.names.fresh(f"{base}_reshape"))
