"""Comparing two models' outputs element by element, and recognising outputs that prove nothing.

An element fails when ``|actual - expected| > atol + rtol * |expected|`` (numpy's allclose rule),
NaNs must sit in the same places, equal infinities match, and non-float outputs must be equal
exactly. Comparison runs over chunks, so no float64 copy of a whole tensor is made. The worst
element is the one furthest past that rule: ``|actual - expected| - rtol * |expected|`` largest.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from converter.report import OutputCheck

# (atol, rtol) by output dtype for the end-to-end comparison; see end_to_end_atol for how atol scales.
DEFAULT_TOLERANCES: dict[int, tuple[float, float]] = {
    TensorProto.FLOAT: (1e-5, 1e-4),
    TensorProto.DOUBLE: (1e-10, 1e-8),
    TensorProto.FLOAT16: (1e-2, 1e-2),
    TensorProto.BFLOAT16: (5e-2, 2e-2),
}
_CHUNK = 1 << 20  # elements per chunk


def default_tolerances(elem_type: int) -> tuple[float, float]:
    """Float outputs get the table above; everything else must match exactly."""
    return DEFAULT_TOLERANCES.get(elem_type, (0.0, 0.0))


def rms(a: np.ndarray) -> float:
    """Root mean square of the finite elements (0 when there are none), in chunks."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" and a.dtype.name != "bfloat16" or not a.size:
        return 0.0
    flat = a.reshape(-1)
    total, count = 0.0, 0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK].astype(np.float64)
        part = part[np.isfinite(part)]
        total += float(np.dot(part, part))
        count += part.size
    return math.sqrt(total / count) if count else 0.0


def end_to_end_atol(base: float, ref: np.ndarray, depth: float, noise: float = 0.0) -> float:
    """The absolute tolerance for a graph output: ``max(base * max(1, rms(output)) * max(1, depth), 4 * noise)``.

    A dot product's rounding error grows with the size of its terms, and every rewritten layer on
    the way adds some. ``depth`` is ``sqrt(sum of the rewritten layers' channel counts) / 32``:
    three fp32 layers of 2048 channels legitimately move near-zero outputs by ~2e-5 times the
    output's scale. ``noise`` is the sum of the rewritten layers' rounding bounds (rms over their
    elements, layers.py): when large terms cancel into small outputs, the output's own scale
    understates the rounding it carries. The layer-level checks carry the fine-grained evidence;
    this comparison catches what goes wrong between layers and at the outputs.
    """
    return max(base * max(1.0, rms(ref)) * max(1.0, depth), 4.0 * noise)


def compare(name: str, actual: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    actual, ref = np.asarray(actual), np.asarray(ref)
    base = {"name": name, "dtype": str(ref.dtype), "shape": list(ref.shape), "atol": atol, "rtol": rtol}
    if actual.shape != ref.shape or actual.dtype != ref.dtype:
        problem = f"rewritten gives {actual.dtype}{list(actual.shape)}, original {ref.dtype}{list(ref.shape)}"
        return OutputCheck(
            **base, max_abs_error=float("inf"), max_rel_error=float("inf"), mismatched=int(ref.size), passed=False, problem=problem
        )
    exact = ref.dtype.kind not in "fc" and ref.dtype.name != "bfloat16"
    a_flat, r_flat = actual.reshape(-1), ref.reshape(-1)
    max_abs = max_rel = 0.0
    mismatched = 0
    worst, worst_excess = -1, -math.inf
    for start in range(0, max(r_flat.size, 1), _CHUNK):
        a_part, r_part = a_flat[start : start + _CHUNK], r_flat[start : start + _CHUNK]
        if not r_part.size:
            break
        if exact:
            bad = a_part != r_part
            diff = np.abs(a_part.astype(np.float64) - r_part.astype(np.float64)) if ref.dtype.kind in "iub" else bad.astype(float)
            rel = np.where(bad, np.inf, 0.0)
            excess = np.where(bad, diff, -np.inf)
        else:
            a, r = a_part.astype(np.float64), r_part.astype(np.float64)
            nan_a, nan_r = np.isnan(a), np.isnan(r)
            same = (a == r) | (nan_a & nan_r)  # equal infinities and matching NaNs are fine
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.where(same, 0.0, np.abs(a - r))
                diff = np.where(np.isnan(diff), np.inf, diff)
                allowed = rtol * np.abs(np.where(np.isfinite(r), r, 0.0))
                bad = diff > atol + allowed
                rel = np.where(r != 0, diff / np.abs(np.where(r != 0, r, 1.0)), np.where(diff > 0, np.inf, 0.0))
                excess = np.where(bad, diff - allowed, -np.inf)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            at = int(np.argmax(excess))
            if excess[at] > worst_excess:
                worst, worst_excess = start + at, float(excess[at])
        mismatched += n_bad
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float(rel.max()))
    check = OutputCheck(**base, max_abs_error=max_abs, max_rel_error=max_rel, mismatched=mismatched, passed=mismatched == 0)
    if worst >= 0 and ref.shape:
        check.worst_index = [int(i) for i in np.unravel_index(worst, ref.shape)]
    return check


def failed(name: str, ref: np.ndarray, atol: float, rtol: float, problem: str) -> OutputCheck:
    return OutputCheck(
        name,
        str(np.asarray(ref).dtype),
        list(np.shape(ref)),
        float("inf"),
        float("inf"),
        int(np.size(ref)),
        atol,
        rtol,
        False,
        problem,
    )


def degenerate(values: list[np.ndarray]) -> str | None:
    """Why an output seen over several trials (different inputs) proves nothing, or None.

    All NaN/Inf, one constant value, or the same array whatever the input: then the rewritten
    layers before it could compute anything and this output would still match. Read in chunks.
    """
    if not values:
        return None
    arrays = [np.asarray(v).reshape(-1) for v in values]
    first = arrays[0]
    if not first.size:
        return "empty"
    floaty = first.dtype.kind in "fc" or first.dtype.name == "bfloat16"
    any_finite, constant, same = not floaty, True, len(arrays) > 1
    value = first[0]
    for start in range(0, first.size, _CHUNK):
        parts = [a[start : start + _CHUNK] for a in arrays]
        if floaty and not any_finite:
            any_finite = any(bool(np.isfinite(p).any()) for p in parts)
        if constant:
            constant = all(
                bool((p == value).all()) or (floaty and bool(np.isnan(value)) and bool(np.isnan(p).all())) for p in parts
            )
        if same:
            same = all(p.shape == parts[0].shape and np.array_equal(p, parts[0], equal_nan=floaty) for p in parts[1:])
        if any_finite and not constant and not same:
            return None
    if floaty and not any_finite:
        return "all NaN/Inf"
    if constant and all(a.size == first.size for a in arrays):
        return f"constant ({value!r})"
    if same and all(a.size == first.size for a in arrays):
        return "the same for every input"
    return None
