"""Proving a rewrite: run the original and the rewritten model in onnxruntime and compare every output.

What is compared, exactly:
- both models run with onnxruntime's graph optimizations off, so each graph runs as written;
- the same inputs go to both: the user's (``inputs``) or seeded random ones built from the
  original's declared input types; symbolic dims take values from ``input_shapes`` or 1, and the
  report lists every such assumption;
- the interfaces must be identical (input and output names, order, dtypes and shapes);
- an element fails when ``|rewritten - original| > atol + rtol * |original|`` (numpy's allclose
  rule), NaNs must sit in the same places, and non-float outputs must be equal exactly;
- the default atol is scaled by the output's magnitude, ``atol * max(1, rms(original))``: a
  dot product's rounding error grows with its terms, so a wide layer (C = 768, outputs around 14)
  legitimately differs by ~3e-5 on outputs near zero. An atol the user gives is used as is.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import ConverterError, InputError
from .graph import weight_bytes
from .report import InputSpec, OutputCheck, VerifyReport
from .runtime import dtype_name, make_session, resolve_providers, run
from .save import EXTERNAL_DATA_ABOVE, save

# (atol, rtol) by output dtype. fp32 differences between MatMul and a 1x1 Conv come from the
# summation order only; fp16 keeps about 3 significant digits.
DEFAULT_TOLERANCES: dict[int, tuple[float, float]] = {
    TensorProto.FLOAT: (1e-5, 1e-4),
    TensorProto.DOUBLE: (1e-10, 1e-8),
    TensorProto.FLOAT16: (1e-2, 1e-2),
    TensorProto.BFLOAT16: (5e-2, 2e-2),
}


def default_tolerances(elem_type: int) -> tuple[float, float]:
    """Float outputs get the table above; everything else must match exactly."""
    return DEFAULT_TOLERANCES.get(elem_type, (0.0, 0.0))


def verify(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    *,
    providers: str | Sequence[str] = "cpu",
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Compare the two models' outputs on the same inputs. ``report.passed`` is the verdict.

    Raises InputError when the inputs or shapes given do not fit the model, or when onnxruntime
    cannot run the original model at all; ProviderUnavailable when the providers cannot run here.
    """
    started = time.perf_counter()
    step = on_step or (lambda _msg: None)
    chosen = resolve_providers(providers)
    report = VerifyReport(providers=list(chosen), seed=seed)
    report.interface_problems = interface_differences(original, rewritten)

    feeds = build_inputs(original, inputs or {}, input_shapes or {}, seed, report)
    step("running the original model")
    expected = _run(original, feeds, chosen, "original")
    step("running the rewritten model")
    return _check_rewritten(original, rewritten, feeds, chosen, expected, atol, rtol, report, started)


def verify_reference(
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    name: str,
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    *,
    providers: str | Sequence[str] = "cpu",
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Compare the rewritten model with another implementation of the original (e.g. TensorFlow).

    ``reference`` takes the feeds (keyed by the ONNX input names) and returns outputs keyed by the
    ONNX output names; inputs are built from ``original`` exactly as in verify().
    """
    started = time.perf_counter()
    chosen = resolve_providers(providers)
    report = VerifyReport(providers=[name], seed=seed)
    feeds = build_inputs(original, inputs or {}, input_shapes or {}, seed, report)
    outputs = reference(feeds)
    missing = [o.name for o in original.graph.output if o.name not in outputs]
    if missing:
        report.interface_problems.append(f"{name} gave no output named {', '.join(missing)}")
        return report
    expected = [outputs[o.name] for o in original.graph.output]
    return _check_rewritten(original, rewritten, feeds, chosen, expected, atol, rtol, report, started)


def _check_rewritten(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    providers: Sequence[str],
    expected: list[np.ndarray],
    atol: float | None,
    rtol: float | None,
    report: VerifyReport,
    started: float,
) -> VerifyReport:
    """Run the rewritten model on ``feeds`` and compare with ``expected``; a model that fails to run fails every output."""
    try:
        actual, failure = _run(rewritten, feeds, providers, "rewritten"), ""
    except InputError as e:
        actual, failure = None, str(e)
    _compare_outputs(original, expected, actual, failure, atol, rtol, report)
    report.seconds = time.perf_counter() - started
    return report


def _compare_outputs(
    original: onnx.ModelProto,
    expected: list[np.ndarray],
    actual: list[np.ndarray] | None,
    failure: str,
    atol: float | None,
    rtol: float | None,
    report: VerifyReport,
) -> None:
    for i, out in enumerate(original.graph.output):
        ref = np.asarray(expected[i])
        a_tol, r_tol = default_tolerances(out.type.tensor_type.elem_type)
        a_tol = a_tol * _scale(ref) if atol is None else atol
        r_tol = r_tol if rtol is None else rtol
        if actual is None:
            report.outputs.append(_failed(out.name, ref, a_tol, r_tol, failure))
        elif i >= len(actual):
            report.outputs.append(_failed(out.name, ref, a_tol, r_tol, "missing from the rewritten model"))
        else:
            report.outputs.append(compare(out.name, actual[i], ref, a_tol, r_tol))


def _scale(ref: np.ndarray) -> float:
    r = np.asarray(ref)
    if r.dtype.kind != "f" or not r.size:
        return 1.0
    finite = r[np.isfinite(r)].astype(np.float64)
    return max(1.0, float(np.sqrt(np.mean(finite**2)))) if finite.size else 1.0


def interface_differences(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> list[str]:
    problems = []
    for kind in ("input", "output"):
        a = [vi.SerializeToString(deterministic=True) for vi in getattr(original.graph, kind)]
        b = [vi.SerializeToString(deterministic=True) for vi in getattr(rewritten.graph, kind)]
        if a != b:
            problems.append(f"graph {kind}s differ (names, order, dtypes or shapes)")
    return problems


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers: Sequence[str], which: str) -> list[np.ndarray]:
    try:
        if weight_bytes(model) < EXTERNAL_DATA_ABOVE:
            return run(make_session(model.SerializeToString(), providers), feeds)
        # Past protobuf's limit a model cannot be handed over as bytes: onnxruntime reads it from disk.
        with tempfile.TemporaryDirectory(prefix="converter-verify-") as folder:
            path = Path(folder) / f"{which}.onnx"
            save(model, path, external_data=True)
            return run(make_session(str(path), providers), feeds)
    except ConverterError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many unrelated types
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise InputError(f"onnxruntime cannot run the {which} model: {first}") from e


def _declared(vi: onnx.ValueInfoProto) -> tuple[int, list[int | str | None]]:
    tt = vi.type.tensor_type
    if vi.type.WhichOneof("value") != "tensor_type":
        raise InputError(f"input {vi.name!r} is not a tensor; only tensor inputs can be verified")
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
    return tt.elem_type, dims


def _fits(given: Sequence[int], dims: list[int | str | None]) -> bool:
    return len(given) == len(dims) and all(not isinstance(d, int) or d == g for d, g in zip(dims, given, strict=True))


def build_inputs(
    model: onnx.ModelProto,
    given: Mapping[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]],
    seed: int,
    report: VerifyReport,
) -> dict[str, np.ndarray]:
    """Feeds for every graph input that has no initializer, and checks on what the user gave."""
    with_default = {t.name for t in model.graph.initializer}
    declared = {vi.name: vi for vi in model.graph.input}
    for name in [*given, *shapes]:
        if name not in declared:
            raise InputError(f"the model has no input named {name!r}; inputs: {', '.join(declared)}")
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    # Values for symbolic dims come from the shapes the user gave, so related inputs agree.
    for name, shape in [*shapes.items(), *((n, a.shape) for n, a in given.items())]:
        _, dims = _declared(declared[name])
        if not _fits(shape, dims):
            raise InputError(f"shape {list(shape)} does not fit input {name!r} declared as {dims}")
        for d, g in zip(dims, shape, strict=True):
            if isinstance(d, str) and d:
                symbols.setdefault(d, int(g))

    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        elem_type, dims = _declared(vi)
        np_dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        if vi.name in given:
            array = np.asarray(given[vi.name])
            if array.dtype != np_dtype:
                raise InputError(f"input {vi.name!r} must be {dtype_name(elem_type)}, the file has {array.dtype}")
            feeds[vi.name] = array
            report.inputs.append(InputSpec(vi.name, dtype_name(elem_type), list(array.shape), "file"))
            continue
        if vi.name in with_default:
            report.inputs.append(InputSpec(vi.name, dtype_name(elem_type), [], "initializer default"))
            continue
        shape = list(shapes[vi.name]) if vi.name in shapes else [_dim(d, i, vi.name, symbols, report) for i, d in enumerate(dims)]
        feeds[vi.name] = random_array(rng, np_dtype, shape)
        report.inputs.append(InputSpec(vi.name, dtype_name(elem_type), shape, "random"))
    return feeds


def _dim(d: int | str | None, axis: int, name: str, symbols: dict[str, int], report: VerifyReport) -> int:
    if isinstance(d, int):
        return d
    if d and d in symbols:
        return symbols[d]
    label = f"dim {d!r}" if d else f"unnamed dim {axis}"
    report.assumptions.append(f"{label} of input {name!r} set to 1 (give --input-shape to choose)")
    if d:
        symbols[d] = 1
    return 1


def random_array(rng: np.random.Generator, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """Seeded data that suits the dtype: normal floats, small non-negative integers, fair booleans."""
    kind = np.dtype(dtype).kind
    if kind == "f" or np.dtype(dtype).name == "bfloat16":
        return rng.standard_normal(shape).astype(dtype)
    if kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    if kind == "b":
        return np.asarray(rng.random(shape) < 0.5)  # a comparison of 0-d arrays gives a numpy scalar, not an array
    if kind in "OUS":
        return np.full(shape, "a", dtype=object)
    raise InputError(f"cannot generate random data of type {dtype}; pass --inputs")


def compare(name: str, actual: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    actual, ref = np.asarray(actual), np.asarray(ref)
    base = {"name": name, "dtype": str(ref.dtype), "shape": list(ref.shape), "atol": atol, "rtol": rtol}
    if actual.shape != ref.shape or actual.dtype != ref.dtype:
        problem = f"rewritten gives {actual.dtype}{list(actual.shape)}, original {ref.dtype}{list(ref.shape)}"
        return OutputCheck(
            **base, max_abs_error=float("inf"), max_rel_error=float("inf"), mismatched=int(ref.size), passed=False, problem=problem
        )
    if ref.dtype.kind not in "fc" and ref.dtype.name != "bfloat16":
        equal = actual == ref
        diff = np.abs(actual.astype(np.float64) - ref.astype(np.float64)) if ref.dtype.kind in "iub" else (~equal).astype(float)
        mismatched = int(np.count_nonzero(~equal))
        max_abs = float(diff.max()) if diff.size else 0.0
        return OutputCheck(
            **base,
            max_abs_error=max_abs,
            max_rel_error=0.0 if not mismatched else float("inf"),
            mismatched=mismatched,
            passed=mismatched == 0,
        )
    a, r = actual.astype(np.float64), ref.astype(np.float64)
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    same = (a == r) | (nan_a & nan_r)  # equal infinities and matching NaNs are fine
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(a - r))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = diff > atol + rtol * np.abs(np.where(np.isfinite(r), r, 0.0))
        rel = np.where(r != 0, diff / np.abs(np.where(r != 0, r, 1.0)), np.where(diff > 0, np.inf, 0.0))
    mismatched = int(np.count_nonzero(bad))
    return OutputCheck(
        **base,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        max_rel_error=float(rel.max()) if rel.size else 0.0,
        mismatched=mismatched,
        passed=mismatched == 0,
    )


def _failed(name: str, ref: np.ndarray, atol: float, rtol: float, problem: str) -> OutputCheck:
    return OutputCheck(
        name, str(ref.dtype), list(np.shape(ref)), float("inf"), float("inf"), int(np.size(ref)), atol, rtol, False, problem
    )
