"""Merge consecutive Transposes, and remove the ones that end up doing nothing.

Before::  b = Transpose(a, p); c = Transpose(b, q)
After::   c = Transpose(a, [p[i] for i in q])      (gone entirely when that is the identity)

The first Transpose stays while something else reads ``b``. An identity Transpose whose output
is a graph output keeps the name: its producer is renamed, or it becomes an Identity.
"""

from __future__ import annotations

from onnx import GraphProto

from converter.cleanup import PassContext, PassResult
from converter.cleanup._edit import bypass, compose, is_identity, rebuild
from converter.graph import set_transpose_perm, transpose_perm


class CancelTransposes:
    name = "cancel_transposes"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        scope = ctx.scope(graph)
        removed: set[int] = set()
        changes = 0
        for node in scope.nodes:
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or id(node) in removed:
                continue
            perm = transpose_perm(node)
            if perm is None:
                continue
            first = scope.producers.get(node.input[0])
            if first is not None and first.op_type == "Transpose" and id(first) not in removed:
                first_perm = transpose_perm(first)
                if first_perm is not None and len(first_perm) == len(perm):
                    perm = compose(first_perm, perm)
                    node.input[0] = first.input[0]
                    set_transpose_perm(node, perm)
                    changes += 1
                    if not scope.consumers(first.output[0])[1:] and first.output[0] not in scope.output_names:
                        removed.add(id(first))
                        ctx.vanished.add(first.output[0])
            if is_identity(perm):
                changes += bypass(node, scope, removed, ctx.vanished)
        if changes:
            rebuild(graph, scope, removed, {})
        return PassResult(bool(changes), changes)
