"""Element-index proofs of rearrangements: chains of Reshape, Transpose, Squeeze and Unsqueeze.

Such a chain only moves the elements of its root. Both chains (the rewritten graph's and the original's)
are applied with numpy to the root's element indices, each symbolic size set to a prime of its own, and
compared: at two sets of sizes, so that a size written as a constant where the root's is symbolic cannot
pass. (The cleanup that writes these chains reasons with its own code; none of it is used here.)

A step is ``("layout", perm with None entries)`` | ``("transpose", perm)`` | ``("squeeze"/"unsqueeze", axes)``
| ``("reshape", target with None for "what is left", allowzero)``. A computed Reshape target's entries may be
symbols (inference's ``[N, S, 4, 16]`` of a head split that reads ``N`` and ``S`` from ``Shape``): each is the size
the root's dim of that name is set to, so that the target follows the root at both sets of sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.facts import Const, Fact, const_ints
from converter.verifier.certificate.nodes import Attributes

REARRANGE = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})
MAX_REARRANGEMENTS = 96  # original tensors looked at from one root
MAX_STEPS = 12
_CHECK_ELEMENTS = 1 << 24  # a root larger than this (with symbolic sizes set) is not followed (64 MB of int32 indices)
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)

Step = tuple[object, ...]
Shape = tuple[int | str | None, ...]


def rearrange_step(node: NodeProto, fact_of: Callable[[str], Fact], out_shape: Callable[[str], Shape | None]) -> Step | None:
    """What ``node`` does to the elements, from its attributes and constant inputs (a Reshape whose target
    is computed: the output shape inference found, a symbol it carried through from the graph's dims as that
    symbol, and one dim it cannot tell as "what is left")."""
    attrs = Attributes(node)
    if node.op_type == "Transpose":
        perm = attrs.get_ints("perm")
        return ("transpose", tuple(perm)) if perm is not None else None
    if node.op_type == "Reshape":
        if len(node.input) != 2:
            return None
        f = fact_of(node.input[1])
        allowzero = bool(attrs.get_int("allowzero", 0))
        if isinstance(f, Const):
            t = np.asarray(f.get())
            if t.dtype.kind not in "iu" or t.ndim != 1:
                return None
            return ("reshape", tuple(int(v) for v in t), allowzero)
        shape = out_shape(node.output[0])
        if shape is None:
            return None
        return ("reshape", tuple(d if isinstance(d, int) or _told(d) else None for d in shape), True)
    axes = attrs.get_ints("axes")
    if axes is None and len(node.input) > 1:
        axes = const_ints(fact_of(node.input[1]))
    return (node.op_type.lower(), tuple(axes)) if axes else None


def symbolic(name: str, shape: Sequence[int | str | None]) -> list[int | str]:
    """``name``'s dims with each one shape inference could not tell made a symbol of its own."""
    return [d if isinstance(d, int | str) and d != "" else f"?{name}:{i}" for i, d in enumerate(shape)]


def _told(d: object) -> bool:
    """A symbolic dim shape inference carried through (a name of the graph's, or a product of one), not one it
    made up (``unk__3``) or an empty one."""
    return isinstance(d, str) and bool(d) and not d.startswith("unk__")


def _sizes(dims: Sequence[int | str], first: int, symbols: dict[str, int]) -> list[int] | None:
    """``dims`` with each symbolic size set to a prime of its own, starting from ``_PRIMES[first]`` (``symbols``:
    each name's prime, filled in)."""
    out = []
    for d in dims:
        if isinstance(d, str):
            size = _symbol_size(d, first, symbols)
            if size is None:
                return None
            out.append(size)
        else:
            out.append(int(d))
    return out if math.prod(out) <= _CHECK_ELEMENTS else None


def _symbol_size(d: str, first: int, symbols: dict[str, int], new: bool = True) -> int | None:
    """The size of the symbolic dim ``d``: a product of whole numbers and names (torch.export's "24*s0") is that
    product of their sizes, the names it shares with other dims taking the same prime; a name not seen yet takes
    the next prime (``new``), or makes the size unknown (None)."""
    factors = [f.strip() for f in d.split("*")]
    if len(factors) < 2 or not all(f.isdigit() or f.isidentifier() for f in factors):
        factors = [d]
    size = 1
    for f in factors:
        if f.isdigit():
            size *= int(f)
            continue
        if f not in symbols:
            if not new or first + len(symbols) >= len(_PRIMES):
                return None
            symbols[f] = _PRIMES[first + len(symbols)]
        size *= symbols[f]
    return size


def elements(dims: Sequence[int | str], steps: Sequence[Step], first: int = 0) -> np.ndarray | None:
    """The root's flat element index at each position of the tensor ``steps`` make of it (symbolic sizes set
    by ``_sizes``), or None when a step does not apply."""
    symbols: dict[str, int] = {}
    sizes = _sizes(dims, first, symbols)
    if sizes is None:
        return None
    try:
        return _apply_steps(np.arange(math.prod(sizes), dtype=np.int32).reshape(sizes), steps, symbols)
    except (ValueError, TypeError, IndexError):
        return None


def same_elements(dims: Sequence[int | str], ours: Sequence[Step], theirs: Sequence[Step]) -> bool:
    """Whether both chains of steps pick the same root element at every position, at two sets of sizes
    (a size a chain wrote as a constant where the root's is symbolic holds at one of them at most)."""
    for first in (0, 1):
        a, b = elements(dims, ours, first), elements(dims, theirs, first)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            return False
    return True


def _axis_step(a: np.ndarray, axis: int) -> int:
    """How far, in root elements, one step along ``axis`` goes from the first element."""
    at = [0] * a.ndim
    at[axis] = 1
    return int(a[tuple(at)]) - int(a.flat[0])


def relate(ours: np.ndarray, theirs: np.ndarray | None) -> tuple[int | None, ...] | None:
    """The layout ``m`` with ``ours`` = ``theirs`` laid out by ``m`` (None entries: unit axes ``theirs`` lacks),
    read from the element each axis steps to (the caller checks every element); None when there is none.
    Unit axes hold no element order: ours go to theirs in order, the ones left over are added ones (None)."""
    if theirs is None or ours.size != theirs.size or ours.size < 2:
        return None
    units = [j for j, n in enumerate(theirs.shape) if n == 1]
    if sum(n == 1 for n in ours.shape) < len(units):
        return None  # theirs has a unit axis ours lacks: no layout says that
    axes = {(_axis_step(theirs, j), theirs.shape[j]): j for j in range(theirs.ndim) if theirs.shape[j] != 1}
    m: list[int | None] = []
    for i, n in enumerate(ours.shape):
        j = (units.pop(0) if units else None) if n == 1 else axes.pop((_axis_step(ours, i), n), -1)
        if j == -1:
            return None
        m.append(j)
    return tuple(m) if not axes else None


def _ints(args: object) -> tuple[int | None, ...]:
    if not isinstance(args, tuple):
        raise TypeError("a step's arguments are a tuple")
    return args


def _apply_steps(x: np.ndarray, steps: Sequence[Step], symbols: dict[str, int]) -> np.ndarray:
    for step in steps:
        kind, args = step[0], _ints(step[1])
        if kind in ("layout", "transpose"):
            x = x.transpose([p for p in args if p is not None])
            x = np.expand_dims(x, tuple(i for i, p in enumerate(args) if p is None))
        elif kind == "squeeze":
            x = np.squeeze(x, tuple(a for a in args if a is not None))
        elif kind == "unsqueeze":
            x = np.expand_dims(x, tuple(a for a in args if a is not None))
        else:
            target = [_target_dim(t, i, x.shape, bool(step[2]), symbols) for i, t in enumerate(args)]
            x = x.reshape(target)
    return x


def _target_dim(t: int | str | None, i: int, shape: tuple[int, ...], allowzero: bool, symbols: dict[str, int]) -> int:
    """One entry of a Reshape target as numpy takes it: None is what is left (-1), 0 copies the input's dim (not
    under ``allowzero``), a symbol is the size its name was set to (one the root's dims lack: what is left)."""
    if t is None:
        return -1
    if isinstance(t, str):
        size = _symbol_size(t, 0, symbols, new=False)
        return -1 if size is None else size
    return shape[i] if t == 0 and not allowzero else t
