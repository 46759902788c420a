"""What verification catches, what it costs, and that it does not cry wolf.

    python -m benchmarks.verification --bugs                 every injected bug class x model: caught by what
    python -m benchmarks.verification --false-alarms 400     random correct rewrites: verdicts and worst margins
    python -m benchmarks.verification --cost [--huge]        time and peak memory: 7k/105k-node chains, >2 GB model
    python -m benchmarks.verification --edits 3              equivalent edits of converted models (--check must pass
                                                             them) and wrong ones (nothing may pass them)

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
    from tests.bugs import BUGS, inject
    from tests.verifier.test_verify import BUG_MODELS

    rows = []
    for model_name, make in BUG_MODELS.items():
        model = make()
        result = converter.rewrite(model, layout="keep-all")  # every layer: this measures verification, not the policy
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
    from tests.verifier.test_verify import correct_chain

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


def _edit_corpus(zoo: bool) -> list[tuple[str, onnx.ModelProto, converter.RewriteResult]]:
    """Converted models to edit: the bug models, two integer layers (QLinearMatMul, MatMulInteger), the fixtures, and
    (``zoo``) the layout corpus's real exports when they were built here (.zoo-cache/layout), with and without
    --tokens; only those with a rewritten layer."""
    from tests.rewriter.rules.test_integer_matmul_to_conv import L, integer_dense
    from tests.verifier.test_verify import BUG_MODELS

    makers = {name: make for name, make in BUG_MODELS.items() if name != "nan"}  # NaN everywhere: incomplete whatever
    makers["qlinear"] = lambda: integer_dense(L())
    makers["integer"] = lambda: integer_dense(L(dynamic=True, x_signed=False))
    found = []
    for name, make in makers.items():
        model = make()
        found.append((name, model, converter.rewrite(model, layout="keep-all")))
    paths = sorted(Path("models/fixtures").glob("*.onnx")) + (sorted(Path(".zoo-cache/layout").glob("*.onnx")) if zoo else [])
    for path in paths:
        model = onnx.load(path)
        for tokens in (False, True):
            result = converter.rewrite(model, tokens=tokens)
            if result.report.rewritten:
                found.append((f"{path.stem}{' --tokens' if tokens else ''}", model, result))
    return found


def edits(console: Console, per_class: int, zoo: bool) -> list[dict]:
    """Each equivalent edit and each wrong one (tests/bugs.py), ``per_class`` random places in every converted model,
    verified as ``convert --check`` does (the layers found from the two graphs): how many equivalent ones are
    refused, and that no wrong one passes."""
    import numpy as np

    from tests.bugs import EQUIVALENT, WRONG

    rows = []
    refused: list[str] = []
    for name, model, result in _edit_corpus(zoo):
        counts: collections.Counter[str] = collections.Counter()
        for kind, table in (("equivalent", EQUIVALENT), ("wrong", WRONG)):
            for edit, apply in table.items():
                for seed in range(per_class):
                    edited = onnx.ModelProto()
                    edited.CopyFrom(result.model)
                    if not apply(edited, result.report.layers, np.random.default_rng(seed)):
                        continue
                    try:
                        verdict = converter.verify(model, edited).verdict
                    except converter.InputError as e:
                        verdict = f"error ({e})"
                    counts[f"{kind}"] += 1
                    if kind == "equivalent" and verdict != "passed":
                        counts["refused"] += 1
                        refused.append(f"{name}: {edit} (seed {seed}): {verdict}")
                    if kind == "wrong" and verdict == "passed":
                        counts["wrong passed"] += 1
        rows.append({"model": name, **counts})
        console.print(f"  {name}: {dict(counts)}", style="dim")
    table = Table(title="Edits of converted models, verified with the layers found (convert --check)")
    cols = ["equivalent", "refused", "wrong", "wrong passed"]
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["model"], *(str(r.get(c, 0)) for c in cols))
    total = {c: sum(r.get(c, 0) for r in rows) for c in cols}
    table.add_row("all", *(str(total[c]) for c in cols))
    console.print(table)
    share = total["refused"] / max(1, total["equivalent"])
    console.print(
        f"equivalent edits refused: {total['refused']} of {total['equivalent']} ({100 * share:.2f}%); "
        f"wrong passed: {total['wrong passed']}"
    )
    for line in refused[:20]:
        console.print(f"  refused: {line}", style="dim")
    return rows


def measure(cmd: list[str]) -> tuple[float, int, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def _activation_768() -> onnx.ModelProto:
    from tests.conftest import dense_model

    return dense_model(x_shape=(4, 256, 256, 768), weight_shape=(768, 768), bias_shape=(768,))


def _wide_chain(layers: int = 2000) -> onnx.ModelProto:
    """``layers`` dense layers alternating C 64 -> 256 -> 64, ReLU between, on [1, 14, 14, 64] (the issue's chain)."""
    from models.graphs import Builder

    b = Builder(22)
    x, c = "x", 64
    for i in range(layers):
        k = 256 if i % 2 == 0 else 64
        x = b.op("Relu", b.dense(x, c, k))
        c = k
    return b.model([("x", [1, 14, 14, 64])], [x], name=f"wide_chain_{layers}")


COST_CASES = {
    "dense chain 64 <-> 256, 2,000 layers, 14x14": _wide_chain,
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


def floor(original: str, converted: str) -> int:
    """The floor of any verification, run in a process of its own: an onnxruntime session for each model (graph
    optimizations off, as verification builds them) and one run of each, at the shapes verification chooses."""
    import onnxruntime as ort

    from converter.verifier import inputs as feeding

    model = onnx.load(original, load_external_data=False)
    declared = feeding.declared_inputs(model)
    symbols, _ = next(feeding.candidates(model, declared, {}))
    feeds = feeding.make_feeds(declared, feeding.shapes_for(declared, symbols, {}), 0, 0)
    del model
    for path in (original, converted):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    return 0


def _ratios(times: list[tuple[float, float, float]], peaks: list[tuple[int, int]]) -> dict:
    """Verification's own time (convert minus convert --no-verify) and its peak over the floor's: median and range."""
    import statistics

    over = [(v - p) / f for p, v, f in times]
    mem = [c / f for c, f in peaks]
    return {
        "verify_over_floor": round(statistics.median(over), 2),
        "verify_over_floor_range": [round(min(over), 2), round(max(over), 2)],
        "peak_over_floor": round(statistics.median(mem), 2),
        "peak_over_floor_range": [round(min(mem), 2), round(max(mem), 2)],
    }


def cost(console: Console, huge: bool, repeats: int = 1, only: str = "") -> list[dict]:
    """Each case: ``convert --no-verify``, ``convert`` and the floor (:func:`floor`), ``repeats`` times each, in
    fresh processes; the ratios' medians and ranges over the repeats."""
    rows = []
    work = Path(tempfile.mkdtemp(prefix="verifybench-"))
    names = list(COST_CASES)[:4] + (list(COST_CASES)[4:] if huge else [])
    names = [n for n in names if only in n]
    try:
        for name in names:
            path = work / "model.onnx"
            made = subprocess.run(
                [sys.executable, "-m", "benchmarks.verification", "--build", name, str(path)], check=True, capture_output=True
            )
            nodes, weights = (int(v) for v in made.stdout.split())
            console.print(f"measuring {name} ...", style="dim")
            times, peaks = [], []
            for _ in range(repeats):
                plain = measure([CONVERT, str(path), "-o", str(work / "a.onnx"), "--no-verify", "-q"])
                verified = measure([CONVERT, str(path), "-o", str(work / "b.onnx"), "-q", "--report", str(work / "r.json")])
                base = measure([sys.executable, "-m", "benchmarks.verification", "--floor", str(path), str(work / "a.onnx")])
                times.append((plain[0], verified[0], base[0]))
                peaks.append((verified[1], base[1]))
            import json

            report = json.loads((work / "r.json").read_text())
            notes = (report.get("verify") or {}).get("notes", [])
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
                    "floor_s": round(base[0], 2),
                    "floor_peak_mb": round(base[1] / 2**20),
                    **_ratios(times, peaks),
                    "sampled": next((n.split(":")[0] for n in notes if n.startswith("numbers checked on")), ""),
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
    p.add_argument("--edits", type=int, default=0, metavar="N", help="N random places per edit class and model")
    p.add_argument("--zoo", action="store_true", help="with --edits: also the layout corpus's exports in .zoo-cache/layout")
    p.add_argument("--huge", action="store_true", help="with --cost: also the 2.13 GiB model")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/verification.json"))
    p.add_argument("--repeats", type=int, default=1, help="with --cost: runs of each measurement (ranges over them)")
    p.add_argument("--case", default="", help="with --cost: only the cases whose name holds this text")
    p.add_argument("--build", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--floor", nargs=2, metavar=("ORIGINAL", "CONVERTED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        return build(*args.build)
    if args.floor:
        return floor(*args.floor)
    console = Console(width=200)
    results: dict[str, list[dict]] = {}
    if args.bugs:
        results["bugs"] = bugs(console)
    if args.false_alarms:
        results["false_alarms"] = false_alarms(console, args.false_alarms)
    if args.cost:
        results["cost"] = cost(console, args.huge, args.repeats, args.case)
    if args.edits:
        results["edits"] = edits(console, args.edits, args.zoo)
    publish(console, args.json, [r | {"part": part} for part, rs in results.items() for r in rs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
