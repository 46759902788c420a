"""The one ordered list of rules, and the load -> rewrite -> verify -> save flow built on it.

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
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .cleanup import CleanupOptions, Pass, run_passes
from .cleanup.cancel_transposes import CancelTransposes
from .cleanup.fold_rearranges import FoldRearranges
from .cleanup.sink_transposes import SinkTransposes
from .detached import DetachedWeights
from .errors import InputError
from .graph import collect_types, count_ops
from .layout import DEFAULT_LAYOUT, LAYOUTS, Refusals, Snapshot, activations, census, choose
from .load import load as load_onnx
from .load import load_with_sources
from .report import ConvertReport, LayoutReport, RewriteReport
from .rules import (
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
    RewriteOptions,
    Rule,
    TensordotToConv,
    apply_rules,
)
from .runtime import resolve_providers
from .save import save
from .verify import DEFAULT_TIMEOUT, verify, verify_reference

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


def rewrite(
    model: onnx.ModelProto | str | os.PathLike[str] | Any,
    *,
    providers: str | Sequence[str] = "cpu",
    fold_transposes: bool = True,
    layout: str | None = None,
    tokens: bool = False,
) -> RewriteResult:
    """Rewrite dense layers on 4D tensors into 1x1 Convs. The input model is not modified.

    ``model`` is a ``ModelProto``, a path (loaded as ``load`` does), or an onnx-graphsurgeon
    ``gs.Graph``: then ``result.model`` is a new ``gs.Graph`` too (gs.py; the ``[gs]`` extra).
    ``providers`` are those the result is meant to run on: a dtype becomes Conv only where they
    have a Conv kernel for it (onnxruntime's CPU provider has none for float64).
    ``fold_transposes`` runs the Transpose cleanup when anything was rewritten: a model with
    nothing to rewrite comes out unchanged.
    ``layout`` is one of ``LAYOUTS`` (layout.py says what each does); None is ``DEFAULT_LAYOUT``
    (``never-worse``: the layers that would leave more Transposes are declined); ``keep-all`` keeps every layer.
    With ``tokens``, None is ``nchw`` (``resolve_layout`` says why).
    ``tokens`` also rewrites dense layers on rank-3 token sequences ``[B, S, C]`` (transformers,
    MLP-Mixer) into 1x1 Convs in the ``[B, C, 1, S]`` layout; off, such layers stay ``rank_not_4``.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, onnx.ModelProto):
        from . import gs

        if not gs.is_graph(model):
            raise TypeError(f"rewrite() takes an onnx.ModelProto, a path or a gs.Graph, not {type(model).__name__}")
        result = rewrite(gs.to_model(model), providers=providers, fold_transposes=fold_transposes, layout=layout, tokens=tokens)
        return RewriteResult(gs.to_graph(result.model), result.report)
    layout = resolve_layout(layout, fold_transposes, tokens)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # New weights are detached, then attached where they sit, as `convert` saves them: the same file.
    detached = DetachedWeights()
    report = _rewrite_in_place(out, providers, fold_transposes, detached, layout=layout, tokens=tokens)
    detached.attach(out)
    return RewriteResult(out, report)


def resolve_layout(layout: str | None, fold_transposes: bool, tokens: bool = False) -> str:
    """The layout mode a rewrite runs: ``None`` is ``DEFAULT_LAYOUT``; a mode that needs the cleanup
    (the one thing that absorbs Transposes) refuses to run without it.

    With ``tokens``, ``None`` is ``nchw``: the user asked for the token layers as Convs, and in most
    transformers their Transposes do not all cancel yet (attention's Reshapes stop them), so
    ``never-worse`` would decline every one of them; and the (B, C, 1, S) recipe normalizes over the
    channel axis, which ``nchw`` writes out (ViT-tiny, dynamo export: 84 Transposes instead of
    keep-all's 133; on onnxruntime's CPU the written-out LayerNorms cost a little: 1.24x the original's
    latency against keep-all's 1.16x). ``layout="never-worse"`` still applies the policy."""
    if layout is None:
        return "keep-all" if not fold_transposes else "nchw" if tokens else DEFAULT_LAYOUT
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (choose one of {', '.join(LAYOUTS)})")
    if not fold_transposes and layout != "keep-all":
        raise InputError(f"layout {layout} needs the Transpose cleanup; without it (--no-fold-transposes) use keep-all")
    return layout


def _rewrite_in_place(
    out: onnx.ModelProto,
    providers: str | Sequence[str],
    fold_transposes: bool,
    detached: DetachedWeights | None = None,
    layout: str = DEFAULT_LAYOUT,
    progress: Callable[[int, int], None] | None = None,
    tokens: bool = False,
) -> RewriteReport:
    """Rewrite ``out`` in place under the layout policy (layout.py).

    Under ``never-worse`` the graph is kept (``Snapshot``: its nodes as bytes, its weights by
    reference) and put back when layers must be declined and the model rewritten again.
    """
    mode = resolve_layout(layout, fold_transposes, tokens)
    cleanup = CleanupOptions(layernorm_to_nchw=True) if mode == "nchw" else None
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
            return _rewrite_once(out, providers, fold_transposes, detached, refuse, cleanup, progress, tokens)

        report = choose(out, snapshot, attempt, mode, kinds, before)
    report.seconds = time.perf_counter() - started
    return report


def _rewrite_once(
    out: onnx.ModelProto,
    providers: str | Sequence[str],
    fold_transposes: bool,
    detached: DetachedWeights | None,
    refuse: Refusals,
    cleanup: CleanupOptions | None,
    progress: Callable[[int, int], None] | None = None,
    tokens: bool = False,
) -> RewriteReport:
    """One rewrite of ``out``, in place: the rules (declining the ``refuse``d anchors), then the cleanup."""
    before = count_ops(out.graph)
    options = RewriteOptions(providers=resolve_providers(providers), refuse=refuse, tokens=tokens)
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


def default_output(input_path: str | os.PathLike[str]) -> Path:
    p = Path(input_path)
    return p.with_name(f"{p.stem}_conv.onnx")


def load(
    path: str | os.PathLike[str],
    *,
    signature: str = "serving_default",
    tag: str = "serve",
    opset: int = 17,
    trust_model: bool = False,
):
    """An ONNX model from an ONNX file, a SavedModel folder or a ``.keras`` file (through tf2onnx)."""
    if is_tensorflow_input(Path(path)):
        from .frontends.savedmodel import load_tensorflow

        return load_tensorflow(path, signature=signature, tag=tag, opset=opset, trust_model=trust_model)
    return load_onnx(path)


def is_tensorflow_input(path: Path) -> bool:
    return path.is_dir() or path.suffix in (".keras", ".h5")


def convert(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    verify_outputs: bool = True,
    fold_transposes: bool = True,
    layout: str | None = None,
    tokens: bool = False,
    providers: str | Sequence[str] = "cpu",
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    dry_run: bool = False,
    signature: str = "serving_default",
    tag: str = "serve",
    opset: int = 17,
    native_logs: bool = False,
    force: bool = False,
    allow_h5: bool = False,
    trust_model: bool = False,
    seed: int = 0,
    trials: int | None = None,
    max_memory: int | None = None,
    timeout: float | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Load, rewrite, verify and save. Nothing is written when verification fails or on a dry run.

    TensorFlow inputs (a SavedModel folder or a ``.keras`` file) are converted by tf2onnx first and
    verified twice: the tf2onnx model against the rewritten one, and TensorFlow itself against it.
    Check ``report.ok`` (False means a verification mismatch) and ``report.written``. ``force``
    writes the result even after a mismatch (``report.forced`` says so). ``allow_h5`` loads legacy
    Keras .h5 files, which runs the Python code of their Lambda layers. ``trust_model`` skips the
    static audit of a SavedModel's ops (see frontends/) and runs whatever the model holds.
    ``layout`` is as for ``rewrite`` (the command passes ``never-worse`` unless told otherwise), and
    so is ``tokens``.
    """
    step = on_step or (lambda _msg: None)
    layout = resolve_layout(layout, fold_transposes, tokens)  # a bad choice fails before any work
    source_path = Path(input_path)
    output = Path(output_path) if output_path is not None else default_output(input_path)
    if not dry_run:  # every path we write is checked before any work (paths.py says what is refused)
        from .paths import check_output

        output = check_output(output_path if output_path is not None else output, source_path)
    _refuse_overwriting_input(source_path, output)
    chosen = resolve_providers(providers)
    common = {
        "source_path": source_path,
        "output": output,
        "verify_outputs": verify_outputs,
        "fold_transposes": fold_transposes,
        "layout": layout,
        "tokens": tokens,
        "chosen": chosen,
        "atol": atol,
        "rtol": rtol,
        "input_shapes": input_shapes,
        "inputs": inputs,
        "dry_run": dry_run,
        "force": force,
        "step": step,
        "seed": seed,
        "trials": trials,
        "max_memory": max_memory,
        "timeout": timeout,
    }
    if is_tensorflow_input(source_path):
        from .frontends.savedmodel import open_tensorflow, run_tensorflow

        step(f"converting {input_path} with tf2onnx")
        started = time.perf_counter()
        with open_tensorflow(
            source_path,
            signature=signature,
            tag=tag,
            opset=opset,
            native_logs=native_logs,
            allow_h5=allow_h5,
            trust_model=trust_model,
        ) as source:
            report = _convert_model(
                source.model,
                load_seconds=time.perf_counter() - started,
                **common,
                reference=("TensorFlow", lambda feeds: run_tensorflow(source, feeds, timeout=timeout or DEFAULT_TIMEOUT)),
            )
            report.warnings.extend(source.warnings)
            return report
    started = time.perf_counter()
    step(f"loading {input_path}")
    # Large external weights go straight into arrays that the rewrite, both verification sessions
    # and save share: one copy of the weights in memory, not four (detached.py says why).
    store = DetachedWeights()
    model, sources = load_with_sources(input_path, detached=store)
    for src in sources[1:]:  # nor may the output (or its data file) replace a file the input reads
        _refuse_overwriting_input(src, output)
        _refuse_overwriting_input(src, output.with_name(output.name + ".data"))
    return _convert_model(model, load_seconds=time.perf_counter() - started, store=store, **common)


def _convert_model(
    model: onnx.ModelProto,
    *,
    source_path: Path,
    output: Path,
    load_seconds: float,
    verify_outputs: bool,
    fold_transposes: bool,
    layout: str,
    tokens: bool,
    chosen: tuple[str, ...],
    atol: float | None,
    rtol: float | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    inputs: Mapping[str, np.ndarray] | None,
    dry_run: bool,
    force: bool,
    step: Callable[[str], None],
    seed: int,
    trials: int | None,
    max_memory: int | None,
    timeout: float | None,
    reference: tuple[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] | None = None,
    store: DetachedWeights | None = None,
) -> ConvertReport:
    timings = {"load": load_seconds}
    step("rewriting")

    def counts(done: int, total: int) -> None:
        step(f"rewriting: candidate {done} of {total}")

    detached = store if store is not None else DetachedWeights()
    if verify_outputs:
        # The rewritten copy shares the detached arrays with the original (copying it copies no weight
        # that was detached); new weights are detached too, and written from their arrays.
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        result = RewriteResult(
            copy, _rewrite_in_place(copy, chosen, fold_transposes, detached, layout=layout, progress=counts, tokens=tokens)
        )
    else:
        # Nothing needs the original afterwards: rewrite it in place.
        result = RewriteResult(
            model, _rewrite_in_place(model, chosen, fold_transposes, detached, layout=layout, progress=counts, tokens=tokens)
        )
    timings["rewrite"] = result.report.seconds
    report = ConvertReport(str(source_path), str(output), result.report, dry_run=dry_run, timings=timings)
    if dry_run:
        report.output = None
        return report

    if verify_outputs:
        checks = {"providers": chosen, "inputs": inputs, "atol": atol, "rtol": rtol, "seed": seed, "timeout": timeout}
        report.verify = verify(
            model,
            result.model,
            layers=result.report.layers,
            input_shapes=input_shapes,
            trials=trials,
            max_memory=max_memory,
            on_step=step,
            values=detached,
            release_original=True,  # from here on only the rewritten model is used
            **checks,  # type: ignore[arg-type]
        )
        timings["verify"] = report.verify.seconds
        if reference is not None:
            name, run = reference
            step(f"running {name}")
            # The same inputs as the first trial above (the shapes it chose).
            shapes = {i.name: i.shape for i in report.verify.inputs if i.source == "random"}
            report.verify_reference = verify_reference(
                run,
                name,
                model,
                result.model,
                input_shapes=shapes,
                values=detached,
                **checks,  # type: ignore[arg-type]
            )
            timings["verify_reference"] = report.verify_reference.seconds
        if not report.ok:
            if not force:
                return report
            report.forced = True

    t = time.perf_counter()
    step(f"saving {output}")
    save(result.model, output, detached=detached)
    timings["save"] = time.perf_counter() - t
    report.written = True
    return report


def _refuse_overwriting_input(source: Path, target: Path) -> None:
    same = target.resolve() == source.resolve()
    if not same and target.exists() and source.exists():
        same = os.path.samefile(source, target)
    if same:
        raise InputError(f"{target}: the output would overwrite the input model; choose another -o")
