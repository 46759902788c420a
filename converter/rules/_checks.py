"""Small predicates shared by rules. Each returns what it proved or raises Decline(code, sentence)."""

from __future__ import annotations

import numpy as np

from converter.graph import TensorType
from converter.runtime import dtype_name, opset_allows_conv, provider_runs_conv

from ._engine import Context, Decline


def require_rank(ctx: Context, name: str, rank: int) -> TensorType:
    """The tensor's type, known to have ``rank`` dims (symbolic dims are fine)."""
    t = ctx.scope.type_of(name)
    if t is None or t.shape is None:
        raise Decline("rank_unknown", f"the rank of {name!r} is neither declared nor inferable")
    if t.rank != rank:
        raise Decline(f"rank_not_{rank}", f"{name!r} has rank {t.rank}, not {rank}")
    return t


def require_constant(ctx: Context, name: str, role: str) -> np.ndarray:
    """The value of a tensor that cannot change at run time (caller-overridable inputs do not count)."""
    src = ctx.scope.source(name)
    if src.kind == "initializer_graph_input":
        raise Decline(
            f"{role}_is_graph_input",
            f"{role} {name!r} is an initializer that is also a graph input, so callers may override it",
        )
    if not src.is_constant:
        raise Decline(f"{role}_not_constant", f"{role} {name!r} is computed at run time, not a constant")
    return ctx.scope.constant_value(name)


def require_conv_dtype(ctx: Context, elem_type: int) -> None:
    """Conv must accept the dtype in this opset and the chosen providers must be able to run it."""
    name = dtype_name(elem_type)
    if not opset_allows_conv(elem_type, ctx.opset):
        raise Decline("dtype_unsupported", f"Conv in opset {ctx.opset} does not accept {name}")
    if not provider_runs_conv(elem_type, ctx.options.providers, ctx.opset):
        raise Decline(
            "dtype_unsupported",
            f"onnxruntime {'+'.join(ctx.options.providers)} has no Conv kernel for {name}",
        )
