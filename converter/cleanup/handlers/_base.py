"""What every handler receives and returns, and the helpers they share.

A handler looks at one node that reads the output of ``Transpose(a, perm)`` and says how the
same result is computed from ``a`` instead: a :class:`Plan` (new inputs, new attributes, and per
output the perm of the Transpose that restores it), or a :class:`Decline` with a reason. It edits
nothing; the pass applies the plan. See ``converter/cleanup/_edit.py`` for the perm convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from converter.cleanup import PassContext
from converter.cleanup._edit import DEFAULT_DOMAINS, attribute, inverse, normalize_axes, normalize_axis
from converter.cleanup._workspace import Workspace


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


Operand = str | Relaid | Fresh
OutPerm = Sequence[int] | None  # the Transpose that restores an output; None: the output is unchanged


@dataclass
class Plan:
    inputs: dict[int, Operand]
    outputs: list[OutPerm]
    attrs: dict[str, object] = field(default_factory=dict)  # None removes an attribute
    # Instead of editing the node: the nodes that compute its outputs (names given) from its new inputs.
    replace: Callable[[list[str], list[str]], list[NodeProto]] | None = None


@dataclass(frozen=True)
class HandlerArgs:
    ctx: PassContext
    ws: Workspace
    transpose: NodeProto
    node: NodeProto
    perm: tuple[int, ...]
    perm_inv: tuple[int, ...]
    slots: tuple[int, ...]  # the inputs of ``node`` that read the Transpose

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
    output must be a Transpose (they merge) or an op a handler knows (the Transpose can go on)."""
    return outputs_go_on(args.ws, args.node)


def outputs_go_on(ws: Workspace, node: NodeProto, copied: Sequence[str] | None = None) -> Decline | None:
    """Every reader of the ``copied`` outputs (default: all) is a Transpose or an op a handler knows."""
    from converter.cleanup.handlers import HANDLERS

    for out in node.output if copied is None else copied:
        if not out:
            continue
        if out in ws.outputs:
            return Decline("output_is_graph_output", f"{out} is a graph output: its Transpose would stay")
        for r in ws.readers(out):
            if r.domain not in DEFAULT_DOMAINS or (r.op_type != "Transpose" and r.op_type not in HANDLERS):
                return Decline("outputs_stay_transposed", f"{out} is read by {r.op_type}, which no Transpose moves through")
    return None


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
    the inverse perm, the input of another Transpose by the same perm, or an existing Transpose of it
    by the inverse perm (the residual of a block whose input was transposed for the rewrite)."""
    name = args.node.input[slot]
    if name == args.t:
        return args.a
    if not name:
        return None
    ws = args.ws
    if ws.scope.source(name).is_constant:
        dims = list(ws.scope.constant_tensor(name).dims)
        return laid_out(name, dims, args.perm) if len(dims) <= args.rank else None
    producer = ws.producer(name)
    if producer is not None and producer.op_type == "Transpose" and producer.domain in DEFAULT_DOMAINS:
        if ws.perm(producer) == list(args.perm):
            return producer.input[0]
    return ws.transposed(name, list(args.perm_inv))


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
