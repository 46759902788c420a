"""What verification catches, what it costs, and that it does not cry wolf.

    python -m benchmarks.verification --bugs                 every injected bug class x model: caught by what
    python -m benchmarks.verification --false-alarms 400     random correct rewrites: verdicts and worst margins
    python -m benchmarks.verification --cost [--huge]        time and peak memory: 7k/105k-node chains, >2 GB model

Cost rows run the real command in fresh processes (peak RSS from wait4; models built in a child so
no measured process inherits the benchmark's own memory): ``convert --no-verify`` against
``convert`` with verification, so the difference is what verification adds.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

import converter
from benchmarks._results import publish
from converter.files.save import save
from models.graphs import big_dense, dense_chain

CONVERT = str(Path(sys.executable).with_name("convert"))


def bugs(console: Console) -> list[dict]:
    from tests.test_verify import BUG_MODELS

    from tests.bugs import BUGS, inject

    rows = []
    for model_name, make in BUG_MODELS.items():
        model = make()
        result = converter.rewrite(model)
        counts: collections.Counter[str] = collections.Counter()
        for bug in BUGS:
            for which in range(len(result.report.layers)):
                broken = onnx.ModelProto()
                broken.CopyFrom(result.model)
                if not inject(broken, result.report.layers, bug, which):
                    continue
                check = converter.verify(model, broken, layers=result.report.layers)
                layer = next(c for c in check.layers if c.conv == result.report.layers[which].conv)
                structure = "refuted" if check.structure["problems"] or layer.structure == "refuted" else "unproved"
                numbers = any(c.numbers == "failed" for c in check.layers) or any(not o.passed for o in check.outputs)
                counts["cases"] += 1
                counts[f"verdict {check.verdict}"] += 1
                counts[f"structure {structure}"] += 1
                counts["numbers caught" if numbers else "numbers missed"] += 1
        rows.append({"model": model_name, **counts})
    table = Table(title="Injected bugs (every class in every layer): what caught them")
    cols = [
        "cases",
        "verdict failed",
        "verdict incomplete",
        "verdict passed",
        "structure refuted",
        "structure unproved",
        "numbers caught",
    ]
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["model"], *(str(r.get(c, 0)) for c in cols))
    total = {c: sum(r.get(c, 0) for r in rows) for c in cols}
    table.add_row("all", *(str(total[c]) for c in cols))
    console.print(table)
    return rows


def false_alarms(console: Console, cases: int) -> list[dict]:
    from tests.test_verify import correct_chain

    verdicts: collections.Counter[str] = collections.Counter()
    worst = collections.defaultdict(float)
    for seed in range(cases):
        model, inputs = correct_chain(seed)
        check = converter.verify(model, converter.rewrite(model), inputs=inputs)
        verdicts[check.verdict] += 1
        dtype = check.outputs[0].dtype
        worst[f"{dtype} layer error / bound"] = max(
            worst[f"{dtype} layer error / bound"], *(c.output_bound_ratio for c in check.layers)
        )
        worst[f"{dtype} output error / atol"] = max(
            worst[f"{dtype} output error / atol"], *(o.max_abs_error / o.atol for o in check.outputs if o.atol)
        )
    console.print(f"{cases} correct rewrites (C, K up to 2048; fp32 and fp16; x1e3, w x1e-3, mean offsets): {dict(verdicts)}")
    for k, v in sorted(worst.items()):
        console.print(f"  worst {k}: {v:.3g}")
    return [{"cases": cases, **verdicts, **{k: round(v, 4) for k, v in worst.items()}}]


def measure(cmd: list[str]) -> tuple[float, int, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def _activation_768() -> onnx.ModelProto:
    from tests.conftest import dense_model

    return dense_model(x_shape=(4, 256, 256, 768), weight_shape=(768, 768), bias_shape=(768,))


COST_CASES = {
    "dense chain, 7,000 nodes": lambda: dense_chain(2333),
    "dense chain, 105,000 nodes": lambda: dense_chain(35000),
    "768 MiB activation (dense 768 -> 768 on 4x256x256x768)": _activation_768,
    "34 x 4096^2 dense, 2.13 GiB (external data)": lambda: big_dense(34, 4096),
}


def build(case: str, path: str) -> int:
    model = COST_CASES[case]()
    save(model, path)
    from converter.graph import weight_bytes

    print(len(model.graph.node), weight_bytes(model))
    return 0


def cost(console: Console, huge: bool) -> list[dict]:
    rows = []
    work = Path(tempfile.mkdtemp(prefix="verifybench-"))
    names = list(COST_CASES)[:3] + (list(COST_CASES)[3:] if huge else [])
    try:
        for name in names:
            path = work / "model.onnx"
            made = subprocess.run(
                [sys.executable, "-m", "benchmarks.verification", "--build", name, str(path)], check=True, capture_output=True
            )
            nodes, weights = (int(v) for v in made.stdout.split())
            console.print(f"measuring {name} ...", style="dim")
            plain = measure([CONVERT, str(path), "-o", str(work / "a.onnx"), "--no-verify", "-q"])
            verified = measure([CONVERT, str(path), "-o", str(work / "b.onnx"), "-q", "--report", str(work / "r.json")])
            import json

            report = json.loads((work / "r.json").read_text())
            rows.append(
                {
                    "model": name,
                    "nodes": nodes,
                    "weights_mb": round(weights / 2**20),
                    "no_verify_s": round(plain[0], 2),
                    "verify_s": round(report["timings"].get("verify", 0.0), 2),
                    "rewrite_s": round(report["timings"].get("rewrite", 0.0), 2),
                    "convert_s": round(verified[0], 2),
                    "no_verify_peak_mb": round(plain[1] / 2**20),
                    "convert_peak_mb": round(verified[1] / 2**20),
                    "peak_per_weight_byte": round(verified[1] / max(weights, 1), 2) if weights > 2**26 else None,
                    "status_code": verified[2],
                    "status": report.get("status"),
                }
            )
            for f in work.iterdir():
                if f.is_file():
                    f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title="What verification costs (fresh processes)")
    cols = list(rows[0]) if rows else []
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    console.print(table)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bugs", action="store_true")
    p.add_argument("--false-alarms", type=int, default=0, metavar="N")
    p.add_argument("--cost", action="store_true")
    p.add_argument("--huge", action="store_true", help="with --cost: also the 2.13 GiB model")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/verification.json"))
    p.add_argument("--build", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        return build(*args.build)
    console = Console(width=200)
    results: dict[str, list[dict]] = {}
    if args.bugs:
        results["bugs"] = bugs(console)
    if args.false_alarms:
        results["false_alarms"] = false_alarms(console, args.false_alarms)
    if args.cost:
        results["cost"] = cost(console, args.huge)
    publish(console, args.json, [r | {"part": part} for part, rs in results.items() for r in rs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
