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

import numpy as np
from onnx import NodeProto, helper

from converter.graph import TensorType

from ._checks import require_rank
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


def _attr(node: NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


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
    if [id(c) for c in scope.consumers(first.output[0])] != [id(core)] or first.output[0] in scope.output_names:
        raise Decline("reshape_output_shared", "the flattened activation is also used elsewhere")

    rows = _constant_ints(ctx, first.input[1])
    if rows is None or len(rows) != 2:
        raise _no("the first Reshape does not flatten to a constant [rows, C]")
    x = first.input[0]
    xt = require_rank(ctx, x, 4)
    c = xt.shape[3] if isinstance(xt.shape[3], int) else None  # type: ignore[index]
    if c is None:
        raise Decline("channels_unknown", f"the channel count of {x!r} is not known, so rows may mix positions")
    static = [d for d in xt.shape[:3] if isinstance(d, int)]  # type: ignore[index]
    full_rows = math.prod(static) if len(static) == 3 else None
    if rows[1] != c or rows[0] not in (-1, full_rows):
        raise Decline("not_per_position", f"the first Reshape's target {rows} is not [-1, {c}]")
    if _attr(first, "allowzero", 0) or _attr(last, "allowzero", 0):
        raise Decline("not_per_position", "Reshape with allowzero")

    sandwich = Sandwich(x, xt, first, last, c, constants=[first.input[1]])
    target = _constant_ints(ctx, last.input[1])
    if target is not None:
        _check_static_target(target, xt, k)
        sandwich.constants.append(last.input[1])
    else:
        sandwich.shape_nodes, consts = _trace_runtime_target(ctx, last.input[1], x, k)
        sandwich.constants += consts
        sandwich.shape_nodes = _only_ours(ctx, sandwich.shape_nodes, last)
    return sandwich


def _check_static_target(target: list[int], xt: TensorType, k: int) -> None:
    dims = xt.shape or ()
    ok = len(target) == 4 and target[3] == k and target.count(-1) <= 1
    for t, d in zip(target[:3], dims[:3], strict=False):
        ok = ok and (t == d or (t == -1 and all(isinstance(o, int) for o in dims[:3] if o is not d)))
    if not ok:
        raise Decline("not_per_position", f"the second Reshape's target {target} is not [N, H, W, {k}] of the input")


def _through_casts(ctx: Context, name: str, seen: list[NodeProto]) -> NodeProto | None:
    node = ctx.scope.producers.get(name)
    while node is not None and node.op_type == "Cast" and node.domain in _DEFAULT:
        seen.append(node)
        node = ctx.scope.producers.get(node.input[0])
    if node is not None:
        seen.append(node)
    return node


def _trace_runtime_target(ctx: Context, name: str, x: str, k: int) -> tuple[list[NodeProto], list[str]]:
    """Prove ``name`` computes ``concat(shape(x)[0:3], [K])``; return the nodes and constants used."""
    nodes: list[NodeProto] = []
    fail = Decline("not_per_position", "the second Reshape's run-time target is not [N, H, W, K] of the input")
    concat = _through_casts(ctx, name, nodes)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2 or _attr(concat, "axis", None) != 0:
        raise fail
    if _constant_ints(ctx, concat.input[1]) != [k]:
        raise fail
    head = _through_casts(ctx, concat.input[0], nodes)
    consts = [concat.input[1]]
    if head is None:
        raise fail
    if head.op_type == "Gather" and _constant_ints(ctx, head.input[1]) == [0, 1, 2] and _attr(head, "axis", 0) == 0:
        consts.append(head.input[1])
    elif head.op_type == "Slice" and len(head.input) >= 3:
        starts, ends = _constant_ints(ctx, head.input[1]), _constant_ints(ctx, head.input[2])
        axes = _constant_ints(ctx, head.input[3]) if len(head.input) > 3 and head.input[3] else [0]
        steps = _constant_ints(ctx, head.input[4]) if len(head.input) > 4 and head.input[4] else [1]
        if (starts, ends, axes, steps) != ([0], [3], [0], [1]):
            raise fail
        consts += [n for n in head.input[1:] if n]
    else:
        raise fail
    shape = _through_casts(ctx, head.input[0], nodes)
    if shape is None or shape.op_type != "Shape" or shape.input[0] != x:
        raise fail
    if _attr(shape, "start", 0) != 0 or _attr(shape, "end", None) not in (None, 4):
        raise fail
    return nodes, consts


def _only_ours(ctx: Context, nodes: list[NodeProto], last: NodeProto) -> list[NodeProto]:
    """The shape nodes whose outputs feed only the match: those can go, the others must stay."""
    ours = {id(n) for n in nodes} | {id(last)}
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


def as_rows(value: np.ndarray) -> np.ndarray:
    """A constant operand as a 2D matrix (rank-2 weights only: batched ones are not a dense layer)."""
    if value.ndim != 2:
        raise Decline("weight_rank", f"the weight has rank {value.ndim}; a dense layer needs a matrix")
    return value
