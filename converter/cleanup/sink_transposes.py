"""Move Transposes down through layout-agnostic ops, so that they meet their inverse and cancel.

Before::  t = Transpose(a, p); y = Op(t, c)
After::   y' = Op(a, c'); y = Transpose(y', p)

for ``Op`` an elementwise op, where every other operand is
- a constant: ``c'`` is ``c`` broadcast to the rank of ``a`` and laid out by the inverse perm;
- the output of a Transpose with the same perm: ``Op`` reads that Transpose's input instead;
- a tensor that some Transpose already brings into ``a``'s layout (the residual of a block whose
  input was transposed for the rewrite): ``Op`` reads that Transpose's output.

The Transpose is copied into each consumer it can move through and stays for the others (this is
how GELU's ``x * 0.5 * (1 + erf(x / sqrt 2))`` fan-out is crossed). A move never adds a Transpose
on another operand; the pass manager rejects the result if a graph ends with more Transposes.
"""

from __future__ import annotations

import numpy as np
from onnx import GraphProto, NodeProto, numpy_helper

from converter.cleanup import PassContext, PassResult
from converter.cleanup._edit import inverse, make_transpose, rebuild
from converter.graph import Scope, referenced_names, subgraphs, transpose_perm

UNARY = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid HardSwish "
    "Identity IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus Softsign "
    "Sqrt Tan Tanh ThresholdedRelu".split()
)
BINARY = frozenset(
    "Add And BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less LessOrEqual Max Min "
    "Mod Mul Or Pow PRelu Sub Sum Xor".split()
)


class SinkTransposes:
    name = "sink_transposes"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        scope = ctx.scope(graph)
        position = {id(n): i for i, n in enumerate(scope.nodes)}
        # (tensor, perm) -> output of an existing Transpose of that tensor by that perm
        transposed: dict[tuple[str, tuple[int, ...]], tuple[str, int]] = {}
        for n in scope.nodes:
            perm = transpose_perm(n) if n.op_type == "Transpose" else None
            if perm is not None:
                transposed.setdefault((n.input[0], tuple(perm)), (n.output[0], position[id(n)]))
        removed: set[int] = set()
        touched: set[int] = set()
        after: dict[int, list[NodeProto]] = {}
        changes = 0
        for t_node in scope.nodes:
            if t_node.op_type != "Transpose" or id(t_node) in touched or id(t_node) in removed:
                continue
            perm = transpose_perm(t_node)
            if perm is None:
                continue
            t = t_node.output[0]
            for op in _unique(scope.consumers(t)):
                if id(op) in touched:
                    continue
                plan = _plan(op, t, t_node.input[0], perm, scope, transposed, position)
                if plan is None:
                    continue
                for slot, name in plan.items():
                    op.input[slot] = name if not isinstance(name, np.ndarray) else _constant(ctx, op.input[slot], name, perm)
                out = op.output[0]
                moved = ctx.names.fresh(f"{out}_{''.join(map(str, inverse(perm)))}")
                op.output[0] = moved
                copy = make_transpose(moved, out, perm, ctx.names.fresh(f"{op.name or out}_transpose"))
                after.setdefault(id(op), []).append(ctx.tag(copy, self.name))
                touched.update((id(op), id(t_node)))
                changes += 1
        if changes:
            # Transposes that fed a moved op and now feed nothing go (only those this round touched).
            still_read = {name for n in scope.nodes if id(n) not in removed for name in n.input} | scope.output_names
            still_read |= {name for n in scope.nodes for name in _subgraph_reads(n)}
            for n in scope.nodes:
                if n.op_type == "Transpose" and n.output[0] not in still_read and _fed_a_moved_op(n, scope, touched):
                    removed.add(id(n))
                    ctx.vanished.add(n.output[0])
            rebuild(graph, scope, removed, after)
            graph.initializer.extend(ctx.pending_initializers)
            ctx.pending_initializers.clear()
        return PassResult(bool(changes), changes)


def _unique(nodes: list[NodeProto]) -> list[NodeProto]:
    return list({id(n): n for n in nodes}.values())  # a node reading a tensor twice is one consumer


def _subgraph_reads(node: NodeProto) -> set[str]:
    names: set[str] = set()
    for _, g in subgraphs(node):
        names |= referenced_names(g)
    return names


def _fed_a_moved_op(node: NodeProto, scope: Scope, touched: set[int]) -> bool:
    return any(id(c) in touched for c in scope.consumers(node.output[0])) or id(node) in touched


def _plan(
    op: NodeProto,
    t: str,
    a: str,
    perm: list[int],
    scope: Scope,
    transposed: dict[tuple[str, tuple[int, ...]], tuple[str, int]],
    position: dict[int, int],
) -> dict[int, str | np.ndarray] | None:
    """New inputs for ``op`` if the Transpose producing ``t`` can move below it, else None."""
    if op.domain not in ("", "ai.onnx") or len(op.output) != 1 or op.output[0] in ("",):
        return None
    if any(True for _ in subgraphs(op)):
        return None
    if op.op_type in UNARY:
        # Clip's min/max are scalars; everything else has one data input.
        return {0: a} if op.input[0] == t and t not in op.input[1:] else None
    if op.op_type not in BINARY or len(op.input) != 2:
        return None
    if op.op_type == "PRelu" and op.input[0] != t:
        return None
    plan: dict[int, str | np.ndarray] = {}
    for slot, name in enumerate(op.input):
        if name == t:
            plan[slot] = a
            continue
        src = scope.source(name)
        if src.is_constant:
            value = scope.constant_value(name)
            if value.ndim > len(perm):
                return None
            plan[slot] = value
            continue
        producer = scope.producers.get(name)
        if producer is not None and producer.op_type == "Transpose" and transpose_perm(producer) == perm:
            plan[slot] = producer.input[0]
            continue
        existing = transposed.get((name, tuple(inverse(perm))))
        if existing is not None and existing[1] < position[id(op)]:
            plan[slot] = existing[0]
            continue
        return None
    return plan


def _constant(ctx: PassContext, name: str, value: np.ndarray, perm: list[int]) -> str:
    """``value`` laid out for the untransposed side: broadcast to the perm's rank, then un-permuted."""
    if value.size == 1 and value.ndim <= 1:
        return name  # a scalar broadcasts the same way in any layout
    key = (name, tuple(perm))
    if key not in ctx.derived:
        full = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
        laid_out = np.ascontiguousarray(np.transpose(full, inverse(perm)))
        new = ctx.names.fresh(f"{name}_{''.join(map(str, inverse(perm)))}")
        ctx.pending_initializers.append(numpy_helper.from_array(laid_out, new))
        ctx.derived[key] = new
    ctx.released.add(name)
    return ctx.derived[key]
