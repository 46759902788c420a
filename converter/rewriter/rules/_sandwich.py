"""Matching ``Reshape(x, [-1, C]) -> core -> Reshape(-> [N, H, W, K])`` and proving it is a dense layer.

TensorFlow's Tensordot (how tf2onnx writes a Keras Dense on a 4D tensor) and onnxsim / onnxslim
(which turn a 4D MatMul + Add into a Gemm) both flatten the positions, multiply, and restore them.
That equals a per-position dense layer on the last axis exactly when

- ``x`` has rank 4 and a known channel count C, and the first Reshape's target is ``[-1, C]``
  or ``[N*H*W, C]`` for a fully known x (so every row is one position's channels);
- the second Reshape's target is ``[N, H, W, K]`` of the same x: either a constant that matches x's
  known dims (one -1 allowed), or computed at run time as
  ``Concat(Gather(Shape(x), [0, 1, 2]) or Slice(Shape(x), 0, 3), [K])``, with any Casts between.

The shape-computing nodes that only serve the match go away with it.

With ``RuleOptions(tokens=True)`` a second Reshape back to rank 3 is a token layer (``match_tokens``):
``Reshape(x, [R, C]) -> core -> Reshape(-> [d0, d1, K])`` with x of rank 3 or more, ``[d0, d1, ...]``.
It is the dense layer on x's first two dims, x's other dims flattened into the C channels, when the
second Reshape's target is ``[d0, d1, K]`` of x (each element a constant equal to x's known dim, or
computed from x's shape, or from the shape of another tensor whose dim has the same symbolic name:
a dim_param names one value across the model). Then no target of the first Reshape has to be read:
the core's output holds ``d0 * d1 * K`` values, so R = d0 * d1, and the core's weight makes C the
product of x's other dims: row ``i * d1 + j`` is position (i, j)'s channels in x's own order. This
is what torch's MultiheadAttention writes for out_proj (x = the heads [S, B, H, D] in S-major
order, the result [S, B, E]): the layer runs on x's own first two dims, whatever they mean. One -1
in the target is accepted when the other leading dim is proven and x's other dims provably hold C
values (known dims, or the first Reshape's target says so). ``allowzero`` does not matter here: no
proven element is 0 (zero-size dims are declined) and the count argument holds for any Reshape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from onnx import NodeProto, helper

from converter.graph import TensorType
from converter.rewriter.rules._checks import require_varying
from converter.rewriter.rules._engine import Context, Decline

_DEFAULT = ("", "ai.onnx")
_SHAPE_KEEPING = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Sandwich:
    x: str
    x_type: TensorType
    first: NodeProto  # Reshape into rows
    last: NodeProto  # Reshape back to 4D
    channels: int
    shape_nodes: list[NodeProto] = field(default_factory=list)  # the run-time target shape, when only we use it
    constants: list[str] = field(default_factory=list)  # constants the matched nodes read
    tokens: bool = False  # the result is [d0, d1, K] over x's first two dims (see match_tokens)


def _no(detail: str) -> Decline:
    return Decline(Decline.NO_PATTERN, detail)


def _constant_ints(ctx: Context, name: str) -> list[int] | None:
    src = ctx.scope.source(name)
    if not src.is_constant:
        return None
    value = ctx.scope.constant_value(name)
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" else None


def attr_value(node: NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# A shape element as the evaluator sees it: coef * product of x's dims (indices, sorted); dims=()
# for a plain constant (coef -1 is Reshape's "infer this one").
Expr = tuple[int, tuple[int, ...]]


def match_sandwich(
    core: NodeProto,
    ctx: Context,
    k: int,
    entry: NodeProto | None = None,
    flat_out: str = "",
    type_of: Callable[[str], TensorType | None] | None = None,
) -> Sandwich:
    """The Reshapes around ``core`` (MatMul or Gemm) if they make it a per-position dense layer.

    ``entry`` is the node that reads the first Reshape's output and ``flat_out`` the flat tensor the second
    Reshape reads; both default to the core itself. A quantized layer passes the nodes between (the
    activation's QuantizeLinear, the output's DequantizeLinear), which only act position by position,
    and ``type_of`` where x's type is known past onnx's shape inference (``_integer.integer_type``).
    """
    scope = ctx.scope
    entry = entry or core
    flat_out = flat_out or core.output[0]
    first = scope.producers.get(entry.input[0])
    if first is None or first.op_type != "Reshape" or first.domain not in _DEFAULT:
        raise _no("the input is not a Reshape")
    consumers = scope.consumers(flat_out)
    last = consumers[0] if len(consumers) == 1 else None
    if last is None and ctx.options.tokens and flat_out == core.output[0]:
        last = _reshape_beside_shapes(ctx, core, consumers)
    if last is None or last.op_type != "Reshape" or last.domain not in _DEFAULT or last.input[0] != flat_out:
        raise _no("the output does not go to a single Reshape")
    if flat_out in scope.output_names:
        raise _no("the flat output is a graph output")
    if ctx.options.tokens and _target_length(ctx, last) == 3:
        return match_tokens(entry, ctx, k, first, last, type_of)
    x = first.input[0]
    xt = (type_of or scope.type_of)(x)
    if xt is None or xt.rank != 4:
        raise _no("the flattened tensor is not known to be rank 4")
    _check_activation(ctx, entry, first, x, xt)
    if attr_value(first, "allowzero", 0) or attr_value(last, "allowzero", 0):
        raise Decline("not_per_position", "Reshape with allowzero")
    dims = list(xt.shape or ())
    evaluator = _ShapeEvaluator(ctx, x, dims)
    rows = evaluator.eval(first.input[1])
    if rows is None or len(rows) != 2:
        raise _no("the first Reshape does not flatten to [rows, C]")
    if not (_is_dim(rows[1], 3, dims) and (rows[0] == (-1, ()) or _is_product(rows[0], dims))):
        raise Decline("not_per_position", "the first Reshape does not flatten x to [N*H*W, C]")
    target = evaluator.eval(last.input[1])
    if target is None or len(target) != 4 or target[3] != (k, ()) or target.count((-1, ())) > 1:
        raise Decline("not_per_position", f"the second Reshape's target is not [N, H, W, {k}] of the input")
    for i in range(3):
        if not (_is_dim(target[i], i, dims) or (target[i] == (-1, ()) and _others_known(target, i, dims))):
            raise Decline("not_per_position", f"the second Reshape's target is not [N, H, W, {k}] of the input")
    c = dims[3] if isinstance(dims[3], int) else None
    sandwich = Sandwich(x, xt, first, last, c if c is not None else -1)
    nodes = [n for n in evaluator.nodes if n.op_type != "Constant"]
    sandwich.shape_nodes = _only_ours(ctx, nodes, [first, last])
    sandwich.constants = [*evaluator.constants, *(n.output[0] for n in evaluator.nodes if n.op_type == "Constant")]
    return sandwich


def _check_activation(ctx: Context, core: NodeProto, first: NodeProto, x: str, xt: TensorType) -> None:
    if any(d == 0 for d in xt.shape or ()):
        raise Decline("zero_size", f"{x!r} has a dim of size 0; onnxruntime's Conv refuses empty tensors")
    require_varying(ctx, x)
    scope = ctx.scope
    if [id(c) for c in scope.consumers(first.output[0])] != [id(core)] or first.output[0] in scope.output_names:
        raise Decline("reshape_output_shared", "the flattened activation is also used elsewhere")


def _reshape_beside_shapes(ctx: Context, core: NodeProto, consumers: list[NodeProto]) -> NodeProto | None:
    """The one Reshape of the core's output back to rank 3 when the other readers only take its Shape
    (TorchScript reads K for the target that way); the match must then account for them (the engine checks)."""
    reshapes = [c for c in consumers if c.op_type == "Reshape" and c.domain in _DEFAULT and c.input[0] == core.output[0]]
    others = [c for c in consumers if all(c is not r for r in reshapes)]
    if len(reshapes) != 1 or any(c.op_type != "Shape" or c.domain not in _DEFAULT for c in others):
        return None
    return reshapes[0] if _target_length(ctx, reshapes[0]) == 3 else None


def _target_length(ctx: Context, last: NodeProto) -> int | None:
    """How many dims the second Reshape makes: its shape input's length, else its output's rank."""
    shape = ctx.scope.type_of(last.input[1])
    if shape is not None and shape.shape is not None and len(shape.shape) == 1 and isinstance(shape.shape[0], int):
        return shape.shape[0]
    out = ctx.scope.type_of(last.output[0])
    return out.rank if out is not None and out.shape is not None else None


def match_tokens(
    core: NodeProto,
    ctx: Context,
    k: int,
    first: NodeProto,
    last: NodeProto,
    type_of: Callable[[str], TensorType | None] | None = None,
) -> Sandwich:
    """The sandwich back to rank 3 under ``tokens``: a layer on x's first two dims (the module docstring says why).
    ``type_of`` as for ``match_sandwich``."""
    x = first.input[0]
    xt = (type_of or ctx.scope.type_of)(x)
    if xt is None or xt.shape is None or xt.conflict or xt.rank < 3:
        raise _no("the flattened tensor is not known to be rank 3 or more")
    _check_activation(ctx, core, first, x, xt)
    dims = list(xt.shape)
    evaluator = _ShapeEvaluator(ctx, x, dims, by_name=True)
    want = f"[{dims[0]}, {dims[1]}, {k}] of the input (its first two dims)"
    target = evaluator.eval(last.input[1])
    if target is None or len(target) != 3 or target[2] != (k, ()) or target.count((-1, ())) > 1:
        raise Decline("not_per_position", f"the second Reshape's target is not {want}")
    rows = evaluator.eval(first.input[1])
    lead = [_same(target[i], (1, (i,)), dims) for i in (0, 1)]
    if not all(lead):
        # One -1: it is d_i only if x's other dims hold exactly the layer's channels.
        i = lead.index(False)
        if not (target[i] == (-1, ()) and lead[1 - i] and _channels_proven(dims, rows)):
            raise Decline("not_per_position", f"the second Reshape's target is not {want}")
    trailing = dims[2:]
    channels = math.prod(trailing) if all(isinstance(d, int) for d in trailing) else -1
    sandwich = Sandwich(x, xt, first, last, channels, tokens=True)
    nodes = [n for n in evaluator.nodes if n.op_type != "Constant"]
    sandwich.shape_nodes = _only_ours(ctx, nodes, [first, last])
    sandwich.constants = [*evaluator.constants, *(n.output[0] for n in evaluator.nodes if n.op_type == "Constant")]
    return sandwich


def _channels_proven(dims: list, rows: list[Expr] | None) -> bool:
    """Whether x's dims after the first two hold C values per position: all known, or the first target says so."""
    trailing = (1, tuple(range(2, len(dims))))
    if all(isinstance(d, int) for d in dims[2:]):
        return True  # the weight's C is compared with the product by the caller (shape_mismatch)
    return rows is not None and len(rows) == 2 and _same(rows[1], trailing, dims)


def _same(a: Expr, b: Expr, dims: list) -> bool:
    return _normal(a, dims) == _normal(b, dims)


def _normal(e: Expr, dims: list) -> tuple[int, tuple[str, ...]]:
    """An element with x's known dims multiplied in and its other dims named (symbols by name, unknowns by index)."""
    coef, names = e[0], []
    for i in e[1]:
        d = dims[i] if 0 <= i < len(dims) else None
        if isinstance(d, int):
            coef *= d
        else:
            names.append(d if isinstance(d, str) else f"#{i}")
    return coef, tuple(sorted(names))


def _is_dim(e: Expr, i: int, dims: list) -> bool:
    return e == (1, (i,)) or (not e[1] and isinstance(dims[i], int) and e[0] == dims[i])


def _is_product(e: Expr, dims: list) -> bool:
    if e == (1, (0, 1, 2)):
        return True
    known = [d for d in dims[:3] if isinstance(d, int)]
    return not e[1] and len(known) == 3 and e[0] == math.prod(known)


def _others_known(target: list[Expr], i: int, dims: list) -> bool:
    return all(_is_dim(target[j], j, dims) for j in range(3) if j != i) and all(
        isinstance(dims[j], int) for j in range(3) if j != i
    )


class _ShapeEvaluator:
    """Evaluates small int64 shape computations in terms of x's dims, remembering what it read."""

    def __init__(self, ctx: Context, x: str, dims: list, by_name: bool = False) -> None:
        self.ctx, self.x, self.dims = ctx, x, dims
        self.by_name = by_name  # read the Shape of other tensors too, their dims matched to x's by symbolic name
        self.nodes: list[NodeProto] = []
        self.constants: list[str] = []
        self._opaque = len(dims) + 1000  # an index no dim of x has: a value we know nothing about

    def eval(self, name: str, depth: int = 0) -> list[Expr] | None:
        if depth > 16:
            return None
        src = self.ctx.scope.source(name)
        if src.kind == "initializer":
            ints = _constant_ints(self.ctx, name)
            if ints is None:
                return None
            self.constants.append(name)
            return [(v, ()) for v in ints]
        node = self.ctx.scope.producers.get(name)
        if node is None or node.domain not in _DEFAULT:
            return None
        self.nodes.append(node)
        op, ins = node.op_type, node.input
        sub = lambda i: self.eval(ins[i], depth + 1) if len(ins) > i and ins[i] else None  # noqa: E731
        if op == "Constant":
            ints = _constant_ints(self.ctx, name)
            return None if ints is None else [(v, ()) for v in ints]
        if op == "Shape":
            return self._shape(node)
        if op in ("Cast", "Identity"):
            return sub(0)
        if op in ("Gather", "Slice", "ReduceProd", "Unsqueeze", "Squeeze"):
            vec = sub(0)
            if vec is None:
                return None
            return self._select(node, vec, sub)
        if op == "Concat":
            parts = [self.eval(i, depth + 1) for i in ins]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]  # type: ignore[union-attr]
        if op == "Mul" and len(ins) == 2:
            a, b = sub(0), sub(1)
            if a is None or b is None or len(a) != len(b) or any(e[0] < 0 for e in a + b):
                return None
            return [(p[0] * q[0], tuple(sorted(p[1] + q[1]))) for p, q in zip(a, b, strict=True)]
        return None

    def _shape(self, node: NodeProto) -> list[Expr] | None:
        start, end = attr_value(node, "start", 0), attr_value(node, "end", None)
        # The shape of x, or of the tensor x is a Transpose of; failing that, the same through the shape-keeping
        # ops the Shape reads (QOperator reads the shape of a DequantizeLinear of x's NCHW side), which then go
        # with the match when only the shape reads them.
        measured, walked = node.input[0], []
        full = self._full(measured)
        inner = self.ctx.scope.producers.get(measured)
        while full is None and inner is not None and inner.op_type in _SHAPE_KEEPING and inner.domain in _DEFAULT:
            walked.append(inner)
            measured = inner.input[0]
            full = self._full(measured)
            inner = self.ctx.scope.producers.get(measured)
        if full is not None:
            self.nodes.extend(walked)
        if full is None and self.by_name:
            full = self._shape_by_name(node.input[0])
        if full is None:
            return None
        return full[start:end]  # type: ignore[misc]

    def _full(self, measured: str) -> list[Expr] | None:
        """The dims of ``measured`` in terms of x's: x itself, or the tensor x is a Transpose of."""
        if measured == self.x:
            return [(1, (i,)) for i in range(4)]
        producer = self.ctx.scope.producers.get(self.x)
        # through a quantization pair, which keeps the shape (onnxruntime's QDQ puts one after the Transpose)
        while producer is not None and producer.op_type in _SHAPE_KEEPING and producer.domain in _DEFAULT:
            producer = self.ctx.scope.producers.get(producer.input[0])
        if producer is not None and producer.op_type == "Transpose" and producer.input[0] == measured:
            perm = attr_value(producer, "perm", None)
            if perm is not None and len(perm) == 4:  # type: ignore[arg-type]
                inverse = [0] * 4
                for i, p in enumerate(perm):  # type: ignore[arg-type]
                    inverse[p] = i
                return [(1, (inverse[j],)) for j in range(4)]
        return None

    def _shape_by_name(self, name: str) -> list[Expr] | None:
        """Another tensor's dims: known ones as constants, a symbolic one as x's dim of that name, others opaque."""
        t = self.ctx.scope.type_of(name)
        if t is None or t.shape is None or t.conflict:
            return None
        full: list[Expr] = []
        for d in t.shape:
            if isinstance(d, int):
                full.append((d, ()))
            elif isinstance(d, str) and d in self.dims:
                full.append((1, (self.dims.index(d),)))
            else:
                self._opaque += 1
                full.append((1, (self._opaque,)))
        return full

    def _select(self, node: NodeProto, vec: list[Expr], sub) -> list[Expr] | None:  # noqa: ANN001
        op = node.op_type
        if op == "Gather":
            idx = sub(1)
            if idx is None or any(e[1] for e in idx) or attr_value(node, "axis", 0) != 0:
                return None
            try:
                return [vec[e[0]] for e in idx]
            except IndexError:
                return None
        if op == "Slice":
            starts, ends = sub(1), sub(2)
            axes = sub(3) if len(node.input) > 3 and node.input[3] else [(0, ())]
            steps = sub(4) if len(node.input) > 4 and node.input[4] else [(1, ())]
            if None in (starts, ends, axes, steps) or axes != [(0, ())] or steps != [(1, ())]:
                return None
            return vec[starts[0][0] : ends[0][0]]  # type: ignore[index]
        if op == "ReduceProd":
            axes = attr_value(node, "axes", None)
            if axes is None and len(node.input) > 1 and node.input[1]:
                found = sub(1)
                axes = None if found is None else [e[0] for e in found]
            if axes not in (None, [0], [-1]) or any(e[0] < 0 for e in vec):
                return None
            coef = math.prod(e[0] for e in vec)
            return [(coef, tuple(sorted(d for e in vec for d in e[1])))]
        # Unsqueeze / Squeeze of a one-element vector to / from a scalar: the same values
        axes = attr_value(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            found = sub(1)  # also records the axes constant, which goes away with the match
            axes = None if found is None else [e[0] for e in found]
        return vec if len(vec) == 1 and axes in (None, [0], [-1]) else None


def _only_ours(ctx: Context, nodes: list[NodeProto], readers: list[NodeProto]) -> list[NodeProto]:
    """The shape nodes whose outputs feed only the match: those can go, the others must stay."""
    unique = {id(n): n for n in nodes}
    nodes = list(unique.values())
    ours = set(unique) | {id(r) for r in readers}
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if id(n) not in ours:
                continue
            for out in n.output:
                if out in ctx.scope.output_names or any(id(c) not in ours for c in ctx.scope.consumers(out)):
                    ours.discard(id(n))
                    changed = True
                    break
    return [n for n in nodes if id(n) in ours]
