"""The original graph's index: producers, constants, shapes, and each tensor's canonical fact.

A tensor of the original is described by the fact of what it equals, read through the nodes that only
re-lay a tensor, so that one tensor has one description on both sides:

- a Transpose's output is its input under that perm, an Identity's output is its input;
- an Unsqueeze's output is its input with unit axes, a Squeeze of only such unit axes takes them away
  again, and ``Reshape(x, [0, 0, c])`` is ``x`` merged (:mod:`.canonical`, shared with the rewritten side);
- a Reshape that ends a chain of rearrangements whose result is only a Transpose of a tensor earlier in the
  chain is that tensor under a layout (:meth:`Original._transposed_ancestor`);
- an initializer, a Constant, or a small op on constants (:data:`constants.CONSTANT_OPS`) is a ``Const``;
- anything else is a root of its own, ``SameAs(name)``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, numpy_helper

from converter.verifier.certificate.canonical import merge_fact, repeated, unit_axes
from converter.verifier.certificate.constants import (
    CONSTANT_OPS,
    constant_node_fact,
    dense,
    evaluated,
    in_the_engine,
    run_on_constants,
)
from converter.verifier.certificate.elements import (
    MAX_STEPS,
    REARRANGE,
    Shape,
    elements,
    rearrange_step,
    relate,
    same_elements,
    symbolic,
)
from converter.verifier.certificate.expressions import (
    EXPRESSION_OPS,
    SMALL,
    evaluate,
    full,
    known_values,
    picked,
    shape_vector,
    size_value,
    small_constant,
)
from converter.verifier.certificate.facts import EMPTY, MERGED, Const, Fact, SameAs, Unknown
from converter.verifier.certificate.kept_dims import give_kept_dims
from converter.verifier.certificate.layouts import compose, lifted, plain
from converter.verifier.certificate.nodes import graphs_of, is_default, transpose_layout
from converter.verifier.certificate.products import products, reshape_rests
from converter.verifier.certificate.stand_ins import give_stand_ins


class Original:
    """One original graph: producers, constants, and each tensor's canonical fact."""

    def __init__(
        self,
        graph: GraphProto,
        parent: Original | None,
        value_of: Callable[[TensorProto], np.ndarray],
        opsets: Sequence[onnx.OperatorSetIdProto] = (),
        model: onnx.ModelProto | None = None,
        declined: frozenset[str] = frozenset(),
    ) -> None:
        self.graph = graph
        self.parent = parent
        self.model = model  # the main graph's model: where ranks are inferred from
        self._shapes: dict[str, Shape | None] | None = None
        self._values: dict[str, np.ndarray] = {}  # small expressions shape inference already evaluated (main graph)
        # Main-graph tensors whose inferred shape a proof used: onnxruntime's must be checked to be the same
        # (verifier/run.py does, on the original's first trial); see :meth:`shape`.
        self.assumed: dict[str, Shape] = {}
        self.declined = declined  # main-graph tensors whose inferred shape onnxruntime was seen to contradict
        self._engine: dict[str, Shape | None] = {}  # shapes of constant tensors, as onnxruntime computes them
        self._constant: set[str] | None = None  # this graph's tensors computed from constants alone
        self.value_of = value_of
        self.opsets: list[onnx.OperatorSetIdProto] = list(opsets) if parent is None else parent.opsets
        self.inputs = {i.name for i in graph.input}
        self.initializers = {t.name: t for t in graph.initializer if t.name not in self.inputs}
        self.sparse = {s.values.name: s for s in graph.sparse_initializer}
        self.producers: dict[str, NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producers[out] = node
        self._canon: dict[str, Fact] = {}
        self._by_root: dict[str, list[tuple[NodeProto, int]]] | None = None
        self._on_constants: dict[tuple[str, str], list[NodeProto]] | None = None
        self._fingerprints: dict[tuple[int, str], tuple] = {}  # of constants, by key (either graph's): see fingerprint()

    @property
    def opset(self) -> int:
        """The default domain's opset version (1 when none is imported)."""
        return next((o.version for o in self.opsets if o.domain in ("", "ai.onnx")), 1)

    def owner(self, name: str) -> Original | None:
        scope: Original | None = self
        while scope is not None:
            if name in scope.producers or name in scope.initializers or name in scope.inputs or name in scope.sparse:
                return scope
            scope = scope.parent
        return None

    def canon(self, name: str) -> Fact:
        if not name:
            return EMPTY
        scope = self.owner(name)
        if scope is None:
            return Unknown(f"{name!r} is not defined in the original")
        if scope is not self:
            return scope.canon(name)
        if name in self._canon:
            return self._canon[name]
        fact = self._compute(name)
        self._canon[name] = fact
        return fact

    def _compute(self, name: str) -> Fact:
        if name in self.initializers:
            return Const((id(self), name), partial(self.value_of, self.initializers[name]))
        if name in self.sparse:  # a value like any other constant, densified when read
            return Const((id(self), name), partial(dense, self.sparse[name]))
        node = self.producers.get(name)
        if node is None:
            return SameAs(name)  # a graph input
        default = is_default(node)
        if default and node.op_type == "Constant":
            return constant_node_fact(node, (id(self), name))
        if default and node.op_type == "Identity":
            return self.canon(node.input[0])
        same = repeated(node, self.producers.get)  # Neg(Neg(x)) is x, Relu(Relu(x)) is Relu(x) (canonical.py)
        if same is not None:
            return self.canon(same)
        if default:
            computed = self._expression(node, name)
            if computed is not None:
                return computed
        if default and node.op_type in CONSTANT_OPS and len(node.output) == 1:
            ins = [self.canon(n) for n in node.input]
            if ins and all(isinstance(f, Const) or f is EMPTY for f in ins) and isinstance(ins[0], Const):
                # Evaluated once now to know it is a constant at all (a node the evaluator rejects stays a
                # computed tensor), and again when read, so that no value is held in between.
                if run_on_constants(node, ins, self.opsets) is not None:
                    return Const((id(self), name), partial(evaluated, node, ins, self.opsets))
        if default and node.op_type == "Transpose":
            perm = transpose_layout(node)
            inner = self.canon(node.input[0])
            if not isinstance(perm, bool) and isinstance(inner, SameAs):
                try:
                    return SameAs(inner.root, compose(inner.layout, perm))
                except ValueError:
                    return SameAs(name)
        if default and node.op_type in ("Unsqueeze", "Squeeze") and len(node.output) == 1:
            unit = unit_axes(node, self.canon(node.input[0]), self.canon, self.rank)
            if unit is not None:
                return unit
        if default and node.op_type == "Reshape" and len(node.input) == 2:
            merged = merge_fact(node, self.canon(node.input[0]), self.canon(node.input[1]), self.rank)
            if merged is not None:  # the same fact the walk gives the same node (ops.layout_ops.merge)
                return merged
            moved = self._transposed_ancestor(node)
            if moved is not None:
                return moved
        return SameAs(name)

    def _expression(self, node: NodeProto, name: str) -> Const | None:
        """The value of a small constant expression (:mod:`.expressions`): the shape of a tensor whose dims are
        known, the entries of a shape vector that are, or an expression op on small constants alone."""
        op = node.op_type
        value = None
        if self.parent is None and self.inferred(name) is not None and name in self._values and self._sources_hold(name):
            value = self._values[name]  # evaluated already, while inferring shapes
        elif op in ("Shape", "Size") and node.input:
            dims = self.shape(node.input[0])
            value = full(shape_vector(node, dims)) if op == "Shape" else size_value(dims)
        elif op in EXPRESSION_OPS:
            vector = self._shape_vector(node.input[0]) if op in ("Gather", "Slice") and node.input else None
            ins = [self.canon(n) for n in node.input]
            if vector is not None:
                value = picked(node, vector, [np.asarray(f.get()) if isinstance(f, Const) else None for f in ins[1:]])
            elif ins and all(isinstance(f, Const) or f is EMPTY for f in ins) and isinstance(ins[0], Const):
                if all(self._small(n) for n in node.input if n):  # (a weight is read no further)
                    arrays = [np.asarray(f.get()) if isinstance(f, Const) else None for f in ins]
                    results = evaluate(node, arrays, self.opsets)
                    value = results[[o for o in node.output if o].index(name)] if results is not None else None
        if value is None:
            return None
        return Const((id(self), name), partial(np.array, value))

    def _small(self, name: str) -> bool:
        """Whether the original tensor ``name`` has at most ``SMALL`` elements, as far as its dims say (unknown: True)."""
        scope = self.owner(name)
        t = scope.initializers.get(name) if scope is not None else None
        if t is not None:
            return int(np.prod(t.dims)) <= SMALL
        shape = self.inferred(name)  # (a guess at a size: what is evaluated is computed by the engine)
        return (
            shape is None
            or not all(isinstance(d, int) for d in shape)
            or int(np.prod([int(d) for d in shape if isinstance(d, int)])) <= SMALL
        )

    def _shape_vector(self, name: str) -> tuple[int | None, ...] | None:
        """The entries of ``Shape(x)`` when ``name`` is one (None where a dim is not known), else None."""
        node = self.producers.get(name)
        if node is None or not is_default(node) or node.op_type != "Shape" or not node.input:
            return None
        return shape_vector(node, self.shape(node.input[0]))

    def _transposed_ancestor(self, node: NodeProto) -> SameAs | None:
        """A Reshape that ends a chain of Reshapes, Transposes, Squeezes and Unsqueezes (a Transpose among them)
        whose result is only a Transpose of a tensor earlier in the chain: that tensor under a layout (the
        earliest such, so that every such tensor of one chain has one root). dynamo computes ``K^T`` as
        ``[B,H,S,D] -> [B*H,S,D] -> [B*H,D,S] -> [B,H,D,S]``: ``Transpose(k, [0, 1, 3, 2])``."""
        chain = [node]
        while len(chain) < MAX_STEPS:
            prev = self.producers.get(chain[0].input[0]) if chain[0].input else None
            if prev is None or not is_default(prev) or prev.op_type not in REARRANGE or len(prev.output) != 1:
                break
            chain.insert(0, prev)
        if not any(n.op_type == "Transpose" for n in chain):
            return None
        for i, first in enumerate(chain):
            start = first.input[0]
            shape = self.shape(start)
            found = [rearrange_step(n, self.canon, self.shape) for n in chain[i:]]
            steps = [st for st in found if st is not None]
            if shape is None or len(steps) != len(found):
                continue
            dims = symbolic(start, shape)
            ours = elements(dims, steps)
            m = None if ours is None else relate(ours, elements(dims, ()))
            if m is None or None in m or not same_elements(dims, steps, (("layout", m),)):
                continue
            base = self.canon(start)
            if isinstance(base, SameAs) and base.root and not lifted(base.layout):
                try:
                    return SameAs(base.root, compose(base.layout, plain(m)))
                except ValueError:
                    return None
        return None

    def rank(self, name: str) -> int | None:
        """The rank onnx's shape inference gives an original tensor (inferred once, on first need), or None."""
        if name.startswith(MERGED):
            return 3  # two dims kept, the rest merged into one
        shape = self.inferred(name)
        return None if shape is None else len(shape)

    def inferred(self, name: str) -> Shape | None:
        """The shape onnx's shape inference gives an original tensor (None entries: dims it cannot tell), as it is:
        for what only needs a rank, or a guess at a size. A proof that uses dims reads :meth:`shape`."""
        top = self._top()
        if top._shapes is None:
            top._shapes, top._values = _inferred_shapes(top.model) if top.model is not None else ({}, {})
        return top._shapes.get(name)

    def shape(self, name: str) -> Shape | None:
        """The shape of an original tensor as a proof may use it (None entries: dims not known; None: unknown).

        onnx's shape inference and onnxruntime disagree on some ops (a ConvTranspose with ``auto_pad`` and
        ``output_padding``, pooling with ``ceil_mode``, Resize's rounding): a dim a proof reads must be what the
        engine computes. So it comes from where the engine's shape is known: an initializer's dims, a graph input's
        declared dims (onnxruntime refuses other sizes; a symbol is whatever the caller feeds), a tensor computed
        from constants alone (computed by onnxruntime here, and its shape taken), or a tensor of the main graph,
        whose inferred shape is taken and recorded in :attr:`assumed` (the verifier runs the original and checks
        each against onnxruntime's, or the verdict says it could not; one onnxruntime contradicted is ``declined``
        and has no shape here). A tensor computed inside a subgraph from what it reads at run time has no shape
        here: an If branch the inputs never take is never seen."""
        top = self._top()
        inferred = self.inferred(name)
        scope = self.owner(name) if name and not name.startswith("\0") else None
        if scope is None:
            return inferred  # (a synthetic root of the certificate's own: no inferred shape either)
        if name in scope.initializers:
            return tuple(int(d) for d in scope.initializers[name].dims)
        if name in scope.sparse:
            return tuple(int(d) for d in scope.sparse[name].dims)
        if name in scope.inputs:
            return inferred if scope.parent is None else None  # a subgraph's formal input: no declared interface
        if name in scope.constants():
            if name not in top._engine:
                top._engine[name] = scope._engine_shape(name)
            return top._engine[name]
        if scope.parent is not None or inferred is None or name in top.declined:
            return None
        top.assumed[name] = inferred
        return inferred

    def _top(self) -> Original:
        top = self
        while top.parent is not None:
            top = top.parent
        return top

    def constants(self) -> set[str]:
        """This graph's tensors (and the enclosing graphs') that are computed from constants alone, by
        deterministic ops of the default domain without subgraphs (an overridable initializer is no constant)."""
        if self._constant is None:
            known = set(self.parent.constants()) if self.parent is not None else set()
            known |= set(self.initializers) | set(self.sparse)
            for node in self.graph.node:
                if not is_default(node) or graphs_of(node) or node.op_type in _RANDOM or not node.output:
                    continue
                if node.op_type == "Constant" or (node.input and all(not i or i in known for i in node.input)):
                    known.update(o for o in node.output if o)
            self._constant = known
        return self._constant

    def _engine_shape(self, name: str) -> Shape | None:
        """The shape onnxruntime gives a tensor computed from constants alone (the nodes it is computed by, in
        this graph and those around it, run as a model of their own), or None when it cannot compute it."""
        chain = [self]
        while chain[-1].parent is not None:
            chain.append(chain[-1].parent)
        needed: set[str] = set()
        stack = [name]
        inits: dict[str, TensorProto] = {}
        sparse: dict[str, onnx.SparseTensorProto] = {}
        while stack:
            n = stack.pop()
            if not n or n in needed:
                continue
            needed.add(n)
            scope = self.owner(n)
            if scope is None:
                return None
            if n in scope.initializers:
                inits[n] = scope.initializers[n]
            elif n in scope.sparse:
                sparse[n] = scope.sparse[n]
            elif n in scope.producers:
                stack.extend(scope.producers[n].input)
            else:
                return None
        nodes = [node for g in reversed(chain) for node in g.graph.node if any(o in needed for o in node.output)]
        probe = f"{name}__shape_in_the_engine"
        nodes.append(onnx.helper.make_node("Shape", [name], [probe]))
        try:
            graph = onnx.helper.make_graph(nodes, "constant_shape", [], [onnx.ValueInfoProto(name=probe)], list(inits.values()))
            graph.sparse_initializer.extend(sparse.values())
            model = onnx.helper.make_model(graph, opset_imports=self.opsets or [onnx.helper.make_opsetid("", 17)])
            top = self._top().model
            if top is not None:
                model.ir_version = top.ir_version
                model.functions.extend(top.functions)
        except Exception:  # noqa: BLE001 - whatever cannot be written as a model has no shape here
            return None
        found = in_the_engine(model)
        return None if found is None else tuple(int(d) for d in found[0].reshape(-1))

    def _sources_hold(self, name: str) -> bool:
        """Whether every tensor whose shape the value ``name`` was evaluated from while inferring shapes (the
        inputs of the ``Shape`` and ``Size`` nodes it is computed from) has the shape a proof may use
        (:meth:`shape`, recorded to be checked), the same as inference gave it."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            n = stack.pop()
            if not n or n in seen:
                continue
            seen.add(n)
            node = self.producers.get(n)
            if node is None:
                continue
            if node.op_type in ("Shape", "Size") and node.input:
                if self.shape(node.input[0]) != self.inferred(node.input[0]):
                    return False
                continue
            stack.extend(node.input)
        return True

    def consumers_by_root(self, root: str) -> list[tuple[NodeProto, int]]:
        """Nodes of this graph that read a tensor whose canonical root is ``root``, with the input slot."""
        if self._by_root is None:
            index: dict[str, list[tuple[NodeProto, int]]] = defaultdict(list)
            for node in self.graph.node:
                for slot, inp in enumerate(node.input):
                    fact = self.canon(inp)
                    if isinstance(fact, SameAs) and fact.root:
                        index[fact.root].append((node, slot))
            self._by_root = index
        return self._by_root.get(root, [])

    def on_constants(self, key: tuple[str, str]) -> list[NodeProto]:
        """This graph's nodes of op ``key`` (domain, op type; the default domain ``""``) that read constants alone
        (:meth:`constants`) and hold no subgraph, in graph order."""
        if self._on_constants is None:
            known = self.constants()
            index: dict[tuple[str, str], list[NodeProto]] = defaultdict(list)
            for node in self.graph.node:
                if node.input and not graphs_of(node) and all(not i or i in known for i in node.input):
                    index[("" if is_default(node) else node.domain, node.op_type)].append(node)
            self._on_constants = dict(index)
        return self._on_constants.get(key, [])

    def fingerprint(self, c: Const) -> tuple:
        """A constant's dtype, shape and a hash of its bytes (read once per constant, kept by its key: two constants
        with different fingerprints differ; equal ones are then compared bit for bit)."""
        top = self._top()
        found = top._fingerprints.get(c.key)
        if found is None:
            value = np.ascontiguousarray(c.get())
            data = value.tobytes() if value.dtype.kind != "O" else repr(value.tolist()).encode()
            found = top._fingerprints[c.key] = (value.dtype.str, value.shape, hashlib.blake2b(data, digest_size=16).digest())
        return found

    def reads(self, name: str) -> bool:
        """Whether anything in this graph reads ``name``, or it is an output of the graph."""
        return any(name in n.input for n in self.graph.node) or name in {o.name for o in self.graph.output}


# Ops whose output is not a function of their inputs: never a constant, however constant those are.
_RANDOM = frozenset("RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout".split())

_ROUNDS = 12  # shape inference runs again at most this often, each time with the expressions it unlocked
_REST_ROUNDS = 4  # and at most this often with the rests of Reshapes given


def _inferred_shapes(model: onnx.ModelProto) -> tuple[dict[str, Shape | None], dict[str, np.ndarray]]:
    """Each tensor's shape as onnx's shape inference (with data propagation, so that a Reshape target an
    exporter computes from ``Shape`` is followed) finds it, on a copy without the large weights' data.
    A dim it cannot tell is None; a tensor it finds no shape for, or two graphs give two ranks, is None.

    Where a tensor's dims stay unknown, the small constant expressions that the dims found so far let the
    certificate evaluate (:func:`expressions.known_values`: a TorchScript Reshape target computed with
    ``Shape -> Gather -> Div -> Concat``) are written into the copy as constants and inference runs again,
    for as long as that tells more dims (at most ``_ROUNDS`` times). The values so found come back too."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {i.name for i in g.input}
    for t in model.graph.initializer:
        if small_constant(t) and (t.raw_data or t.dims):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    give_kept_dims(light)  # TorchScript's expand(N, -1, -1), in a form inference follows (kept_dims.py)
    give_stand_ins(light)  # onnxruntime's MatMulNBits, as a MatMul of the same shape (stand_ins.py)
    shapes = _infer(light)
    values: dict[str, np.ndarray] = {}
    if shapes is None:
        return {}, values
    for _ in range(_ROUNDS):
        missing = _unknown_dims(g, shapes)
        if not missing:
            break
        constants = {t.name: numpy_helper.to_array(t) for t in g.initializer if t.name not in declared}
        found = known_values(g.node, constants, shapes.get, model.opset_import)
        if not found:
            break
        again = onnx.ModelProto()
        again.CopyFrom(light)
        gone = [n for n in again.graph.node if n.output and all(not o or o in found for o in n.output)]
        if not gone:
            break
        for n in gone:
            again.graph.node.remove(n)
        again.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in found.items())
        better = _infer(again)
        if better is None or _unknown_dims(again.graph, better) >= missing:
            break
        light, g, shapes = again, again.graph, {**shapes, **better}
        values.update(found)
    # Dims that are a symbol times a number (a dynamic batch through a window partition), from two more runs with
    # the symbols set to primes (products.py).
    shapes.update(products(light, shapes, _infer))
    # The dim a Reshape's -1 stands for where inference cannot divide symbols out (products.py), given to inference
    # as that output's shape so that what reads it (a head split's Transpose and MatMul) has it too.
    # A few rounds: what one round tells (a token count after a stage's downsampling) lets the next divide out the
    # rest of a Reshape that reads it (the attention's head split).
    given: dict[str, Shape] = {}
    for _ in range(_REST_ROUNDS):
        rests = {k: v for k, v in reshape_rests(light.graph, shapes).items() if given.get(k) != v}
        if not rests:
            break
        given.update(rests)
        shapes.update(_with_rests(light, shapes, given))
    return shapes, values


def _with_rests(light: onnx.ModelProto, shapes: dict[str, Shape | None], rests: dict[str, Shape]) -> dict[str, Shape]:
    """The shapes inference tells more of once the Reshape outputs in ``rests`` are given those shapes: each tensor
    with the untold dims it now tells filled in (``rests`` among them; one whose told dims it contradicts is left)."""
    again = onnx.ModelProto()
    again.CopyFrom(light)
    for name, dims in rests.items():
        vi = again.graph.value_info.add()
        vi.name = name
        vi.type.tensor_type.elem_type = TensorProto.UNDEFINED
        for d in dims:
            dim = vi.type.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d:
                dim.dim_param = d
    better = _infer(again)
    out: dict[str, Shape] = dict(rests)
    for name, shape in (better or {}).items():
        old = shapes.get(name)
        if name in rests or shape is None or old is None or len(old) != len(shape):
            continue
        if any(_dim_told(o) and _dim_told(n) and o != n for o, n in zip(old, shape, strict=True)):
            continue
        merged = tuple(o if _dim_told(o) or not _dim_told(n) else n for o, n in zip(old, shape, strict=True))
        if merged != old:
            out[name] = merged
    return out


def _dim_told(d: int | str | None) -> bool:
    return isinstance(d, int) or (isinstance(d, str) and bool(d) and not d.startswith("unk__"))


def _unknown_dims(graph: GraphProto, shapes: dict[str, Shape | None]) -> int:
    """How many dims of the main graph's node outputs shape inference did not tell (a symbol of the model, such as
    a dynamic batch ``N``, is told; one inference made up, ``unk__3``, is not; an unknown rank counts as 8 dims)."""
    count = 0
    for node in graph.node:
        for out in node.output:
            if out:
                shape = shapes.get(out)
                count += 8 if shape is None else sum(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in shape)
    return count


def _infer(light: onnx.ModelProto) -> dict[str, Shape | None] | None:
    """One run of onnx's shape inference on ``light``: every tensor's shape, or None when it fails."""
    inferred = None
    for data_prop in (True, False):  # data propagation fails on some graphs that plain inference takes
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001, PERF203 - no shapes: what needed one stays unfollowed
            continue
    if inferred is None:
        return None
    shapes: dict[str, Shape | None] = {}

    def put(name: str, shape: Shape | None) -> None:
        known = shapes.get(name)
        if name in shapes and (known is None or shape is None or len(known) != len(shape)):
            shapes[name] = None
        else:
            shapes[name] = shape

    stack = [inferred.graph]
    while stack:
        graph = stack.pop()
        for vi in (*graph.input, *graph.value_info, *graph.output):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            dims = None
            if tt is not None and tt.HasField("shape"):
                dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
            put(vi.name, dims)
        for t in graph.initializer:
            put(t.name, tuple(int(d) for d in t.dims))
        for node in graph.node:
            stack.extend(sub for _, sub in graphs_of(node))
    return shapes
