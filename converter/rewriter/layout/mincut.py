"""Minimise a sum of costs over binary labels with a minimum s-t cut (scipy's maximum flow).

Every cost the layout problem has is one of: a constant, a unary cost ``w * [x = v]``, a cost for two labels that
differ in one direction ``w * [x = 0 and y = 1]``, or a 2x2 table on two labels whose table is submodular
(``E(0,0) + E(1,1) <= E(0,1) + E(1,0)``). Such a sum is minimised exactly by a minimum cut (Kolmogorov and Zabih,
"What energy functions can be minimized via graph cuts?", 2004): label 0 is the source side, label 1 the sink
side, and an edge ``x -> y`` of capacity ``w`` is cut exactly when ``x = 0`` and ``y = 1``.

scipy.sparse.csgraph.maximum_flow computes the flow (Dinic's algorithm, in C); the cut is read from the residual
graph. Capacities are integers below 2**31 there, so callers weigh their costs with integers (``INFINITE`` for a
hard constraint). Of all minimum cuts, :meth:`Energy.solve` returns the one with the smallest source side: every
label that can be 1 at the optimum is 1 (the layout problem puts channels-first on the sink side, so ties go to
converting layers).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

SOURCE, SINK = 0, 1  # the two fixed labels: a term may name them as a variable whose label is known
INFINITE = 1 << 29  # a capacity no minimum cut pays (the caller keeps every finite total below it)


class Energy:
    """A sum of costs over binary variables (``variable()`` numbers them); ``solve()`` gives its minimum."""

    def __init__(self) -> None:
        self._count = 2
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._caps: list[int] = []
        self.constant = 0

    def variable(self) -> int:
        """A new variable (an int; SOURCE and SINK stand for the labels 0 and 1)."""
        self._count += 1
        return self._count - 1

    def fixed(self, label: int) -> int:
        """The variable that always has ``label``."""
        return SINK if label else SOURCE

    def pay_if_0_then_1(self, x: int, y: int, w: int) -> None:
        """Cost ``w`` when ``x`` is 0 and ``y`` is 1 (an edge ``x -> y``)."""
        if w <= 0 or x == y or x == SINK or y == SOURCE:
            return  # never cut (a label cannot be both; SINK is never 0; SOURCE is never 1)
        self._rows.append(x)
        self._cols.append(y)
        self._caps.append(min(int(w), INFINITE))

    def pay_if(self, x: int, label: int, w: int) -> None:
        """Cost ``w`` when ``x`` has ``label``."""
        if label:
            self.pay_if_0_then_1(SOURCE, x, w)
        else:
            self.pay_if_0_then_1(x, SINK, w)

    def pay_if_differ(self, x: int, y: int, w: int) -> None:
        """Cost ``w`` when ``x`` and ``y`` have different labels."""
        self.pay_if_0_then_1(x, y, w)
        self.pay_if_0_then_1(y, x, w)

    def table(self, x: int, y: int, e00: int, e01: int, e10: int, e11: int) -> bool:
        """Cost ``E(x, y)`` given as its four entries; False (nothing added) when the table is not submodular."""
        if e00 + e11 > e01 + e10:
            return False
        # E = e00 + (e10 - e00) [x=1] + (e11 - e10) [y=1] + (e01 + e10 - e00 - e11) [x=0, y=1]
        self.constant += e00
        self._unary(x, e10 - e00)
        self._unary(y, e11 - e10)
        self.pay_if_0_then_1(x, y, e01 + e10 - e00 - e11)
        return True

    def _unary(self, x: int, w: int) -> None:
        """Cost ``w * [x = 1]``, ``w`` of any sign."""
        if w >= 0:
            self.pay_if(x, 1, w)
        else:
            self.constant += w
            self.pay_if(x, 0, -w)

    def solve(self) -> tuple[list[int], int]:
        """The labels of every variable (indexed by variable; SOURCE is 0 and SINK 1) and the minimum's value."""
        n = self._count
        if not self._caps:
            return [0] + [1] + [1] * (n - 2), self.constant  # nothing is cut: every free label goes to the sink side
        caps = csr_matrix((np.asarray(self._caps, dtype=np.int32), (np.asarray(self._rows), np.asarray(self._cols))), shape=(n, n))
        caps.sum_duplicates()
        flow = maximum_flow(caps, SOURCE, SINK, method="dinic")
        residual = (caps - flow.flow).tocsr()
        residual.data = np.where(residual.data > 0, 1, 0).astype(np.int32)
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, SOURCE, directed=True, return_predecessors=False)
        labels = [1] * n
        for i in np.asarray(reached).tolist():
            labels[i] = 0
        return labels, int(flow.flow_value) + self.constant

    def evaluate(self, labels: list[int]) -> int:
        """The value of the sum at ``labels`` (what a solution costs; for the report and for tests)."""
        total = self.constant
        for x, y, w in zip(self._rows, self._cols, self._caps, strict=True):
            if labels[x] == 0 and labels[y] == 1:
                total += w
        return total

    def edges(self) -> Iterable[tuple[int, int, int]]:
        return zip(self._rows, self._cols, self._caps, strict=True)
