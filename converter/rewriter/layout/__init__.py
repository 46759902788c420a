"""The layout optimizer: every tensor's layout chosen for the whole graph at once, then carried into it.

For each graph with candidate layers, ``optimize`` builds the layout problem (problem.py: every tensor
channels-last or channels-first, a Transpose wherever a tensor is made in one layout and read in the other)
and solves it exactly with a minimum cut (mincut.py), once: no rewrite, retreat and retry. The optimum says
which layers become Convs (under ``keep-all``, all of them), which nodes run channels-first (LayerNorms
written out among them), which chains of Reshapes take a Transpose in; ``guide.Guide`` carries that into the
graph through the cleanup's passes.

The policy: the optimum has the fewest Transposes inside the graph, and among those the most layers converted.
When that leaves layers out but converting every layer (at its own optimum) ends with no more Transposes inside
the graph than the original, every layer is converted instead: the optimizer may save Transposes whatever it
converts, and those savings are not bought with layers. A layer still left out is declined with ``layout_cost``
and the number of Transposes converting it would add even at the optimum. Under ``original=True`` the problem
counts the original's own labels (nothing converted, nothing moved), so the comparison is in one accounting; and the
original as the graph has it (a chain's Transposes unfolded: with nothing converted the cleanup does not run).

census.py counts Transposes for the report, and says what each candidate's activation is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from converter.graph import GraphPath, TensorType
from converter.rewriter.cleanup import CleanupOptions, PassContext
from converter.rewriter.cleanup._workspace import Workspace
from converter.rewriter.layout.census import IMAGE, UNKNOWN, Census, activations, census, graph_at, layout_transposes
from converter.rewriter.layout.guide import Guide
from converter.rewriter.layout.problem import CF, CL, Problem, Solution
from converter.rewriter.rules._engine import GraphKey, Prepared

LAYOUT_COST = "layout_cost"
POLICY = "layout policy"
# Declined layers whose exact cost is computed (one more solve each); beyond, the sentence gives no number.
MAX_EXPLAINED = 32

__all__ = [
    "CF",
    "CL",
    "IMAGE",
    "LAYOUT_COST",
    "UNKNOWN",
    "Census",
    "Choice",
    "activations",
    "census",
    "graph_at",
    "layout_transposes",
    "optimize",
]


@dataclass
class Choice:
    """The optimum of every graph: what the rules splice, what the cleanup is told, what the report says."""

    solutions: dict[GraphKey, Solution] = field(default_factory=dict)
    declined: dict[tuple[GraphKey, str], tuple[str, str, str]] = field(default_factory=dict)  # -> (rule, code, sentence)
    seconds: float = 0.0

    def guides(self, model: onnx.ModelProto) -> dict[int, Guide]:
        """The cleanup's guides for ``model`` as it is now (after the splice: subgraphs are other objects then)."""
        out: dict[int, Guide] = {}
        for key, solution in self.solutions.items():
            graph = graph_at(model, key)
            if graph is not None:
                out[id(graph)] = Guide(solution)
        return out

    @property
    def inside(self) -> int:
        return sum(s.inside for s in self.solutions.values())

    @property
    def edge(self) -> int:
        return sum(s.edge for s in self.solutions.values())

    @property
    def written_out(self) -> int:
        return sum(s.written_out for s in self.solutions.values())


def optimize(
    model: onnx.ModelProto,
    prepared: Prepared,
    types: dict[GraphPath, dict[str, TensorType]],
    *,
    keep_all: bool = False,
    value_of=None,  # noqa: ANN001 - Callable[[TensorProto], ndarray] | None
    counted: int | None = None,
) -> Choice:
    """The optimal layout of every graph that has candidates; nothing in ``model`` changes.

    Args:
        model: the model, before the prepared candidates are spliced in.
        prepared: the rules' candidates (rules/_engine.py).
        types: shape inference's types (``collect_types``), for ranks and the sizes chains need.
        keep_all: convert every layer, whatever it costs (the optimum still places the Transposes).
        value_of: reads constants, detached ones too.
        counted: the main graph's Transposes inside the model as the census counts them in the original; the
            budget that converting every layer is held to there is no lower (the problem's own count of the
            original can miss what it takes for folded, and the safety net holds the written graph to this one).
    """
    import time

    started = time.perf_counter()
    choice = Choice()
    for key, graph, scope, candidates in prepared.graphs():
        ctx = PassContext(model, value_of, CleanupOptions(), types.get(scope.path) if not scope.path else None)
        ws = Workspace(graph, value_of, ctx.opset, ctx.types)
        problem = Problem(graph, scope, ws, ctx, candidates, keep_all)
        solution = problem.solve()
        if len(solution.converted) < len(problem.layers):
            # The fewest Transposes leave some layers out; converting every one is still chosen when that ends with
            # no more Transposes inside the graph than the original (the optimum may save some whatever it converts).
            budget = problem.solve(original=True).inside
            if counted is not None and not scope.path:
                budget = max(budget, counted)
            every = problem.solve(pin=set(problem.layers))
            if every.inside <= budget:
                solution = every
        declined = [c for c in candidates if c.layer is not None and c.anchor not in solution.converted]
        for i, c in enumerate(declined):
            extra = 0
            if i < MAX_EXPLAINED:
                extra = problem.solve(pin={c.anchor}).inside - solution.inside
            choice.declined[(key, c.anchor)] = (POLICY, LAYOUT_COST, _sentence(extra, solution))
        choice.solutions[key] = solution
    choice.seconds = time.perf_counter() - started
    return choice


def _sentence(extra: int, solution: Solution) -> str:
    if extra > 0:
        cost = f"converting it would add {extra} Transpose{'s' * (extra != 1)}"
    else:
        cost = "converting it would add Transposes"
    return f"{cost} even with every tensor's layout chosen for the whole graph (the optimum has {solution.inside})"
