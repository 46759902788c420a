"""Shape: a Transpose's shape is its input's shape, read in the Transpose's order.

With ``t = Transpose(a, perm)``: ``Shape(t)[i] = Shape(a)[perm[i]]``, so::

    Shape(t, start, end)  ->  Gather(Shape(a), perm[start:end])        (start/end normalized, clamped)

No Transpose is left on the output (a shape vector has no layout). Exporters read a tensor's shape to
compute the next Reshape's target (TorchScript's ``q.shape[-1] ** -0.5``, dynamo's ``k`` before
``K^T``); without this the Transpose stays for the ``Shape`` alone.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from converter.graph import new_node
from converter.rewriter.cleanup._edit import attribute
from converter.rewriter.cleanup.handlers._base import Decline, HandlerArgs, Plan, data_input_only, one_output


def shape(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args):
        return declined
    rank = len(args.perm)
    start, end = int(attribute(args.node, "start", 0)), attribute(args.node, "end", None)  # type: ignore[call-overload]
    end = rank if end is None else int(end)  # type: ignore[call-overload]
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    index = np.asarray(args.perm[start:end], dtype=np.int64)
    ctx, ws, node = args.ctx, args.ws, args.node

    def replace(inputs: list[str], outputs: list[str]) -> list[NodeProto]:
        full = ctx.names.fresh(f"{outputs[0]}_unpermuted")
        where = ws.add_constant(ctx.names.fresh(f"{outputs[0]}_perm"), index)
        base = node.name or outputs[0]
        ctx.shape_reads.add(outputs[0])
        return [
            new_node("Shape", [inputs[0]], [full], ctx.names.fresh(base)),
            new_node("Gather", [full, where], [outputs[0]], ctx.names.fresh(f"{base}_gather"), axis=0),
        ]

    return Plan({0: args.a}, [None], replace=replace)
