"""DynamicQuantizeLinear, and the rescale of a dynamically quantized layer.

Before::  t = Transpose(a, p); y, s, z = DynamicQuantizeLinear(t)
After::   y', s, z = DynamicQuantizeLinear(a); y = Transpose(y', p)

``s`` and ``z`` are computed from the minimum and maximum of the whole tensor, which no layout
changes, and ``y`` is each element quantized with them: only ``y`` is laid out; ``s`` and ``z``
(scalars by the op's definition) keep their names and readers. Cost check: every reader of ``y``
is a Transpose or an op a handler knows (the layout census does not see through this op, so a
Transpose left after it would count where the one before it did not).

The rescale after the layer (what ``quantize_dynamic`` writes after MatMulInteger) multiplies by
``Mul(s, w_scale)``: a computed tensor, a scalar for a per-tensor weight and ``[K]`` per channel.
``_base.parameter`` gives it in ``a``'s layout for the elementwise handlers: a scalar as it is, a
lower-rank one through ``Unsqueeze`` to the unit axes the layout puts around it (``[K]`` under
``[0, 2, 3, 1]``: ``[1, K, 1, 1]``), when its axes keep their order (else None: no Transpose is added).
"""

from __future__ import annotations

from converter.rewriter.cleanup.handlers._base import Decline, HandlerArgs, Plan, outputs_go_on


def dynamic_quantize(args: HandlerArgs) -> Plan | Decline:
    node = args.node  # one input: the Transpose is its data
    if not args.ctx.decided and (declined := outputs_go_on(args.ws, node, args.handler_for, [node.output[0]])):
        return declined
    return Plan({0: args.a}, [args.perm] + [None] * (len(node.output) - 1))
