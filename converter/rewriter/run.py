"""Rewriting: the rules in their order, then the cleanup, under the layout policy.

Order of RULES: larger patterns come before the smaller ones they contain, so that a MatMul
inside a Reshape sandwich is claimed by the sandwich rule first (the plain rule would only see a
rank-2 MatMul and decline it with ``rank_not_4``); the same holds for a quantized (QDQ) sandwich
before the QDQ MatMul rule (the QDQ Gemm sandwich comes before the float one, so that its own reason is
reported for a quantized Gemm, not the float rule's ``weight_not_constant``), and a QOperator sandwich
(QLinearMatMul on flattened rows) before the plain QLinearMatMul rule, as a dynamic one (MatMulInteger
on flattened rows) before the plain MatMulInteger rule. The token rule (rank 3, only with ``tokens``)
comes before the rank-4 rule so that a rank-3 layer it declines is reported with its own reason, not
``rank_not_4``; on anything but rank 3 it steps aside. The integer-kernel rules (QLinearMatMul,
MatMulInteger) anchor on ops no float or QDQ rule takes, so their place among those does not matter.

Around rules and cleanup sits the layout policy (layout.py): it judges the result by its Transposes
and, under ``never-worse``, runs rules and cleanup again from the original, declining the layers
that cost Transposes. It comes last because only the cleaned result shows what a layer costs.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx

from converter.graph import collect_types, count_ops
from converter.graph.detached import DetachedWeights
from converter.options import RewriteOptions
from converter.providers import resolve_providers
from converter.report import LayoutReport, RewriteReport
from converter.rewriter.cleanup import CleanupOptions, Pass, run_passes
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.cleanup.fold_rearranges import FoldRearranges
from converter.rewriter.cleanup.sink_transposes import SinkTransposes
from converter.rewriter.layout import Refusals, Snapshot, activations, census, choose
from converter.rewriter.rules import (
    GemmSandwichToConv,
    IntegerSandwichToConv,
    MatMulAddToConv,
    MatMulIntegerToConv,
    MatMulTokensToConv,
    QdqGemmSandwichToConv,
    QdqMatMulToConv,
    QdqSandwichToConv,
    QLinearMatMulToConv,
    QLinearSandwichToConv,
    Rule,
    RuleOptions,
    TensordotToConv,
    apply_rules,
)

RULES: tuple[Rule, ...] = (
    TensordotToConv(),
    QdqGemmSandwichToConv(),
    GemmSandwichToConv(),
    QdqSandwichToConv(),
    QdqMatMulToConv(),
    MatMulTokensToConv(),
    MatMulAddToConv(),
    QLinearSandwichToConv(),
    QLinearMatMulToConv(),
    IntegerSandwichToConv(),
    MatMulIntegerToConv(),
)

# After the rules: merging/cancelling runs first so that sinking sees the fewest Transposes, and
# both repeat until nothing changes (sinking creates pairs that the next cancel removes).
CLEANUP: tuple[Pass, ...] = (CancelTransposes(), FoldRearranges(), SinkTransposes())


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    report: RewriteReport


def rewrite_model(model: onnx.ModelProto, options: RewriteOptions | None = None) -> RewriteResult:
    """A rewritten copy of ``model``; ``model`` is not modified.

    Args:
        model: the model to rewrite (its weights may be detached placeholders of a store the caller keeps).
        options: rules, cleanup and layout choices (default: ``RewriteOptions()``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # New weights are detached, then attached where they sit, as `convert` saves them: the same file.
    detached = DetachedWeights()
    report = rewrite_in_place(out, options or RewriteOptions(), detached)
    detached.attach(out)
    return RewriteResult(out, report)


def rewrite_in_place(
    out: onnx.ModelProto,
    options: RewriteOptions,
    detached: DetachedWeights | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RewriteReport:
    """Rewrite ``out`` in place under the layout policy (layout.py).

    Args:
        out: the model, changed in place.
        options: the caller's choices; ``options.mode`` is the layout policy that runs.
        detached: where new weights go (and the caller's detached weights are read from).
        progress: called with (candidates done, candidates) while the rules run.

    Under ``never-worse`` the graph is kept (``Snapshot``: its nodes as bytes, its weights by
    reference) and put back when layers must be declined and the model rewritten again.
    """
    mode = options.mode
    cleanup = CleanupOptions(layernorm_to_nchw=True) if mode == "nchw" else None
    providers = resolve_providers(options.providers)
    started = time.perf_counter()
    with _no_cyclic_gc():
        kinds = activations(out)
        before = census(out)
        snapshot = Snapshot(out) if mode == "never-worse" else None
        placeholders = [t.name for t in out.graph.initializer if DetachedWeights.is_placeholder(t)]

        def attempt(refuse: Refusals) -> RewriteReport:
            if refuse:  # again, from the original: the weights made last time are forgotten
                assert snapshot is not None
                snapshot.restore(out)
                if detached is not None:
                    detached.keep_only(placeholders)
            rules = RuleOptions(providers=providers, refuse=refuse, tokens=options.tokens)
            return _rewrite_once(out, rules, options.fold_transposes, detached, cleanup, progress)

        report = choose(out, snapshot, attempt, mode, kinds, before)
    report.seconds = time.perf_counter() - started
    return report


def _rewrite_once(
    out: onnx.ModelProto,
    options: RuleOptions,
    fold_transposes: bool,
    detached: DetachedWeights | None,
    cleanup: CleanupOptions | None,
    progress: Callable[[int, int], None] | None = None,
) -> RewriteReport:
    """One rewrite of ``out``, in place: the rules (declining the ``options.refuse``d anchors), then the cleanup."""
    before = count_ops(out.graph)
    types = collect_types(out)  # before the rewrite: the original's tensors keep their values (and sizes)
    decisions = apply_rules(out, RULES, options, detached, progress, types)
    report = RewriteReport(decisions=decisions, ops_before=before)
    report.ops_rewritten = count_ops(out.graph)
    report.layout = LayoutReport(mode="", transposes_rewritten=census(out, edges=False).layout)
    if fold_transposes and any(d.rewritten for d in decisions):
        value_of = detached.value if detached is not None else None
        report.cleanup = run_passes(
            out, CLEANUP, value_of=value_of, options=cleanup or CleanupOptions(), types=types.get(())
        ).to_dict()
    report.ops_after = count_ops(out.graph)
    return report


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic collector: the rewrite allocates many small objects and frees them by
    reference counting; the collector's full passes over a growing heap made big graphs superlinear."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
