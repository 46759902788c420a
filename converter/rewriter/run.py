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

Between rules and cleanup sits the layout optimizer (layout/): the rules prepare every layer they accept
without splicing it in, the optimizer chooses every tensor's layout for the whole graph at once (which
layers convert, which nodes run channels-first), the chosen layers are spliced in and the cleanup carries
the chosen layout into the graph. Each runs once.

CLEANUP is the order of the passes when a layout was chosen: moving Transposes first (the optimizer's
placed Transposes must be taken in by the nodes it moves before anything cancels them; a per-channel op on
flattened rows moves as one group, channel_groups.py), then folding chains of
Reshapes (a chain takes in the Transpose at its head before cancelling could give it back to the chain in front),
then merging and cancelling, and last the dims read out of a moved tensor's shape (one Gather of the Shape, which
onnxruntime folds where those dims are known). GREEDY_CLEANUP is the order of the greedy cleanup (no chosen
layout): merging and cancelling first so that sinking sees the fewest Transposes.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx

from converter.graph import Scope, collect_types, count_ops
from converter.graph.detached import DetachedWeights
from converter.options import RewriteOptions
from converter.providers import resolve_providers
from converter.report import Decision, LayoutReport, RewriteReport
from converter.rewriter.cleanup import Pass, TypeOverlay, run_passes
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.cleanup.channel_groups import MoveChannelGroups
from converter.rewriter.cleanup.fold_rearranges import FoldRearranges
from converter.rewriter.cleanup.shape_reads import ComposeShapeReads
from converter.rewriter.cleanup.sink_transposes import SinkTransposes
from converter.rewriter.layout import LAYOUT_COST, UNKNOWN, activations, census, optimize
from converter.rewriter.rules import (
    GemmSandwichToConv,
    IntegerSandwichToConv,
    MatMulAddToConv,
    MatMulIntegerToConv,
    MatMulIntegerTokensToConv,
    MatMulNBitsToConv,
    MatMulTokensToConv,
    QdqGemmSandwichToConv,
    QdqMatMulToConv,
    QdqMatMulTokensToConv,
    QdqSandwichToConv,
    QGemmSandwichToConv,
    QLinearMatMulToConv,
    QLinearMatMulTokensToConv,
    QLinearSandwichToConv,
    Rule,
    RuleOptions,
    TensordotToConv,
    prepare_rules,
)

RULES: tuple[Rule, ...] = (
    TensordotToConv(),
    QdqGemmSandwichToConv(),
    GemmSandwichToConv(),
    QdqSandwichToConv(),
    # A QDQ layer on tokens (rank 3, only with tokens) before the rank-4 QDQ rule and the float token rule: its own
    # reasons for a rank-3 QDQ layer, not rank_not_4 or the float rule's weight_not_constant; elsewhere it steps aside.
    QdqMatMulTokensToConv(),
    QdqMatMulToConv(),
    MatMulTokensToConv(),
    MatMulAddToConv(),
    QLinearSandwichToConv(),
    # onnxruntime's QGemm (com.microsoft) between two Reshapes: no other rule anchors on it.
    QGemmSandwichToConv(),
    # The integer token rules (rank 3, only with tokens) before their rank-4 rules, for their own reasons on rank 3.
    QLinearMatMulTokensToConv(),
    QLinearMatMulToConv(),
    IntegerSandwichToConv(),
    MatMulIntegerTokensToConv(),
    MatMulIntegerToConv(),
    # onnxruntime's MatMulNBits (com.microsoft, only with matmul_nbits): no other rule anchors on it.
    MatMulNBitsToConv(),
)

CLEANUP: tuple[Pass, ...] = (SinkTransposes(), MoveChannelGroups(), FoldRearranges(), CancelTransposes(), ComposeShapeReads())
GREEDY_CLEANUP: tuple[Pass, ...] = (
    CancelTransposes(),
    FoldRearranges(),
    SinkTransposes(),
    MoveChannelGroups(),
    ComposeShapeReads(),
)


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
    """Rewrite ``out`` in place: rules, the layout optimizer, the cleanup (each once).

    Args:
        out: the model, changed in place.
        options: the caller's choices; ``options.mode`` is the layout policy that runs.
        detached: where new weights go (and the caller's detached weights are read from).
        progress: called with (candidates done, candidates) while the rules run.
    """
    mode = options.mode
    providers = resolve_providers(options.providers)
    started = time.perf_counter()
    with _no_cyclic_gc():
        kinds = activations(out)
        ops_before = count_ops(out.graph)
        types = collect_types(out)  # before the rewrite: the original's tensors keep their values (and sizes)
        before = census(out, types=types.get(()))
        rules = RuleOptions(providers=providers, tokens=options.tokens, matmul_nbits=options.matmul_nbits)
        # The optimizer promises never more Transposes inside the graph than the original; if carrying its
        # layout into the graph fell short of that (a form the cleanup cannot move), the original is put back.
        original = None
        if options.fold_transposes and mode != "keep-all":
            original = onnx.ModelProto()
            original.CopyFrom(out)
        prepared = prepare_rules(out, RULES, rules, detached, progress, types)
        value_of = detached.value if detached is not None else None
        choice = None
        if options.fold_transposes:
            choice = optimize(out, prepared, types, keep_all=mode == "keep-all", value_of=value_of, counted=before.main_inside)
        decisions = prepared.finish(choice.declined if choice is not None else None)
        report = RewriteReport(decisions=decisions, ops_before=ops_before)
        report.ops_rewritten = count_ops(out.graph)
        moved = index = guides = None
        if choice is not None and any(d.rewritten for d in decisions):
            moved = TypeOverlay(types.get(()) or {})  # the original's types, and those of the tensors the passes make
            guides = choice.guides(out)
            if id(out.graph) in guides:  # a guided graph is never reverted: its index stays true through the passes
                opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
                index = Scope(out.graph, (), moved, value_of=value_of, opset=opset)  # one index: census, cleanup, census
        record = LayoutReport(mode=mode, transposes_rewritten=census(out, edges=False, types=moved, scope=index).layout)
        if moved is not None and guides is not None:
            report.cleanup = run_passes(out, CLEANUP, value_of=value_of, types=moved, guides=guides, index=index).to_dict()
        after = census(out, types=moved if moved is not None else types.get(()), scope=index)
        if original is not None and report.rewritten and after.inside > before.inside:
            out.CopyFrom(original)
            decisions = [_fell_short(d, before.inside, after.inside) if d.rewritten else d for d in decisions]
            report = RewriteReport(decisions=decisions, ops_before=ops_before)
            report.ops_rewritten = ops_before
            after = before
        report.ops_after = count_ops(out.graph)
    record.transposes_original, record.edge_original = before.layout, before.edge
    record.transposes_final, record.edge_final = after.layout, after.edge
    if choice is not None and report.rewritten:
        record.transposes_optimum, record.edge_optimum = choice.inside, choice.edge
        record.layernorms_written_out, record.seconds = choice.written_out, choice.seconds
    elif choice is not None:  # nothing converted: the model is left as it is, and so are its Transposes
        record.transposes_optimum, record.edge_optimum = before.layout - before.edge, before.edge
        record.seconds = choice.seconds
    record.declined = sum(d.reason == LAYOUT_COST for d in decisions)
    by_label = {(c.decision.graph, c.decision.node): c.layer for c in prepared.candidates if c.layer is not None}
    for d in decisions:  # a declined layer's decision has no claim left: its candidate's tells what it read
        layer = d.layer if d.layer is not None else by_label.get((d.graph, d.node))
        d.activation = kinds.get((layer.graph, layer.input), UNKNOWN) if layer is not None else None
    report.layout = record
    report.seconds = time.perf_counter() - started
    return report


def _fell_short(d: Decision, before: int, after: int) -> Decision:
    """A rewritten layer's decision, declined because the layout could not be carried into the graph."""
    detail = (
        f"the chosen layout could not be carried into the graph ({after} Transposes inside it where the original "
        f"has {before}), so the original is kept"
    )
    return Decision(d.graph, d.node, d.op_type, d.rule, False, reason=LAYOUT_COST, detail=detail)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic collector: the rewrite allocates many small objects and frees them by
    reference counting; the collector's full passes over a growing heap made big graphs superlinear.

    On the way out, what the rewrite allocated is handed to the oldest generation at once (``freeze`` then
    ``unfreeze`` moves the lists without visiting an object): re-enabled as it is, the collector's first young
    pass would visit every object made while it slept (about a second on a 70,000-node graph). Cycles among
    them are still found by the next full pass, which the collector runs in proportion to the heap."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
