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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from onnx import NodeProto, helper

from converter.graph import TensorType

from ._checks import require_varying
from ._engine import Context, Decline

_DEFAULT = ("", "ai.onnx")


@dataclass
class Sandwich:
    x: str
    x_type: TensorType
    first: NodeProto  # Reshape into rows
    last: NodeProto  # Reshape back to 4D
    channels: int
    shape_nodes: list[NodeProto] = field(default_factory=list)  # the run-time target shape, when only we use it
    constants: list[str] = field(default_factory=list)  # constants the matched nodes read


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


def match_sandwich(core: NodeProto, ctx: Context, k: int) -> Sandwich:
    """The Reshapes around ``core`` (MatMul or Gemm) if they make it a per-position dense layer."""
    scope = ctx.scope
    first = scope.producers.get(core.input[0])
    if first is None or first.op_type != "Reshape" or first.domain not in _DEFAULT:
        raise _no("the input is not a Reshape")
    consumers = scope.consumers(core.output[0])
    last = consumers[0] if len(consumers) == 1 else None
    if last is None or last.op_type != "Reshape" or last.domain not in _DEFAULT or last.input[0] != core.output[0]:
        raise _no("the output does not go to a single Reshape")
    if core.output[0] in scope.output_names:
        raise _no("the flat output is a graph output")
    x = first.input[0]
    xt = scope.type_of(x)
    if xt is None or xt.rank != 4:
        raise _no("the flattened tensor is not known to be rank 4")
    if any(d == 0 for d in xt.shape or ()):
        raise Decline("zero_size", f"{x!r} has a dim of size 0; onnxruntime's Conv refuses empty tensors")
    require_varying(ctx, x)
    if [id(c) for c in scope.consumers(first.output[0])] != [id(core)] or first.output[0] in scope.output_names:
        raise Decline("reshape_output_shared", "the flattened activation is also used elsewhere")
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

    def __init__(self, ctx: Context, x: str, dims: list) -> None:
        self.ctx, self.x, self.dims = ctx, x, dims
        self.nodes: list[NodeProto] = []
        self.constants: list[str] = []

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
        full = None
        if node.input[0] == self.x:
            full = [(1, (i,)) for i in range(4)]
        else:  # Shape of the tensor that x is a Transpose of (tf2onnx reads the NCHW side)
            producer = self.ctx.scope.producers.get(self.x)
            if producer is not None and producer.op_type == "Transpose" and producer.input[0] == node.input[0]:
                perm = attr_value(producer, "perm", None)
                if perm is not None and len(perm) == 4:  # type: ignore[arg-type]
                    inverse = [0] * 4
                    for i, p in enumerate(perm):  # type: ignore[arg-type]
                        inverse[p] = i
                    full = [(1, (inverse[j],)) for j in range(4)]
        if full is None:
            return None
        return full[start:end]  # type: ignore[misc]

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
