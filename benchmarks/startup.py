"""How long the command takes to start: ``convert --help`` and ``convert --version`` in fresh processes.

The command parses its arguments before it imports onnx, numpy, onnxruntime or rich (cli/__init__.py), so
these two answer without loading the libraries a conversion needs. Each case runs in a new interpreter,
``--runs`` times after one warm-up run (which fills the file cache); the table gives the median and the
range (fastest to slowest), and which of the heavy modules the run imported (``-X importtime``).
Also the plain interpreter start, the floor no command can go below.

    python -m benchmarks.startup [--runs 10] [--json benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._results import publish

# The modules a conversion needs and a --help must not pay for.
HEAVY = ("onnx", "numpy", "onnxruntime", "rich", "converter.pipeline")

# The console script pip installed beside the interpreter (what a user runs), else ``python -m converter``.
_SCRIPT = Path(sys.executable).parent / "convert"
_COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else ["-m", "converter"]

CASES = {
    "python -c pass (the floor)": [sys.executable, "-c", "pass"],
    "convert --help": [sys.executable, *_COMMAND, "--help"],
    "convert --version": [sys.executable, *_COMMAND, "--version"],
}


def seconds(argv: list[str]) -> float:
    """Wall time of one fresh process running ``argv`` to its end."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)
    return time.perf_counter() - started


def imported(argv: list[str]) -> tuple[list[str], float]:
    """Which of HEAVY the run imported, and the milliseconds its imports of ``converter`` took (cumulative, as
    ``python -X importtime`` reports them on stderr; one run, so a rough figure)."""
    if argv[1:2] == ["-c"]:
        return [], 0.0
    r = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120
    )
    rows = [line.split("|") for line in r.stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2]
    names = {name.strip() for _, _, name in rows}
    # A top-level import has one space before its name; nested ones are indented further.
    ours = sum(int(total) for _, total, name in rows if name.startswith(" converter") and not name.startswith("  "))
    return [m for m in HEAVY if m in names], ours / 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="fresh processes per case (default: 10)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    console = Console(width=max(Console().width, 132))  # whole rows in a log file too
    table = Table(title=f"Start-up, {args.runs} fresh processes each", title_justify="left")
    for col in ("case", "median s", "min s", "max s", "converter imports ms", "heavy modules imported"):
        table.add_column(col, justify="right" if col.endswith((" s", " ms")) else "left")
    rows = []
    for name, command in CASES.items():
        seconds(command)  # warm-up: the file cache, the .pyc files
        times = sorted(seconds(command) for _ in range(args.runs))
        heavy, import_ms = imported(command)
        rows.append(
            {
                "case": name,
                "median": statistics.median(times),
                "min": times[0],
                "max": times[-1],
                "converter_imports_ms": import_ms,
                "heavy": heavy,
            }
        )
        table.add_row(
            name,
            f"{statistics.median(times):.3f}",
            f"{times[0]:.3f}",
            f"{times[-1]:.3f}",
            f"{import_ms:.0f}",
            ", ".join(heavy) or "none",
        )
    console.print(table)
    if args.json:
        publish(console, args.json, rows, runs=args.runs)


if __name__ == "__main__":
    main()
