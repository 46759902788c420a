"""Move Transposes down through the ops that know how, so that they meet their inverse and cancel.

Before::  t = Transpose(a, p); y = Op(t, ...)
After::   y' = Op'(a, ...); y = Transpose(y', q)

``Op'`` and ``q`` come from the handler registered for ``Op`` in
:data:`converter.rewriter.cleanup.handlers.HANDLERS` (default domain) or ``OTHER_DOMAINS`` (keyed by
(domain, op type): onnxruntime's QLinearAdd/QLinearMul), both looked up by ``handlers.handler_for``
in :func:`plan_move` (elementwise ops keep ``q = p``; axis ops, reductions,
Split/Concat, Squeeze/Unsqueeze and Gather remap their axes; see each handler's docstring).

The Transpose is copied into each reader it can move through and stays for the others (this is
how GELU's ``x * 0.5 * (1 + erf(x / sqrt 2))`` fan-out is crossed). A move never adds a Transpose
on another operand; the pass manager rejects the result if a graph ends with more Transposes.
Cost checks (``_worth_it``): no copy that could only sit before a graph output while the Transpose
stays; no copy through a layout-changing op of a shared Transpose unless every reader's result can
go on (elementwise ops and the per-element quantization ops, ``handlers.PER_ELEMENT``, are not
layout-changing). A restoring Transpose that would meet only its inverse is not made: the readers of
the inverse read the moved op directly. Nodes that hold subgraphs are never moved through. Only
Transposes that a change touched since the pass last ran are looked at again.
"""

from __future__ import annotations

from onnx import GraphProto, NodeProto

from converter.rewriter.cleanup import PassContext, PassResult
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, inverse, is_identity, make_transpose, set_attribute
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.cleanup.handlers import Decline, HandlerArgs, Plan, handler_for, per_element
from converter.rewriter.cleanup.handlers._base import Fresh, Operand, Relaid, Transposed, outputs_go_on
from converter.rewriter.cleanup.handlers.elementwise import BINARY, UNARY, VARIADIC

ELEMENTWISE = UNARY | BINARY | VARIADIC


class SinkTransposes:
    name = "sink_transposes"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        ws = ctx.workspace(graph)
        changes = 0
        for t_node in ws.take(self.name):
            if t_node.op_type != "Transpose" or t_node.domain not in DEFAULT_DOMAINS or not ws.alive(t_node):
                continue
            if ws.perm(t_node) is None or ws.scope.source(t_node.input[0]).is_constant:
                # A Transpose of a constant is a constant (folded before anything runs): moving it
                # gains nothing, and the ops it would move through only ever see constants.
                continue
            for op in ws.readers(t_node.output[0]):
                if ctx.guide is not None:
                    changes += _guided(ctx, ws, t_node, op, self.name)
                    continue
                plan = plan_move(ctx, ws, t_node, op)
                if isinstance(plan, Plan):
                    _apply(ctx, ws, op, plan, self.name)
                    changes += 1
        return PassResult(bool(changes), changes)


def _guided(ctx: PassContext, ws: Workspace, t_node: NodeProto, op: NodeProto, pass_name: str) -> int:
    """With a chosen layout (``ctx.guide``): move ``t_node`` below ``op`` when the guide says ``op`` runs in the
    layout of the Transpose's input; give a chain of Reshapes that is to take the Transpose in a copy of its own
    (fold_rearranges folds a chain only when each of its tensors has one reader). The number of changes."""
    guide, t = ctx.guide, t_node.output[0]
    assert guide is not None
    perm = ws.perm(t_node)
    if perm is None:
        return 0
    if guide.absorbs(op, t):
        if ws.count_readers(t) == 1 or op.op_type == "Transpose":
            return 0  # fold_rearranges (or cancel_transposes) takes it as it is
        copy = make_transpose(t_node.input[0], ctx.names.fresh(f"{t}_copy"), perm, ctx.names.fresh(f"{t_node.name or t}_copy"))
        ctx.note_type(copy.output[0], t)
        ws.add_after(t_node, [ctx.tag(copy, pass_name)])
        for slot, name in enumerate(op.input):
            if name == t:
                ws.set_input(op, slot, copy.output[0])
        return 1
    if not guide.moves(op, t, perm):
        return 0
    plan = plan_move(ctx, ws, t_node, op)
    if not isinstance(plan, Plan):
        return 0
    _apply(ctx, ws, op, plan, pass_name)
    return 1


def plan_move(ctx: PassContext, ws: Workspace, transpose: NodeProto, node: NodeProto) -> Plan | Decline:
    """What the handler for ``node`` says about moving ``transpose`` (which ``node`` reads) below it."""
    handler = handler_for(node)
    if handler is None:
        return Decline("no_handler", f"no Transpose moves through {node.domain or 'ai.onnx'}.{node.op_type}")
    if ws.holds_graphs(node):
        return Decline("holds_graphs", f"{node.op_type} holds subgraphs")
    perm = ws.perm(transpose)
    t = transpose.output[0]
    slots = tuple(i for i, name in enumerate(node.input) if name == t)
    if perm is None or not slots:
        return Decline("not_read", f"{node.op_type} does not read {t} as an input")
    plan = handler(HandlerArgs(ctx, ws, transpose, node, tuple(perm), tuple(inverse(perm)), slots, handler_for))
    if isinstance(plan, Plan) and ctx.guide is None:
        return _worth_it(ctx, ws, transpose, node, plan) or plan
    return plan


def _worth_it(ctx: PassContext, ws: Workspace, transpose: NodeProto, node: NodeProto, plan: Plan) -> Decline | None:
    """The cost checks every move shares. A Transpose with several readers stays until all of them
    moved, so each copy costs one more Transpose until it cancels further down."""
    t = transpose.output[0]
    shared = ws.count_readers(t) > 1
    if not _copied(node, plan):
        return None  # no Transpose made (a Shape's): the move only takes a reader away
    if _ends_at_graph_outputs(ws, node, plan) and (shared or ws.count_readers(transpose.input[0]) > 1):
        # The copy could only sit before a graph output: no loss only when the Transpose then goes
        # and no other reader of its input could take it as the inverse copy it needs.
        return Decline("gains_nothing", f"{node.op_type}'s output only leaves the graph: the copy would never cancel")
    if shared and not _keeps_layout(node):
        # Copies through layout-changing ops (three Gathers of Swin's qkv) pay off only if every
        # reader moves and its copies can go on; elementwise fan-out (GELU's) is taken as it always was.
        for r in ws.readers(t):
            if r.op_type == "Transpose" or _keeps_layout(r):
                continue
            theirs = plan if r is node else _handler_plan(ctx, ws, transpose, r)
            if isinstance(theirs, Decline):
                return Decline("fanout_stays_transposed", f"{transpose.name or t} is shared, and {theirs.detail}")
            if declined := outputs_go_on(ws, r, handler_for, _copied(r, theirs)):
                return Decline("fanout_stays_transposed", f"{transpose.name or t} is shared, and {declined.detail}")
    return None


def _keeps_layout(node: NodeProto) -> bool:
    """Elementwise ops, and the quantization ops that compute per element (``handlers.PER_ELEMENT``)."""
    return node.op_type in ELEMENTWISE or per_element(node)


def _handler_plan(ctx: PassContext, ws: Workspace, transpose: NodeProto, node: NodeProto) -> Plan | Decline:
    """What ``node``'s handler alone says (no cost checks), for looking at another reader of a Transpose."""
    handler = handler_for(node)
    t = transpose.output[0]
    slots = tuple(i for i, name in enumerate(node.input) if name == t)
    if handler is None or ws.holds_graphs(node) or not slots:
        return Decline("no_handler", f"{node.op_type} cannot take it")
    perm = tuple(ws.perm(transpose) or ())
    return handler(HandlerArgs(ctx, ws, transpose, node, perm, tuple(inverse(perm)), slots, handler_for))


def _copied(node: NodeProto, plan: Plan) -> list[str]:
    """The outputs a move gives a Transpose."""
    return [out for out, p in zip(node.output, plan.outputs, strict=False) if out and p is not None and not is_identity(p)]


def _ends_at_graph_outputs(ws: Workspace, node: NodeProto, plan: Plan) -> bool:
    """Whether the move makes Transposes, and each of them would be read by no node (only a graph output)."""
    copied = _copied(node, plan)
    return bool(copied) and not any(ws.count_readers(out) for out in copied)


def _apply(ctx: PassContext, ws: Workspace, node: NodeProto, plan: Plan, pass_name: str) -> None:
    old_inputs, old_outputs = list(node.input), list(node.output)
    inputs = list(node.input)
    for slot, value in sorted(plan.inputs.items()):
        inputs.extend([""] * (slot + 1 - len(inputs)))
        inputs[slot] = _resolve(ctx, ws, value)
    outputs = list(old_outputs)
    perms = [None if p is None or is_identity(p) else list(p) for p in plan.outputs]
    for i, p in enumerate(perms):
        if p is not None and outputs[i]:
            outputs[i] = ctx.names.fresh(f"{outputs[i]}_{''.join(map(str, inverse(p)))}")
            ctx.note_type(outputs[i], old_outputs[i], p)
    if plan.replace is not None:
        made = [ctx.tag(n, pass_name) for n in plan.replace(inputs, outputs)]
        ws.remove(node)
        ws.add_after(node, made)
        written = {o for n in made for o in n.output}
        ctx.vanished.update(o for o, new in zip(old_outputs, outputs, strict=True) if o == new and o and o not in written)
    else:
        ws.touch(node)
        for slot, name in enumerate(inputs):
            ws.set_input(node, slot, name)
        for key, value in plan.attrs.items():
            set_attribute(node, key, value)
        for i, (old, new) in enumerate(zip(old_outputs, outputs, strict=True)):
            if old != new:
                ws.set_output(node, i, new)
    restore = []
    for old, new, p in zip(old_outputs, outputs, perms, strict=True):
        if old == new:
            continue
        if not ws.is_read(old):
            ctx.vanished.add(old)  # an output nothing reads keeps no Transpose
        elif not _cancel_at_once(ctx, ws, old, new, p):
            restore.append(ctx.tag(make_transpose(new, old, p, ctx.names.fresh(f"{node.name or old}_transpose")), pass_name))
    ws.add_after(node, restore)
    # Transposes whose every reader moved go.
    for name in dict.fromkeys(old_inputs):
        producer = ws.producer(name) if name else None
        if producer is not None and producer.op_type == "Transpose" and ws.is_read(name):
            ws.mark(producer)  # fewer readers: it may now end a chain that folds (fold_rearranges)
        elif producer is not None and producer.op_type == "Transpose":
            ws.remove(producer)
            ctx.vanished.add(name)
            if ws.scope.source(producer.input[0]).is_constant:
                ctx.released.add(producer.input[0])  # a transposed constant: what made it may go too


def _cancel_at_once(ctx: PassContext, ws: Workspace, old: str, new: str, perm: list[int]) -> bool:
    """When ``old`` is read only by Transposes that undo ``perm`` (the next layer's way back to NCHW),
    their readers read ``new`` and they go: what cancel_transposes would do with the restoring
    Transpose one round later, without making it."""
    readers = ws.readers(old)
    undo = inverse(perm)
    if old in ws.outputs or not all(
        r.op_type == "Transpose" and r.domain in DEFAULT_DOMAINS and ws.perm(r) == undo for r in readers
    ):
        return False
    if any(r.output[0] in ws.outputs or any(ws.reads_inside(rr, r.output[0]) for rr in ws.readers(r.output[0])) for r in readers):
        return False
    for r in readers:
        out = r.output[0]
        for reader in ws.readers(out):
            for slot, name in enumerate(reader.input):
                if name == out:
                    ws.set_input(reader, slot, new)
        ws.remove(r)
        ctx.vanished.add(out)
    ctx.vanished.add(old)
    return True


def _resolve(ctx: PassContext, ws: Workspace, value: Operand) -> str:
    """The name of an operand: new constants are appended (re-laid out ones once per layout), sources released."""
    if isinstance(value, str):
        return value
    if isinstance(value, Fresh):
        return ws.add_constant(ctx.names.fresh(value.base), value.value)
    if isinstance(value, Transposed):
        key = ("transposed", value.name, value.perm)
        if key not in ctx.derived:
            out = ctx.names.fresh(f"{value.name}_{''.join(map(str, value.perm))}")
            node = make_transpose(value.name, out, value.perm, ctx.names.fresh(f"{value.name}_transpose"))
            anchor = ws.producer(value.name)
            assert anchor is not None, f"{value.name} is computed, so a node makes it"
            ws.add_after(anchor, [ctx.tag(node, "sink_transposes")])
            ctx.derived[key] = out
        return ctx.derived[key]
    assert isinstance(value, Relaid)
    key = (value.source, *value.key)
    if key not in ctx.derived:
        new = ctx.names.fresh(f"{value.source}_{value.suffix}")
        ctx.derived[key] = ws.add_constant(new, value.make(ws.scope.constant_value(value.source)))
    ctx.released.add(value.source)
    return ctx.derived[key]
