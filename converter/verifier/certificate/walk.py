"""The walk: node by node through the rewritten graph, a fact for every tensor, each node's proof found by table.

Facts (:mod:`.facts`) start at the graph inputs and initializers and are carried forward in node order. For
each node the walk asks, in turn:

1. is it a Conv a rule claims (a ``RewrittenLayer``)? Its layer prover (``layers.LAYER_PROVERS``, by op) proves
   it from the original graph alone, and its output is the layer's original output in the layout it reads;
   a Q/DQ node around a quantized sandwich's Conv is proved with it (``layers.sandwich``);
2. does a proof rule (``ops.PROOF_RULES``) prove it without a counterpart (a Transpose, a unit-axis Unsqueeze,
   a written-out LayerNormalization's body, ...)?
3. else it must have a *counterpart*: an original node of the same op, arity and attributes (as its rule reads
   them, where it has laws for that: ``ProofRule.attributes``) reading the same original tensors, each as the
   original reads it; or, read in another layout ``P``, one that the op's proof rule accepts (per element, or
   with its axes seen through ``P``). Its outputs are then the counterpart's. Subgraphs (If, Loop, Scan) are
   walked the same way, recursively;
4. else the op's rule may still have a fallback (a rearrangement of an original tensor, a shape read in a
   layout), and a node that reads constants alone the table's ``ON_CONSTANTS`` one (its counterpart found by
   value); otherwise its outputs are unknown, with the reason.

A binary commutative op (Add, Mul, ...) may read its operands in either order; the known input of the highest
rank is the one a counterpart is looked for by (an operand broadcast from a lower rank says nothing of the
layout); one original tensor may be described from two roots (a rearrangement of one is the other:
:meth:`views.Views.relation`). An Identity only nodes of its graph read is seen through (:func:`bypass_identities`).

Every graph output must end up equal to the original's output of the same name, unpermuted. The result is
exact up to floating-point reassociation inside the Conv (a dot product summed in another order): layout,
weights, biases and every other op are proved, not sampled. Anything the walk cannot follow leaves the
tensors after it unproved, and the certificate says where and why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, numpy_helper

from converter.report import RewrittenLayer
from converter.verifier.certificate.constants import dense, differs, laid_out
from converter.verifier.certificate.facts import EMPTY, FLAT, Const, Fact, SameAs, Unknown, describe
from converter.verifier.certificate.layers import LAYER_PROVERS
from converter.verifier.certificate.layers.integer import flat_elementwise
from converter.verifier.certificate.layers.sandwich import Pair, find_pairs, prove_pair
from converter.verifier.certificate.layouts import NCHW, Layout, compose, relative
from converter.verifier.certificate.model import differences
from converter.verifier.certificate.nodes import graphs_of, holder_key, is_default, plain_attributes
from converter.verifier.certificate.ops import (
    ON_CONSTANTS,
    PROOF_RULES,
    Prove,
    Relaid,
    op_key,
    prover_index,
    rule_for,
    same_operands,
    set_outputs,
)
from converter.verifier.certificate.original import Original
from converter.verifier.certificate.proofs import Certificate, DenseLayer, IntegerLayer, LayerProof
from converter.verifier.certificate.views import Views

GraphKey = tuple[tuple[str, str], ...]


class Walk:
    """The walk over one rewritten graph (a subgraph's walk has its holder's walk as ``parent``); see the
    module docstring. It implements :class:`~converter.verifier.certificate.context.Context` for the rules."""

    def __init__(
        self,
        orig: Original,
        graph: GraphProto,
        key: GraphKey,
        layers: dict[GraphKey, list[RewrittenLayer]],
        value_of: Callable[[TensorProto], np.ndarray],
        cert: Certificate,
        provers: dict[tuple[str, str], list[Prove]],
        parent: Walk | None = None,
    ) -> None:
        self.orig = orig
        self.graph = graph
        self.graph_key = key
        self.layers = layers
        self.value_of = value_of
        self.cert = cert
        self.provers = provers
        self.parent = parent
        self.facts: dict[str, Fact] = {}
        self.convs = {layer.conv: layer for layer in layers.get(key, [])}
        # Held, so that id() names a node for the whole walk; an Identity the proofs would have to see through is
        # taken out first (its readers read its input), so that a pattern (a written-out LayerNormalization) is one.
        self.nodes = bypass_identities(graph)
        self.views = Views(orig)
        inputs = {i.name for i in graph.input}
        for t in graph.initializer:
            if t.name not in inputs:
                self.facts[t.name] = Const(self.key(t.name), partial(value_of, t))
        for s in graph.sparse_initializer:  # a value like any other constant, densified when read
            self.facts[s.values.name] = Const(self.key(s.values.name), partial(dense, s))
        self._compared: dict[tuple[object, ...], str | None] = {}
        self._skip: set[int] = set()  # nodes a proof already accounted for (a written-out LayerNormalization's)
        self._pairs: dict[int, Pair] = {}
        self._readers: dict[str, list[NodeProto]] | None = None
        self._made_by: dict[str, NodeProto] | None = None  # the rewritten graph's producers, when first needed

    # --- what the rules may ask (context.Context) ---------------------------------------------------

    def fact(self, name: str) -> Fact:
        if not name:
            return EMPTY
        walk: Walk | None = self
        while walk is not None:
            if name in walk.facts:
                return walk.facts[name]
            walk = walk.parent
        return Unknown(f"{name!r} is not defined in the rewritten graph")

    def key(self, name: str) -> tuple[int, str]:
        return (id(self), name)

    def unknown(self, node: NodeProto, reason: str) -> None:
        where = f"{node.op_type} {node.name or node.output[0]!r}: {reason}"
        for out in node.output:
            if out:
                self.facts[out] = Unknown(where)

    def skip(self, node: NodeProto) -> None:
        self._skip.add(id(node))

    def same_laid_out(self, r: Const, o: Const, layout: Layout) -> str | None:
        key = (r.key, o.key, layout)
        if key not in self._compared:
            expected = laid_out(o.get(), layout)
            self._compared[key] = expected if isinstance(expected, str) else differs(r.get(), expected, "constant")
        return self._compared[key]

    def broadcast(self, o: SameAs, layout: Layout) -> SameAs:
        """``o`` laid out by ``layout`` (its own layout first). An operand of lower rank is broadcast first: unit axes
        in front up to the layout's rank (``[K]`` under ``(0, 3, 1, 2)``: ``[1, K, 1, 1]``); a rank-0 one is the
        same in every layout. Its rank is read from the original (shape inference); unknown, it must have the
        full rank."""
        if layout is None:
            return o
        rank = len(o.layout) if o.layout is not None else self.orig.rank(o.root)
        full = sum(p is not None for p in layout)  # the original op's rank (the layout may add unit axes)
        if rank is None or rank >= full:
            return SameAs(o.root, compose(o.layout, layout))
        if rank == 0:
            return o
        padded = (None,) * (full - rank) + (o.layout if o.layout is not None else tuple(range(rank)))
        return SameAs(o.root, compose(padded, layout))

    def producer(self, name: str) -> NodeProto | None:
        if self._made_by is None:
            self._made_by = {o: n for n in self.nodes for o in n.output if o}
        return self._made_by.get(name)

    def readers(self) -> dict[str, list[NodeProto]]:
        if self._readers is None:
            self._readers = defaultdict(list)
            for n in self.nodes:
                for i in dict.fromkeys(n.input):
                    if i:
                        self._readers[i].append(n)
        return self._readers

    def outputs(self) -> set[str]:
        return {o.name for o in self.graph.output}

    # --- the walk -----------------------------------------------------------------------------------

    def run(self, formal_inputs: Sequence[Fact] | None = None) -> None:
        """Walk the graph; ``formal_inputs`` are the facts of a subgraph's own inputs (None: the main graph)."""
        for i, vi in enumerate(self.graph.input):
            if vi.name in self.facts:
                continue  # an initializer listed as an input (older IR versions): overridable, so a plain value
            formal = formal_inputs[i] if formal_inputs is not None and i < len(formal_inputs) else None
            self.facts[vi.name] = formal if formal is not None else SameAs(vi.name)
        self._pairs = find_pairs(self)
        for node in self.nodes:
            if id(node) not in self._skip:
                self._visit(node)

    def _visit(self, node: NodeProto) -> None:
        if node.name in self.convs:
            self._layer(node, self.convs[node.name])
            return
        pair = self._pairs.get(id(node))
        if pair is not None:
            prove_pair(self, node, pair)
            return
        if any(prove(self, node) for prove in self.provers.get(op_key(node), ())):
            return
        self._match(node)

    def _layer(self, conv: NodeProto, layer: RewrittenLayer) -> None:
        """A claimed layer's Conv: proved by the layer prover of its op, its output the layer's original output."""
        prover = LAYER_PROVERS.get(conv.op_type) if is_default(conv) else None
        layout: Layout
        if prover is None:
            proof, layout = LayerProof("refuted", f"{conv.name!r} is a {conv.op_type}, not a Conv"), NCHW
        else:
            proof, layout = prover(self, conv, layer)
        self.cert.layers[conv.name] = proof
        if proof.status != "proved":
            self.unknown(conv, f"layer {layer.anchor!r} is {proof.status}: {proof.detail}")
            return
        original = self.cert.originals.get(conv.name)
        if isinstance(original, DenseLayer) and original.out_pair is not None:
            self.facts[conv.output[0]] = SameAs(FLAT + original.flat, layout)  # its output pair ends the layer
            return
        # A Tensordot's (DenseLayer, IntegerLayer): the second Reshape's output, or an integer one's flat output.
        end = original.end if isinstance(original, DenseLayer | IntegerLayer) else ""
        if end.startswith(FLAT):
            self.facts[conv.output[0]] = SameAs(end, layout)
            return
        out = self.orig.canon(end or layer.output)
        if not isinstance(out, SameAs):
            self.unknown(conv, f"the original output {layer.output!r} is not a computed tensor")
            return
        try:
            self.facts[conv.output[0]] = SameAs(out.root, compose(out.layout, layout))
        except ValueError:
            self.unknown(conv, f"the original output {layer.output!r} has another rank than its input")

    def _match(self, node: NodeProto) -> None:
        """Find ``node``'s counterpart in the original (or its rule's fallback); else its outputs are unknown."""
        ins = [self.fact(n) for n in node.input]
        unknown = next((f for f in ins if isinstance(f, Unknown)), None)
        if unknown is not None:
            for out in node.output:
                if out:
                    self.facts[out] = unknown
            return
        anchors = self._anchors(ins)
        flat = next((i for i, f in enumerate(ins) if isinstance(f, SameAs) and f.root), None)
        if flat is not None and any(i == flat and root.startswith(FLAT) for i, root in anchors):
            why = flat_elementwise(self, node, ins, flat)  # a dynamic Tensordot's rescale, past its second Reshape
            if why is not None:
                self.unknown(node, f"no counterpart in the original ({why})")
            return
        reasons: list[tuple[bool, str]] = []
        tries: list[tuple[int | None, str | None]] = [*anchors] if anchors else [(None, None)]
        for anchor, root in tries:
            if self._match_at(node, ins, anchor, root, reasons):
                return
        rule = rule_for(node)
        if rule is not None and rule.fallback is not None and rule.fallback(self, node, ins):
            return
        by_value = PROOF_RULES.get(("", ON_CONSTANTS)) if not anchors else None  # it reads constants alone
        if by_value is not None and by_value.fallback is not None and by_value.fallback(self, node, ins):
            return
        why = min(reasons, key=lambda r: r[0])[1] if reasons else "no node of the original reads the same tensors"
        self.unknown(node, f"no counterpart in the original ({why})")

    def _anchors(self, ins: list[Fact]) -> list[tuple[int, str]]:
        """The inputs a counterpart is looked for by (slot, root): the known input of the highest rank first (an
        operand broadcast from a lower rank says nothing of the layout of the others), then the first known one."""
        known = [(i, f) for i, f in enumerate(ins) if isinstance(f, SameAs) and f.root]
        if not known:
            return []
        # The original rank: how many of the root's axes it shows (an added unit axis is none of them).
        ranks = [sum(p is not None for p in f.layout) if f.layout is not None else self.orig.rank(f.root) for _, f in known]
        first = (known[0][0], known[0][1].root)
        if any(r is None for r in ranks):
            return [first]
        best = max(range(len(known)), key=lambda j: (ranks[j], -j))
        primary = (known[best][0], known[best][1].root)
        return [primary] if primary == first else [primary, first]

    def _match_at(
        self, node: NodeProto, ins: list[Fact], anchor: int | None, root: str | None, reasons: list[tuple[bool, str]]
    ) -> bool:
        """Whether a counterpart read at input ``anchor`` (root ``root``; None: a node of constants) explains ``node``
        (its outputs' facts then set); each candidate's reason for not being it goes to ``reasons``."""
        if root is None:
            candidates = self._same_output(node)
        else:
            scope: Original | None = self.orig
            candidates = []
            while scope is not None:  # the counterpart may read it from an outer scope
                swapped = _swappable(node)  # the original may read it in the other slot of a commutative op
                candidates.extend(n for n, slot in scope.consumers_by_root(root) if slot == anchor or swapped)
                if scope is self.orig and candidates:
                    break
                scope = scope.parent
            # Try the node with the same first output first: unchanged nodes keep their names.
            same = self._same_output(node)
            candidates = same + [c for c in candidates if all(c is not s for s in same)]
        for cand in candidates:
            verdict = self._counterpart(node, ins, anchor, cand)
            if verdict is None:
                return True
            reasons.append((cand.op_type != node.op_type, verdict))  # the same op's reason says more: first
        if root is not None and not root.startswith("\0"):
            # The original may read this tensor described from another root (one tensor, two descriptions).
            tried = {id(c) for c in candidates}
            for other in self.views.related_roots(root):
                for cand, slot in self.orig.consumers_by_root(other):
                    if slot != anchor or cand.op_type != node.op_type or id(cand) in tried:
                        continue
                    tried.add(id(cand))
                    verdict = self._counterpart(node, ins, anchor, cand)
                    if verdict is None:
                        return True
                    reasons.append((False, verdict))
        return False

    def _same_output(self, node: NodeProto) -> list[NodeProto]:
        if not node.output or not node.output[0]:
            return []
        cand = self.orig.producers.get(node.output[0])
        return [cand] if cand is not None else []

    def _counterpart(self, node: NodeProto, ins: list[Fact], anchor: int | None, cand: NodeProto) -> str | None:
        """None when ``cand`` explains ``node`` (and its outputs' facts are set), else why not. A commutative
        binary op is also tried with its operands swapped (``Add(a, b) == Add(b, a)`` bit for bit)."""
        verdict = self._counterpart_as_read(node, ins, anchor, cand)
        if verdict is None or not _swappable(node) or len(ins) != 2:
            return verdict
        swapped = self._counterpart_as_read(node, [ins[1], ins[0]], None if anchor is None else 1 - anchor, cand)
        return verdict if swapped is not None else None

    def _counterpart_as_read(self, node: NodeProto, ins: list[Fact], anchor: int | None, cand: NodeProto) -> str | None:
        """:meth:`_counterpart` with the operands in the order given."""
        same_domain = cand.domain == node.domain or (is_default(cand) and is_default(node))
        if cand.op_type != node.op_type or not same_domain:
            return f"the original's {cand.op_type} differs"
        if len(cand.input) != len(node.input) or len(cand.output) != len(node.output):
            return "a different number of inputs or outputs"
        orig_ins = [self.orig.canon(n) for n in cand.input]
        layout: Layout = None
        if anchor is not None:
            o, r = orig_ins[anchor], ins[anchor]
            if not isinstance(o, SameAs) or not isinstance(r, SameAs):
                return "it reads other tensors"
            if o.root != r.root:  # one tensor of the original, maybe, described from another root
                m = self.views.relation(r, o)
                if m is None:
                    return "it reads other tensors"
                try:
                    r = SameAs(o.root, compose(o.layout, m))
                except ValueError:
                    return "it reads other tensors"
                ins = [*ins[:anchor], r, *ins[anchor + 1 :]]
            try:
                layout = relative(o.layout, r.layout)
            except ValueError:
                return "rank mismatch"
        rule = rule_for(node)
        if layout is not None and rule is not None and rule.relaid is not None:
            return rule.relaid(Relaid(self, node, cand, layout, ins, orig_ins))
        # As the original reads them (or, read in another layout, an op no rule allows that for).
        if rule is not None and rule.attributes is not None:
            if not rule.attributes(self, node, cand):
                return "different attributes"
        elif plain_attributes(cand, self.orig.opset) != plain_attributes(node, self.orig.opset):
            return "different attributes"
        if layout is not None:
            return f"{node.op_type} is read in another layout, which only elementwise and axis ops allow"
        problem = same_operands(self, ins, orig_ins, None)
        if problem:
            return problem
        for name, sub in graphs_of(node):
            orig_sub = dict(graphs_of(cand)).get(name)
            if orig_sub is None:
                return f"the original has no subgraph {name!r}"
            problem = self._subgraph(cand, name, sub, orig_sub)
            if problem:
                return problem
        set_outputs(self, node, cand, None)
        return None

    def _subgraph(self, holder: NodeProto, name: str, sub: GraphProto, orig_sub: GraphProto) -> str | None:
        """Walk a subgraph of the rewritten node whose counterpart is ``holder`` (layers are keyed by the original's node)."""
        if len(sub.input) != len(orig_sub.input) or len(sub.output) != len(orig_sub.output):
            return f"subgraph {name!r} has another interface"
        inner_orig = Original(orig_sub, self.orig, self.value_of)
        key = (*self.graph_key, (holder_key(holder), name))
        inner = Walk(inner_orig, sub, key, self.layers, self.value_of, self.cert, self.provers, self)
        inner.run([SameAs(i.name) for i in orig_sub.input])
        problems = inner.finish(orig_sub)
        definite = [p for p in problems if not p.endswith("is not proved")]
        self.cert.problems.extend(f"in subgraph {name!r} of {holder_key(holder)!r}: {p}" for p in definite)
        return f"in subgraph {name!r}: {problems[0]}" if problems else None

    def finish(self, orig_graph: GraphProto) -> list[str]:
        """Each output must be the original's output of the same position, unpermuted."""
        problems = []
        for r_out, o_out in zip(self.graph.output, orig_graph.output, strict=False):
            got, want = self.fact(r_out.name), self.orig.canon(o_out.name)
            if got == want:
                continue
            if isinstance(got, Const) and isinstance(want, Const) and differs(got.get(), want.get(), "output") is None:
                continue
            if isinstance(got, SameAs) and isinstance(want, SameAs) and self.views.same(got, want):
                continue  # one tensor, two descriptions (a Reshape and its inverse are not a Transpose)
            if isinstance(got, Unknown):
                self.cert.unproved.append(f"output {r_out.name!r} depends on {got.reason}")
                problems.append(f"output {r_out.name!r} is not proved")
            else:
                problems.append(f"output {r_out.name!r} is {describe(got)}, the original's is {describe(want)}")
        return problems


def bypass_identities(graph: GraphProto) -> list[NodeProto]:
    """The graph's nodes with each Identity that only nodes of this graph read taken out, its readers reading its
    input instead (copies of those readers: the model is not changed). ``Identity(x)`` is ``x`` exactly, so this
    changes nothing a proof says; an Identity that is a graph output or that a subgraph reads stays."""
    outputs = {o.name for o in graph.output}
    source: dict[str, str] = {}
    for n in graph.node:
        if is_default(n) and n.op_type == "Identity" and len(n.input) == 1 and len(n.output) == 1 and n.input[0]:
            if n.output[0] not in outputs:
                source[n.output[0]] = n.input[0]
    if not source:
        return list(graph.node)
    for n in graph.node:  # names a subgraph reads from this scope: their Identity stays
        for _, sub in graphs_of(n):
            for name in _free_names(sub) & set(source):
                del source[name]

    def resolve(name: str) -> str:
        seen = 0
        while name in source and seen < len(source):
            name, seen = source[name], seen + 1
        return name

    kept = []
    for n in graph.node:
        if n.output and n.output[0] in source and is_default(n) and n.op_type == "Identity":
            continue
        if any(i in source for i in n.input):
            copy = NodeProto()
            copy.CopyFrom(n)
            for j, i in enumerate(copy.input):
                if i in source:
                    copy.input[j] = resolve(i)
            n = copy
        kept.append(n)
    return kept


def _free_names(graph: GraphProto) -> set[str]:
    """Names a graph (its own subgraphs included) reads but does not define."""
    defined = (
        {i.name for i in graph.input} | {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    )
    read: set[str] = set()
    for node in graph.node:
        read.update(i for i in node.input if i)
        for _, sub in graphs_of(node):
            read |= _free_names(sub)
        defined.update(o for o in node.output if o)
    read.update(o.name for o in graph.output)
    return read - defined


# Binary ops whose operands may be swapped with the same result bit for bit (IEEE addition and multiplication
# are commutative; Max and Min are not, where a NaN meets a number; a variadic Sum of three rounds in order).
COMMUTATIVE = frozenset("Add Mul Sum Mean And Or Xor Equal BitwiseAnd BitwiseOr BitwiseXor".split())


def _swappable(node: NodeProto) -> bool:
    return is_default(node) and node.op_type in COMMUTATIVE and len(node.input) == 2


def find_graphs(model: onnx.ModelProto, key: Sequence[Sequence[str]]) -> list[GraphProto] | None:
    """The chain of graphs from the main graph to the one ``key`` names (see RewrittenLayer.graph), or None.

    Args:
        model: the model the graphs are in.
        key: one (holder node's first output, attribute) step per nesting level; () for the main graph.
    """
    chain = [model.graph]
    for holder, attr in key:
        node = next((n for n in chain[-1].node if holder_key(n) == holder), None)
        sub = None if node is None else dict(graphs_of(node)).get(attr)
        if sub is None:
            return None
        chain.append(sub)
    return chain


def certify(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    layers: Iterable[RewrittenLayer],
    value_of: Callable[[TensorProto], np.ndarray] = numpy_helper.to_array,
    declined: Iterable[str] = (),
) -> Certificate:
    """Check that ``rewritten`` computes what ``original`` does, layer claims included (see the module docstring).

    Args:
        original: the model before the rewrite.
        rewritten: the model the rewrite made of it.
        layers: what the rewrite claims of each Conv it made (``RewriteReport.layers``).
        value_of: reads a tensor's data (the default copies it out of the protobuf).
        declined: tensors of the original's main graph whose shape onnx's shape inference gives the proof must
            not use (onnxruntime computes another: ``Certificate.assumed_shapes``, checked by the verifier).
    """
    by_graph: dict[GraphKey, list[RewrittenLayer]] = defaultdict(list)
    for layer in layers:
        by_graph[tuple((holder, attr) for holder, attr in layer.graph)].append(layer)
    cert = Certificate()
    cert.problems.extend(differences(original, rewritten, value_of))  # what the model computes with, beside its nodes
    orig = Original(original.graph, None, value_of, original.opset_import, original, frozenset(declined))
    walk = Walk(orig, rewritten.graph, (), by_graph, value_of, cert, prover_index())
    walk.run()
    if [i.name for i in rewritten.graph.input] != [i.name for i in original.graph.input]:
        cert.problems.append("the graph inputs differ")
    if len(rewritten.graph.output) != len(original.graph.output):
        cert.problems.append("the number of graph outputs differs")
    cert.problems.extend(p for p in walk.finish(original.graph) if not p.endswith("is not proved"))
    for layers_here in by_graph.values():
        for layer in layers_here:
            cert.layers.setdefault(layer.conv, LayerProof("unproved", "the walk never reached its Conv"))
    cert.assumed_shapes = dict(orig.assumed)  # to be checked against onnxruntime's (verifier/run.py)
    return cert
