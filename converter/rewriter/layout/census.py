"""Counting a model's Transposes, and telling what each candidate's activation is: what the layout report says.

``census`` counts the Transposes that cost something at run time (those of computed tensors, every graph,
subgraphs included) and which of them sit at the model's edge. ``activations`` says what each candidate's 4D
input is, read from the graph alone: ``image`` (an NHWC image stream: channels moved last by a Transpose from
NCHW), ``grouped tokens`` (a window partition: a Reshape out of a rank-5+ tensor, as MaxViT's
[B, windows, tokens, C]), or ``unknown``; the optimizer does not use it, the report shows it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import onnx
from onnx import GraphProto, NodeProto

from converter.graph import GRAPH_OPS, Scope, TensorType, subgraphs, transpose_perm
from converter.rewriter.cleanup.handlers.elementwise import BINARY, UNARY, VARIADIC
from converter.rewriter.rules._engine import GraphKey, holder_key

IMAGE, GROUPED, UNKNOWN = "image", "grouped tokens", "unknown"
_DEFAULT = ("", "ai.onnx")
# Ops on constants that exporters leave in front of weights: a Transpose of a constant is folded by
# every compiler (and by onnxruntime at load), so it is no layout cost.
_ON_CONSTANTS = frozenset({"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Constant"})
# Ops that keep every axis's meaning: what reads them sees the layout of their (non-constant) inputs.
_SAME_LAYOUT = (
    UNARY | BINARY | VARIADIC | {"Dropout", "Concat", "Slice", "Pad", "Split", "LayerNormalization", "Softmax", "LogSoftmax"}
)
# Of those, the ones whose first input alone carries the data (the others are parameters).
_FIRST_INPUT_ONLY = frozenset({"Slice", "Pad", "Split", "LayerNormalization", "Clip"})


@dataclass
class Census:
    """The Transposes of a model that cost something at run time: those of computed tensors (a
    Transpose of a constant is folded before anything runs), in every graph, and which of them sit
    at the model's edge: between a model input and the first op that cares about layout, or between
    the last such op and a model output, with only elementwise ops between. An edge Transpose changes
    the layout the model is fed or read in: feeding it NCHW removes it, so the policy does not hold
    it against a layer (a lone Dense on an NHWC input is still rewritten)."""

    layout: int = 0
    # The edge Transposes' outputs. Two If branches may name their outputs alike, so the count is kept apart.
    edges: set[str] = field(default_factory=set)
    edge: int = 0
    # Those of the main graph alone (the layout optimizer's budget there).
    main_layout: int = 0
    main_edge: int = 0

    @property
    def inside(self) -> int:
        return self.layout - self.edge

    @property
    def main_inside(self) -> int:
        """The main graph's Transposes inside the model (not at its edge)."""
        return self.main_layout - self.main_edge


def census(
    model: onnx.ModelProto, edges: bool = True, types: Mapping[str, TensorType] | None = None, scope: Scope | None = None
) -> Census:
    """The model's Transposes of computed tensors, and which sit at the model's edge.

    Args:
        model: the model (not changed).
        edges: also tell which Transposes sit at the model's edge (the walk that costs: without it, a count for the
            report).
        types: the main graph's tensor types, when the caller has them (a Transpose of the shape of a tensor whose
            every dim is known is a constant too).
        scope: the main graph's index as the graph is now, when the caller has one (its answers on constant
            expressions are reused rather than found again over a new index).
    """
    found = Census()
    main_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    stack: list[tuple[GraphProto, _Frame | None, NodeProto | None]] = [(model.graph, None, None)]
    while stack:
        graph, parent, holder = stack.pop()
        frame = _Frame(graph, parent, holder, main_inputs, types if parent is None else None)
        if parent is None and scope is not None and scope.graph is graph:
            frame.__dict__["scope"] = scope  # functools.cached_property's slot: the caller's index
        for node in graph.node:
            op = node.op_type
            if op != "Transpose":
                if op in GRAPH_OPS or node.domain not in _DEFAULT:
                    stack.extend((sub, frame, node) for _, sub in subgraphs(node))
                continue
            if not node.input or _is_constant(node.input[0], frame.producers, frame.constants):
                continue
            if frame.scope.is_constant_expression(node.input[0]):
                continue  # computed from constants alone (an exporter's pads): folded before anything runs
            found.layout += 1
            found.main_layout += parent is None
            out = node.output[0] if node.output else ""
            if edges and (frame.from_edge(node.input[0]) or frame.to_edge(out)):
                found.edges.add(out)
                found.edge += 1
                found.main_edge += parent is None
    return found


def layout_transposes(model: onnx.ModelProto) -> int:
    """The Transposes the policy counts: those of computed tensors inside the model (``Census``)."""
    return census(model).inside


# Ops whose output at each position depends on that position alone: a Transpose moves through them unchanged
# (the cleanup's own lists of them).
_ELEMENTWISE = UNARY | BINARY | VARIADIC


class _Frame:
    """One graph, seen from the model's edge: what its names come from and go to."""

    # The indexes are built on first use: most graphs a census walks hold few Transposes or none.

    def __init__(
        self,
        graph: GraphProto,
        parent: _Frame | None,
        holder: NodeProto | None,
        main_inputs: set[str],
        types: Mapping[str, TensorType] | None = None,
    ) -> None:
        self.graph, self.parent, self.holder, self.main_inputs = graph, parent, holder, main_inputs
        self.types = types

    @functools.cached_property
    def scope(self) -> Scope:
        """The graph's index, for telling constant expressions (an outer scope's names count as computed)."""
        return Scope(self.graph, (), self.types if self.types is not None else {})

    @functools.cached_property
    def producers(self) -> dict[str, NodeProto]:
        return {o: n for n in self.graph.node for o in n.output if o}

    @functools.cached_property
    def consumers(self) -> dict[str, list[NodeProto]]:
        found: dict[str, list[NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                found.setdefault(i, []).append(n)
        return found

    @functools.cached_property
    def local(self) -> set[str]:
        return {i.name for i in self.graph.input} | {t.name for t in self.graph.initializer}

    @functools.cached_property
    def constants(self) -> set[str]:
        return {t.name for t in self.graph.initializer} - {i.name for i in self.graph.input}

    @functools.cached_property
    def outputs(self) -> list[str]:
        return [o.name for o in self.graph.output]

    def _data(self, node: NodeProto) -> list[str]:
        return [i for i in node.input if i and not _is_constant(i, self.producers, self.constants)]

    def from_edge(self, name: str) -> bool:
        """Whether ``name`` is a model input, through elementwise ops on it (and constants) alone."""
        frame: _Frame | None = self
        for _ in range(64):
            if frame is None:
                return False
            if frame.parent is None and name in frame.main_inputs:
                return True
            node = frame.producers.get(name)
            if node is None:
                if name in frame.local:
                    return False
                frame = frame.parent  # a name of an outer graph
                continue
            data = frame._data(node)
            if node.op_type not in _ELEMENTWISE or node.domain not in _DEFAULT or len(data) != 1:
                return False
            name = data[0]
        return False

    def to_edge(self, name: str) -> bool:
        """Whether ``name`` reaches a model output through elementwise ops alone (and If branches' outputs)."""
        frame: _Frame | None = self
        for _ in range(64):
            if frame is None:
                return False
            if name in frame.outputs:
                if frame.parent is None:
                    return True
                if frame.holder is None or frame.holder.op_type != "If":
                    return False
                name, frame = frame.holder.output[frame.outputs.index(name)], frame.parent
                continue
            readers = frame.consumers.get(name, [])
            if len(readers) != 1:
                return False
            node = readers[0]
            if node.op_type not in _ELEMENTWISE or node.domain not in _DEFAULT or len(frame._data(node)) != 1:
                return False
            name = node.output[0]
        return False


def _is_constant(name: str, producers: dict[str, NodeProto], constants: set[str]) -> bool:
    for _ in range(32):
        if name in constants:
            return True
        node = producers.get(name)
        if node is None or node.op_type not in _ON_CONSTANTS or node.domain not in _DEFAULT:
            return False  # a graph input, an outer-scope name, or computed
        if node.op_type == "Constant":
            return True
        name = node.input[0] if node.input else ""
    return False


# -- graphs by key -----------------------------------------------------------------------------------------


def _graphs(graph: GraphProto, key: GraphKey = ()) -> Iterator[tuple[GraphKey, GraphProto]]:
    """Every graph with its key (``RewrittenLayer.graph``), outer before inner."""
    yield key, graph
    for node in graph.node:
        for attr, sub in subgraphs(node):
            yield from _graphs(sub, (*key, (holder_key(node), attr)))


def graph_at(model: onnx.ModelProto, key: GraphKey) -> GraphProto | None:
    graph = model.graph
    for holder, attr in key:
        node = next((n for n in graph.node if holder_key(n) == holder), None)
        sub = dict(subgraphs(node)).get(attr) if node is not None else None
        if sub is None:
            return None
        graph = sub
    return graph


# -- what a candidate's activation is ---------------------------------------------------------------------


def activations(model: onnx.ModelProto) -> dict[tuple[GraphKey, str], str]:
    """For each MatMul/Gemm input in ``model`` (and the tensor a Reshape in front of it flattens), what it is:
    ``image``, ``grouped tokens`` or ``unknown``. Read before the rewrite, from the graph alone."""
    kinds: dict[tuple[GraphKey, str], str] = {}
    for key, graph in _graphs(model.graph):
        producers = {o: n for n in graph.node for o in n.output if o}
        targets = []
        for n in graph.node:
            if n.op_type in ("MatMul", "Gemm") and n.domain in _DEFAULT and n.input:
                targets.append(n.input[0])
                flat = producers.get(n.input[0])
                if flat is not None and flat.op_type == "Reshape" and flat.input:
                    targets.append(flat.input[0])
        if targets:
            memo = _classify(graph, producers, targets)
            kinds.update(((key, t), memo[t]) for t in targets)
    return kinds


def _classify(graph: GraphProto, producers: dict[str, NodeProto], targets: list[str]) -> dict[str, str]:
    """Each target's kind, found by walking back through ops that keep axes' meaning (memoized, no recursion).

    Where paths disagree (a residual Add of the image stream and a window-reversed branch), ``image``
    wins: both operands of an elementwise op have the same layout, so one image path proves it.
    """
    constants = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    memo: dict[str, str] = {}
    busy: set[str] = set()
    for target in targets:
        stack = [target]
        while stack:
            name = stack[-1]
            if name in memo:
                stack.pop()
                continue
            node = producers.get(name)
            known, inputs = _step(node, name, producers, constants)
            if known is not None:
                memo[name] = known
                stack.pop()
                continue
            busy.add(name)
            pending = [i for i in inputs if i not in memo and i not in busy]
            if pending:
                stack.extend(pending)
                continue
            found = {memo.get(i, UNKNOWN) for i in inputs}
            memo[name] = IMAGE if IMAGE in found else GROUPED if GROUPED in found else UNKNOWN
            busy.discard(name)
            stack.pop()
    return memo


def _step(node: NodeProto | None, name: str, producers: dict[str, NodeProto], constants: set[str]) -> tuple[str | None, list[str]]:
    """Either the kind ``name`` has for sure, or the inputs whose kinds decide it."""
    if node is None or node.domain not in _DEFAULT:
        return UNKNOWN, []
    op = node.op_type
    if op == "Transpose":
        perm = transpose_perm(node)
        if perm == [0, 2, 3, 1]:
            return IMAGE, []  # NCHW -> NHWC: channels last of an image
        if perm == [0, 2, 1, 3]:
            return None, [node.input[0]]  # the two middle axes swapped: still what they were (MaxViT's grid swap)
        return UNKNOWN, []
    if op == "Reshape":
        source = producers.get(node.input[0])
        wide = source is not None and (
            (source.op_type == "Transpose" and len(transpose_perm(source) or []) >= 5)
            or (source.op_type == "Reshape" and _target_rank(source, producers, constants) >= 5)
        )
        return (GROUPED if wide else UNKNOWN), []  # merged out of a window split, or a reshape we cannot read
    if op == "MatMul":
        weight = node.input[1] if len(node.input) > 1 else ""
        return (None, [node.input[0]]) if _is_constant(weight, producers, constants) else (UNKNOWN, [])
    if op not in _SAME_LAYOUT:
        return UNKNOWN, []
    data = node.input[:1] if op in _FIRST_INPUT_ONLY else node.input
    inputs = [i for i in data if i and not _is_constant(i, producers, constants)]
    return (None, inputs) if inputs else (UNKNOWN, [])


def _target_rank(reshape: NodeProto, producers: dict[str, NodeProto], constants: set[str]) -> int:
    if len(reshape.input) < 2:
        return 0
    shape = producers.get(reshape.input[1])
    if shape is not None and shape.op_type == "Concat":
        return len(shape.input)  # a shape assembled at run time, one piece per axis (TorchScript's way)
    if shape is not None and shape.op_type == "Constant":
        for a in shape.attribute:
            if a.name == "value":
                return int(a.t.dims[0]) if a.t.dims else 0
    return 0
