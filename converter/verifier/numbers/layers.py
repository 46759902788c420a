"""Numbers for one rewritten layer: does its Conv read the original activation, and compute the dense layer?

Two checks per layer and trial, on the tensors the verifier exposes from both models:

- Input layout: the Conv's input, read back as NHWC, must equal the original layer's activation up to
  the rounding that earlier rewritten layers introduce (a relative error norm, ``INPUT_RTOL``). A
  wrong Transpose moves values to other positions, which gives a relative error near 1.
- Arithmetic: the Conv's output must equal ``X @ W + b`` computed in float64 from the Conv's own input
  and the *original* weight and bias, within a bound from the layer's own arithmetic: per element

      |y - ref| <= (LAMBDA * sqrt(C) * u_acc + 2 * u_out) * (|X| @ |W| + |b|) + C * tiny

  ``u_acc`` is the unit roundoff of the accumulation, ``u_out`` of the output dtype; ``sqrt(C)``
  rather than ``C`` is the probabilistic rounding-error bound for a C-term dot product (Higham and
  Mary), with LAMBDA = 8 as the safety factor. Before trusting the bound, the same test is applied
  to the original model's MatMul result (from the original's activation): if onnxruntime's own
  kernel needs more room, the bound is widened by twice that factor and the report says so (past 100x it
  is not rounding: the original does not compute what the layer claims, and the layer fails).

The arithmetic is checked at up to ``SAMPLE_ROWS`` positions spread evenly over the tensor (a wrong
weight or bias changes every position; the input check, which catches layout, covers all of them),
so that a layer's cost does not grow with the image. An element whose input row holds NaN or Inf is
not compared (its reference is undefined); a layer whose input has no finite element, or only one
repeated value, was not exercised in that trial.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from converter.verifier.certificate import IntegerLayer

LAMBDA = 8.0
INPUT_RTOL = {"float16": 3e-2, "bfloat16": 1e-1}
_DEFAULT_INPUT_RTOL = 1e-2
_ROWS = 1 << 20  # elements (positions x channels) per block of a full-tensor pass
SAMPLE_ROWS = 4096
_WIDEN_AT_MOST = 100.0

_UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


@dataclass
class LayerNumbers:
    """One layer, one trial."""

    exercised: bool
    why_not: str = ""
    input_rel_error: float = 0.0
    input_ok: bool = True
    output_max_error: float = 0.0
    output_ratio: float = 0.0  # max over elements of |error| / bound
    output_bad: int = 0
    widened: float = 1.0  # how much the bound was widened to fit the original's own kernel
    noise: float = 0.0  # rms over elements of the rounding bound: how much this layer may move what follows
    shape: tuple[int, ...] = ()  # the Conv input's positions as (N, H, W, C); a token layer's is (B, 1, S, C)
    problem: str = ""
    tokens: bool = False  # a layer on a token sequence [B, S, C], checked in the NHWC view [B, 1, S, C]
    exact: bool | None = None  # an integer layer: its output equals the original's bit for bit (None: not compared)

    @property
    def passed(self) -> bool:
        return self.exercised and self.input_ok and self.output_bad == 0 and not self.problem


def unit_roundoff(dtype: np.dtype) -> float:
    return _UNIT_ROUNDOFF.get(np.dtype(dtype).name, 2.0**-24)


def absolute_floor(c: int, in_dtype: np.dtype, out_dtype: np.dtype) -> float:
    """The rounding error no relative bound covers: values near zero. Each of the ``c`` partial sums and the
    output may round in the narrowest type involved, and below its smallest normal number a rounding loses up to
    half of a fixed step, the smallest subnormal (float16: 6e-8, far above float32's ``tiny``)."""
    wide = np.float32 if np.dtype(out_dtype).itemsize < 8 else np.float64
    narrow = min((np.dtype(t) for t in (in_dtype, out_dtype, wide)), key=lambda t: t.itemsize)
    step = float(np.finfo(narrow).smallest_subnormal) if narrow.kind == "f" else 0.0
    return c * float(np.finfo(wide).tiny) + (c + 1) * step


def check_layer(
    conv_in: np.ndarray,
    conv_out: np.ndarray,
    weight_kc: np.ndarray,
    bias: np.ndarray | None,
    orig_in: np.ndarray | None,
    orig_out: np.ndarray | None,
    calibrate: bool = True,
) -> LayerNumbers:
    """Check one layer on one trial; ``calibrate`` also measures the original's own rounding (see above).

    ``conv_in``/``conv_out`` are NCHW from the rewritten model; ``weight_kc`` is the original weight as
    [K, C]; ``orig_in``/``orig_out`` are the original layer's NHWC tensors.
    """
    conv_in, conv_out = np.asarray(conv_in), np.asarray(conv_out)
    k, c = weight_kc.shape
    if conv_in.ndim != 4 or conv_in.shape[1] != c:
        return LayerNumbers(False, problem=f"the Conv's input has shape {list(conv_in.shape)}, expected [N, {c}, H, W]")
    n, _, h, w = conv_in.shape
    if conv_out.shape != (n, k, h, w):
        return LayerNumbers(False, problem=f"the Conv's output has shape {list(conv_out.shape)}, expected {[n, k, h, w]}")
    # Positions are rows of channels in NHWC order; the NCHW tensors are read a block at a time
    # (no full-size copy), and the arithmetic only at the sampled positions.
    x_blocks = functools.partial(_blocks, conv_in, True)
    result = LayerNumbers(True, shape=(n, h, w, c))
    if not n * h * w * c:
        return LayerNumbers(False, "its input was empty (a dim of 0)", shape=(n, h, w, c))
    finite_rows, distinct = _exercise(x_blocks())
    if not finite_rows:
        return LayerNumbers(False, "its input had no finite values", shape=(n, h, w, c))
    if not distinct:
        return LayerNumbers(False, "its input was one repeated value, which hides any layout", shape=(n, h, w, c))

    if orig_in is not None:
        orig_in = np.asarray(orig_in)
        if orig_in.shape != (n, h, w, c):
            result.input_ok = False
            result.problem = f"the Conv reads a {list(conv_in.shape)} tensor, the original layer a {list(orig_in.shape)} one"
            return result
        result.input_rel_error, nan_mismatch = _relative_error(x_blocks(), _blocks(orig_in, False))
        limit = INPUT_RTOL.get(conv_in.dtype.name, _DEFAULT_INPUT_RTOL)
        result.input_ok = result.input_rel_error <= limit and not nan_mismatch
        if nan_mismatch:
            result.problem = "NaN/Inf sit in other places than in the original's activation"

    w64 = weight_kc.astype(np.float64).T  # [C, K]
    b64 = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    # fp16 and bf16 kernels may round partial sums to their own type: assume the coarser of the two.
    u_acc = max(unit_roundoff(np.float32), unit_roundoff(conv_in.dtype)) if conv_in.dtype.name != "float64" else 2.0**-53
    u_out = unit_roundoff(conv_out.dtype)
    scale = LAMBDA * math.sqrt(c) * u_acc + 2 * u_out
    tiny = absolute_floor(c, conv_in.dtype, conv_out.dtype)
    rows = _sample(n * h * w)
    if calibrate and orig_in is not None and orig_out is not None and np.asarray(orig_out).shape == (n, h, w, k):
        worst = _worst_ratio(orig_in.reshape(-1, c)[rows], np.asarray(orig_out).reshape(-1, k)[rows], w64, b64, scale, tiny)
        if worst > _WIDEN_AT_MOST:
            # Not rounding: the original's own tensors are not X @ W + b, so the claim about the layer is wrong.
            result.problem = f"the original's layer output is not its input times the weight plus the bias ({worst:.3g}x the bound)"
            return result
        if worst > 1.0:
            result.widened = worst * 2.0
    errors = _errors(_take(conv_in, rows), _take(conv_out, rows), w64, b64, scale * result.widened, tiny)
    result.output_max_error, result.output_ratio, result.output_bad, result.noise = errors
    return result


@dataclass
class LayerTensors:
    """One layer's tensors in one trial, as check_layer takes them."""

    conv_in: np.ndarray
    conv_out: np.ndarray
    weight_kc: np.ndarray
    bias: np.ndarray | None
    orig_in: np.ndarray | None
    orig_out: np.ndarray | None
    calibrate: bool = True


_BATCH_ELEMENTS = 1 << 14  # a layer this small (positions x channels) is checked in a batch with its likes
_BATCH_BYTES = 1 << 26


def check_layers(items: list[LayerTensors]) -> list[LayerNumbers]:
    """check_layer for many layers: small layers of one shape are checked together, in arrays stacked over layers.

    Graphs of tens of thousands of small dense layers spent most of their verification time in
    per-layer Python overhead; the stacked computation is the same arithmetic, per layer.
    """
    results: list[LayerNumbers | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    viewed = [_token_view(it) for it in items]
    tokens = {i for i, (_, token) in enumerate(viewed) if token}
    items = [it for it, _ in viewed]
    for i, it in enumerate(items):
        key = _batch_key(it)
        if key is None:
            results[i] = check_layer(it.conv_in, it.conv_out, it.weight_kc, it.bias, it.orig_in, it.orig_out, it.calibrate)
        else:
            groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        rows, c, k = key[0] * key[1] * key[2], key[3], key[4]
        per_layer = 8 * rows * (3 * c + 4 * k)
        step = max(1, _BATCH_BYTES // max(per_layer, 1))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            for i, r in zip(chunk, _check_batch([items[i] for i in chunk]), strict=True):
                results[i] = r
    for i in tokens:
        results[i] = dataclasses.replace(results[i], tokens=True)  # type: ignore[arg-type]
    return results  # type: ignore[return-value]


def _token_view(it: LayerTensors) -> tuple[LayerTensors, bool]:
    """The original's tensors in the NHWC view of the Conv's positions, where they hold the same positions in
    the same order under another shape: a token layer's [B, S, C] (or [B, S, H, D] merged into C = H * D) as
    [B, 1, S, C] for its Conv's [B, C, 1, S]; a sandwich's flat [N*H*W, C] (a QDQ Tensordot's MatMul output)
    as [N, H, W, C]. Anything else as it is. True when it is a token layer's."""
    x = np.shape(it.conv_in)
    if len(x) != 4:
        return it, False
    n, _, h, w = x
    k, c = it.weight_kc.shape

    token = False

    def view(t: np.ndarray | None, ch: int) -> np.ndarray | None:
        nonlocal token
        shape = np.shape(t)
        if t is None or shape == (n, h, w, ch) or len(shape) == 2:
            return _positions(t, n, h, w, ch)
        if h == 1 and len(shape) >= 3 and shape[:2] == (n, w) and math.prod(shape[2:]) == ch:
            token = True
            return np.asarray(t).reshape(n, 1, w, ch)
        return t

    viewed = dataclasses.replace(it, orig_in=view(it.orig_in, c), orig_out=view(it.orig_out, k))
    return viewed, token


def _positions(t: np.ndarray | None, n: int, h: int, w: int, ch: int) -> np.ndarray | None:
    """A Tensordot's flat ``[N*H*W, ch]`` tensor (its rows are the positions in NHWC order) as ``[N, H, W, ch]``;
    anything else as it is."""
    if t is not None and np.shape(t) == (n * h * w, ch):
        return np.asarray(t).reshape(n, h, w, ch)
    return t


def _batch_key(it: LayerTensors) -> tuple | None:
    x, y = np.asarray(it.conv_in), np.asarray(it.conv_out)
    k, c = it.weight_kc.shape
    if x.ndim != 4 or x.shape[1] != c or y.shape != (x.shape[0], k, x.shape[2], x.shape[3]):
        return None  # check_layer says what is wrong
    n, _, h, w = x.shape
    if not n * h * w * c * k:
        return None  # an empty tensor: check_layer says the layer was not exercised (a stacked max has no identity)
    if n * h * w * max(c, k) > _BATCH_ELEMENTS or it.orig_in is None or np.shape(it.orig_in) != (n, h, w, c):
        return None
    calibrate = it.calibrate and it.orig_out is not None and np.shape(it.orig_out) == (n, h, w, k)
    return (n, h, w, c, k, x.dtype.name, y.dtype.name, it.bias is not None, calibrate)


def _check_batch(items: list[LayerTensors]) -> list[LayerNumbers]:
    first = items[0]
    n, c, h, w = np.asarray(first.conv_in).shape
    k = first.weight_kc.shape[0]
    rows = n * h * w
    # Stacked as [L, N, C, H, W], then NCHW -> rows of channels for all layers in one transpose.
    x = np.stack([np.asarray(it.conv_in) for it in items]).transpose(0, 1, 3, 4, 2).reshape(len(items), rows, c).astype(np.float64)
    y = np.stack([np.asarray(it.conv_out) for it in items]).transpose(0, 1, 3, 4, 2).reshape(len(items), rows, k).astype(np.float64)
    xo = np.stack([np.asarray(it.orig_in).reshape(rows, c) for it in items]).astype(np.float64)
    wt = np.stack([it.weight_kc.T for it in items]).astype(np.float64)  # [L, C, K]
    b = None if first.bias is None else np.stack([np.asarray(it.bias).reshape(-1) for it in items]).astype(np.float64)
    in_dtype, out_dtype = np.asarray(first.conv_in).dtype, np.asarray(first.conv_out).dtype
    u_acc = max(unit_roundoff(np.float32), unit_roundoff(in_dtype)) if in_dtype.name != "float64" else 2.0**-53
    scale = LAMBDA * math.sqrt(c) * u_acc + 2 * unit_roundoff(out_dtype)
    tiny = absolute_floor(c, in_dtype, out_dtype)
    shape = (n, h, w, c)

    with np.errstate(invalid="ignore", over="ignore"):
        row_ok = np.isfinite(x).all(axis=2)  # [L, R]
        masked = np.where(row_ok[..., None], x, np.nan)
        any_finite = row_ok.any(axis=1)
        lo = np.nanmin(np.where(any_finite[:, None, None], masked, 0.0), axis=(1, 2))
        hi = np.nanmax(np.where(any_finite[:, None, None], masked, 0.0), axis=(1, 2))
        # input layout: relative error over elements finite in both, and NaN/Inf in the same places
        fa, fb = np.isfinite(x), np.isfinite(xo)
        both = fa & fb
        diff = np.where(both, x - xo, 0.0)
        num = np.einsum("lrc,lrc->l", diff, diff)
        den = np.einsum("lrc,lrc->l", np.where(both, xo, 0.0), np.where(both, xo, 0.0))
        rel = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), np.where(num > 0, np.inf, 0.0))
        nan_mismatch = (fa != fb).any(axis=(1, 2)) | ((~fa) & (~fb) & ~((x == xo) | (np.isnan(x) & np.isnan(xo)))).any(axis=(1, 2))

        def ratio(inp: np.ndarray, out: np.ndarray, widen: np.ndarray) -> tuple[np.ndarray, ...]:
            ok = np.isfinite(inp).all(axis=2)
            safe = np.where(ok[..., None], inp, 0.0)
            ref = np.matmul(safe, wt)
            bound = np.matmul(np.abs(safe).astype(np.float32), np.abs(wt).astype(np.float32)).astype(np.float64)
            if b is not None:
                ref += b[:, None, :]
                bound += np.abs(b)[:, None, :]
            tol = (scale * bound + tiny) * widen[:, None, None]
            err = np.abs(out - ref)
            err = np.where(np.isnan(err) & ~np.isfinite(ref), 0.0, err)
            err = np.where(np.isnan(err), np.inf, err)
            err = np.where(ok[..., None], err, 0.0)
            r = err / tol
            noise = np.sqrt(
                np.einsum("lrk,lrk->l", np.where(ok[..., None], tol, 0.0), np.where(ok[..., None], tol, 0.0))
                / np.maximum(ok.sum(axis=1) * k, 1)
            )
            return err.max(axis=(1, 2)), r.max(axis=(1, 2)), (r > 1.0).sum(axis=(1, 2)), noise

        ones = np.ones(len(items))
        widened = ones.copy()
        problems = [""] * len(items)
        if _batch_key(first)[-1]:  # type: ignore[index]
            zo = np.stack([np.asarray(it.orig_out).reshape(rows, k) for it in items]).astype(np.float64)
            _, worst, _, _ = ratio(xo, zo, ones)
            for i, wv in enumerate(worst):
                if wv > _WIDEN_AT_MOST:
                    problems[i] = (
                        f"the original's layer output is not its input times the weight plus the bias ({wv:.3g}x the bound)"
                    )
                elif wv > 1.0:
                    widened[i] = wv * 2.0
        max_err, max_ratio, bad, noise = ratio(x, y, widened)

    limit = INPUT_RTOL.get(in_dtype.name, _DEFAULT_INPUT_RTOL)
    out: list[LayerNumbers] = []
    for i in range(len(items)):
        if not any_finite[i]:
            out.append(LayerNumbers(False, "its input had no finite values", shape=shape))
            continue
        if not hi[i] > lo[i]:
            out.append(LayerNumbers(False, "its input was one repeated value, which hides any layout", shape=shape))
            continue
        r = LayerNumbers(True, shape=shape, input_rel_error=float(rel[i]))
        r.input_ok = bool(rel[i] <= limit and not nan_mismatch[i])
        if nan_mismatch[i]:
            r.problem = "NaN/Inf sit in other places than in the original's activation"
        if problems[i]:
            r.problem = problems[i]
            out.append(r)
            continue
        r.widened = float(widened[i])
        r.output_max_error, r.output_ratio, r.output_bad, r.noise = (
            float(max_err[i]),
            float(max_ratio[i]),
            int(bad[i]),
            float(noise[i]),
        )
        out.append(r)
    return out


def _sample(count: int) -> np.ndarray | slice:
    """Evenly spread row indices, first and last included (all rows when there are few)."""
    if count <= SAMPLE_ROWS:
        return slice(None)
    return np.unique(np.linspace(0, count - 1, SAMPLE_ROWS).round().astype(np.int64))


def _blocks(t: np.ndarray, nchw: bool) -> Iterator[np.ndarray]:
    """The positions of a 4D tensor as rows of channels, in NHWC order, a block of image lines at a time."""
    if not nchw:
        flat = t.reshape(-1, t.shape[-1])
        step = max(1, _ROWS // max(flat.shape[1], 1))
        for start in range(0, flat.shape[0], step):
            yield flat[start : start + step]
        return
    n, c, h, w = t.shape
    lines = max(1, _ROWS // max(w * c, 1))
    for i in range(n):
        for h0 in range(0, h, lines):
            yield t[i, :, h0 : h0 + lines, :].transpose(1, 2, 0).reshape(-1, c)


def _take(t: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """The given positions (NHWC row numbers) of an NCHW tensor, as rows of channels."""
    n, c, h, w = t.shape
    if isinstance(rows, slice):
        return t.transpose(0, 2, 3, 1).reshape(-1, c)[rows]
    i, rest = np.divmod(rows, h * w)
    y, x = np.divmod(rest, w)
    return t[i, :, y, x]


def _exercise(blocks: Iterable[np.ndarray]) -> tuple[bool, bool]:
    """(some row is all finite, the finite values are not all one number)."""
    any_finite, first, distinct = False, None, False
    for block in blocks:
        part = block.astype(np.float64)
        ok = np.isfinite(part).all(axis=1)
        if not ok.any():
            continue
        any_finite = True
        vals = part[ok]
        if first is None:
            first = vals.flat[0]
        if not distinct and (vals != first).any():
            distinct = True
        if distinct:
            break
    return any_finite, distinct


def _relative_error(a_blocks: Iterable[np.ndarray], b_blocks: Iterable[np.ndarray]) -> tuple[float, bool]:
    """||a - b|| / ||b|| over elements finite in both, and whether the non-finite places differ."""
    num = den = 0.0
    nan_mismatch = False
    for a_block, b_block in _paired(a_blocks, b_blocks):
        a = a_block.astype(np.float64)
        b = b_block.astype(np.float64)
        fa, fb = np.isfinite(a), np.isfinite(b)
        if (fa != fb).any() or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
            nan_mismatch = True
        both = fa & fb
        d = np.where(both, a - b, 0.0)
        num += float(np.sum(d * d))
        den += float(np.sum(np.where(both, b, 0.0) ** 2))
    if den == 0.0:
        return (0.0 if num == 0.0 else math.inf), nan_mismatch
    return math.sqrt(num / den), nan_mismatch


def _paired(a_blocks: Iterable[np.ndarray], b_blocks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of two row sequences cut to the same rows (the two may be blocked differently)."""
    a_iter, b_iter = iter(a_blocks), iter(b_blocks)
    a, b = next(a_iter, None), next(b_iter, None)
    while a is not None and b is not None:
        m = min(len(a), len(b))
        yield a[:m], b[:m]
        a = a[m:] if m < len(a) else next(a_iter, None)
        b = b[m:] if m < len(b) else next(b_iter, None)


def _reference(x: np.ndarray, w64: np.ndarray, b64: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    ref = x @ w64
    # All terms are positive, so float32 sums them to ~1e-7 relative: plenty for a bound, and faster.
    bound = (np.abs(x).astype(np.float32) @ np.abs(w64).astype(np.float32)).astype(np.float64)
    if b64 is not None:
        ref += b64
        bound += np.abs(b64)
    return ref, bound


def _errors(
    x_rows: np.ndarray, y_rows: np.ndarray, w64: np.ndarray, b64: np.ndarray | None, scale: float, tiny: float
) -> tuple[float, float, int, float]:
    """(max |error|, max |error| / bound, elements over the bound, rms of the bound)."""
    max_err = max_ratio = 0.0
    bad = 0
    tol_sq, count = 0.0, 0
    for start in range(0, x_rows.shape[0], _ROWS):
        x = x_rows[start : start + _ROWS].astype(np.float64)
        y = y_rows[start : start + _ROWS].astype(np.float64)
        rows = np.isfinite(x).all(axis=1)
        if not rows.any():
            continue
        x, y = x[rows], y[rows]
        ref, bound = _reference(x, w64, b64)
        tol = scale * bound + tiny
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(y - ref)
            err = np.where(np.isnan(err) & ~np.isfinite(ref), 0.0, err)  # both undefined (inf - inf)
            err = np.where(np.isnan(err), np.inf, err)
            ratio = err / tol
        bad += int(np.count_nonzero(ratio > 1.0))
        max_err = max(max_err, float(err.max()))
        max_ratio = max(max_ratio, float(ratio.max()))
        finite_tol = tol[np.isfinite(tol)]
        tol_sq += float(np.dot(finite_tol, finite_tol))
        count += finite_tol.size
    return max_err, max_ratio, bad, math.sqrt(tol_sq / count) if count else 0.0


def _worst_ratio(
    x_rows: np.ndarray, y_rows: np.ndarray, w64: np.ndarray, b64: np.ndarray | None, scale: float, tiny: float
) -> float:
    return _errors(x_rows, y_rows, w64, b64, scale, tiny)[1]


# --- integer layers (QLinearConv, ConvInteger) --------------------------------------------------
#
# An integer layer has no rounding to bound: ``acc = sum_c (x - x_zero) (w - w_zero)`` is an exact
# int32 sum, so ConvInteger's output must equal it exactly. QLinearConv then requantizes,
# ``y = saturate(round(acc * x_scale * w_scale[k] / y_scale) + y_zero)``: onnxruntime computes the
# multiplier in float32 (and MLAS may fold it differently per kernel), so at a rounding tie the result
# may be one integer step away from the float64 reference; one step is allowed. Measured on
# onnxruntime 1.32 CPU (int8/uint8, per tensor and per channel, N=2, H != W): QLinearConv equals
# QLinearMatMul bit for bit and ConvInteger equals MatMulInteger bit for bit, so ``exact`` (the Conv's
# output equals the original's wherever their inputs are equal) is reported too.


def _requantized(layer: IntegerLayer) -> bool:
    return layer.y_scale is not None


def integer_reference(layer: IntegerLayer, x_rows: np.ndarray, x_zero: np.ndarray | None, out_dtype: np.dtype) -> np.ndarray:
    """The layer's output at these positions (rows of channels): the sums exactly, the requantization in float64."""
    zx = np.int64(0) if x_zero is None else np.int64(np.asarray(x_zero).reshape(-1)[0])
    acc = (x_rows.astype(np.int64) - zx) @ (layer.weight_kc.astype(np.int64) - layer.w_zero.astype(np.int64)[:, None]).T
    if layer.bias is not None:  # QGemm's int32 bias (QLinearConv's B), of the sums' scale: added before requantizing
        acc = acc + np.asarray(layer.bias, np.int64)
    if not _requantized(layer):
        return acc
    multiplier = (
        np.float64(np.asarray(layer.x_scale).reshape(-1)[0])
        * np.asarray(layer.w_scale, np.float64)
        / np.float64(np.asarray(layer.y_scale).reshape(-1)[0])
    )
    info = np.iinfo(out_dtype)
    y_zero = 0 if layer.y_zero is None else int(np.asarray(layer.y_zero).reshape(-1)[0])
    return np.clip(np.rint(acc * multiplier) + y_zero, info.min, info.max).astype(np.int64)


def check_integer_layer(
    conv_in: np.ndarray,
    conv_out: np.ndarray,
    layer: IntegerLayer,
    x_zero: np.ndarray | None,
    orig_in: np.ndarray | None,
    orig_out: np.ndarray | None,
    calibrate: bool = True,
) -> LayerNumbers:
    """check_layer for an integer layer: input layout, and the output against the exact integer reference.

    ``output_max_error`` is in integer steps of the output; an element is bad past one step (QLinearConv)
    or at any difference (ConvInteger).
    """
    conv_in, conv_out = np.asarray(conv_in), np.asarray(conv_out)
    k, c = layer.weight_kc.shape
    if conv_in.ndim != 4 or conv_in.shape[1] != c or conv_in.dtype.kind not in "iu":
        return LayerNumbers(
            False, problem=f"the integer Conv's input is {conv_in.dtype} {list(conv_in.shape)}, expected [N, {c}, H, W]"
        )
    n, _, h, w = conv_in.shape
    if conv_out.shape != (n, k, h, w):
        return LayerNumbers(False, problem=f"the Conv's output has shape {list(conv_out.shape)}, expected {[n, k, h, w]}")
    shape = (n, h, w, c)
    orig_in, orig_out = _positions(orig_in, n, h, w, c), _positions(orig_out, n, h, w, k)
    if h == 1:  # a token layer: the original's [B, S, C] holds the Conv's [B, C, 1, S] positions as [B, 1, S, C]
        tokens = [np.asarray(t)[:, None] if np.ndim(t) == 3 and np.shape(t)[:2] == (n, w) else t for t in (orig_in, orig_out)]
        orig_in, orig_out = tokens
    zx = 0 if x_zero is None else int(np.asarray(x_zero).reshape(-1)[0])
    x_rows = conv_in.transpose(0, 2, 3, 1).reshape(-1, c)
    if not (x_rows != x_rows.flat[0]).any():
        return LayerNumbers(False, "its input was one repeated value, which hides any layout", shape=shape)
    # What it may move what follows: one output step in real units (QLinearConv), nothing for exact int32 sums.
    step = float(np.asarray(layer.y_scale).reshape(-1)[0]) if _requantized(layer) else 0.0
    result = LayerNumbers(True, shape=shape, noise=step)
    if orig_in is not None:
        orig_in = np.asarray(orig_in)
        if orig_in.shape != shape:
            result.input_ok = False
            result.problem = f"the Conv reads a {list(conv_in.shape)} tensor, the original layer a {list(orig_in.shape)} one"
            return result
        # Centred on the zero point, so that a moved value counts at its real size (uint8 data sits near 128).
        a = x_rows.astype(np.float64) - zx
        b = orig_in.reshape(-1, c).astype(np.float64) - zx
        den = float(np.sum(b * b))
        num = float(np.sum((a - b) ** 2))
        result.input_rel_error = math.sqrt(num / den) if den else (0.0 if num == 0 else math.inf)
        result.input_ok = result.input_rel_error <= _DEFAULT_INPUT_RTOL
    rows = _sample(n * h * w)
    allowed = 1 if _requantized(layer) else 0
    if calibrate and orig_in is not None and orig_out is not None and np.shape(orig_out) == (n, h, w, k):
        o_ref = integer_reference(layer, orig_in.reshape(-1, c)[rows], x_zero, np.asarray(orig_out).dtype)
        worst = int(np.abs(np.asarray(orig_out).reshape(-1, k)[rows].astype(np.int64) - o_ref).max())
        if worst > allowed:
            result.problem = f"the original's layer output is not what its integer weight and parameters give ({worst} steps off)"
            return result
    y_rows = _take(conv_out, rows).astype(np.int64)
    err = np.abs(y_rows - integer_reference(layer, x_rows[rows], x_zero, conv_out.dtype))
    result.output_max_error = float(err.max())
    result.output_ratio = result.output_max_error / max(allowed, 1)
    result.output_bad = int(np.count_nonzero(err > allowed))
    if orig_in is not None and orig_out is not None and np.shape(orig_out) == (n, h, w, k):
        same_in = np.array_equal(x_rows, orig_in.reshape(-1, c))
        result.exact = same_in and np.array_equal(conv_out.transpose(0, 2, 3, 1), np.asarray(orig_out))
    return result
