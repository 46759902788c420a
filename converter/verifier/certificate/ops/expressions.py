"""Small constant expressions in the rewritten graph: a node on small constants alone is the constant it computes.

A rewritten node of :data:`expressions.EXPRESSION_OPS` whose inputs are all constants of at most
:data:`expressions.SMALL` elements (a Pad's pads, a Slice's bounds, a Reshape's target, written by the rewrite
or computed in the graph) is the constant onnx's reference evaluator computes from them: its outputs are
``Const`` facts, compared by value wherever they are read, as the original's expressions are
(:meth:`original.Original._expression`). No counterpart is needed: the value is what is compared.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.context import Context
from converter.verifier.certificate.expressions import EXPRESSION_OPS, SMALL, evaluate
from converter.verifier.certificate.facts import EMPTY, Const
from converter.verifier.certificate.nodes import is_default


def constant_expression(ctx: Context, node: NodeProto) -> bool:
    """``node`` on small constants alone: its outputs are the constants it computes."""
    if not is_default(node) or node.op_type not in EXPRESSION_OPS or not node.input:
        return False
    ins = [ctx.fact(n) for n in node.input]
    if not isinstance(ins[0], Const) or not all(isinstance(f, Const) or f == EMPTY for f in ins):
        return False
    arrays = [np.asarray(f.get()) if isinstance(f, Const) else None for f in ins]
    if any(a is not None and a.size > SMALL for a in arrays):
        return False
    results = evaluate(node, arrays, ctx.orig.opsets)
    if results is None:
        return False
    for name, value in zip([o for o in node.output if o], results, strict=False):
        ctx.facts[name] = Const(ctx.key(name), partial(np.array, value))
    return True
