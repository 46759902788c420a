"""Weights quantized in blocks, read by the certificate's own code: DequantizeLinear in blocks or of 4-bit data, and
onnxruntime's MatMulNBits (com.microsoft).

Both are written out here from their specifications, sharing nothing with the rules that convert them:

- ``DequantizeLinear(q, scale, zero_point, axis, block_size=B)`` (opset 21 on): ``scale`` and ``zero_point`` have
  ``q``'s rank and dims, but ``ceil(D / B)`` along ``axis``, and
  ``y[.., i, ..] = (q[.., i, ..] - zero_point[.., i // B, ..]) * scale[.., i // B, ..]``, computed as onnxruntime
  does: the difference exactly (int64), then to the scale's type, times the scale in that type. Without
  ``block_size``, the per-tensor and per-axis forms of 4-bit data (int4, uint4) the same way.
- ``MatMulNBits(A, B, scales, zero_points, g_idx, bias)`` with attributes ``K``, ``N``, ``bits``, ``block_size``:
  ``Y = A @ W^T (+ bias)`` with ``W[n, k] = (q[n, k] - z[n, g(k)]) * s[n, g(k)]``, where ``g(k) = k // block_size``
  (or ``g_idx[k]``), ``q[n, k]`` is element ``k % block_size`` of block ``k // block_size`` of row ``n`` in
  ``B [N, blocks, bytes per block]``, ``bits`` bits each, the lowest bits first in each byte; ``s`` is ``scales``
  read as ``[N, blocks]``; ``z`` is ``zero_points`` (uint8: ``bits`` bits each, each row of ``N`` starting on a
  byte; or of the scales' type, ``[N, blocks]``), ``2^(bits - 1)`` when absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import NodeProto, TensorProto

from converter.verifier.certificate.facts import Const, Fact
from converter.verifier.certificate.layouts import norm_axis
from converter.verifier.certificate.nodes import Attributes


def wide(values: np.ndarray) -> np.ndarray:
    """A DequantizeLinear operand as onnxruntime computes with it: float32, whatever the scale's type (an int16
    or int32 value cast to a float16 scale's type first would round twice, and differ from what runs)."""
    return np.asarray(values, dtype=np.float32)


FOUR_BIT = frozenset(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)) for t in (TensorProto.INT4, TensorProto.UINT4))


def as_integers(v: np.ndarray) -> np.ndarray:
    """4-bit values (one per byte in numpy) as int8; other arrays as they are."""
    return v.astype(np.int8) if v.dtype in FOUR_BIT else v


def dequantize(node: NodeProto, ins: Sequence[Fact], data: np.ndarray | None = None) -> np.ndarray | None:
    """DequantizeLinear of constants, in blocks or of 4-bit data (see the module docstring); None for what it does
    not cover (another output_dtype than the scale's, parameters of the wrong shape, float data). ``data``: the
    value of ``ins[0]`` when the caller has read it already."""
    if len(ins) < 2 or not isinstance(ins[0], Const) or not isinstance(ins[1], Const):
        return None
    try:
        attrs = Attributes(node)
        q = as_integers(np.asarray(ins[0].get() if data is None else data))
        scale = np.asarray(ins[1].get())
        given = ins[2] if len(ins) > 2 else None
        zero = as_integers(np.asarray(given.get())) if isinstance(given, Const) else np.zeros(scale.shape, np.int64)
        if q.dtype.kind not in "iu" or scale.dtype.kind != "f" or zero.dtype.kind not in "iu":
            return None
        out_type = attrs.get_int("output_dtype", 0)
        if out_type and onnx.helper.tensor_dtype_to_np_dtype(out_type) != scale.dtype:
            return None
        block = attrs.get_int("block_size", 0)
        if zero.shape != scale.shape:
            return None
        if block:
            axis = norm_axis(attrs.get_int("axis", 1), q.ndim)
            if axis is None or block < 1 or scale.ndim != q.ndim:
                return None
            if -(-q.shape[axis] // block) != scale.shape[axis]:
                return None
            if any(q.shape[i] != scale.shape[i] for i in range(q.ndim) if i != axis):
                return None
            scale = np.take(np.repeat(scale, block, axis), range(q.shape[axis]), axis)
            zero = np.take(np.repeat(zero, block, axis), range(q.shape[axis]), axis)
        elif scale.size == 1 and scale.ndim <= 1:
            scale, zero = scale.reshape(()), zero.reshape(())
        elif scale.ndim == 1:
            axis = norm_axis(attrs.get_int("axis", 1), q.ndim)
            if axis is None or q.shape[axis] != scale.shape[0]:
                return None
            shape = [1] * q.ndim
            shape[axis] = scale.shape[0]
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        else:
            return None
        diff = q.astype(np.int64) - zero.astype(np.int64)
        return np.asarray(wide(diff) * wide(scale), dtype=np.float32).astype(scale.dtype)
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def nbits_weight(node: NodeProto, ins: Sequence[Fact]) -> np.ndarray | str:
    """A MatMulNBits' weight ``W [N, K]`` as it dequantizes it (see the module docstring), or why it cannot be read
    (its inputs are not constants, or not of the shapes its attributes give)."""
    try:
        attrs = Attributes(node)
        k, n, bits, block = (attrs.get_int(a, 0) for a in ("K", "N", "bits", "block_size"))
    except TypeError as e:
        return f"MatMulNBits with a malformed attribute ({e})"
    if bits not in (2, 4, 8) or block < 1 or k < 1 or n < 1:
        return f"MatMulNBits with K={k}, N={n}, bits={bits}, block_size={block}, which this checker does not read"
    data, scale = (ins[slot] if len(ins) > slot else None for slot in (1, 2))
    if not isinstance(data, Const) or not isinstance(scale, Const):
        return "the MatMulNBits packed weight or scales are not constants"
    optional = {}
    for slot, role in ((3, "zero points"), (4, "g_idx")):
        if len(node.input) > slot and node.input[slot]:
            fact = ins[slot]
            if not isinstance(fact, Const):
                return f"the MatMulNBits {role} is not a constant"
            optional[slot] = np.asarray(fact.get())
    blocks = -(-k // block)
    per_byte = 8 // bits
    packed = np.asarray(data.get())
    scales = np.asarray(scale.get())
    blob = -(-block * bits // 8)
    if packed.dtype != np.uint8 or packed.size != n * blocks * blob:
        return f"the MatMulNBits packed weight has {packed.size} {packed.dtype} elements, not {n}x{blocks}x{blob} uint8"
    if scales.dtype.kind != "f" or scales.size != n * blocks:
        return f"the MatMulNBits scales have {scales.size} elements, not {n}x{blocks}"
    q = _unpack(packed.reshape(n, blocks * blob), bits)[:, : blocks * block]
    q = q.reshape(n, blocks, blob * per_byte)[:, :, :block].reshape(n, blocks * block)[:, :k]
    scales = scales.reshape(n, blocks)
    zeros = optional.get(3)
    if zeros is None:
        z = np.full((n, blocks), 1 << (bits - 1), np.int64)
    elif zeros.dtype == np.uint8:
        row = -(-blocks * bits // 8)
        if zeros.size != n * row:
            return f"the MatMulNBits zero points have {zeros.size} bytes, not {n}x{row}"
        z = _unpack(zeros.reshape(n, row), bits)[:, :blocks].astype(np.int64)
    else:
        return "the MatMulNBits zero points are not uint8 (a float zero point is not an integer one)"
    group = np.arange(k) // block
    g_idx = optional.get(4)
    if g_idx is not None and zeros is not None:
        return "MatMulNBits with g_idx and zero points, which onnxruntime reads otherwise than this checker"
    if g_idx is not None:
        if g_idx.size != k or g_idx.dtype.kind not in "iu" or g_idx.min(initial=0) < 0 or g_idx.max(initial=0) >= blocks:
            return "the MatMulNBits g_idx is not one block index per input channel"
        group = g_idx.reshape(-1).astype(np.int64)
    diff = q.astype(np.int64) - z[:, group]
    return np.asarray(wide(diff) * wide(scales[:, group]), dtype=np.float32).astype(scales.dtype)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, bytes]`` uint8 as ``[rows, bytes * 8 / bits]`` values of ``bits`` bits, the lowest bits first."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)
