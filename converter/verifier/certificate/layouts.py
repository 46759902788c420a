"""Layouts and their algebra, written out here on purpose (the certificate shares no code with the rules).

A layout says how a tensor shows the axes of an original tensor, its *root*: entry ``i`` is the root's axis
that axis ``i`` shows, or None for an added unit axis (``Unsqueeze``). ``(0, 2, None, 1)`` shows a
``[B, S, C]`` root as ``[B, C, 1, S]``; the layout None is the root itself. Every function here keeps
the identity as None (:func:`plain`), so two descriptions of one tensor compare equal.

- ``compose(first, then)``: ``Transpose(Transpose(x, first), then)``: ``q[i] = first[then[i]]``;
- ``relative(o, r)``: the ``P`` with ``compose(o, P) == r`` (what ``r`` is, seen from ``o``);
- ``unsqueezed`` / ``squeezed``: after ``Unsqueeze(axes)``, or ``Squeeze(axes)`` of added unit axes only;
- ``dropped(perm, removed)``: what is left when some shown axes disappear (a reduction without keepdims).
"""

from __future__ import annotations

Layout = tuple[int | None, ...] | None

NCHW = (0, 3, 1, 2)  # Transpose(x_nhwc, NCHW) is x in NCHW
TOKENS = (0, 2, None, 1)  # a token sequence [B, S, C] as the Conv reads it: [B, C, 1, S]


def plain(perm: tuple[int | None, ...]) -> Layout:
    """``perm``, or None when it is the identity."""
    return None if perm == tuple(range(len(perm))) else perm


def compose(first: Layout, then: Layout) -> Layout:
    """The layout of Transpose(Transpose(x, first), then), None when that is the identity. A None entry
    of ``then`` adds a unit axis; its other entries must be a permutation of ``first``'s axes."""
    if then is None:
        return first
    if first is None:
        combined = tuple(then)
    else:
        if sorted(i for i in then if i is not None) != list(range(len(first))):
            raise ValueError("rank mismatch")
        combined = tuple(None if i is None else first[i] for i in then)
    return plain(combined)


def relative(o: Layout, r: Layout) -> Layout:
    """The layout P with ``compose(o, P) == r``: what a tensor laid out as ``r`` is, seen from one laid out
    as ``o`` (of the same root). ValueError when ``r`` lacks a unit axis of ``o``'s or an axis of the root."""
    if o is None:
        return r
    units = [j for j, a in enumerate(o) if a is None]
    where = {a: j for j, a in enumerate(o) if a is not None}
    rel: list[int | None] = []
    for a in r if r is not None else range(len(where)):
        if a is None:
            rel.append(units.pop(0) if units else None)
        elif a in where:
            rel.append(where[a])
        else:
            raise ValueError("rank mismatch")
    if sorted(a for a in rel if a is not None) != list(range(len(o))):
        raise ValueError("rank mismatch")
    return plain(tuple(rel))


def lifted(perm: Layout) -> bool:
    """Whether ``perm`` adds unit axes the root does not have."""
    return perm is not None and None in perm


def norm_axis(axis: int, rank: int) -> int | None:
    """``axis`` in ``[0, rank)`` (a negative one counts from the end), or None when out of range."""
    a = axis + rank if axis < 0 else axis
    return a if 0 <= a < rank else None


def unsqueezed(perm: Layout, rank: int | None, axes: list[int]) -> Layout:
    """The layout after Unsqueeze(axes) of a tensor laid out as ``perm`` (``rank``: its rank when ``perm`` is None)."""
    r = len(perm) if perm is not None else rank
    if r is None:
        raise ValueError("unknown rank")
    out_rank = r + len(axes)
    new = {norm_axis(a, out_rank) for a in axes}
    if None in new or len(new) != len(axes):
        raise ValueError("bad axes")
    kept = iter(perm if perm is not None else range(r))
    return plain(tuple(None if i in new else next(kept) for i in range(out_rank)))


def squeezed(perm: Layout, axes: list[int]) -> Layout:
    """The layout after Squeeze(axes) when every squeezed axis is an added unit axis; ValueError otherwise."""
    if perm is None:
        raise ValueError("squeezes an axis of the root")
    gone: set[int] = set()
    for a in axes:
        n = norm_axis(a, len(perm))
        if n is None or perm[n] is not None:
            raise ValueError("squeezes an axis of the root")
        gone.add(n)
    if not axes or len(gone) != len(axes):
        raise ValueError("squeezes an axis of the root")
    return plain(tuple(p for i, p in enumerate(perm) if i not in gone))


def dropped(perm: tuple[int | None, ...], removed: set[int]) -> Layout:
    """The layout that is left when the shown axes ``removed`` (root axes perm[a]) disappear."""
    kept = [perm[a] for a in range(len(perm)) if a not in removed]
    renumbered = {p: i for i, p in enumerate(sorted(p for p in kept if p is not None))}
    return plain(tuple(None if p is None else renumbered[p] for p in kept)) if kept else None
