"""Conversion cost: `convert --no-verify` against the floor, a plain onnx.load + onnx.save of the same file.

Each measurement is a fresh process (its peak RSS comes from wait4), the two commands alternate,
and the table gives the median wall time and the largest peak RSS over the repeats, plus the
ratios the performance goal is stated in (<= 1.5x time, <= 1.5x memory). The 10x-nodes row shows
whether the converter's time grows linearly with the graph.

    python -m benchmarks.conversion [--repeats 3] [--big] [--huge] [--json benchmarks/results/conversion.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from benchmarks._results import publish
from converter.save import save
from models.graphs import big_dense, dense_chain

CONVERT = str(Path(sys.executable).with_name("convert"))
FLOOR = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
# Past 2 GB the floor has to write external data too, as convert does.
FLOOR_EXTERNAL = (
    "import onnx, sys, os; onnx.save(onnx.load(sys.argv[1]), sys.argv[2], save_as_external_data=True, "
    "location=os.path.basename(sys.argv[2]) + '.data')"
)


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, usage.ru_maxrss * 1024


def bench(name: str, path: Path, work: Path, repeats: int) -> dict[str, object]:
    floor_t, floor_m, conv_t, conv_m = [], [], [], []
    floor = FLOOR_EXTERNAL if path.with_name(path.name + ".data").exists() else FLOOR
    for i in range(repeats):
        for which in ("floor", "convert"):
            out = work / f"{which}_{i}.onnx"
            if which == "floor":
                t, m = measure([sys.executable, "-c", floor, str(path), str(out)])
                floor_t.append(t), floor_m.append(m)
            else:
                t, m = measure([CONVERT, str(path), "-o", str(out), "--no-verify", "-q"])
                conv_t.append(t), conv_m.append(m)
            for f in work.glob(f"{which}_{i}.onnx*"):
                f.unlink()
    model = onnx.load(str(path), load_external_data=False)
    row = {
        "model": name,
        "nodes": len(model.graph.node),
        "file_mb": round(sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20, 1),
        "floor_s": round(statistics.median(floor_t), 3),
        "convert_s": round(statistics.median(conv_t), 3),
        "floor_peak_mb": round(max(floor_m) / 2**20, 1),
        "convert_peak_mb": round(max(conv_m) / 2**20, 1),
    }
    row["time_ratio"] = round(row["convert_s"] / row["floor_s"], 2)
    row["memory_ratio"] = round(row["convert_peak_mb"] / row["floor_peak_mb"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--big", action="store_true", help="also the ~800 MB weights model")
    p.add_argument("--huge", action="store_true", help="also a model over 2 GB (external data)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/conversion.json"))
    args = p.parse_args(argv)
    console = Console()
    cases = [("dense chain, 7,000 nodes", lambda: dense_chain(2333)), ("dense chain, 70,000 nodes", lambda: dense_chain(23333))]
    if args.big:
        cases.append(("12 x 4096^2 dense, ~805 MB", lambda: big_dense(12, 4096)))
    if args.huge:
        cases.append(("36 x 4096^2 dense, ~2.4 GB", lambda: big_dense(36, 4096)))
    rows = []
    work = Path(tempfile.mkdtemp(prefix="convbench-"))
    try:
        for name, build in cases:
            path = work / "model.onnx"
            save(build(), path)
            console.print(f"measuring {name} ...", style="dim")
            rows.append(bench(name, path, work, args.repeats))
            for f in work.glob("model.onnx*"):
                f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"convert --no-verify vs onnx.load + onnx.save (median of {args.repeats}, interleaved)")
    for col in ("model", "nodes", "file MB", "floor s", "convert s", "time x", "floor peak MB", "convert peak MB", "memory x"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            *(
                str(r[k])
                for k in (
                    "model",
                    "nodes",
                    "file_mb",
                    "floor_s",
                    "convert_s",
                    "time_ratio",
                    "floor_peak_mb",
                    "convert_peak_mb",
                    "memory_ratio",
                )
            )
        )
    console.print(table)
    publish(console, args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
