"""Small predicates shared by rules. Each returns what it proved or raises Decline(code, sentence)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, numpy_helper

from converter.graph import TensorType, transpose_2d
from converter.providers import dtype_name, opset_allows_conv, provider_runs_conv
from converter.rewriter.rules._engine import Context, Decline


def require_rank(ctx: Context, name: str, rank: int) -> TensorType:
    """The tensor's type, known to have ``rank`` dims (symbolic dims are fine)."""
    t = ctx.scope.type_of(name)
    if t is not None and t.conflict:
        raise Decline("rank_conflict", f"the model declares a rank for {name!r} that shape inference contradicts")
    if t is None or t.shape is None:
        raise Decline("rank_unknown", f"the rank of {name!r} is neither declared nor inferable")
    if t.rank != rank:
        raise Decline(f"rank_not_{rank}", f"{name!r} has rank {t.rank}, not {rank}")
    if any(d == 0 for d in t.shape):
        raise Decline("zero_size", f"{name!r} has a dim of size 0 ({list(t.shape)}); onnxruntime's Conv refuses empty tensors")
    return t


def require_varying(ctx: Context, name: str) -> None:
    """The activation must depend on the model's inputs: a layer that only ever sees constants
    (SwinV2's position-bias MLP on a fixed coordinate table) is not worth a Conv, and a compiler folds it."""
    if ctx.scope.is_constant_expression(name):
        raise Decline(
            "constant_input",
            f"{name!r} is computed from constants alone, so the layer's result never changes; a constant folder "
            "(onnxruntime's, or onnxsim) turns it into one tensor",
        )


def require_constant(ctx: Context, name: str, role: str) -> np.ndarray:
    """The value of a tensor that cannot change at run time (caller-overridable inputs do not count)."""
    return ctx.scope.value_of(require_constant_tensor(ctx, name, role))


def require_constant_tensor(ctx: Context, name: str, role: str) -> TensorProto:
    """As require_constant, but the TensorProto: its dims and dtype, without reading (copying) its data."""
    src = ctx.scope.source(name)
    if src.kind == "initializer_graph_input":
        raise Decline(
            f"{role}_is_graph_input",
            f"{role} {name!r} is an initializer that is also a graph input, so callers may override it",
        )
    if not src.is_constant:
        raise Decline(f"{role}_not_constant", f"{role} {name!r} is computed at run time, not a constant")
    return ctx.scope.constant_tensor(name)


@dataclass(frozen=True)
class Weight:
    """A dense layer's constant weight, ``[C, K]`` as the layer uses it, read only when the Conv weight is made.

    Rules decide from dims and dtype alone; the data (which can be hundreds of MB) is read once,
    by ``conv()``, when the new weight is written (see detached.py).
    """

    tensor: TensorProto
    c: int
    k: int
    dtype: np.dtype
    stored_kc: bool = False  # the tensor holds [K, C] (Gemm transB=1): Conv's layout already
    alpha: float = 1.0  # Gemm's alpha, folded into the weight
    read: Callable[[TensorProto], np.ndarray] = numpy_helper.to_array  # the tensor's values (detached ones too)

    @property
    def conv_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c, 1, 1)

    def conv(self) -> np.ndarray:
        """The Conv weight ``W^T`` as ``[K, C, 1, 1]``."""
        m = self.read(self.tensor)
        kc = m.reshape(self.k, self.c) if self.stored_kc else transpose_2d(m.reshape(self.c, self.k))
        if self.alpha != 1.0:
            kc = (kc * np.asarray(self.alpha, dtype=self.dtype)).astype(self.dtype)
        return kc.reshape(self.conv_shape)


def require_weight(
    ctx: Context, name: str, *, ranks: tuple[int, ...] = (2,), transposed: bool = False, alpha: float = 1.0
) -> Weight:
    """A constant weight matrix; ranks above 2 are accepted only when their leading dims are all 1."""
    t = require_constant_tensor(ctx, name, "weight")
    dims = list(t.dims)
    if len(dims) not in ranks:
        raise Decline("weight_rank", f"weight {name!r} has rank {len(dims)}; a dense layer needs [C, K]")
    if any(d != 1 for d in dims[:-2]):
        raise Decline("weight_batched", f"weight {name!r} of shape {dims} varies over batch dims")
    rows, cols = dims[-2:]
    c, k = (cols, rows) if transposed else (rows, cols)
    require_channels(name, dims, c, k)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    except (KeyError, TypeError, ValueError) as e:
        raise Decline("dtype_unsupported", f"weight {name!r} has no numpy dtype ({e})") from e
    return Weight(t, c, k, dtype, stored_kc=transposed, alpha=alpha, read=ctx.scope.value_of)


def require_channels(name: str, dims: list[int], c: int, k: int) -> None:
    """A weight ``[C, K]`` (as ``dims``) with input and output channels: a layer with none computes an empty
    tensor, which onnxruntime's Conv refuses and no check can learn anything from."""
    if not c or not k:
        side = "output channels (K = 0)" if not k else "input channels (C = 0)"
        raise Decline("zero_size", f"weight {name!r} of shape {dims} has no {side}; onnxruntime's Conv refuses empty tensors")


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
    scale: float = 1.0  # the exact factor applied (Gemm's beta)


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
