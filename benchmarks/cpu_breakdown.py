"""Where a conversion's CPU time goes: onnxruntime's per-node profile of the original and the converted model.

Each model is converted as ``convert --tokens`` converts it (``converter.rewrite(model, tokens=True)``), then both
run in onnxruntime's CPU provider with its profiler on (1 thread, batch 1, every graph optimization, the same
seeded inputs); each node's kernel time is the median over ``--runs`` runs after a warm-up, summed per op type as
onnxruntime runs them (its fusions and layout nodes included: a ``ReorderInput`` is the blocked layout onnxruntime
chose for a Conv, a missing ``LayerNormalization`` a fusion that did not happen). The table lists the op types
whose time changed, the largest change first, with their share of the difference. The profiler adds a few
microseconds per node, so compare the split, not the totals, with ``benchmarks.layout_zoo``'s latency.

    python -m benchmarks.cpu_breakdown MODEL.onnx [MODEL.onnx ...] [--runs 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import converter
from benchmarks.inference import feeds_for


def kernel_times(model: onnx.ModelProto, feeds: dict, runs: int, threads: int, work: Path) -> dict[str, tuple[int, float]]:
    """Per op type as onnxruntime ran it: (nodes, summed median kernel microseconds).

    Args:
        model: the model to run.
        feeds: its inputs.
        runs: measured runs (after 10 warm-up runs).
        threads: onnxruntime's intra-op threads.
        work: a folder for the profiler's file (removed after reading).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    options.enable_profiling, options.profile_file_prefix = True, str(work / "profile")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(10 + runs):
        session.run(None, feeds)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    first = starts[-runs]  # the measured runs only
    times: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            node = e["name"][: -len("_kernel_time")]
            times[node].append(e["dur"])
            op_of[node] = e["args"]["op_name"]
    found: dict[str, tuple[int, float]] = {}
    for node, values in times.items():
        count, total = found.get(op_of[node], (0, 0.0))
        found[op_of[node]] = (count + 1, total + statistics.median(values))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="cpubreak-") as tmp:
        for path in args.models:
            original = onnx.load(str(path))
            rewritten = converter.rewrite(original, tokens=True).model
            feeds = feeds_for(original)
            before = kernel_times(original, feeds, args.runs, args.threads, Path(tmp))
            after = kernel_times(rewritten, feeds, args.runs, args.threads, Path(tmp))
            total_before = sum(t for _, t in before.values())
            total_after = sum(t for _, t in after.values())
            extra = total_after - total_before
            table = Table(
                title=f"{path.name}: kernel time {total_before / 1e3:.3f} -> {total_after / 1e3:.3f} ms "
                f"(x{total_after / total_before:.2f}; {args.threads} thread(s), median of {args.runs} runs per node)"
            )
            for col in ("op type (as onnxruntime runs it)", "nodes", "ms before", "ms after", "change ms", "share"):
                table.add_column(col, justify="left" if col.startswith("op") else "right")
            ops = sorted(set(before) | set(after), key=lambda k: -abs(after.get(k, (0, 0.0))[1] - before.get(k, (0, 0.0))[1]))
            for op in ops:
                (nb, tb), (na, ta) = before.get(op, (0, 0.0)), after.get(op, (0, 0.0))
                if abs(ta - tb) < 1.0:
                    continue
                share = f"{100 * (ta - tb) / extra:+.0f}%" if abs(extra) > 1e-9 else "-"
                table.add_row(op, f"{nb} -> {na}", f"{tb / 1e3:.3f}", f"{ta / 1e3:.3f}", f"{(ta - tb) / 1e3:+.3f}", share)
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
