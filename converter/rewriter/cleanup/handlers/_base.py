"""What every handler receives and returns, and the helpers they share.

A handler looks at one node that reads the output of ``Transpose(a, perm)`` and says how the
same result is computed from ``a`` instead: a :class:`Plan` (new inputs, new attributes, and per
output the perm of the Transpose that restores it), or a :class:`Decline` with a reason. It edits
nothing; the pass applies the plan. See ``converter/cleanup/_edit.py`` for the perm convention.

An operand may also be an :class:`Expanded` constant, ``Expand(c, shape)`` (ViT's class token,
``cls.expand(B, -1, -1)``, concatenated to the patch tokens): in ``a``'s layout it is
``Expand(c laid out, shape')``, so the move makes that Expand (the old one goes when the moved node was its
only reader). A :class:`Plan` holding one turns itself into a ``replace`` plan that writes the new
Expand before the moved node, so every handler that takes operands from :func:`operand` gets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import NodeProto

from converter.graph import new_node
from converter.rewriter.cleanup import PassContext
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, attribute, inverse, normalize_axes, normalize_axis, set_attribute
from converter.rewriter.cleanup._workspace import Workspace


@dataclass(frozen=True)
class Decline:
    code: str  # stable, for reports and tests
    detail: str


@dataclass(frozen=True)
class Relaid:
    """A constant input laid out anew: ``make(value of source)``; ``key`` names the layout (same key, same tensor)."""

    source: str
    key: tuple[object, ...]
    make: Callable[[np.ndarray], np.ndarray]
    suffix: str


@dataclass(frozen=True)
class Fresh:
    """A new constant input that no existing tensor gives."""

    base: str
    value: np.ndarray


@dataclass(frozen=True)
class Expanded:
    """``Expand(c, shape)`` of a constant ``c``, read in ``a``'s layout: ``Expand(constant, shape')``.

    ``constant`` is ``c`` laid out by the inverse perm (an operand the pass resolves); ``shape'`` is
    ``Gather(shape, inverse perm)``: the old shape's entries in the new order. (Even where the old shape
    would do as it is, as ViT's ``[B, 1, 1]`` under ``[0, 2, 1]`` would, the Gather stays: what proves
    the move then is the form alone, for the certificate as for a reader, not the shape's values.)
    """

    args: HandlerArgs
    expand: NodeProto
    constant: Operand

    def build(self, constant: str) -> tuple[str, list[NodeProto]]:
        """The new Expand reading ``constant`` (its resolved name): its output and the nodes it takes.
        Runs when the plan is applied; the old Expand goes when the moved node was its only reader."""
        ctx, ws, old = self.args.ctx, self.args.ws, self.expand
        suffix = "".join(map(str, self.args.perm_inv))
        index = ws.add_constant(ctx.names.fresh(f"{old.input[1]}_perm"), np.asarray(self.args.perm_inv, np.int64))
        shape = ctx.names.fresh(f"{old.input[1]}_{suffix}")
        made = [new_node("Gather", [old.input[1], index], [shape], ctx.names.fresh(f"{old.name or shape}_shape"), axis=0)]
        out = ctx.names.fresh(f"{old.output[0]}_{suffix}")
        made.append(new_node("Expand", [constant, shape], [out], ctx.names.fresh(old.name or out)))
        readers = ws.readers(old.output[0])
        if ws.alive(old) and [id(r) for r in readers] == [id(self.args.node)] and old.output[0] not in ws.outputs:
            ws.remove(old)
            ctx.vanished.add(old.output[0])
            ctx.released.update(old.input)  # constants nothing reads any more are dropped
        return out, made


@dataclass(frozen=True)
class Unsqueezed:
    """A computed tensor of lower rank, read in ``a``'s layout through ``Unsqueeze(name, axes)`` (its own axes
    keep their order; the unit axes go where the layout puts them). See :func:`lower_rank`."""

    args: HandlerArgs
    name: str
    axes: tuple[int, ...]

    @property
    def constant(self) -> str:
        return self.name  # nothing to resolve: the tensor itself

    def build(self, name: str) -> tuple[str, list[NodeProto]]:
        ctx, ws = self.args.ctx, self.args.ws
        out = ctx.names.fresh(f"{name}_{''.join(map(str, self.args.perm_inv))}")
        node_name = ctx.names.fresh(f"{name}_unsqueeze")
        if self.args.opset >= 13:
            axes = ws.add_constant(ctx.names.fresh(f"{name}_axes"), np.asarray(self.axes, np.int64))
            return out, [new_node("Unsqueeze", [name, axes], [out], node_name)]
        return out, [new_node("Unsqueeze", [name], [out], node_name, axes=list(self.axes))]


@dataclass(frozen=True)
class Transposed:
    """A tensor computed from constants alone (a relative position bias gathered from its table, an MLP over a
    fixed coordinate grid), read in ``a``'s layout through ``Transpose(name, perm)``: onnxruntime folds it, with
    the expression, before anything runs, so it costs nothing at run time (and the census does not count it)."""

    name: str
    perm: tuple[int, ...]


Operand = str | Relaid | Fresh | Expanded | Unsqueezed | Transposed
OutPerm = Sequence[int] | None  # the Transpose that restores an output; None: the output is unchanged


@dataclass
class Plan:
    inputs: dict[int, Operand]
    outputs: list[OutPerm]
    attrs: dict[str, object] = field(default_factory=dict)  # None removes an attribute
    # Instead of editing the node: the nodes that compute its outputs (names given) from its new inputs.
    replace: Callable[[list[str], list[str]], list[NodeProto]] | None = None

    def __post_init__(self) -> None:
        """Expanded (Unsqueezed) operands: the pass resolves their constants; ``replace`` writes their Expands
        (Unsqueezes) first."""
        expanded = {slot: v for slot, v in self.inputs.items() if isinstance(v, (Expanded, Unsqueezed))}
        if not expanded:
            return
        node = next(iter(expanded.values())).args.node
        for slot, v in expanded.items():
            self.inputs[slot] = v.constant
        inner = self.replace

        def replace(ins: list[str], outs: list[str]) -> list[NodeProto]:
            made: list[NodeProto] = []
            reads = list(ins)
            for slot, v in expanded.items():
                reads[slot], nodes = v.build(ins[slot])
                made += nodes
            if inner is not None:
                return [*made, *inner(reads, outs)]
            moved = NodeProto()
            moved.CopyFrom(node)  # name, attributes and metadata kept; what it reads and writes changes
            del moved.input[:], moved.output[:]
            moved.input.extend(reads)
            moved.output.extend(outs)
            for key, value in self.attrs.items():
                set_attribute(moved, key, value)
            return [*made, moved]

        self.replace = replace


@dataclass(frozen=True)
class HandlerArgs:
    ctx: PassContext
    ws: Workspace
    transpose: NodeProto
    node: NodeProto
    perm: tuple[int, ...]
    perm_inv: tuple[int, ...]
    slots: tuple[int, ...]  # the inputs of ``node`` that read the Transpose
    # The handler table's lookup, given by the pass (as onnxruntime's handlers get theirs through their
    # context): a cost check asks it whether a reader moves a Transpose on, and no handler imports the table.
    handler_for: Callable[[NodeProto], Handler | None]

    @property
    def a(self) -> str:
        return self.transpose.input[0]

    @property
    def t(self) -> str:
        return self.transpose.output[0]

    @property
    def rank(self) -> int:
        return len(self.perm)

    @property
    def opset(self) -> int:
        return self.ctx.opset


Handler = Callable[[HandlerArgs], "Plan | Decline"]


# -- checks ---------------------------------------------------------------------------------------


def data_input_only(args: HandlerArgs) -> Decline | None:
    """Most ops take the Transpose only on their data input (0); the others are shapes, indices, scales."""
    if args.slots != (0,):
        return Decline(
            "not_data_input", f"{args.node.op_type} reads the Transpose on input {args.slots}, not only on its data input"
        )
    return None


def one_output(args: HandlerArgs) -> Decline | None:
    if len(args.node.output) != 1 or not args.node.output[0]:
        return Decline("outputs", f"{args.node.op_type} has other than one output")
    return None


def outputs_move_on(args: HandlerArgs) -> Decline | None:
    """The cost check for moves that leave more Transposes than they take: every reader of every
    output must be a Transpose (they merge) or an op a handler knows (the Transpose can go on).
    Off when a layout was chosen for the graph (the chooser counted the cost)."""
    if args.ctx.decided:
        return None
    return outputs_go_on(args.ws, args.node, args.handler_for)


def outputs_go_on(
    ws: Workspace, node: NodeProto, handler_for: Callable[[NodeProto], Handler | None], copied: Sequence[str] | None = None
) -> Decline | None:
    """Every reader of the ``copied`` outputs (default: all) is a Transpose or an op ``handler_for`` knows."""
    for out in node.output if copied is None else copied:
        if not out:
            continue
        if out in ws.outputs:
            return Decline("output_is_graph_output", f"{out} is a graph output: its Transpose would stay")
        for r in ws.readers(out):
            transpose = r.op_type == "Transpose" and r.domain in DEFAULT_DOMAINS
            if not transpose and handler_for(r) is None and not _reshapes_into_transpose(ws, r):
                return Decline("outputs_stay_transposed", f"{out} is read by {r.op_type}, which no Transpose moves through")
    return None


_RESHAPING = frozenset({"Reshape", "Squeeze", "Unsqueeze"})


def _reshapes_into_transpose(ws: Workspace, node: NodeProto, depth: int = 6) -> bool:
    """Whether ``node`` starts a run of Reshapes, Squeezes and Unsqueezes, each read only by the next, that ends
    in a Transpose: a Transpose copied in front of it may fold with that one (``fold_rearranges.py``)."""
    while depth and node.op_type in _RESHAPING and node.domain in DEFAULT_DOMAINS and len(node.output) == 1:
        readers = ws.readers(node.output[0])
        if len(readers) != 1 or node.output[0] in ws.outputs:
            return False
        node, depth = readers[0], depth - 1
        if node.op_type == "Transpose" and node.domain in DEFAULT_DOMAINS:
            return True
    return False


# -- reading inputs -------------------------------------------------------------------------------


def constant_ints(args: HandlerArgs, slot: int, what: str) -> list[int] | Decline:
    """The integer values of input ``slot``, which must be a constant."""
    name = args.node.input[slot]
    if not args.ws.scope.source(name).is_constant:
        return Decline(f"{what}_not_constant", f"the {what} of {args.node.op_type} ({name}) are computed, not constant")
    return [int(v) for v in np.asarray(args.ws.scope.constant_value(name)).reshape(-1)]


def optional_input(node: NodeProto, slot: int) -> str:
    return node.input[slot] if slot < len(node.input) else ""


def axes_of(args: HandlerArgs, values: Sequence[int], rank: int | None = None) -> list[int] | Decline:
    axes = normalize_axes(values, args.rank if rank is None else rank)
    if axes is None:
        return Decline("bad_axes", f"axes {list(values)} of {args.node.op_type} are out of range or repeated")
    return axes


def axis_of(args: HandlerArgs, value: int) -> int | Decline:
    k = normalize_axis(int(value), args.rank)
    if k is None:
        return Decline("bad_axes", f"axis {value} of {args.node.op_type} is out of range")
    return k


def operand(args: HandlerArgs, slot: int) -> Operand | None:
    """Input ``slot`` in ``a``'s layout, if it comes free: the Transpose's input, a constant laid out by
    the inverse perm, the input of another Transpose by the same perm, an existing Transpose of it
    by the inverse perm (the residual of a block whose input was transposed for the rewrite), an
    ``Expand`` of a constant (see :func:`expanded`), a tensor computed from constants alone (:class:`Transposed`),
    or a computed tensor of lower rank (:func:`lower_rank`)."""
    name = args.node.input[slot]
    if name == args.t:
        return args.a
    if not name:
        return None
    ws = args.ws
    if ws.scope.source(name).is_constant:
        dims = list(ws.scope.constant_tensor(name).dims)
        return laid_out(name, dims, args.perm) if len(dims) <= args.rank else None
    if args.ctx.assume is not None and name in args.ctx.assume:
        return name  # a probe: the caller will make it available in this layout (see probe.py)
    producer = ws.producer(name)
    if producer is not None and producer.op_type == "Transpose" and producer.domain in DEFAULT_DOMAINS:
        if ws.perm(producer) == list(args.perm):
            return producer.input[0]
    existing = ws.transposed(name, list(args.perm_inv))
    if existing is not None:
        return existing
    if producer is not None and producer.op_type == "Expand" and producer.domain in DEFAULT_DOMAINS:
        found = expanded(args, producer)
        if found is not None:
            return found
    if ws.scope.is_constant_expression(name) and runtime_rank(args, name) == args.rank:
        return Transposed(name, tuple(args.perm_inv))
    return lower_rank(args, name)


def expanded(args: HandlerArgs, expand: NodeProto) -> Expanded | None:
    """``Expand(c, shape)`` of a constant in ``a``'s layout, when the shape has one entry per dim of ``a``.

    ``Expand`` broadcasts dim by dim, ``out[i] = bcast(c[i], shape[i])`` (``c`` padded with 1s on the
    left to the rank), so permuting the result permutes both: ``Expand(c laid out, Gather(shape, inv))``.
    A shape of another length (or an unknown one) leaves the operand as it is (None).
    """
    ws, rank = args.ws, args.rank
    c, shape = expand.input[0], expand.input[1]
    if not ws.scope.source(c).is_constant:
        return None
    c_dims = list(ws.scope.constant_tensor(c).dims)
    known = _shape_values(ws, shape)
    length = len(known) if known is not None else _length(args.ctx, ws, shape)
    if length is None or len(c_dims) > rank or length != rank:
        return None
    return Expanded(args, expand, laid_out(c, c_dims, args.perm))


def _length(ctx: PassContext, ws: Workspace, name: str) -> int | None:
    """A 1-D tensor's length as shape inference found it (TorchScript's class token: ``Expand(cls,
    Where(...))`` of a shape computed from ``Shape``), main graph only."""
    t = ctx.types.get(name) if ctx.types and ws.graph is ctx.model.graph else None
    if t is None or t.shape is None or t.conflict or len(t.shape) != 1 or not isinstance(t.shape[0], int):
        return None
    return t.shape[0]


def _shape_values(ws: Workspace, name: str, depth: int = 0) -> list[int | None] | None:
    """What is known of a 1-D int64 shape tensor: its values where constant (None elsewhere), or None if
    even its length is unknown. Reads constants, Concat, Cast/Identity, Reshape to [-1], Where, Unsqueeze
    of a scalar, ``Shape(x, start, end)`` with both ends given, and ``ConstantOfShape`` of a known length."""
    if ws.scope.source(name).is_constant:
        return [int(v) for v in np.asarray(ws.scope.constant_value(name)).reshape(-1)]
    node = ws.producer(name)
    if depth > 8 or node is None or node.domain not in DEFAULT_DOMAINS:
        return None
    op, ins = node.op_type, node.input
    sub = lambda i: _shape_values(ws, ins[i], depth + 1)  # noqa: E731
    if op == "Concat":
        parts = [_shape_values(ws, i, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]  # type: ignore[union-attr]
    if op in ("Cast", "Identity") or (op == "Reshape" and ws.scope.source(ins[1]).is_constant and _ints(ws, ins[1]) == [-1]):
        return sub(0)
    if op == "Where":
        a, b = sub(1), sub(2)
        if a is None or b is None or len(a) != len(b):
            return None
        return [x if x == y else None for x, y in zip(a, b, strict=True)]
    if op == "Unsqueeze":  # one element of a shape: a scalar made 1-D
        axes = attribute(node, "axes", None)
        if axes is None and len(ins) > 1 and ws.scope.source(ins[1]).is_constant:
            axes = _ints(ws, ins[1])
        return [None] if axes in ([0], [-1]) else None
    if op == "Shape":
        start, end = attribute(node, "start", 0), attribute(node, "end", None)
        if isinstance(end, int) and isinstance(start, int) and 0 <= start <= end:
            return [None] * (end - start)
        return None
    if op == "ConstantOfShape":
        length = sub(0)
        fill = attribute(node, "value", None)
        if length is None or len(length) != 1 or length[0] is None:
            return None
        value = int(np.asarray(onnx.numpy_helper.to_array(fill)).reshape(-1)[0]) if fill is not None else 0
        return [value] * length[0]
    return None


def _ints(ws: Workspace, name: str) -> list[int]:
    return [int(v) for v in np.asarray(ws.scope.constant_value(name)).reshape(-1)]


def laid_out(name: str, dims: Sequence[int], perm: Sequence[int]) -> Operand:
    """A constant operand of an elementwise op for the untransposed side: broadcast to the perm's rank, un-permuted."""
    if math.prod(dims) == 1 and len(dims) <= 1:
        return name  # a scalar broadcasts the same way in any layout
    rank, inv = len(perm), inverse(perm)

    def make(value: np.ndarray) -> np.ndarray:
        full = value.reshape((1,) * (rank - value.ndim) + value.shape)
        return np.ascontiguousarray(np.transpose(full, inv))

    return Relaid(name, (tuple(perm),), make, "".join(map(str, inv)))


def ints_like(name: str, key: str, perm: Sequence[int], values: Sequence[int]) -> Relaid:
    """An integer input (axes, pads) of constant ``name`` rewritten to ``values`` under ``perm``."""
    return Relaid(name, (key, tuple(perm)), lambda v: np.asarray(values, dtype=v.dtype), key)


# -- the shared shapes of a plan ------------------------------------------------------------------


def data_plan(args: HandlerArgs, outputs: list[OutPerm] | None = None, **attrs: object) -> Plan:
    """The node reads ``a`` on its data input; every output (or those given) gets a Transpose."""
    outs = outputs if outputs is not None else [args.perm] * len(args.node.output)
    return Plan({0: args.a}, outs, dict(attrs))


def simple_node_with_axis(args: HandlerArgs, default: int | None, inputs: dict[int, Operand] | None = None) -> Plan | Decline:
    """An op whose layout lives in one ``axis`` attribute: the same op on ``a`` with axis ``perm[axis]``
    and the Transpose after every output (Softmax from opset 13, Concat, Split, Gather on 1-D indices)."""
    value = attribute(args.node, "axis", default)
    if value is None:
        return Decline("no_axis", f"{args.node.op_type} has no axis")
    k = axis_of(args, value)  # type: ignore[arg-type]
    if isinstance(k, Decline):
        return k
    plan = Plan(inputs if inputs is not None else {0: args.a}, [args.perm] * len(args.node.output))
    plan.attrs["axis"] = args.perm[k]
    return plan


# -- computed operands of lower rank (a run-time bias or scale, dynamic quantization parameters) ----------

# Ops that keep a parameter a parameter: elementwise on scalars and constants (the quantizer's Mul of two scales).
_PARAMETER_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Cast", "Reciprocal"})


def lower_rank(args: HandlerArgs, name: str) -> Operand | None:
    """``name``, a computed tensor of lower rank than ``a`` that broadcasts against it (a bias or scale computed at
    run time, a dynamic quantization parameter: dynamic.py's docstring), in ``a``'s layout: a scalar as it is,
    else through ``Unsqueeze`` to the unit axes the layout puts around it, when its own axes keep their order
    (else None: no Transpose of the operand is made)."""
    rank = parameter_rank(args.ws, name)
    if rank is None:
        rank = runtime_rank(args, name)
    if rank is None or rank >= args.rank:
        return None
    if rank == 0:
        return name  # a scalar broadcasts alike in every layout
    padded = [None] * (args.rank - rank) + list(range(rank))  # broadcast to the full rank: unit axes in front
    laid = [padded[j] for j in args.perm_inv]
    kept = [v for v in laid if v is not None]
    if kept != sorted(kept):
        return None  # its own axes would have to be transposed
    return Unsqueezed(args, name, tuple(i for i, v in enumerate(laid) if v is None))


def runtime_rank(args: HandlerArgs, name: str) -> int | None:
    """The rank shape inference found for a tensor of the main graph (None elsewhere, or when it is not known)."""
    ctx = args.ctx
    t = ctx.types.get(name) if ctx.types and args.ws.graph is ctx.model.graph else None
    if t is None or t.shape is None or t.conflict:
        return None
    return len(t.shape)


def parameter_rank(ws: Workspace, name: str, depth: int = 0) -> int | None:
    """The rank of a tensor made from DynamicQuantizeLinear's scale or zero point and constants by elementwise
    ops, or None when it is anything else."""
    node = ws.producer(name)
    if node is None or node.domain not in DEFAULT_DOMAINS or depth > 4:
        return None
    if node.op_type == "DynamicQuantizeLinear":
        return 0 if name in node.output[1:] else None
    if node.op_type not in _PARAMETER_OPS:
        return None
    return _inputs_rank(ws, node, depth)


def _inputs_rank(ws: Workspace, node: NodeProto, depth: int) -> int | None:
    ranks = []
    for i in node.input:
        if ws.scope.source(i).is_constant:
            ranks.append(len(ws.scope.constant_tensor(i).dims))
            continue
        r = parameter_rank(ws, i, depth + 1)
        if r is None:
            return None
        ranks.append(r)
    return max(ranks, default=None)
