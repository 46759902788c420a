"""The view algebra against numpy: every chain of Reshape/Transpose/Squeeze/Unsqueeze it describes
picks, at every index, the root element numpy's ops pick."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from converter.rewriter.cleanup import rearrange as ra


def picks(view: ra.View, dims: list[int], symbols: dict[str, int]) -> np.ndarray:
    """The root's flat index at each index of the tensor ``view`` describes (symbols given values)."""
    strides = np.cumprod([1, *dims[::-1]])[::-1][1:]  # root's row-major strides
    # Mixed radix per axis: the last piece fastest.
    grids = []
    for axis in view:
        part = np.zeros(1, dtype=np.int64)
        for a, stride, size in axis:
            k = size[0] * int(np.prod([symbols[s] for s in size[1]])) if size[1] else size[0]
            part = (part[:, None] + np.arange(k)[None, :] * stride * strides[a]).reshape(-1)
        grids.append(part)
    flat = np.zeros([len(g) for g in grids], dtype=np.int64)
    for i, g in enumerate(grids):
        shape = [1] * len(grids)
        shape[i] = len(g)
        flat = flat + g.reshape(shape)
    return flat


def chain(
    x: np.ndarray, view: ra.View, ops: list[tuple[str, object]], symbols: dict[str, int]
) -> tuple[np.ndarray, ra.View | None]:
    for op, arg in ops:
        if op == "transpose":
            x, view = x.transpose(arg), ra.transpose(view, arg)
        elif op == "reshape":
            sizes = ra.target_sizes(view, arg)
            x = x.reshape([d if d != 0 else x.shape[i] for i, d in enumerate(arg)])
            view = None if sizes is None else ra.reshape(view, sizes)
        elif op == "unsqueeze":
            x, view = np.expand_dims(x, arg), ra.unsqueeze(view, arg)
        elif op == "squeeze":
            x, view = np.squeeze(x, tuple(arg)), ra.squeeze(view, arg)
        if view is None:
            return x, None
    return x, view


def check(dims: list[int | str], ops: list[tuple[str, object]], symbols: dict[str, int] | None = None) -> ra.View | None:
    symbols = symbols or {}
    concrete = [symbols[d] if isinstance(d, str) else d for d in dims]
    x = np.arange(int(np.prod(concrete))).reshape(concrete)
    y, view = chain(x, ra.identity(dims), ops, symbols)
    if view is not None:
        np.testing.assert_array_equal(picks(view, concrete, symbols), y)
    return view


def test_vit_qkv_split_and_permute() -> None:
    # [B, 3C, 1, S] (the token Conv's output) -> Squeeze -> [B, S, 3C] -> [B, S, 3, H, D] -> [3, B, H, S, D]
    ops = [("squeeze", [2]), ("transpose", [0, 2, 1]), ("reshape", [-1, 5, 3, 2, 4]), ("transpose", [2, 0, 3, 1, 4])]
    assert check([2, 24, 1, 5], ops) is not None
    assert check(["B", 24, 1, 5], ops, {"B": 3}) is not None


def test_attention_merge_before_proj_is_the_token_layout() -> None:
    # [B, H, S, D] -> [B, S, H, D] -> [B, S, C] ; and [B, H, S, D] -> [B, H, D, S] -> [B, C, 1, S]
    a = check([2, 3, 5, 4], [("transpose", [0, 2, 1, 3]), ("reshape", [0, 5, 12])])
    b = check([2, 3, 5, 4], [("transpose", [0, 1, 3, 2]), ("reshape", [0, 12, 1, 5])])
    assert a is not None and b is not None
    assert ra.relate(b, a) == (0, 2, None, 1)
    assert ra.relate(a, b) is None  # b has a unit axis: described through the tensor without it


def test_symbolic_axes_merge_whole_but_never_split() -> None:
    assert (
        check(["B", 3, 5, 4], [("reshape", [-1, 5, 4]), ("transpose", [0, 2, 1]), ("reshape", [-1, 3, 4, 5])], {"B": 2}) is not None
    )
    assert check(["B", 6], [("reshape", [-1, 2, 3])], {"B": 2}) is not None
    assert check(["B", 6], [("reshape", [2, -1])], {"B": 2}) is None  # would cut B
    assert check(["B", "S"], [("reshape", [-1])], {"B": 2, "S": 3}) is not None


def test_a_product_dim_splits_its_symbol_from_its_number() -> None:
    """torch.export writes a dynamic batch merged with the windows as "24*N": a window reverse splits N back out
    (the number is the inner part, so every stride is a whole number); splitting the number first cannot be."""
    assert ra.size_of("24*N") == (24, ("N",)) and ra.size_of("N*4*s1") == (4, ("N", "s1")) and ra.size_of("N+1") == (1, ("N+1",))
    reverse = [("reshape", [-1, 4, 6, 7, 7, 96]), ("transpose", [0, 1, 3, 2, 4, 5]), ("reshape", [-1, 28, 42, 96])]
    symbols = {"N": 2, "24*N": 48}
    assert check(["24*N", 49, 96], reverse, symbols) is not None
    assert check(["24*N", 49, 96], [("reshape", [4, -1, 49, 96])], symbols) is None  # 4 outer: 6*N inside


def test_sizes_that_do_not_add_up_are_refused() -> None:
    assert ra.target_sizes(ra.identity([2, 6]), [5, -1]) is None
    assert ra.target_sizes(ra.identity([2, 6]), [-1, -1]) is None
    assert ra.reshape(ra.identity([2, 6]), [(2, ()), (4, ())]) is None
    assert ra.reshape(ra.identity([4, 6]), [(6, ()), (4, ())]) is None  # neither a split nor a merge


def test_equal_views_are_equal_tensors() -> None:
    # Splitting then merging back gives the root again, whatever the detour.
    v = check([6, 4], [("reshape", [2, 3, 4]), ("transpose", [0, 1, 2]), ("reshape", [6, 4])])
    assert v == ra.identity([6, 4])


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in rng.choice([1, 2, 3, 4, 6], size=int(rng.integers(2, 5)))]
    ops: list[tuple[str, object]] = []
    shape = list(dims)
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.choice(["transpose", "reshape", "unsqueeze", "squeeze"])
        if kind == "transpose":
            perm = [int(p) for p in rng.permutation(len(shape))]
            ops.append(("transpose", perm))
            shape = [shape[p] for p in perm]
        elif kind == "unsqueeze":
            a = int(rng.integers(0, len(shape) + 1))
            ops.append(("unsqueeze", [a]))
            shape.insert(a, 1)
        elif kind == "squeeze" and 1 in shape and len(shape) > 1:
            a = shape.index(1)
            ops.append(("squeeze", [a]))
            shape.pop(a)
        elif kind == "reshape":
            total = int(np.prod(shape))
            factors = [f for f in (2, 3, 4, 6, 1) if total % f == 0]
            new = []
            left = total
            while left > 1:
                f = int(rng.choice([f for f in factors if left % f == 0 and f > 1] or [left]))
                new.append(f)
                left //= f
            new = new or [1]
            ops.append(("reshape", new))
            shape = new
    view = check(dims, ops)
    if view is None:  # declined: only when some step cuts across a piece (never for plain Transposes)
        assert any(op == "reshape" for op, _ in ops)


def test_every_permutation_relates_back() -> None:
    base = ra.identity([2, 3, 4])
    for perm in itertools.permutations(range(3)):
        assert ra.relate(ra.transpose(base, perm), base) == perm
