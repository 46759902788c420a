"""What the certificate knows of a tensor of the rewritten graph: a *fact*, saying what it equals in the original.

- ``SameAs(root, layout)``: it equals ``Transpose(root, layout)`` of the original tensor ``root`` (layout None:
  ``root`` itself; a None entry: an added unit axis, see :mod:`.layouts`). Original tensors are put in a
  canonical form first (:mod:`.original`), so one tensor has one description.
- ``Const``: a constant, compared bit for bit wherever it is used (its value read only when needed).
- ``Unknown(reason)``: what the walk could not follow, and where.

Some roots are no tensor of the original but a name the certificate makes, with a NUL in it (no graph name
holds one): a tensor with its trailing axes merged (:data:`MERGED`), a quantized sandwich's flat tensor seen
in 4D (:data:`FLAT`), a rearrangement no original tensor is yet (:data:`VIEW`), a tensor's shape vector
(:data:`SHAPE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from converter.verifier.certificate.layouts import Layout, lifted


@dataclass(frozen=True)
class SameAs:
    root: str
    layout: Layout = None


@dataclass(frozen=True)
class Const:
    key: tuple[int, str]  # (id of the owning graph's index, name): identifies the tensor
    get: Callable[[], np.ndarray] = field(compare=False, hash=False)


@dataclass(frozen=True)
class Unknown:
    reason: str


Fact = SameAs | Const | Unknown
EMPTY = SameAs("")  # an optional input left out

MERGED = "\0merged:"  # a tensor with every axis after the first two merged into one (Reshape [0, 0, c])
FLAT = "\0flat:"  # an original flat [N*H*W, C] tensor inside a quantized sandwich, seen as [N, H, W, C]
VIEW = "\0view:"  # a rearrangement of an original tensor that no original tensor is (yet)
SHAPE = "\0shape:"  # the shape vector of a tensor, read in a layout: only a Gather of it is followed


def merged(x: SameAs) -> str:
    """The root naming ``x`` (an original tensor under a layout) with every axis after the first two merged
    into one."""
    return f"{MERGED}{x.root}:{x.layout}"


def describe(f: Fact) -> str:
    """``f`` in words, for a problem or a reason."""
    if isinstance(f, SameAs) and f.root.startswith(VIEW):
        root = f.root[len(VIEW) :].split(":(", 1)[0]
        return f"a rearrangement of {root!r} that no original tensor is"
    if isinstance(f, SameAs):
        if f.layout is None:
            return repr(f.root)
        if lifted(f.layout):
            return f"{f.root!r} laid out as {['1' if p is None else p for p in f.layout]}"
        return f"Transpose({f.root!r}, {list(f.layout)})"
    if isinstance(f, Const):
        return "a constant"
    return f"unknown ({f.reason})"


def const_ints(f: Fact, max_rank: int = 1) -> list[int] | None:
    """The values of an integer constant of rank <= ``max_rank``, flattened; None for anything else."""
    if not isinstance(f, Const):
        return None
    v = np.asarray(f.get())
    if v.dtype.kind not in "iu" or v.ndim > max_rank:
        return None
    return [int(x) for x in v.reshape(-1)]
