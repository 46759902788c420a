"""Merge consecutive Transposes, and remove the ones that end up doing nothing.

Before::  b = Transpose(a, p); c = Transpose(b, q)
After::   c = Transpose(a, [p[i] for i in q])      (gone entirely when that is the identity)

The first Transpose stays while something else reads ``b``. An identity Transpose whose output
is a graph output keeps the name: its producer is renamed, or it becomes an Identity.
"""

from __future__ import annotations

from onnx import GraphProto, NodeProto

from converter.rewriter.cleanup import PassContext, PassResult
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, compose, is_identity
from converter.rewriter.cleanup._workspace import Workspace


class CancelTransposes:
    name = "cancel_transposes"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        ws = ctx.workspace(graph)
        changes = 0
        for node in ws.take(self.name):
            if node.op_type != "Transpose" or node.domain not in DEFAULT_DOMAINS or not ws.alive(node):
                continue
            perm = ws.perm(node)
            if perm is None:
                continue
            first = ws.producer(node.input[0])
            if first is not None and _placed_pair(ctx, node, first):
                ctx.postponed.append(node)
                continue
            if first is not None and first.op_type == "Transpose" and first.domain in DEFAULT_DOMAINS:
                first_perm = ws.perm(first)
                if first_perm is not None and len(first_perm) == len(perm):
                    perm = compose(first_perm, perm)
                    ws.set_perm(node, perm)
                    ws.set_input(node, 0, first.input[0])
                    changes += 1
                    if not ws.is_read(first.output[0]):
                        ws.remove(first)
                        ctx.vanished.add(first.output[0])
                    else:
                        ws.mark(first)  # one reader fewer: it may now start a chain that folds (fold_rearranges)
            if is_identity(perm):
                changes += _bypass(node, ws, ctx)
        return PassResult(bool(changes), changes)


def _placed_pair(ctx: PassContext, node: NodeProto, first: NodeProto) -> bool:
    """Whether ``first`` and ``node`` are a pair the chosen layout placed (a tensor into the other layout and back),
    while Transposes still move (``ctx.settled``): the way back is to move down through the readers and the way
    there to be taken in by a chain; cancelled now, neither would."""
    return ctx.guide is not None and not ctx.settled and node.output[0] in ctx.placed and first.output[0] in ctx.placed


def _bypass(node: NodeProto, ws: Workspace, ctx: PassContext) -> bool:
    """Make every reader of ``node``'s output read its input instead, and remove the node.

    When the output is a graph output (its name must stay), the producer of the input is renamed
    to it if nothing else reads the input; failing that the node becomes an Identity. Returns
    whether a node went away.
    """
    out, inp = node.output[0], node.input[0]
    readers = ws.readers(out)
    inside = any(ws.reads_inside(r, out) for r in readers)
    if out in ws.outputs or inside:
        producer = ws.producer(inp)
        sole_reader = all(r is node for r in ws.readers(inp))
        if not inside and producer is not None and sole_reader and inp not in ws.outputs:
            ws.remove(node)
            ws.set_output(producer, list(producer.output).index(inp), out)
            ctx.vanished.add(inp)
            return True
        ws.retype(node, "Identity")
        return False
    for r in readers:
        for slot, name in enumerate(r.input):
            if name == out:
                ws.set_input(r, slot, inp)
    ws.remove(node)
    ctx.vanished.add(out)
    return True
