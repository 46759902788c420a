"""The minimum cut (rewriter/layout/mincut.py) against brute force: every sum of the costs it takes, minimised exactly."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from converter.rewriter.layout.mincut import SINK, SOURCE, Energy

Term = tuple[str, int, int, int, int, int, int]


@st.composite
def energies(draw: st.DrawFn) -> tuple[int, list[Term]]:
    n = draw(st.integers(1, 7))
    var = st.integers(-2, n - 1)  # -2 and -1 stand for the fixed labels 0 and 1
    terms = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["unary", "ordered", "differ", "table"]))
        x, y = draw(var), draw(var)
        w = draw(st.integers(0, 9))
        if kind == "table":
            e01, e10 = draw(st.integers(0, 9)), draw(st.integers(0, 9))
            e00 = draw(st.integers(0, e01 + e10))
            e11 = draw(st.integers(0, e01 + e10 - e00))  # submodular: e00 + e11 <= e01 + e10
            terms.append((kind, x, y, e00, e01, e10, e11))
        else:
            terms.append((kind, x, y, w, draw(st.integers(0, 1)), 0, 0))
    return n, terms


def build(n: int, terms: list[Term]) -> tuple[Energy, list[int]]:
    energy = Energy()
    variables = [energy.variable() for _ in range(n)]

    def v(i: int) -> int:
        return SOURCE if i == -2 else SINK if i == -1 else variables[i]

    for kind, x, y, a, b, c, d in terms:
        if kind == "unary":
            energy.pay_if(v(x), b, a)
        elif kind == "ordered":
            energy.pay_if_0_then_1(v(x), v(y), a)
        elif kind == "differ":
            energy.pay_if_differ(v(x), v(y), a)
        elif v(x) != v(y):
            assert energy.table(v(x), v(y), a, b, c, d)
    return energy, variables


def cost(terms: list[Term], labels: list[int]) -> int:
    def label(i: int) -> int:
        return 0 if i == -2 else 1 if i == -1 else labels[i]

    total = 0
    for kind, x, y, a, b, c, d in terms:
        lx, ly = label(x), label(y)
        if kind == "unary":
            total += a * (lx == b)
        elif kind == "ordered":
            total += a * (lx == 0 and ly == 1)
        elif kind == "differ":
            total += a * (lx != ly)
        elif x != y and not ({x, y} <= {-2} or {x, y} <= {-1}):
            total += (a, b, c, d)[2 * lx + ly]
    return total


@settings(max_examples=300, deadline=None, derandomize=True)
@given(energies())
def test_the_minimum_is_the_brute_force_minimum(case: tuple[int, list[Term]]) -> None:
    n, terms = case
    energy, variables = build(n, terms)
    labels, value = energy.solve()
    best = min(cost(terms, list(bits)) for bits in itertools.product((0, 1), repeat=n))
    chosen = [labels[v] for v in variables]
    assert value == best == cost(terms, chosen) == energy.evaluate(labels)


def test_a_table_that_is_not_submodular_is_refused() -> None:
    energy = Energy()
    x, y = energy.variable(), energy.variable()
    assert not energy.table(x, y, 2, 0, 0, 2)  # E(0,0) + E(1,1) > E(0,1) + E(1,0): no cut expresses it


def test_ties_go_to_the_sink_side() -> None:
    """Of all minimum cuts the one with the smallest source side: a free label is 1 (channels-first)."""
    energy = Energy()
    x, y = energy.variable(), energy.variable()
    energy.pay_if_differ(x, y, 3)
    labels, value = energy.solve()
    assert value == 0 and (labels[x], labels[y]) == (1, 1)
