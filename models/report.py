"""One table over the whole zoo: what the converter did to each model and what it costs or saves.

    python -m models.report [NAME ...] [--cache DIR] [--runs 30] [--threads 1] [--json FILE]

Columns: nodes, candidates, rewritten, skipped by reason, Transposes before -> after, the largest
verification error (max abs over all outputs, against onnxruntime on the original and, for
SavedModels, against TensorFlow), and onnxruntime CPU latency converted / original (median of
interleaved runs, fixed thread count, default graph optimizations).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import converter
from benchmarks._results import publish
from benchmarks.inference import compare
from models.zoo import DEFAULT_CACHE, ZOO, build


def measure(name: str, cache: Path, runs: int, threads: int) -> dict[str, object]:
    entry = ZOO[name]
    original = converter.load(build(name, cache))
    result = converter.rewrite(original)
    feeds = entry.inputs() if entry.inputs else None
    checks = [converter.verify(original, result, input_shapes=entry.input_shapes or None, inputs=feeds)]
    if entry.tensorflow:
        from converter.frontends.savedmodel import open_tensorflow, run_tensorflow

        with open_tensorflow(build(name, cache)) as source:
            checks.append(
                converter.verify_reference(
                    lambda f: run_tensorflow(source, f),
                    "TensorFlow",
                    source.model,
                    result.model,
                    input_shapes=entry.input_shapes or None,
                )
            )
    rw = result.report
    errors = [o.max_abs_error for c in checks for o in c.outputs]
    original_ms, converted_ms = compare(original, result.model, runs, threads, entry.input_shapes, feeds)
    return {
        "model": name,
        "nodes": sum(rw.ops_before.values()),
        "candidates": rw.candidates,
        "rewritten": rw.rewritten,
        "skipped": rw.skipped_by_reason,
        "transposes_before": rw.ops_before.get("Transpose", 0),
        "transposes_after": rw.ops_after.get("Transpose", 0),
        "verified": all(c.passed for c in checks),
        "max_abs_error": float(np.max(errors)) if errors else 0.0,
        "original_ms": round(original_ms, 3),
        "converted_ms": round(converted_ms, 3),
        "latency_ratio": round(converted_ms / original_ms, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="zoo models (default: all)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/zoo.json"))
    args = p.parse_args(argv)
    console = Console()
    rows = []
    for name in args.names or list(ZOO):
        console.print(f"{name} ...", style="dim")
        rows.append(measure(name, args.cache, args.runs, args.threads))
    table = Table(title=f"Model zoo: onnxruntime CPU, {args.threads} thread(s), median of {args.runs} interleaved runs")
    for col in ("model", "nodes", "candidates", "rewritten", "skipped by reason", "Transposes", "max abs err", "latency x"):
        table.add_column(col, justify="left" if col in ("model", "skipped by reason") else "right")
    for r in rows:
        skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "-"  # type: ignore[union-attr]
        table.add_row(
            str(r["model"]),
            str(r["nodes"]),
            str(r["candidates"]),
            str(r["rewritten"]),
            skipped,
            f"{r['transposes_before']} -> {r['transposes_after']}",
            f"{r['max_abs_error']:.1e}",
            f"{r['latency_ratio']:.3f}",
        )
    console.print(table)
    publish(console, args.json, rows, threads=args.threads, runs=args.runs)
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
