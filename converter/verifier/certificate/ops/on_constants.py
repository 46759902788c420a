"""A node on constants alone that no original node of its name explains: its counterpart found by value.

The walk looks for a node's counterpart by the original tensors it reads; a node whose inputs are all constants
reads none, so its counterpart is found only by its output's name. Another tool's names for the same computation
(a folded weight's Transpose, a table Gathered by constant indices, a scale computed from constants, renamed) then
left it without one, and everything after it unproved. This rule, tried when nothing else explained such a node,
finds the counterpart by value: an original node of the same op of the default domain, arity and attributes
(schema defaults aside) that reads constants alone (``original.Original.on_constants``), each input bit for bit the
node's (a fingerprint first, ``original.Original.fingerprint``, then every byte).

The law: a deterministic op applied to the same values with the same attributes computes the same values, so
``f(c1, ..., cn)`` here is ``f(c1, ..., cn)`` there, whatever either output is called. The node's outputs are then
the counterpart's facts (a constant compared by value where the original's is one, else the original's computed
tensor, which the nodes after it must read as the original's do). Ops whose outputs are no function of their
inputs (random draws, Dropout) are left out, and so are nodes holding subgraphs (a body may read tensors of the
graph around it) and ops of other domains (whose determinism the schema does not say).
"""

from __future__ import annotations

from onnx import NodeProto

from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import EMPTY, Const, Fact
from converter.verifier.certificate.nodes import graphs_of, is_default, plain_attributes
from converter.verifier.certificate.ops._base import same_operands, set_outputs

RANDOM = frozenset("RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout".split())


def same_values(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
    """``node``, on constants alone, is an original node of the same op and attributes on the same values: its
    outputs are that node's (see the module docstring)."""
    if not ins or not all(isinstance(f, Const) or f == EMPTY for f in ins) or not any(isinstance(f, Const) for f in ins):
        return False
    if not is_default(node) or node.op_type in RANDOM or graphs_of(node):
        return False
    key = ("", node.op_type)
    mine = [ctx.orig.fingerprint(f) if isinstance(f, Const) else None for f in ins]
    attributes = plain_attributes(node, ctx.orig.opset)
    for cand in ctx.orig.on_constants(key):
        if len(cand.input) != len(node.input) or len(cand.output) != len(node.output):
            continue
        orig_ins = [ctx.orig.canon(n) for n in cand.input]
        if any(not isinstance(f, Const) and f != EMPTY for f in orig_ins):
            continue
        theirs = [ctx.orig.fingerprint(f) if isinstance(f, Const) else None for f in orig_ins]
        if theirs != mine:
            continue
        if plain_attributes(cand, ctx.orig.opset) != attributes or same_operands(ctx, ins, orig_ins, None):
            continue
        set_outputs(ctx, node, cand, None)
        return True
    return False
