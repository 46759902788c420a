"""Where each element of a tensor comes from, after Reshapes, Transposes, Squeezes and Unsqueezes.

The cleanup folds chains of those ops (``cleanup/fold_rearranges.py``) and the certificate proves the
result (``certify.py``); both describe a tensor made from a root tensor by such ops as a :data:`View`:
one tuple of :data:`Piece` per axis. A piece ``(a, stride, size)`` is ``size`` indices of the root's
axis ``a``, ``stride`` apart; an axis made of several pieces runs over them like a number in mixed radix
(the last piece fastest). A unit axis has no piece. After :func:`normal` (pieces of size 1 dropped,
neighbours that continue each other merged) two views are equal exactly when they pick the same
root element at every index, so comparing views compares tensors.

Sizes may be symbolic (a dim_param, or a dim nothing knows): a symbolic part is never cut, so a piece with
one is only split where its known part is the inner one (``[24*N] -> [N, 4, 6]``, a dim exporters write as
a product, see :func:`size_of`), and is otherwise kept whole. Merging whole axes (``[B, H, S, D] ->
[B*H, S, D]``) keeps each symbolic axis a piece of its own.

No onnx here: callers read the dims and the Reshape targets. Written here because no library we use
reasons about reshapes symbolically (onnx's shape inference gives shapes, not element mappings).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

# A size: known (an int) or a product of symbols times an int, kept as (int, sorted symbols).
Size = tuple[int, tuple[str, ...]]
Dim = int | str  # what callers give: an int, or a symbol naming an unknown size
Piece = tuple[int, int, Size]
View = tuple[tuple[Piece, ...], ...]

ONE: Size = (1, ())


def size_of(d: Dim) -> Size:
    """A dim as a size. A symbol written as a product of whole numbers and names (torch.export's ``24*s0``, the
    batch times the windows of a window partition) is that product, so that a Reshape may split the named part
    from the known one; any other symbol is a name of its own."""
    if isinstance(d, int):
        return (d, ())
    factors = [f.strip() for f in d.split("*")]
    if len(factors) < 2 or not all(f.isdigit() or f.isidentifier() for f in factors):
        return (1, (d,))
    known = math.prod(int(f) for f in factors if f.isdigit())
    return (known, tuple(sorted(f for f in factors if not f.isdigit())))


def times(a: Size, b: Size) -> Size:
    return (a[0] * b[0], tuple(sorted(a[1] + b[1])))


def divide(a: Size, b: Size) -> Size | None:
    """``a / b`` when it is a size (b's symbols among a's, the known part dividing), else None."""
    left = Counter(a[1])
    left.subtract(b[1])
    if any(v < 0 for v in left.values()) or b[0] == 0 or a[0] % b[0]:
        return None
    return (a[0] // b[0], tuple(sorted(left.elements())))


def identity(dims: Sequence[Dim]) -> View:
    """The root itself."""
    return normal(tuple(((a, 1, size_of(d)),) for a, d in enumerate(dims)))


def axis_size(axis: Sequence[Piece]) -> Size:
    out = ONE
    for p in axis:
        out = times(out, p[2])
    return out


def dims_of(view: View) -> list[Size]:
    return [axis_size(axis) for axis in view]


def normal(view: View) -> View:
    """Pieces of size 1 dropped; a piece followed by one of the same root axis that continues it merged."""
    out = []
    for axis in view:
        merged: list[Piece] = []
        for a, stride, size in axis:
            if size == ONE:
                continue
            if merged:
                pa, pstride, psize = merged[-1]
                if pa == a and not psize[1] and not size[1] and pstride == stride * size[0]:
                    merged[-1] = (a, stride, times(psize, size))
                    continue
            merged.append((a, stride, size))
        out.append(tuple(merged))
    return tuple(out)


def transpose(view: View, perm: Sequence[int]) -> View | None:
    if sorted(perm) != list(range(len(view))):
        return None
    return tuple(view[p] for p in perm)


def unsqueeze(view: View, axes: Sequence[int]) -> View | None:
    rank = len(view) + len(axes)
    new = {a + rank if a < 0 else a for a in axes}
    if len(new) != len(axes) or any(not 0 <= a < rank for a in new):
        return None
    rest = iter(view)
    return tuple(() if i in new else next(rest) for i in range(rank))


def squeeze(view: View, axes: Sequence[int]) -> View | None:
    gone = {a + len(view) if a < 0 else a for a in axes}
    if len(gone) != len(axes) or any(not 0 <= a < len(view) or view[a] for a in gone):
        return None  # only unit axes go
    return tuple(axis for i, axis in enumerate(view) if i not in gone)


def target_sizes(view: View, target: Sequence[int | None], allowzero: bool = False) -> list[Size] | None:
    """A Reshape's target read as onnx does (0 copies the input's dim, -1 is what is left); None entries
    (dims shape inference could not tell) count as -1. None when it does not resolve."""
    dims = dims_of(view)
    sizes: list[Size | None] = []
    for i, t in enumerate(target):
        if t is None or t == -1:
            sizes.append(None)
        elif t == 0 and not allowzero:
            if i >= len(dims):
                return None
            sizes.append(dims[i])
        elif t > 0:
            sizes.append((int(t), ()))
        else:
            return None
    return resolve(view, sizes)


def resolve(view: View, sizes: Sequence[Size | None]) -> list[Size] | None:
    """The sizes of a Reshape of ``view``, with the one None among them (a size not told) what the others leave;
    None when more than one is not told or the rest does not divide."""
    out = list(sizes)
    if out.count(None) > 1:
        return None
    if None in out:
        known = ONE
        for s in out:
            if s is not None:
                known = times(known, s)
        total = ONE
        for d in dims_of(view):
            total = times(total, d)
        rest = divide(total, known)
        if rest is None:
            return None
        out[out.index(None)] = rest
    return out  # type: ignore[return-value]


def reshape(view: View, sizes: Sequence[Size]) -> View | None:
    """The view after a Reshape to ``sizes`` (resolved, see :func:`target_sizes`); None when a size cuts a
    symbolic piece or the sizes do not add up."""
    pieces = [p for axis in view for p in axis]
    out: list[tuple[Piece, ...]] = []
    i = 0
    for want in sizes:
        axis: list[Piece] = []
        need = want
        while need != ONE:
            if i >= len(pieces):
                return None
            a, stride, size = pieces[i]
            rest = divide(need, size)
            if rest is not None:  # the whole piece fits
                axis.append(pieces[i])
                need = rest
                i += 1
                continue
            # Split a piece: its outer part is what the axis still needs, its inner part must be known (a stride is
            # a whole number): ``[24*N] -> [N, 4, 6]`` splits N from 24, not 4 from 6*N.
            inner = divide(size, need)
            if inner is None or inner[1]:
                return None
            axis.append((a, stride * inner[0], need))
            pieces[i] = (a, stride, inner)
            need = ONE
        out.append(tuple(axis))
    if i != len(pieces):
        return None
    return normal(tuple(out))


def relate(view: View, other: View) -> tuple[int | None, ...] | None:
    """``view``'s axes as ``other``'s: entry i is the axis of ``other`` that is ``view``'s axis i, None for a
    unit axis ``other`` lacks. None when ``view`` is no Transpose (with unit axes added) of ``other``, or
    ``other`` has a unit axis (a tensor with unit axes is described through the one without them)."""
    if any(not axis for axis in other):
        return None
    where = {axis: j for j, axis in enumerate(other)}
    if len(where) != len(other):
        return None
    out: list[int | None] = []
    for axis in view:
        if not axis:
            out.append(None)
        elif axis in where:
            out.append(where.pop(axis))
        else:
            return None
    return tuple(out) if not where else None
