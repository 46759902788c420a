"""Runs rewrite rules over a model and every subgraph in it, safely and with reasons.

A rule has two stateless phases: ``check(node, ctx)`` decides whether the node can be
rewritten and returns a plan (or raises ``Decline``), ``rewrite(plan, ctx)`` builds the
replacement. The engine owns what every rule needs and no rule should get wrong:

- the universal safety check: nodes a plan removes may not have outputs used outside the plan
  unless the replacement produces them again, and no node is claimed by two plans;
- a provenance tag on every node a rule creates;
- splicing replacements into the graph in place (everything else is left untouched), then
  dropping only what the rewrite itself made dead: released constants and the value_info of
  tensors that no longer exist.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import GraphProto, NodeProto

from converter.graph import (
    GraphPath,
    NameAllocator,
    Scope,
    TensorType,
    add_initializer,
    collect_types,
    drop_unused,
    iter_graphs,
    new_node,
    subgraphs,
)
from converter.graph.detached import DetachedWeights
from converter.report import Decision, RewrittenLayer

PROVENANCE_KEY = "converter.rule"
# Node metadata_props exist from IR version 10 on; older models get the tag in doc_string.
_NODE_METADATA_IR = 10


class Decline(Exception):
    """A rule (or a check deep inside one) refusing a node, with a stable code and a sentence.

    ``NO_PATTERN`` means the rule's shape is simply not there: the engine then reports another
    rule's reason for the node (a real reason from any rule beats "not my pattern").
    """

    NO_PATTERN = "no_pattern"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


_INLINE_ELEMENTS = 64  # see Context.derived_initializer


@dataclass(frozen=True)
class RuleOptions:
    """What the rewrite must respect. The providers are those the result will be run (and verified) on.

    ``refuse`` declines chosen candidates before any rule sees them: (graph key, anchor output) ->
    (code, sentence), where the graph key is ``RewrittenLayer.graph``. A caller that judged a layer
    after an earlier rewrite (the layout policy: its Transposes could not be absorbed) uses it.

    ``tokens`` also rewrites dense layers on rank-3 token sequences ``[B, S, C]`` (opt-in: ``--tokens``).
    ``matmul_nbits`` also rewrites onnxruntime's MatMulNBits (opt-in: ``--matmul-nbits``).
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    refuse: Mapping[tuple[tuple[tuple[str, str], ...], str], tuple[str, str]] = field(default_factory=dict)
    tokens: bool = False
    matmul_nbits: bool = False


@dataclass
class Plan:
    """What a rule intends to replace. Rules subclass this to carry what rewrite() needs."""

    removed: list[NodeProto]  # the first one is the anchor: new nodes go where it was
    outputs: list[str]  # outputs of removed nodes that the replacement produces again
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Replacement:
    nodes: list[NodeProto]
    released: list[str] = field(default_factory=list)  # constants the removed nodes read
    vanished: list[str] = field(default_factory=list)  # tensors that no longer exist
    # The claim the verifier checks: (activation read, original tensor produced, Conv node's name).
    layer: tuple[str, str, str] | None = None


class Context:
    """What a rule sees of the model while it works on one graph."""

    def __init__(
        self,
        scope: Scope,
        names: NameAllocator,
        options: RuleOptions,
        opset: int,
        ir_version: int,
        derived: dict[tuple[Any, ...], str],
        detached: DetachedWeights | None = None,
        created: set[str] | None = None,
    ) -> None:
        self.scope = scope
        self.created = created if created is not None else set()  # constants made here: dropped again when unread
        self.names = names
        self.options = options
        self.opset = opset
        self.ir_version = ir_version
        self._derived = derived
        self._detached = detached

    # Small constants (axes, shapes) stay in the graph: onnxruntime's shape inference reads their values
    # when it loads the model, and a detached placeholder has none there.
    def derived_initializer(
        self,
        key: str,
        source: str,
        make: Callable[[], np.ndarray],
        like: tuple[tuple[int, ...], np.dtype] | None = None,
        exact: tuple[Any, ...] = (),
    ) -> str:
        """A constant computed from ``source``, created once per graph however many nodes share it.

        Two requests share the constant only when ``key``, ``exact`` (the transformation's exact
        parameters) and ``like`` (shape and dtype) agree.

        In the main graph it is detached when the caller asked for that (detached.py says why);
        with ``like`` (its shape and dtype) even ``make`` waits until the weight is written, so
        the new weights never all exist at once. Elsewhere it goes straight into the graph (one
        copy of the data, not three). Names are fresh, so the scope's view of the graph stays valid.
        """
        # The cache key holds everything the value depends on, exactly: its name is rounded for
        # reading (``_a1`` for alpha 1.000001), and a broadcast bias takes its length from the layer.
        # Copies of one constant read through Identity share what is derived from it.
        source = self.scope.identity_root(source)
        cache_key = (self.scope.path, key, source, exact, like)
        if cache_key not in self._derived:
            name = self.names.fresh(f"{source}_{key}")
            detached = self._detached if not self.scope.path else None
            if detached is not None and like is not None and detached.accepts(like[1]):
                detached.add_lazy(self.scope.graph, name, make, *like, source=source)
            else:
                value = make()
                if detached is not None and detached.accepts(value.dtype) and value.size > _INLINE_ELEMENTS:
                    detached.add(self.scope.graph, name, value)
                else:
                    add_initializer(self.scope.graph, name, value)
            self._derived[cache_key] = name
            self.created.add(name)
        return self._derived[cache_key]

    def node(
        self, rule: str, origin: str, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any
    ) -> NodeProto:
        """A new node with a unique name and a tag saying which rule made it from which node."""
        node = new_node(op_type, inputs, outputs, self.names.fresh(name), **attrs)
        if self.ir_version >= _NODE_METADATA_IR:
            node.metadata_props.add(key=PROVENANCE_KEY, value=f"{rule} from {origin}")
        else:
            node.doc_string = f"{PROVENANCE_KEY}: {rule} from {origin}"
        return node


class Rule(ABC):
    name: ClassVar[str]
    op_type: ClassVar[str]  # the anchor op a candidate starts from
    domain: ClassVar[str] = ""  # the anchor op's domain ("": the default one; "com.microsoft" for MatMulNBits)

    @abstractmethod
    def check(self, node: NodeProto, ctx: Context) -> Plan:
        """Return a plan for rewriting ``node`` or raise Decline."""

    @abstractmethod
    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        """Build the replacement for a plan that passed check() and the engine's safety check."""


def node_label(node: NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def _check_safe(plan: Plan, scope: Scope, claimed: set[int]) -> None:
    removed = {id(n) for n in plan.removed}
    if removed & claimed:
        raise Decline("overlapping_match", "another rewrite already claimed one of these nodes")
    for node in plan.removed:
        for out in node.output:
            if not out or out in plan.outputs:
                continue
            if out in scope.output_names:
                raise Decline("matched_nodes_have_other_uses", f"{out!r} is a graph output")
            if any(id(c) not in removed for c in scope.consumers(out)):
                raise Decline("matched_nodes_have_other_uses", f"{out!r} is used by a node outside the match")


def _splice(graph: GraphProto, scope: Scope, done: list[tuple[Plan, Replacement]]) -> None:
    anchors = {id(plan.removed[0]): rep for plan, rep in done}
    removed = {id(n) for plan, _ in done for n in plan.removed}
    nodes: list[NodeProto] = []
    for node in scope.nodes:
        if id(node) in anchors:
            nodes.extend(anchors[id(node)].nodes)
        elif id(node) not in removed:
            nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)


GraphKey = tuple[tuple[str, str], ...]


@dataclass
class Candidate:
    """A candidate a rule accepted and prepared: its replacement is built but not yet in the graph.

    ``layer`` is the claim the verifier checks, and what the layout policy needs to know of the layer:
    the activation it reads and the tensor it produces (in the original's layout), and its Conv.
    """

    node: NodeProto
    rule: Rule
    plan: Plan
    replacement: Replacement
    decision: Decision

    @property
    def layer(self) -> RewrittenLayer | None:
        return self.decision.layer

    @property
    def anchor(self) -> str:
        return self.node.output[0] if self.node.output else ""


@dataclass
class _GraphWork:
    graph: GraphProto
    scope: Scope
    key: GraphKey
    entries: list[Candidate | Decision] = field(default_factory=list)  # in node order
    created: set[str] = field(default_factory=set)  # constants the replacements made (kept only if read)


class Prepared:
    """Every graph's candidates, checked and with their replacements built, none spliced in yet.

    ``finish`` splices the ones the caller keeps (inner graphs first) and turns the others into declines
    with the caller's reason: a policy decides which layers to keep after seeing what each would claim,
    and no rule runs twice.
    """

    def __init__(self, works: list[_GraphWork], released: dict[int, set[str]], vanished: dict[int, set[str]]) -> None:
        self._works = works  # inner graphs before the graphs that hold them
        self._released = released
        self._vanished = vanished

    @property
    def candidates(self) -> list[Candidate]:
        return [e for w in self._works for e in w.entries if isinstance(e, Candidate)]

    def graphs(self) -> list[tuple[GraphKey, GraphProto, Scope, list[Candidate]]]:
        """Each graph with a candidate: its key, the graph as it is before any splice, its index, its candidates."""
        return [
            (w.key, w.graph, w.scope, [e for e in w.entries if isinstance(e, Candidate)])
            for w in self._works
            if any(isinstance(e, Candidate) for e in w.entries)
        ]

    def finish(self, declined: Mapping[tuple[GraphKey, str], tuple[str, str, str]] | None = None) -> list[Decision]:
        """Splice every candidate but the ``declined`` ones ((graph key, anchor) -> (rule, code, sentence)); one
        decision per candidate node, in the order the graphs and their nodes were visited."""
        declined = declined or {}
        decisions: list[Decision] = []
        for work in self._works:
            kept: list[tuple[Plan, Replacement]] = []
            released = set(work.created)
            vanished: set[str] = set()
            for entry in work.entries:
                if isinstance(entry, Decision):
                    decisions.append(entry)
                    continue
                refusal = declined.get((work.key, entry.anchor))
                if refusal is None:
                    kept.append((entry.plan, entry.replacement))
                    released.update(entry.replacement.released)
                    vanished.update(entry.replacement.vanished)
                    decisions.append(entry.decision)
                    continue
                rule, code, sentence = refusal
                d = entry.decision
                decisions.append(Decision(d.graph, d.node, d.op_type, rule, False, reason=code, detail=sentence))
            for name in released:  # a constant of an outer graph is dropped there, when nothing reads it
                owner = work.scope.source(name).owner
                self._released.setdefault(id(owner or work.scope), set()).add(name)
            self._vanished.setdefault(id(work.scope), set()).update(vanished)
            if kept:
                _splice(work.graph, work.scope, kept)
            drop_unused(work.graph, self._released.pop(id(work.scope), set()), self._vanished.pop(id(work.scope), set()))
        return decisions


def prepare_rules(
    model: onnx.ModelProto,
    rules: Sequence[Rule],
    options: RuleOptions,
    detached: DetachedWeights | None = None,
    progress: Callable[[int, int], None] | None = None,
    types: dict[GraphPath, dict[str, TensorType]] | None = None,
) -> Prepared:
    """Check every candidate node of ``model`` (and its subgraphs) against ``rules`` and build the replacement
    of each one a rule accepts; nothing is spliced in yet (``Prepared.finish`` does that).

    Args:
        model: the model; its graphs are edited only by ``finish``, but new constants are added to them now.
        rules: in order: the first rule that accepts a node takes it.
        options: what the rules must respect (providers, refused anchors, tokens).
        detached: where the main graph's new weights go (the caller saves or attaches them).
        progress: ``progress(done, total)`` hears how many candidates were looked at, about a hundred times a run.
        types: ``collect_types(model)`` when the caller has it already.
    """
    types = collect_types(model) if types is None else types
    names = NameAllocator(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    by_op: dict[tuple[str, str], list[Rule]] = {}
    for rule in rules:
        by_op.setdefault((rule.domain, rule.op_type), []).append(rule)
    total = seen = 0
    if progress is not None:
        total = sum(_op_key(n) in by_op for _, g in iter_graphs(model.graph) for n in g.node)
    every = max(1, total // 100)
    derived: dict[tuple[Any, ...], str] = {}
    works: list[_GraphWork] = []

    def visit(graph: GraphProto, path: GraphPath, parent: Scope | None, label: str, key: GraphKey) -> None:
        nonlocal seen
        value_of = detached.value if detached is not None else None
        scope = Scope(graph, path, types.get(path, {}), parent, label, value_of, opset)
        # Inner graphs first: their paths index this graph's nodes as they are before splicing.
        for i, node in enumerate(scope.nodes):
            for attr_name, sub in subgraphs(node):
                inner_key = (*key, (holder_key(node), attr_name))
                visit(sub, (*path, (i, attr_name)), scope, f"{label}/{node_label(node)}.{attr_name}", inner_key)
        work = _GraphWork(graph, scope, key)
        ctx = Context(scope, names, options, opset, model.ir_version, derived, detached, work.created)
        claimed: set[int] = set()
        for node in scope.nodes:
            candidates = by_op.get(_op_key(node), [])
            if candidates and progress is not None:
                seen += 1
                if seen % every == 0 or seen == total:
                    progress(seen, total)
            first_decline: Decline | None = None
            declined_by = ""
            refused = options.refuse.get((key, node.output[0] if node.output else "")) if candidates else None
            if refused is not None:
                first_decline, declined_by, candidates = Decline(*refused), "caller", []
            for rule in candidates:
                try:
                    plan = rule.check(node, ctx)
                    _check_safe(plan, scope, claimed)
                except Decline as d:
                    if first_decline is None or first_decline.code == Decline.NO_PATTERN:
                        first_decline, declined_by = d, rule.name
                    continue
                rep = rule.rewrite(plan, ctx)
                anchor = node.output[0] if node.output else ""
                layer = None if rep.layer is None else RewrittenLayer(key, anchor, *rep.layer)
                claimed.update(id(n) for n in plan.removed)
                decision = Decision(
                    label,
                    node_label(node),
                    node.op_type,
                    rule.name,
                    True,
                    new_nodes=[n.name for n in rep.nodes],
                    notes=plan.notes,
                    layer=layer,
                )
                work.entries.append(Candidate(node, rule, plan, rep, decision))
                break
            else:
                if first_decline is not None and first_decline.code != Decline.NO_PATTERN:
                    work.entries.append(
                        Decision(
                            label,
                            node_label(node),
                            node.op_type,
                            declined_by,
                            False,
                            reason=first_decline.code,
                            detail=first_decline.detail,
                        )
                    )
        works.append(work)

    visit(model.graph, (), None, "main", ())
    return Prepared(works, defaultdict(set), defaultdict(set))


def apply_rules(
    model: onnx.ModelProto,
    rules: Sequence[Rule],
    options: RuleOptions,
    detached: DetachedWeights | None = None,
    progress: Callable[[int, int], None] | None = None,
    types: dict[GraphPath, dict[str, TensorType]] | None = None,
) -> list[Decision]:
    """Rewrite ``model`` in place with ``rules`` (every candidate a rule accepts); one decision per candidate node.

    ``prepare_rules`` documents the arguments.
    """
    return prepare_rules(model, rules, options, detached, progress, types).finish()


def _op_key(node: NodeProto) -> tuple[str, str]:
    """The rules' key of a node: (domain, op type), the default domain as ""."""
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def holder_key(node: NodeProto) -> str:
    """How a node that holds subgraphs is found again after a rewrite: its first output (names are
    SSA and rules never replace such nodes), or its name when it has no output."""
    return node.output[0] if node.output and node.output[0] else node.name
