"""Asking a handler what it would do, without a Transpose in the graph: what the layout optimizer builds on.

The optimizer (rewriter/layout) chooses each tensor's layout before anything is rewritten, so it has to know,
for every node, whether the node can run on its inputs in the other layout and in which layout its outputs then
come. Those are exactly the questions the handler table answers when the cleanup moves a Transpose
(handlers/__init__.py), so the optimizer asks the handlers: :func:`probe` hands the node's handler a Transpose
that is not in the graph, ``read = Transpose(<the input in the other layout>, perm)``, and returns the handler's
plan (its output perms) or its decline. The handlers' cost checks are off during a probe, and the other
operands listed in ``assume`` count as available in the same layout (the optimizer pays for them where they
are not). Nothing is edited: a plan's constants and new nodes are made only when a pass applies it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from onnx import NodeProto

from converter.rewriter.cleanup import PassContext
from converter.rewriter.cleanup._edit import inverse, make_transpose
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.cleanup.handlers import Decline, HandlerArgs, Plan, handler_for

PROBE_SUFFIX = "\x00probe"  # the name of the input in the other layout: no real tensor has it


def probe(
    ws: Workspace, ctx: PassContext, node: NodeProto, read: str, perm: Sequence[int], assume: Collection[str] = ()
) -> Plan | Decline:
    """What ``node``'s handler says about reading ``read`` as ``Transpose(x, perm)`` (``x``: ``read`` in the other
    layout), with the tensors in ``assume`` available in that layout too.

    Args:
        ws: the index of the graph that holds ``node`` (nothing in it is changed).
        ctx: the pass context (its options, types and opset); its probe state is restored on return.
        node: the node asked about.
        read: the input of ``node`` in question (every input slot that reads it is taken).
        perm: the Transpose that would bring the other layout back to ``read``'s.
        assume: other inputs of ``node`` that the caller makes available in the same layout.
    """
    handler = handler_for(node)
    if handler is None:
        return Decline("no_handler", f"no Transpose moves through {node.domain or 'ai.onnx'}.{node.op_type}")
    if ws.holds_graphs(node):
        return Decline("holds_graphs", f"{node.op_type} holds subgraphs")
    slots = tuple(i for i, name in enumerate(node.input) if name == read)
    if not slots:
        return Decline("not_read", f"{node.op_type} does not read {read}")
    transpose = make_transpose(read + PROBE_SUFFIX, read, perm, read + PROBE_SUFFIX)
    saved = ctx.assume
    ctx.assume = frozenset(assume)
    try:
        return handler(HandlerArgs(ctx, ws, transpose, node, tuple(perm), tuple(inverse(perm)), slots, handler_for))
    finally:
        ctx.assume = saved
