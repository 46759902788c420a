"""The one ordered list of rules, and the load -> rewrite -> verify -> save flow built on it.

Order of RULES: larger patterns come before the smaller ones they contain, so that a MatMul
inside a Reshape sandwich is claimed by the sandwich rule first (the plain rule would only see a
rank-2 MatMul and decline it with ``rank_not_4``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .cleanup import Pass, run_passes
from .cleanup.cancel_transposes import CancelTransposes
from .cleanup.sink_transposes import SinkTransposes
from .errors import InputError
from .graph import count_ops
from .load import load
from .report import ConvertReport, RewriteReport
from .rules import GemmSandwichToConv, MatMulAddToConv, RewriteOptions, Rule, TensordotToConv, apply_rules
from .runtime import resolve_providers
from .save import save
from .verify import verify

RULES: tuple[Rule, ...] = (TensordotToConv(), GemmSandwichToConv(), MatMulAddToConv())

# After the rules: merging/cancelling runs first so that sinking sees the fewest Transposes, and
# both repeat until nothing changes (sinking creates pairs that the next cancel removes).
CLEANUP: tuple[Pass, ...] = (CancelTransposes(), SinkTransposes())


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    report: RewriteReport


def rewrite(model: onnx.ModelProto, *, providers: str | Sequence[str] = "cpu", fold_transposes: bool = True) -> RewriteResult:
    """Rewrite dense layers on 4D tensors into 1x1 Convs. The input model is not modified.

    ``providers`` are those the result is meant to run on: a dtype becomes Conv only where they
    have a Conv kernel for it (onnxruntime's CPU provider has none for float64).
    ``fold_transposes`` runs the Transpose cleanup when anything was rewritten: a model with
    nothing to rewrite comes out unchanged.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return RewriteResult(out, _rewrite_in_place(out, providers, fold_transposes))


def _rewrite_in_place(out: onnx.ModelProto, providers: str | Sequence[str], fold_transposes: bool) -> RewriteReport:
    started = time.perf_counter()
    with _no_cyclic_gc():
        before = count_ops(out.graph)
        decisions = apply_rules(out, RULES, RewriteOptions(providers=resolve_providers(providers)))
        report = RewriteReport(decisions=decisions, ops_before=before)
        report.ops_rewritten = count_ops(out.graph)
        if fold_transposes and any(d.rewritten for d in decisions):
            report.cleanup = run_passes(out, CLEANUP).to_dict()
        report.ops_after = count_ops(out.graph)
    report.seconds = time.perf_counter() - started
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


def convert(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    verify_outputs: bool = True,
    fold_transposes: bool = True,
    providers: str | Sequence[str] = "cpu",
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    dry_run: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Load, rewrite, verify and save. Nothing is written when verification fails or on a dry run.

    Check ``report.ok`` (False means a verification mismatch) and ``report.written``.
    """
    step = on_step or (lambda _msg: None)
    output = Path(output_path) if output_path is not None else default_output(input_path)
    _refuse_overwriting_input(Path(input_path), output)
    chosen = resolve_providers(providers)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    step(f"loading {input_path}")
    model = load(input_path)
    timings["load"] = time.perf_counter() - t

    step("rewriting")
    if verify_outputs:
        result = rewrite(model, providers=chosen, fold_transposes=fold_transposes)
    else:  # nothing needs the original afterwards: spare a copy of every weight
        result = RewriteResult(model, _rewrite_in_place(model, chosen, fold_transposes))
    timings["rewrite"] = result.report.seconds
    report = ConvertReport(str(input_path), str(output), result.report, dry_run=dry_run, timings=timings)
    if dry_run:
        report.output = None
        return report

    if verify_outputs:
        report.verify = verify(
            model, result.model, providers=chosen, inputs=inputs, input_shapes=input_shapes, atol=atol, rtol=rtol, on_step=step
        )
        timings["verify"] = report.verify.seconds
        if not report.verify.passed:
            return report

    t = time.perf_counter()
    step(f"saving {output}")
    save(result.model, output)
    timings["save"] = time.perf_counter() - t
    report.written = True
    return report


def _refuse_overwriting_input(source: Path, target: Path) -> None:
    same = target.resolve() == source.resolve()
    if not same and target.exists() and source.exists():
        same = os.path.samefile(source, target)
    if same:
        raise InputError(f"{target}: the output would overwrite the input model; choose another -o")
