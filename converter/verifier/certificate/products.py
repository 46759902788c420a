"""Dims that are products of a symbol and a number: what a dynamic batch becomes through Reshapes.

A window partition on a dynamic batch ``N`` makes ``[N * windows, tokens, C]`` with a Reshape whose target is
``[-1, tokens, C]`` (or computed from ``Shape``); onnx's shape inference cannot write ``N * windows`` and leaves
the dim unknown, so a proof that reads the windows back out of that dim (the cleanup's folded chains do) has
no sizes to follow.

So inference runs twice more with every symbolic dim of the graph's inputs set to a prime, a different
one each time (large primes, then small ones for what is still untold: see ``_SMALL_PRIMES``): a dim that
comes out ``k * p`` both times (the same ``k``) is ``k`` times that symbol, written ``"k*N"`` (elements.py
reads it as that product; torch.export writes such dims the same way). Anything else stays unknown:
``ceil(N / 2)``, and a dim that comes out the same number both times (``min(N, 7)`` does at large N). Two
sizes that agree with a product at two primes are taken for it, which is what a graph that only reshapes,
slices by constants and concatenates gives.

Only what the graph itself computes: the exporter's declared shapes are not read (a declaration could lie).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

Shape = tuple[int | str | None, ...]
# Two primes per symbol (a constant dim is the same in both runs: it never passes for a product). Not larger:
# onnx's data propagation takes time in proportion to some sizes (0.1 s at N = 1009, 9 s at 100,003). The small
# ones run for what the large ones leave untold: a model clamps a symbol where it indexes a table of its own
# (positions sliced from a buffer of 64: at S = 1019 the slice is 64 long and its sum with the tokens broadcasts
# nowhere); they stay below such bounds and above the small thresholds a model may compare a size with.
_PRIMES = ((1009, 1013), (1019, 1021), (1031, 1033), (1039, 1049), (1051, 1061))
_SMALL_PRIMES = ((17, 19), (23, 29), (31, 37), (41, 43), (47, 53))


def _told(d: int | str | None) -> bool:
    """A dim inference told: a number, or a symbol it did not make up."""
    return isinstance(d, int) or (isinstance(d, str) and bool(d) and not d.startswith("unk__"))


def products(
    light: onnx.ModelProto, shapes: Mapping[str, Shape | None], infer: Callable[[onnx.ModelProto], dict[str, Shape | None] | None]
) -> dict[str, Shape]:
    """The shapes in ``shapes`` with a dim inference did not tell that the two substitutions tell, those dims filled
    in (``light``: the model shape inference ran on, not changed; ``infer``: how it runs)."""
    symbols: list[str] = []
    for vi in light.graph.input:
        tt = vi.type.tensor_type
        for d in tt.shape.dim if tt.HasField("shape") else ():
            if d.dim_param and not d.dim_param.startswith("unk__") and d.dim_param not in symbols:
                symbols.append(d.dim_param)
    if not symbols or len(symbols) > len(_PRIMES):
        return {}
    out: dict[str, Shape] = {}
    for primes in (_PRIMES, _SMALL_PRIMES):
        untold = {n: out.get(n, s) for n, s in shapes.items() if s is not None and not all(_told(d) for d in out.get(n, s))}
        if not untold:
            break
        runs = []
        for which in (0, 1):
            fixed = onnx.ModelProto()
            fixed.CopyFrom(light)
            for vi in fixed.graph.input:
                tt = vi.type.tensor_type
                for d in tt.shape.dim if tt.HasField("shape") else ():
                    if d.dim_param in symbols:
                        d.dim_value = primes[symbols.index(d.dim_param)][which]
            found = infer(fixed)
            if found is None:
                return out
            runs.append(found)
        for name, shape in untold.items():
            a, b = runs[0].get(name), runs[1].get(name)
            if a is None or b is None or len(a) != len(shape) or len(b) != len(shape):
                continue
            made = tuple(d if _told(d) else _product(x, y, symbols, primes) for d, x, y in zip(shape, a, b, strict=True))
            if made != shape:
                out[name] = made
    return out


def _product(a: int | str | None, b: int | str | None, symbols: list[str], primes: tuple[tuple[int, int], ...]) -> int | str | None:
    """The dim that is ``a`` under the first ``primes`` and ``b`` under the second, when it is a number times one
    symbol; None otherwise. The same number both times is no proof of a constant (``min(N, 7)``): it stays unknown."""
    if not isinstance(a, int) or not isinstance(b, int) or a <= 0 or b <= 0 or a == b:
        return None
    for i, symbol in enumerate(symbols):
        p, q = primes[i]
        if a % p == 0 and b % q == 0 and a // p == b // q:
            k = a // p
            return symbol if k == 1 else f"{k}*{symbol}"
    return None


def reshape_rests(graph: onnx.GraphProto, shapes: Mapping[str, Shape | None]) -> dict[str, Shape]:
    """The one dim inference did not tell of a Reshape's output, where every dim of its input and the others of its
    output are told: the input's element count over theirs, when that is a number times symbols (a head split's
    ``[N, S, -1, 16]`` of an ``[N, S, 64]``: 4, which inference cannot divide out with ``N`` and ``S`` unknown).
    A Reshape keeps the element count, so that is the dim; the sizes found are given back by output name."""
    out: dict[str, Shape] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or len(node.output) != 1:
            continue
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if x is None or y is None:
            continue
        untold = [i for i, d in enumerate(y) if not _told(d)]
        if len(untold) != 1:
            continue
        total = _monomial_of(x)
        known = _monomial_of([d for i, d in enumerate(y) if i != untold[0]])
        if total is None or known is None or known[0] == 0:
            continue
        rest = _divide(total, known)
        if rest is not None:
            out[node.output[0]] = tuple(_written(rest) if i == untold[0] else d for i, d in enumerate(y))
    return out


Monomial = tuple[int, tuple[str, ...]]  # a number times symbols (sorted, repeated as often as they divide)


def _monomial_of(dims: Shape | list[int | str | None]) -> Monomial | None:
    """The product of ``dims`` (each a number, a symbol or ``"k*N"``), or None when one is not told."""
    k, names = 1, []
    for d in dims:
        if isinstance(d, int):
            k *= d
            continue
        if not _told(d):
            return None
        factors = [f.strip() for f in str(d).split("*")]
        if len(factors) < 2 or not all(f.isdigit() or f.isidentifier() for f in factors):
            factors = [str(d)]
        for f in factors:
            if f.isdigit():
                k *= int(f)
            else:
                names.append(f)
    return k, tuple(sorted(names))


def _divide(a: Monomial, b: Monomial) -> Monomial | None:
    """``a / b`` when it is a number times symbols."""
    left = list(a[1])
    for name in b[1]:
        if name not in left:
            return None
        left.remove(name)
    if a[0] % b[0]:
        return None
    return a[0] // b[0], tuple(left)


def _written(m: Monomial) -> int | str:
    """A monomial as a dim: a number, or ``"k*N*S"`` (the number left out when it is 1)."""
    if not m[1]:
        return m[0]
    return "*".join([*([str(m[0])] if m[0] != 1 else []), *m[1]])
