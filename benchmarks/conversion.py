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

from rich.console import Console
from rich.table import Table

from benchmarks._results import publish
from converter.files.save import save
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


def bench(name: str, path: Path, nodes: int, work: Path, repeats: int) -> dict[str, object]:
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
    row = {
        "model": name,
        "nodes": nodes,
        "file_mb": round(sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20, 1),
        "floor_s": round(statistics.median(floor_t), 3),
        "convert_s": round(statistics.median(conv_t), 3),
        "floor_peak_mb": round(max(floor_m) / 2**20, 1),
        "convert_peak_mb": round(max(conv_m) / 2**20, 1),
    }
    row["time_ratio"] = round(row["convert_s"] / row["floor_s"], 2)
    row["memory_ratio"] = round(row["convert_peak_mb"] / row["floor_peak_mb"], 2)
    return row


CASES = {
    "dense chain, 7,000 nodes": lambda: dense_chain(2333),
    "dense chain, 70,000 nodes": lambda: dense_chain(23333),
    "12 x 4096^2 dense, ~805 MB": lambda: big_dense(12, 4096),
    "36 x 4096^2 dense, ~2.4 GB": lambda: big_dense(36, 4096),
}


def build(case: str, path: str) -> int:
    model = CASES[case]()
    save(model, path)
    print(len(model.graph.node))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--big", action="store_true", help="also the ~800 MB weights model")
    p.add_argument("--huge", action="store_true", help="also a model over 2 GB (external data)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/conversion.json"))
    p.add_argument("--build", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        return build(*args.build)
    console = Console()
    cases = ["dense chain, 7,000 nodes", "dense chain, 70,000 nodes"]
    cases += ["12 x 4096^2 dense, ~805 MB"] if args.big else []
    cases += ["36 x 4096^2 dense, ~2.4 GB"] if args.huge else []
    rows = []
    work = Path(tempfile.mkdtemp(prefix="convbench-"))
    try:
        for name in cases:
            path = work / "model.onnx"
            # Built in a child: Linux keeps a process's peak RSS across fork + exec, so a measured
            # command would inherit this process's peak if the model had been built here.
            made = subprocess.run(
                [sys.executable, "-m", "benchmarks.conversion", "--build", name, str(path)], check=True, capture_output=True
            )
            console.print(f"measuring {name} ...", style="dim")
            rows.append(bench(name, path, int(made.stdout), work, args.repeats))
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
