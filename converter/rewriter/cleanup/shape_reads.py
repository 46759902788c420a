"""A dim read out of a moved tensor's shape: ``Gather(Gather(Shape(a), perm), i)`` becomes ``Gather(Shape(a), perm[i])``.

The Shape handler (handlers/shape.py) reads a Transpose's shape as its input's, ``Gather(Shape(a), perm)``. An
exporter then picks single dims out of it (TorchScript's ``x.shape[1]`` for a window count or a padding). The
two Gathers compose into one; besides a node less, the composed form reads only the dims it needs, and when
those are known onnxruntime folds it to a constant before anything runs (it folds a Gather of a Shape whose
picked dims are static, not one that passes the whole shape, batch included, through a first Gather). So a
shifted window's attention mask, computed from H and W on a dynamic batch, stays a constant as in the original.
"""

from __future__ import annotations

import numpy as np
from onnx import GraphProto, NodeProto

from converter.rewriter.cleanup import PassContext, PassResult
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, attribute
from converter.rewriter.cleanup._workspace import Workspace


class ComposeShapeReads:
    name = "compose_shape_reads"

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult:
        composed = compose_gathers(ctx.workspace(graph), ctx)
        return PassResult(bool(composed), composed)


def compose_gathers(ws: Workspace, ctx: PassContext) -> int:
    """Compose every ``Gather(Gather(Shape(a), p), i)`` (axis 0, constant indices) in the workspace's graph whose
    inner Gather a pass made (``ctx.shape_reads``: onnxruntime's transpose optimizer writes the same form, which
    is left as it is) into ``Gather(Shape(a), p[i])``; the inner Gather goes when nothing else reads it. The
    number composed.

    Args:
        ws: the graph being cleaned up.
        ctx: the pass context (fresh names; what vanished).
    """
    composed = 0
    for node in list(ws.nodes()):
        if not ws.alive(node) or not _gather_axis0(node):
            continue
        inner = ws.producer(node.input[0])
        if inner is None or not _gather_axis0(inner) or inner.output[0] not in ctx.shape_reads:
            continue  # (an exporter's own Gather of a Gather stays: the certificate proves it as the original's)
        shape = ws.producer(inner.input[0])
        if shape is None or shape.op_type != "Shape" or shape.domain not in DEFAULT_DOMAINS:
            continue
        outer_idx, inner_idx = _indices(ws, node), _indices(ws, inner)
        if outer_idx is None or inner_idx is None or inner_idx.ndim != 1:
            continue
        n = inner_idx.shape[0]
        if np.any(outer_idx < -n) or np.any(outer_idx >= n):
            continue  # out of range: the runtime's error stays the runtime's
        picked = inner_idx[np.where(outer_idx < 0, outer_idx + n, outer_idx)]
        where = ws.add_constant(ctx.names.fresh(f"{node.output[0]}_dims"), picked.astype(np.int64))
        ws.set_input(node, 0, inner.input[0])
        ws.set_input(node, 1, where)
        composed += 1
        if not ws.is_read(inner.output[0]) and inner.output[0] not in ws.outputs:
            ws.remove(inner)
            ctx.vanished.add(inner.output[0])
    return composed


def _gather_axis0(node: NodeProto) -> bool:
    return (
        node.op_type == "Gather"
        and node.domain in DEFAULT_DOMAINS
        and len(node.input) == 2
        and int(attribute(node, "axis", 0)) == 0  # type: ignore[call-overload]
    )


def _indices(ws: Workspace, node: NodeProto) -> np.ndarray | None:
    name = node.input[1]
    if not name or not ws.scope.source(name).is_constant:
        return None
    value = np.asarray(ws.scope.constant_value(name))
    return value.astype(np.int64) if value.dtype.kind in "iu" and value.ndim <= 1 else None
