"""Helpers the Transpose passes and handlers share: permutation algebra, axis remapping, node attributes.

Convention throughout: ``t = Transpose(a, perm)`` means axis ``i`` of ``t`` is axis ``perm[i]`` of ``a``
(``t.shape[i] == a.shape[perm[i]]``). An op working on axis ``k`` of ``t`` works on axis ``perm[k]`` of ``a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import AttributeProto, NodeProto

from converter.graph import new_node

DEFAULT_DOMAINS = ("", "ai.onnx")


def inverse(perm: Sequence[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def compose(first: Sequence[int], then: Sequence[int]) -> list[int]:
    """The single perm equal to Transpose(Transpose(x, first), then)."""
    return [first[i] for i in then]


def is_identity(perm: Sequence[int]) -> bool:
    return list(perm) == list(range(len(perm)))


def normalize_axis(axis: int, rank: int) -> int | None:
    """``axis`` in ``[0, rank)``, or None when it is out of range."""
    k = axis + rank if axis < 0 else axis
    return k if 0 <= k < rank else None


def normalize_axes(axes: Sequence[int], rank: int) -> list[int] | None:
    """Every axis in ``[0, rank)``, or None when one is out of range or repeated."""
    out = [normalize_axis(int(a), rank) for a in axes]
    if any(k is None for k in out) or len(set(out)) != len(out):
        return None
    return out  # type: ignore[return-value]


def squeezed_perm(perm: Sequence[int], removed: Sequence[int]) -> list[int]:
    """Where ``Op(Transpose(a, perm))`` drops the axes ``removed`` (of ``t``) and ``Op'(a)`` drops ``perm[removed]``:
    the perm ``q`` with ``Op(t) == Transpose(Op'(a), q)``."""
    gone = set(removed)
    kept_a = sorted(perm[i] for i in range(len(perm)) if i not in gone)
    position = {axis: j for j, axis in enumerate(kept_a)}
    return [position[perm[i]] for i in range(len(perm)) if i not in gone]


def unsqueezed_perm(perm: Sequence[int], axes: Sequence[int]) -> list[int]:
    """The perm ``q`` with ``Unsqueeze(Transpose(a, perm), axes) == Transpose(Unsqueeze(a, axes), q)``.

    ``axes`` are normalized against the output rank. The new unit axes stay where they are; the
    positions ``P`` left for the input's axes hold ``t``'s axis ``j`` on one side and ``a``'s axis
    ``j`` on the other, so ``q[P[j]] = P[perm[j]]``.
    """
    rank = len(perm) + len(axes)
    new = set(axes)
    kept = [i for i in range(rank) if i not in new]
    q = list(range(rank))
    for j, p in enumerate(perm):
        q[kept[j]] = kept[p]
    return q


def gathered_perm(perm: Sequence[int], axis: int, index_rank: int) -> list[int]:
    """The perm ``q`` with ``Gather(Transpose(a, perm), i, axis) == Transpose(Gather(a, i, perm[axis]), q)``.

    Gather replaces the data axis by the ``index_rank`` axes of the indices, in place.
    """
    pa = perm[axis]

    def position(a_axis: int) -> int:  # where a's axis lands in Gather(a, i, pa)
        return a_axis if a_axis < pa else a_axis + index_rank - 1

    before = [position(perm[i]) for i in range(axis)]
    after = [position(perm[i]) for i in range(axis + 1, len(perm))]
    return before + [pa + d for d in range(index_rank)] + after


def attribute(node: NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def set_attribute(node: NodeProto, name: str, value: object) -> None:
    """Set (or, for None, remove) one attribute, keeping the others in their order."""
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            if value is None:
                del node.attribute[i]
            elif isinstance(value, list) and all(type(v) is int for v in value):
                attr.ints[:] = value
            elif type(value) is int and attr.type == AttributeProto.INT:
                attr.i = value
            else:
                attr.CopyFrom(onnx.helper.make_attribute(name, value))
            return
    if value is not None:
        if isinstance(value, list) and all(type(v) is int for v in value):
            node.attribute.add(name=name, type=AttributeProto.INTS, ints=value)
        else:
            node.attribute.append(onnx.helper.make_attribute(name, value))


def make_transpose(inp: str, out: str, perm: Sequence[int], name: str) -> NodeProto:
    return new_node("Transpose", [inp], [out], name, perm=list(perm))
