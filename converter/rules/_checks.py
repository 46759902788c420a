"""Small predicates shared by rules. Each returns what it proved or raises Decline(code, sentence)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

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


@dataclass
class Bias:
    add: NodeProto
    name: str
    value: np.ndarray  # shape [K]
    # How ``value`` differs from the constant ``name`` ("" when it is that constant, broadcast):
    # part of the derived tensor's name, and the original is reused only when this is "".
    transform: str = ""


def find_bias(ctx: Context, y: str, dtype: np.dtype, k: int) -> tuple[Bias | None, str | None]:
    """The Add after ``y`` if it is provably a per-output-channel bias, else None and why not.

    (None, None) means there is no Add to fold at all.
    """
    consumers = ctx.scope.consumers(y)
    adds = [c for c in consumers if c.op_type == "Add" and c.domain in ("", "ai.onnx")]
    if not adds:
        return None, None
    if len(consumers) > 1:
        return None, "matmul_output_fanout"
    if y in ctx.scope.output_names:
        return None, "matmul_output_is_graph_output"
    add = adds[0]
    others = [n for n in add.input if n != y]
    if len(others) != 1:
        return None, "bias_not_constant"
    try:
        b = require_constant(ctx, others[0], "bias")
    except Decline as d:
        return None, d.code
    if b.dtype != dtype:
        return None, "bias_dtype_mismatch"
    if b.ndim > 4 or any(d != 1 for d in b.shape[:-1]) or (b.ndim and b.shape[-1] not in (1, k)):
        return None, "bias_not_per_channel"
    return Bias(add, others[0], np.broadcast_to(b.reshape(-1), (k,))), None
