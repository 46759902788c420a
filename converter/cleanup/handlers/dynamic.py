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
:func:`parameter` gives it in ``a``'s layout for the elementwise handlers: a scalar as it is, a
lower-rank one through ``Unsqueeze`` to the unit axes the layout puts around it (``[K]`` under
``[0, 2, 3, 1]``: ``[1, K, 1, 1]``), when its axes keep their order (else None: no Transpose is added).
"""

from __future__ import annotations

from onnx import NodeProto

from converter.cleanup._edit import DEFAULT_DOMAINS
from converter.cleanup._workspace import Workspace
from converter.cleanup.handlers._base import Decline, HandlerArgs, Operand, Plan, Unsqueezed, outputs_go_on

# Ops that keep a parameter a parameter: elementwise on scalars and constants (the quantizer's Mul of two scales).
_PARAMETER_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Cast", "Reciprocal"})


def dynamic_quantize(args: HandlerArgs) -> Plan | Decline:
    node = args.node  # one input: the Transpose is its data
    if declined := outputs_go_on(args.ws, node, [node.output[0]]):
        return declined
    return Plan({0: args.a}, [args.perm] + [None] * (len(node.output) - 1))


def parameter(args: HandlerArgs, name: str) -> Operand | None:
    """``name`` in ``a``'s layout when it is a dynamic quantization parameter (see the module docstring), else None."""
    rank = parameter_rank(args.ws, name)
    if rank is None or rank >= args.rank:
        return None
    if rank == 0:
        return name  # a scalar broadcasts alike in every layout
    padded = [None] * (args.rank - rank) + list(range(rank))  # broadcast to the full rank: unit axes in front
    laid = [padded[j] for j in args.perm_inv]
    kept = [v for v in laid if v is not None]
    if kept != sorted(kept):
        return None  # its own axes would have to be transposed
    return Unsqueezed(args, name, tuple(i for i, v in enumerate(laid) if v is None))


def parameter_rank(ws: Workspace, name: str, depth: int = 0) -> int | None:
    """The rank of a tensor made from DynamicQuantizeLinear's scale or zero point and constants by elementwise
    ops, or None when it is anything else."""
    node = ws.producer(name)
    if node is None or node.domain not in DEFAULT_DOMAINS or depth > 4:
        return None
    if node.op_type == "DynamicQuantizeLinear":
        return 0 if name in node.output[1:] else None
    if node.op_type not in _PARAMETER_OPS:
        return None
    return _inputs_rank(ws, node, depth)


def _inputs_rank(ws: Workspace, node: NodeProto, depth: int) -> int | None:
    ranks = []
    for i in node.input:
        if ws.scope.source(i).is_constant:
            ranks.append(len(ws.scope.constant_tensor(i).dims))
            continue
        r = parameter_rank(ws, i, depth + 1)
        if r is None:
            return None
        ranks.append(r)
    return max(ranks, default=None)
