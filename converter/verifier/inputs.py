"""Verification inputs: concrete values for symbolic dims that let layout bugs show, and seeded data per trial.

A Transpose that swaps H and W, or N and H, changes nothing when those dims are 1 or equal, so
verifying an exported model (dynamic N, H, W) at N=H=W=1 proves little about layout. Symbolic dims
therefore get distinct values > 1: batch 2; a rank-4 input's spatial dims a multiple of the
model's total stride (so a ConvNeXt's stride-32 stem and downsampling still leave distinct H and
W at the deepest stage), two different multiples, not equal to the channel count; other symbolic
dims distinct small numbers. ``candidates`` lists such assignments, best first, ending with all
ones; the verifier keeps the first the original model accepts whose rewritten layers see distinct
N, H, W and C (see verify.py), and reports which values were used and why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from converter.errors import InputError
from converter.providers import dtype_name
from converter.report import DimChoice
from converter.verifier import dims

# Spatial multiples of the total stride tried in turn: (H, W) = (a * stride, b * stride).
_SPATIAL = ((3, 4), (5, 7), (2, 3), (7, 9))
_OTHERS = (3, 5, 7, 6, 9, 11, 13)
BATCH = 2
_STRIDED = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})


@dataclass
class Declared:
    """A graph input that verification must feed."""

    name: str
    elem_type: int
    dims: list[int | str | None]  # int: fixed; str: a named symbol; None: an unnamed dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def declared_inputs(model: onnx.ModelProto) -> list[Declared]:
    """The graph inputs that need data (those backed by an initializer keep their default)."""
    with_default = {t.name for t in model.graph.initializer}
    found = []
    for vi in model.graph.input:
        if vi.name in with_default:
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            raise InputError(f"input {vi.name!r} is not a tensor; only tensor inputs can be verified")
        tt = vi.type.tensor_type
        try:
            helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"input {vi.name!r} has element type {tt.elem_type}, which has no array type to feed") from None
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            if which == "dim_value" and d.dim_value < 0:
                raise InputError(f"input {vi.name!r} declares a negative dim ({d.dim_value})")
            dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" and d.dim_param else None)
        found.append(Declared(vi.name, tt.elem_type, dims))
    return found


# Ops whose output rows are their first input's rows: attention's ``softmax(q k^T) v`` has the queries'
# resolution, whatever a strided convolution did to the keys and values (a pyramid transformer's spatial reduction).
_ROWS_OF_FIRST = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"})


def total_stride(model: onnx.ModelProto) -> int:
    """The largest product of spatial strides along any path from the inputs (1 without strided ops); a matrix
    product carries its first input's stride (its rows), not its second's."""
    stride: dict[str, int] = {vi.name: 1 for vi in model.graph.input}
    deepest = 1
    for node in model.graph.node:
        reads = node.input[:1] if node.op_type in _ROWS_OF_FIRST else node.input
        s = max((stride.get(n, 1) for n in reads if n), default=1)
        if node.op_type in _STRIDED:
            for a in node.attribute:
                if a.name == "strides" and a.ints:
                    s *= max(1, max(a.ints))
        s = min(s, 1 << 12)
        for out in node.output:
            stride[out] = s
        deepest = max(deepest, s)
    return deepest


def _roles(inputs: Sequence[Declared]) -> list[tuple[str, str]]:
    """(symbol, role) for each symbolic dim: role is batch, height, width or other."""
    roles: list[tuple[str, str]] = []
    for inp in inputs:
        dims = inp.dims
        spatial: tuple[int, int] | None = None
        if len(dims) == 4:
            if isinstance(dims[1], int) and not isinstance(dims[3], int):
                spatial = (2, 3)
            elif isinstance(dims[3], int) and not isinstance(dims[1], int):
                spatial = (1, 2)
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                continue
            key = d if d is not None else f"{inp.name}[{axis}]"
            if axis == 0 and len(dims) >= 2:
                role = "batch"
            elif spatial is not None and axis == spatial[0]:
                role = "height"
            elif spatial is not None and axis == spatial[1]:
                role = "width"
            else:
                role = "other"
            roles.append((key, role))
    return roles


def _key(inp: Declared, axis: int) -> str:
    d = inp.dims[axis]
    return d if isinstance(d, str) else f"{inp.name}[{axis}]"


def candidates(
    model: onnx.ModelProto, inputs: Sequence[Declared], fixed: Mapping[str, int]
) -> Iterator[tuple[dict[str, int], list[DimChoice]]]:
    """Assignments of the symbolic dims not in ``fixed``, best first; each with why each value was chosen."""
    roles = [(k, r) for k, r in _roles(inputs) if k not in fixed]
    seen_roles: dict[str, str] = {}
    for k, r in roles:
        seen_roles.setdefault(k, r)
    if not seen_roles:
        yield {}, []
        return
    derived = {k: e for k, e in dims.relations(model, list(seen_roles)).items() if k not in fixed}
    total = total_stride(model)
    fixed_dims = {d for inp in inputs for d in inp.dims if isinstance(d, int)} | set(fixed.values())
    tried: set[tuple[tuple[str, int], ...]] = set()
    stated = (derived, "as the graph relates them")
    # The total stride first; then, should the original refuse those, one of the other dims as the sum of two
    # others (a relation the graph holds in values rather than in shapes: a mask over past + new tokens); other
    # dims long enough for the stride too (a 1-D signal through strided convolutions); then smaller strides, in
    # case the estimate is more than the model needs and its inputs would not fit.
    plans: list[tuple[int, bool, tuple[dict[str, dims.Expr], str], tuple[tuple[int, int], ...]]] = [
        (total, False, stated, _SPATIAL)
    ]
    plans += [
        (total, False, (h, "tried as a sum, the original refusing unrelated values"), _SPATIAL[:1])
        for h in _sums(seen_roles, derived)
    ]
    plans += [(total, True, stated, _SPATIAL)] if total > 1 else []
    plans += [(s, False, stated, _SPATIAL) for s in _smaller(total)]
    for stride, long_others, (related, related_why), spatial in plans:
        for a, b in spatial:
            values: dict[str, int] = {}
            why: list[DimChoice] = []
            h, w = _distinct(a * stride, fixed_dims, stride), _distinct(b * stride, fixed_dims, stride)
            if h == w:
                w += stride
            spatial_why = (
                f"spatial: {a} and {b} times the model's total stride {stride}"
                if stride == total > 1
                else f"spatial: {a} and {b} times {stride}, a smaller stride than the model's estimated {total}"
                if stride > 1
                else "spatial: distinct, > 1"
            )
            used = set(fixed_dims) | {BATCH, h, w}
            pool = iter(v for v in _OTHERS if v not in used)
            for key, role in seen_roles.items():
                if role == "batch":
                    values[key], reason = BATCH, "batch: 2, so that a swapped batch axis shows"
                elif role == "height":
                    values[key], reason = h, spatial_why
                elif role == "width":
                    values[key], reason = w, spatial_why
                elif long_others:
                    values[key] = next(pool, 2) * stride
                    reason = f"distinct from every other dim, a multiple of the model's total stride {stride}"
                else:
                    values[key], reason = next(pool, 2), "distinct from every other dim"
                why.append(DimChoice(key, values[key], reason))
            for key, expr in related.items():  # what the graph relates to the others (a KV cache's total length)
                value = dims.value_of(expr, {**fixed, **values})
                if value is not None and value >= 1:
                    values[key] = value
                    why = [c for c in why if c.name != key] + [DimChoice(key, value, f"{dims.describe(expr)}, {related_why}")]
            sig = tuple(sorted(values.items()))
            if sig not in tried:
                tried.add(sig)
                yield values, why
    ones = {k: 1 for k in seen_roles}
    yield ones, [DimChoice(k, 1, "1: no larger value ran") for k in seen_roles]


def _sums(roles: Mapping[str, str], derived: Mapping[str, object]) -> list[dict[str, dims.Expr]]:
    """Each "other" symbol as the sum of two others (at most a few dozen such guesses)."""
    others = [k for k, r in roles.items() if r == "other" and k not in derived]
    guesses = []
    for x in others:
        rest = [k for k in others if k != x]
        for i, y in enumerate(rest):
            for z in rest[i + 1 :]:
                guesses.append({x: (tuple(sorted(((y, 1), (z, 1)))), 0)})
    return guesses[:24]


def _smaller(stride: int) -> list[int]:
    """Strides below ``stride`` to fall back on, largest first (halving, down to 1)."""
    found = []
    while stride > 1:
        stride //= 2
        found.append(max(stride, 1))
    return found


def _distinct(value: int, avoid: set[int], step: int) -> int:
    while value in avoid:
        value += step
    return value


def shapes_for(inputs: Sequence[Declared], symbols: Mapping[str, int], given: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for inp in inputs:
        if inp.name in given:
            shapes[inp.name] = list(given[inp.name])
            continue
        shapes[inp.name] = [d if isinstance(d, int) else symbols[_key(inp, axis)] for axis, d in enumerate(inp.dims)]
    return shapes


# The largest dim a tensor can have: ONNX and numpy both hold dims as int64.
MAX_DIM = 2**63 - 1


def fixed_symbols(inputs: Sequence[Declared], given: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Symbol values implied by the shapes the user gave (a dim name shared by several inputs gets one value).

    Raises:
        InputError: a shape does not fit its input's declaration, or gives a symbolic dim a value that is not
            a whole number from 1 to ``MAX_DIM`` (a 0 leaves the input empty: nothing would be verified, and
            the size check would see 0 bytes however large the other dims are).
    """
    by_name = {i.name: i for i in inputs}
    values: dict[str, int] = {}
    for name, shape in given.items():
        inp = by_name[name]
        if not fits(shape, inp.dims):
            raise InputError(f"shape {list(shape)} does not fit input {name!r} declared as {inp.dims}")
        for axis, (d, g) in enumerate(zip(inp.dims, shape, strict=True)):
            if not isinstance(d, int):
                problem = _dim_problem(g)
                if problem:
                    raise InputError(f"shape {list(shape)} for input {name!r}: dim {axis} {problem}")
        for axis, (d, g) in enumerate(zip(inp.dims, shape, strict=True)):
            if not isinstance(d, int):
                values.setdefault(_key(inp, axis), int(g))
    return values


def _dim_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return f"is {value!r}, not a whole number"
    if value == 0:
        return "is 0, which leaves the input empty (nothing would be verified); give at least 1"
    if value < 0:
        return f"is {value}; a dim is at least 1"
    if value > MAX_DIM:
        return f"is {value}, more than any tensor can have (at most {MAX_DIM})"
    return None


def fits(given: Sequence[int], dims: Sequence[int | str | None]) -> bool:
    return len(given) == len(dims) and all(not isinstance(d, int) or d == g for d, g in zip(dims, given, strict=True))


def elements(shape: Sequence[int]) -> int:
    """How many elements a tensor of ``shape`` holds, for budgets: in Python ints (numpy's int64 would wrap), and an
    empty dim (0) or a nonsense negative one counts as 1, so that ``[0, 10**20]`` cannot pass as nothing."""
    return math.prod(max(1, int(d)) for d in shape)


def nbytes(inputs: Sequence[Declared], shapes: Mapping[str, Sequence[int]]) -> int:
    """Bytes of the inputs at ``shapes`` (at least: see ``elements``); strings count 8 bytes each."""
    return sum(elements(shapes[i.name]) * (i.dtype.itemsize if i.dtype.kind not in "OUS" else 8) for i in inputs)


# Distributions by kind: trials alternate the sign of scalar booleans (so both branches of an If
# fed by one run), and the "positive" retry keeps Log, Sqrt and friends finite.
DISTRIBUTIONS = ("normal", "positive")


def make_feeds(
    inputs: Sequence[Declared], shapes: Mapping[str, Sequence[int]], seed: int, trial: int, distribution: str = "normal"
) -> dict[str, np.ndarray]:
    """Seeded data for one trial: the same (seed, trial, distribution) always gives the same arrays."""
    rng = np.random.default_rng([seed, trial, DISTRIBUTIONS.index(distribution)])
    return {i.name: random_array(rng, i.dtype, shapes[i.name], trial, distribution) for i in inputs}


def random_array(
    rng: np.random.Generator, dtype: np.dtype, shape: Sequence[int], trial: int = 0, distribution: str = "normal"
) -> np.ndarray:
    """Data that suits the dtype: normal (or positive) floats, small non-negative integers, booleans."""
    kind = np.dtype(dtype).kind
    if kind == "f" or np.dtype(dtype).name == "bfloat16":
        # Drawn in float32 unless float64 is asked for: a float64 draw of a big input would take twice its memory.
        draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
        if distribution == "positive":
            values = rng.random(shape, dtype=draw)
            values *= draw(1.75)
            values += draw(0.25)
            return values.astype(dtype, copy=False)
        return rng.standard_normal(shape, dtype=draw).astype(dtype, copy=False)
    if kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    if kind == "b":
        if not shape or math.prod(shape) == 1:
            return np.full(shape, trial % 2 == 0, dtype=bool)  # an If condition: both values over two trials
        return np.asarray(rng.random(shape) < 0.5)
    if kind in "OUS":
        return np.full(shape, "a", dtype=object)
    raise InputError(
        f"cannot generate random data of type {dtype_name(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))}; pass --inputs"
    )
