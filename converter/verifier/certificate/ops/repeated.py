"""An op applied to its own output: ``f(f(x))`` for an involution or an idempotent op (``canonical.repeated``).

``Neg(Neg(x)) == x`` and ``Not(Not(x)) == x`` (involutions: negation flips the sign bit, integers wrap, so every
value comes back bit for bit); ``Relu(Relu(x)) == Relu(x)``, likewise Abs, Ceil, Floor, Round and Sign
(idempotent: each maps every value, NaN included, to one it leaves as it is). Another tool may insert such a
pair or a repeat; the rewritten node's output is then the fact of what it equals, with no counterpart needed.
The original's canonical facts apply the same law (``original.Original``), so one is read the same on both
sides. Another op between the two, or any attribute, and the law is not applied.
"""

from __future__ import annotations

from onnx import NodeProto

from converter.verifier.certificate.canonical import repeated
from converter.verifier.certificate.context import Context


def applied_twice(ctx: Context, node: NodeProto) -> bool:
    """``node`` applies its op to its own op's output: its output is the fact of the tensor that equals."""
    same = repeated(node, ctx.producer)
    if same is None:
        return False
    ctx.facts[node.output[0]] = ctx.fact(same)
    return True
