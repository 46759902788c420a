"""The layout policy: which rewritten layers are worth the Transposes they leave, and what each layer's input is.

A 1x1 Conv reads and writes NCHW, so every rewritten layer comes with a Transpose in and one out.
The cleanup absorbs them where the model around the layer lets it (ConvNeXt: the block's own
permutes cancel them); where it does not (a window-partitioned Swin or MaxViT block, a custom op),
the result has more Transposes than the original, and accelerator compilers pay for every one.

Modes (``LAYOUTS``):

- ``never-worse`` (the default, ``DEFAULT_LAYOUT``): the result never has more Transposes
  than the original (``Census``: Transposes of computed tensors, every graph, subgraphs included,
  those at the model's edge aside). When rewriting everything would leave more, the layers whose
  Transposes were not absorbed are declined with ``layout_cost`` and the model is rewritten again
  from the original (``choose``). Nothing extra runs when nothing is worse.
- ``keep-all``: every layer the rules accept, whatever the Transposes.
- ``nchw``: ``keep-all``, and the cleanup also carries LayerNormalization over the channel axis
  into NCHW (``CleanupOptions(layernorm_to_nchw=True)``).

Which layers go first: rewritten layers whose Convs the cleanup joined through moved ops (a Linear,
GELU, Linear pair) form one group, and a group is judged as a whole, since its Transposes may cancel
only when all of it is rewritten. A group costs the Transposes that border it in the result minus
the original Transposes that bordered the same ops; groups that cost more than nothing are declined
first; only if the count is still worse are groups that still touch a Transpose declined, then all.
(A ConvNeXt block with a LayerNorm after its permute keeps a Transpose in front of its first Conv but
removes the permute after its last: it breaks even, and stays rewritten.)

``activations`` says what each candidate's 4D input is, from the graph: ``image`` (an NHWC image
stream: channels moved last by a Transpose from NCHW), ``grouped tokens`` (a window partition: a
Reshape out of a rank-5+ tensor, as MaxViT's [B, windows, tokens, C]), or ``unknown``. The policy
does not use it (the count decides), the report shows it: grouped tokens never shed their Transposes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import onnx
from onnx import GraphProto, NodeProto

from converter.graph import GRAPH_OPS, subgraphs, transpose_perm
from converter.report import Decision, LayoutReport, RewriteReport, RewrittenLayer
from converter.rewriter.rules._engine import holder_key

LAYOUT_COST = "layout_cost"
# Rewrites after the first one, at most: each declines more, so a handful settles any model.
MAX_RETRIES = 4

GraphKey = tuple[tuple[str, str], ...]
Refusals = dict[tuple[GraphKey, str], tuple[str, str]]
# Rewrites the model (again from the original when anything is refused), declining the refused anchors.
Attempt = Callable[[Refusals], RewriteReport]

IMAGE, GROUPED, UNKNOWN = "image", "grouped tokens", "unknown"
_DEFAULT = ("", "ai.onnx")
# Ops on constants that exporters leave in front of weights: a Transpose of a constant is folded by
# every compiler (and by onnxruntime at load), so it is no layout cost.
_ON_CONSTANTS = frozenset({"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Constant"})
# Ops that keep every axis's meaning: what reads them sees the layout of their (non-constant) inputs.
_SAME_LAYOUT = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Dropout Elu Erf Exp Floor Gelu HardSigmoid "
    "HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh "
    "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Add And BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater "
    "GreaterOrEqual Less LessOrEqual Max Min Mod Mul Or Pow PRelu Sub Sum Mean Xor Where Concat Slice Pad Split "
    "LayerNormalization Softmax LogSoftmax".split()
)
# Of those, the ones whose first input alone carries the data (the others are parameters).
_FIRST_INPUT_ONLY = frozenset({"Slice", "Pad", "Split", "LayerNormalization", "Clip"})


@dataclass
class Group:
    """Rewritten layers whose Convs the cleanup joined, and the Transposes around them."""

    layers: list[RewrittenLayer] = field(default_factory=list)
    bordering: int = 0  # Transposes that border the group's ops in the result
    original: int = 0  # original Transposes that bordered the same ops

    @property
    def cost(self) -> int:
        return self.bordering - self.original


def choose(
    model: onnx.ModelProto,
    original: Snapshot | None,
    attempt: Attempt,
    layout: str,
    activations: Mapping[tuple[GraphKey, str], str],
    before: Census,
) -> RewriteReport:
    """Rewrite ``model`` in place with ``attempt`` under ``layout``; ``before`` is the original's
    census, and ``original`` what it was (needed only under ``never-worse``). The report gets its
    ``layout`` record and each decision its activation kind."""
    report = attempt({})
    keep_all = after = census(model)
    refused: Refusals = {}
    kinds = _kinds_by_label(report, activations)
    attempts = 1
    stage = 0  # 0: groups that cost Transposes, 1: groups that still touch one, 2: every layer
    while original is not None and after.inside > before.inside and report.layers and attempts <= MAX_RETRIES:
        groups = layer_groups(original.nodes(), model, report.layers, before.edges)
        chosen = _worst(groups, stage)
        while not chosen and stage < 2:
            stage += 1
            chosen = _worst(groups, stage)
        for group in chosen:
            sentence = _sentence(group, stage, before.inside, after.inside, activations)
            refused.update(((layer.graph, layer.anchor), (LAYOUT_COST, sentence)) for layer in group.layers)
        if attempts == MAX_RETRIES:  # the last try: whatever is left goes
            for layer in report.layers:
                refused.setdefault((layer.graph, layer.anchor), (LAYOUT_COST, _LAST_RESORT))
        report = attempt(dict(refused))
        after = census(model)
        attempts += 1
    record = report.layout or LayoutReport(mode=layout)
    record.mode = layout
    record.transposes_original, record.edge_original = before.layout, before.edge
    record.transposes_final, record.edge_final = after.layout, after.edge
    record.transposes_keep_all = keep_all.layout
    record.attempts = attempts
    for d in report.decisions:
        d.activation = _kind(d, activations, kinds)
        if d.reason == LAYOUT_COST:
            d.rule = "layout policy"
    record.declined = sum(d.reason == LAYOUT_COST for d in report.decisions)
    report.layout = record
    return report


_LAST_RESORT = "the model still had more Transposes than the original after declining the layers that cost them"


def _worst(groups: list[Group], stage: int) -> list[Group]:
    if stage == 0:
        return [g for g in groups if g.cost > 0]
    if stage == 1:
        return [g for g in groups if g.bordering > 0]
    return groups


def _sentence(group: Group, stage: int, before: int, after: int, activations: Mapping[tuple[GraphKey, str], str]) -> str:
    kinds = sorted({activations.get((layer.graph, layer.input), UNKNOWN) for layer in group.layers})
    others = f" (judged with {len(group.layers) - 1} more layer{'s' * (len(group.layers) > 2)} it shares them with)"
    shared = others if len(group.layers) > 1 else ""
    where = f"; its input is {' / '.join(kinds)}" if kinds != [UNKNOWN] else ""
    if stage == 2:
        return f"{_LAST_RESORT}{shared} (the model would have {after} Transposes instead of the original's {before})"
    if stage == 0:
        why = (
            f"the cleanup could not absorb its layout Transposes{shared}: rewritten, it leaves {group.bordering} "
            f"where the original had {group.original}"
        )
    else:
        why = f"its Conv still reads or feeds a Transpose{shared}"
    return f"{why}, and the model would have {after} Transposes instead of the original's {before}{where}"


class Snapshot:
    """What a rewrite changes in a model, kept to put it back: the main graph's nodes (their subgraphs
    with them) and value_info as bytes, its initializers by reference (the weights are not copied until
    they are put back), and the opset imports."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self._nodes = [n.SerializeToString() for n in graph.node]
        self._value_info = [v.SerializeToString() for v in graph.value_info]
        self._initializers = list(graph.initializer)
        self._inputs = [i.name for i in graph.input]
        self._opsets = [o.SerializeToString() for o in model.opset_import]

    def restore(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        graph.ClearField("node")
        graph.node.extend(NodeProto.FromString(b) for b in self._nodes)
        graph.ClearField("value_info")
        graph.value_info.extend(onnx.ValueInfoProto.FromString(b) for b in self._value_info)
        graph.ClearField("initializer")
        graph.initializer.extend(self._initializers)
        model.ClearField("opset_import")
        model.opset_import.extend(onnx.OperatorSetIdProto.FromString(b) for b in self._opsets)

    def nodes(self) -> onnx.ModelProto:
        """The original's nodes, and its initializers by name only (what ``layer_groups`` reads), in a model of their own."""
        model = onnx.ModelProto()
        model.graph.node.extend(NodeProto.FromString(b) for b in self._nodes)
        model.graph.initializer.extend(onnx.TensorProto(name=t.name) for t in self._initializers)
        model.graph.input.extend(onnx.ValueInfoProto(name=name) for name in self._inputs)
        return model


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

    @property
    def inside(self) -> int:
        return self.layout - self.edge


def census(model: onnx.ModelProto, edges: bool = True) -> Census:
    """The model's Transposes of computed tensors; with ``edges``, also which sit at the model's edge
    (the walk that costs: without it, a count for the report)."""
    found = Census()
    main_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    stack: list[tuple[GraphProto, _Frame | None, NodeProto | None]] = [(model.graph, None, None)]
    while stack:
        graph, parent, holder = stack.pop()
        frame = _Frame(graph, parent, holder, main_inputs)
        for node in graph.node:
            op = node.op_type
            if op != "Transpose":
                if op in GRAPH_OPS or node.domain not in _DEFAULT:
                    stack.extend((sub, frame, node) for _, sub in subgraphs(node))
                continue
            if not node.input or _is_constant(node.input[0], frame.producers, frame.constants):
                continue
            found.layout += 1
            out = node.output[0] if node.output else ""
            if edges and (frame.from_edge(node.input[0]) or frame.to_edge(out)):
                found.edges.add(out)
                found.edge += 1
    return found


def layout_transposes(model: onnx.ModelProto) -> int:
    """The Transposes the policy counts: those of computed tensors inside the model (``Census``)."""
    return census(model).inside


# Ops whose output at each position depends on that position alone: a Transpose moves through them unchanged.
_ELEMENTWISE = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Dropout Elu Erf Exp Floor Gelu HardSigmoid "
    "HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh "
    "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Add And Div Equal Greater GreaterOrEqual Less LessOrEqual Max "
    "Min Mod Mul Or Pow PRelu Sub Sum Xor".split()
)


class _Frame:
    """One graph, seen from the model's edge: what its names come from and go to."""

    # The indexes are built on first use: most graphs a census walks hold few Transposes or none.

    def __init__(self, graph: GraphProto, parent: _Frame | None, holder: NodeProto | None, main_inputs: set[str]) -> None:
        self.graph, self.parent, self.holder, self.main_inputs = graph, parent, holder, main_inputs

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


# -- which layers' Transposes the cleanup absorbed ---------------------------------------------------------


def layer_groups(
    original: onnx.ModelProto, result: onnx.ModelProto, layers: list[RewrittenLayer], edges: Iterable[str] = ()
) -> list[Group]:
    """The rewritten layers of ``result`` in groups the cleanup joined, each with the Transposes around it.

    In the result, the ops in NCHW are the Convs and the ops the cleanup moved a Transpose below
    (their outputs have new names); two layers are in one group when such ops connect them. The
    original ops of a group are the layers' own (from the activation to the output they rewrote) and
    the moved ones (found by node name).
    """
    by_graph: dict[GraphKey, list[RewrittenLayer]] = {}
    for layer in layers:
        by_graph.setdefault(layer.graph, []).append(layer)
    groups: list[Group] = []
    edges = set(edges) | census(result).edges  # the original's edge Transposes come with ``edges``
    for key, found in by_graph.items():
        g_new, g_old = graph_at(result, key), graph_at(original, key)
        if g_new is None or g_old is None:
            groups.extend(Group([layer], 2, 0) for layer in found)
            continue
        groups.extend(_groups_in(g_old, g_new, found, edges))
    return groups


class _Index:
    """Producers, consumers and union-find components of one graph's nodes."""

    def __init__(self, graph: GraphProto) -> None:
        self.nodes = list(graph.node)
        self.producers = {o: n for n in self.nodes for o in n.output if o}
        self.constants = {t.name for t in graph.initializer} - {i.name for i in graph.input}
        self.consumers: dict[str, list[NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self._parent: dict[int, int] = {}

    def components(self, members: dict[int, NodeProto]) -> dict[int, int]:
        """Each member's component: members joined by a tensor one produces and the other reads."""
        parent = {k: k for k in members}

        def find(k: int) -> int:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for n in members.values():
            for i in n.input:
                p = self.producers.get(i)
                if p is not None and id(p) in members:
                    parent[find(id(p))] = find(id(n))
        return {k: find(k) for k in members}


def _groups_in(g_old: GraphProto, g_new: GraphProto, layers: list[RewrittenLayer], edges: set[str]) -> list[Group]:
    """Groups of one graph. In the original, the ops between Transposes form components (ConvNeXt:
    a block's LayerNorm, Linears, GELU and scale between its two permutes). In the result, the ops
    in NCHW are the new ones (the Convs, and ops the cleanup made) and the original ops of a component
    that holds a rewritten layer; they form the groups, joined by tensors and split by Transposes."""
    old, new = _Index(g_old), _Index(g_new)
    old_component = old.components({id(n): n for n in old.nodes if n.op_type != "Transpose"})
    by_name = _unique_names(old.nodes)
    old_by_output = {n.output[0]: n for n in old.nodes if n.output and n.output[0]}

    def original_of(n: NodeProto) -> NodeProto | None:
        match = by_name.get(n.name) if n.name else old_by_output.get(n.output[0]) if n.output else None
        return match if match is not None and match.op_type == n.op_type else None

    anchors = [old.producers.get(layer.anchor) for layer in layers]
    held = {old_component[id(p)] for p in anchors if p is not None and id(p) in old_component}
    region: dict[int, NodeProto] = {}
    counterpart: dict[int, NodeProto] = {}
    for n in new.nodes:
        if n.op_type == "Transpose":
            continue
        match = original_of(n)
        if match is None:
            region[id(n)] = n  # made by the rewrite or the cleanup
        elif old_component.get(id(match)) in held:
            region[id(n)] = n
            counterpart[id(n)] = match
    component = new.components(region)
    convs = {n.name: n for n in region.values() if n.op_type == "Conv" and id(n) not in counterpart}
    members: dict[int, list[NodeProto]] = {}
    for k, n in region.items():
        members.setdefault(component[k], []).append(n)
    groups: dict[int, Group] = {}
    originals: dict[int, dict[int, NodeProto]] = {}
    loose: list[Group] = []
    for layer in layers:
        conv = convs.get(layer.conv)
        if conv is None:  # not where the rewrite put it: judged by its own two Transposes
            loose.append(Group([layer], 2, 0))
            continue
        root = component[id(conv)]
        groups.setdefault(root, Group()).layers.append(layer)
        originals.setdefault(root, {}).update((id(m), m) for m in _layer_nodes(layer, old.producers))
    for root, group in groups.items():
        nodes = members[root]
        group.bordering = len(_bordering(nodes, new, edges))
        was = originals[root]
        was.update((id(counterpart[id(n)]), counterpart[id(n)]) for n in nodes if id(n) in counterpart)
        group.original = len(_bordering(list(was.values()), old, edges))
    return [*groups.values(), *loose]


def _unique_names(nodes: list[NodeProto]) -> dict[str, NodeProto]:
    seen: dict[str, NodeProto | None] = {}
    for n in nodes:
        if n.name:
            seen[n.name] = None if n.name in seen else n
    return {k: v for k, v in seen.items() if v is not None}


def _layer_nodes(layer: RewrittenLayer, producers: dict[str, NodeProto]) -> list[NodeProto]:
    """The original nodes a layer replaced: from its output back to its activation (a few steps at most)."""
    found: dict[int, NodeProto] = {}
    stack = [(layer.output, 0)]
    while stack:
        name, depth = stack.pop()
        node = producers.get(name)
        if name == layer.input or node is None or node.op_type == "Transpose" or id(node) in found or depth > 6:
            continue
        found[id(node)] = node
        stack.extend((i, depth + 1) for i in node.input if i)
    return list(found.values())


def _bordering(nodes: list[NodeProto], index: _Index, edges: set[str]) -> set[str]:
    """Transposes of computed tensors that feed ``nodes`` or read their outputs (by output), but not those at the edge."""
    found: set[str] = set()
    for n in nodes:
        for i in n.input:
            p = index.producers.get(i)
            source = p.input[0] if p is not None and p.input else ""
            if p is not None and p.op_type == "Transpose" and not _is_constant(source, index.producers, index.constants):
                found.add(i)
        for o in n.output:
            found.update(c.output[0] for c in index.consumers.get(o, []) if c.op_type == "Transpose" and c.output)
    return found - edges


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


def _kinds_by_label(report: RewriteReport, kinds: Mapping[tuple[GraphKey, str], str]) -> dict[tuple[str, str], str]:
    """Kinds by (graph label, node label), for the decisions of later attempts that declined a layer."""
    return {(d.graph, d.node): kinds.get((d.layer.graph, d.layer.input), UNKNOWN) for d in report.decisions if d.layer is not None}


def _kind(d: Decision, kinds: Mapping[tuple[GraphKey, str], str], by_label: dict[tuple[str, str], str]) -> str | None:
    if d.layer is not None:
        return kinds.get((d.layer.graph, d.layer.input), UNKNOWN)
    return by_label.get((d.graph, d.node))
