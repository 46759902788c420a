"""Inference latency of converted vs original models on onnxruntime CPU.

Both sessions use onnxruntime's default graph optimizations (as a deployment would) and the same
fixed thread count; runs alternate between the two models (which one goes first alternates too),
after a warm-up, and the table reports medians and the ratio converted / original (goal: <= 1.0).

    python -m benchmarks.inference [--runs 50] [--threads 1] [--json benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import converter
from benchmarks._results import publish
from converter.verifier import inputs as feeding
from models.graphs import convnext_stage, dense_chain

CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "ConvNeXt stage C=96 @56x56 (3 blocks)": lambda: convnext_stage(96, 56, 56),
    "ConvNeXt stage C=384 @14x14 (3 blocks)": lambda: convnext_stage(384, 14, 14),
    "ConvNeXt stage C=96 @56x56 + LayerNorm": lambda: convnext_stage(96, 56, 56, layernorm=True),
    "ConvNeXt stage C=384 @14x14 + LayerNorm": lambda: convnext_stage(384, 14, 14, layernorm=True),
    "dense stack NHWC 8x8x64 (6 layers)": lambda: dense_chain(6, c=64, h=8, w=8),
}


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for a latency run: symbolic dims not given in ``shapes`` are 1 (batch 1).

    (Verification gives them larger values to expose layout bugs; latency is measured at batch 1.)
    """
    declared = feeding.declared_inputs(model)
    given = shapes or {}
    fixed = feeding.fixed_symbols(declared, given)
    *_, (ones, _) = feeding.candidates(model, declared, fixed)  # the last candidate: every free dim 1
    return feeding.make_feeds(declared, feeding.shapes_for(declared, {**fixed, **ones}, given), 0, 0)


def compare(
    original: onnx.ModelProto,
    converted: onnx.ModelProto,
    runs: int,
    threads: int,
    shapes: dict[str, list[int]] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
) -> tuple[float, float]:
    """Median latency in ms of (original, converted), runs interleaved with alternating order."""
    sessions = {"original": session(original, threads), "converted": session(converted, threads)}
    feeds = feeds if feeds is not None else feeds_for(original, shapes)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, feeds)
    for i in range(runs):
        order = ("original", "converted") if i % 2 == 0 else ("converted", "original")
        for name in order:
            started = time.perf_counter()
            sessions[name].run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return statistics.median(times["original"]) * 1e3, statistics.median(times["converted"]) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/inference.json"))
    args = p.parse_args(argv)
    console = Console()
    rows = []
    for name, build in CASES.items():
        model = build()
        result = converter.rewrite(model)
        check = converter.verify(model, result)
        assert check.passed, check.to_dict()
        orig_ms, conv_ms = compare(model, result.model, args.runs, args.threads)
        rows.append(
            {
                "model": name,
                "rewritten": result.report.rewritten,
                "transposes_before": result.report.ops_before.get("Transpose", 0),
                "transposes_after": result.report.ops_after.get("Transpose", 0),
                "original_ms": round(orig_ms, 3),
                "converted_ms": round(conv_ms, 3),
                "ratio": round(conv_ms / orig_ms, 3),
            }
        )
        console.print(f"{name}: {orig_ms:.2f} ms -> {conv_ms:.2f} ms", style="dim")
    table = Table(title=f"onnxruntime {ort.__version__} CPU, {args.threads} thread(s), median of {args.runs} interleaved runs")
    for col in ("model", "rewritten", "Transposes before -> after", "original ms", "converted ms", "converted / original"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["rewritten"]),
            f"{r['transposes_before']} -> {r['transposes_after']}",
            f"{r['original_ms']:.2f}",
            f"{r['converted_ms']:.2f}",
            f"{r['ratio']:.3f}",
        )
    console.print(table)
    publish(console, args.json, rows, threads=args.threads, runs=args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
