"""Decoder LLMs: what the conversion costs on onnxruntime's CPU per form, and what converting a 1B model costs.

``--forms`` (the default): a Llama-style decoder exported by TorchScript (models/llm_exports.py's ``medium``
size: 4 layers of 512, 8 query heads over 2 key/value heads, SwiGLU 1536, 4096 tokens; about 16M parameters) in
float32, float16, and 4-bit in blocks of 32 as onnxruntime's MatMulNBitsQuantizer writes it (MatMulNBits, and
its QDQ format: DequantizeLinear in blocks before each MatMul). Each is converted as the command does with
``--tokens --layout keep-all`` (and ``--matmul-nbits`` for MatMulNBits) and verified; the table gives the
layers rewritten, the verdict, the file sizes and the latency, original and converted, of one decode step (1 new
token after 63 cached) and of a prefill (32 tokens after 32), onnxruntime CPU, 1 thread, default optimizations,
median of ``--runs`` interleaved runs.

``--nbits``: MatMulNBits alone, four 1024x1024 layers on one token: the figure behind the rule's opt-in.

``--scale``: the ~1.1B-parameter Llama (TinyLlama's shape, float32, 4.4 GB of weights in external data; exported
first when missing, which needs torch and about 14 GB), each measured in a fresh process: the floor (onnx.load +
onnx.save with external data), ``convert --tokens --layout keep-all --no-verify``, and ``convert --tokens
--layout keep-all`` with verification at sequence 3 after 5 cached tokens; wall time and peak RSS, and the two
ratios the goal is stated in: conversion time / floor (<= 2) and peak memory / weight bytes (<= 2).

    python -m benchmarks.llm [--forms] [--nbits] [--scale] [--runs 30] [--json benchmarks/results/llm.json]
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

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import converter
from benchmarks._results import publish
from models import llm_exports as le

CONVERT = str(Path(sys.executable).with_name("convert"))
FLOOR = (
    "import onnx, sys, os; onnx.save(onnx.load(sys.argv[1]), sys.argv[2], save_as_external_data=True, "
    "location=os.path.basename(sys.argv[2]) + '.data')"
)
FORMS = (("float32", ""), ("float16", ""), ("float32", "qdq"), ("float32", "nbits"))
STEPS = {"decode 1 after 63": (1, 63), "prefill 32 after 32": (32, 32)}


def _session(model: onnx.ModelProto | str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _latency(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """Median milliseconds of each session, the runs interleaved (the machine's drift falls on all alike)."""
    for s in sessions:
        s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            started = time.perf_counter()
            s.run(None, feeds)
            times[i].append((time.perf_counter() - started) * 1e3)
    return [statistics.median(t) for t in times]


def forms(runs: int, console: Console) -> list[dict]:
    rows = []
    table = Table(title="Llama-style decoder (medium: 4 x 512, ~16M parameters), onnxruntime CPU, 1 thread")
    for col in ("form", "rewritten", "verdict", "MB original -> converted", *(f"{s}: ms original -> converted" for s in STEPS)):
        table.add_column(col)
    for dtype, form in FORMS:
        path = le.cached("llama", "ts", dtype, form, scale="medium")
        model = onnx.load(path)
        options = {"tokens": True, "layout": "keep-all", "matmul_nbits": form == "nbits"}
        result = converter.rewrite(model, **options)
        check = converter.verify(model, result, input_shapes=le.input_shapes(le.MEDIUM, 2, 3, 5))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "converted.onnx"
            onnx.save(result.model, out)
            sizes = (path.stat().st_size, out.stat().st_size)
        sessions = [_session(model), _session(result.model)]
        label = {"": dtype, "qdq": "4-bit blocks, QDQ (DequantizeLinear -> MatMul)", "nbits": "4-bit blocks, MatMulNBits"}[form]
        row: dict = {
            "form": label,
            "rewritten": result.report.rewritten,
            "candidates": len(result.report.decisions),
            "verdict": check.verdict,
            "bytes": sizes,
        }
        for step, (sequence, past) in STEPS.items():
            feeds = le.feeds(le.MEDIUM, 1, sequence, past, dtype)
            row[step] = _latency(sessions, feeds, runs)
        rows.append(row)
        table.add_row(
            label,
            f"{row['rewritten']} of {row['candidates']}",
            row["verdict"],
            f"{sizes[0] / 1e6:.1f} -> {sizes[1] / 1e6:.1f}",
            *(f"{row[s][0]:.2f} -> {row[s][1]:.2f} (x{row[s][1] / row[s][0]:.2f})" for s in STEPS),
        )
    console.print(table)
    return rows


def nbits(runs: int, console: Console) -> dict:
    """Four 1024x1024 MatMulNBits on one token, against the converted DequantizeLinear -> Conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 1024
    nodes, inits, x = [], [], "x"
    for i in range(4):
        inits.append(numpy_helper.from_array((rng.standard_normal((c, c)) / 32).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], f"layer{i}"))
        x = f"y{i}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", c]) for n in ("x", x)]
    float_model = helper.make_model(
        helper.make_graph(nodes, "layers", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 21)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(float_model, src)
        model = onnx.load(le.quantize(src, dst, "nbits"))
    result = converter.rewrite(model, tokens=True, matmul_nbits=True)
    feeds = {"x": rng.standard_normal((1, 1, c)).astype(np.float32)}
    original, converted = _latency([_session(model), _session(result.model)], feeds, runs)
    ratio = converted / original
    console.print(
        f"MatMulNBits, 4 x 1024x1024, 1 token: {original:.2f} ms -> DequantizeLinear + Conv {converted:.2f} ms (x{ratio:.0f})"
    )
    return {"matmulnbits_ms": original, "converted_ms": converted, "rewritten": result.report.rewritten}


def _measure(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and the last line of output of one fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, out.strip().splitlines()[-1] if out.strip() else ""


def scale(repeats: int, console: Console, cache: Path) -> dict:
    path = le.cached("llama", "ts", scale="1b", out=cache)
    weights = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
    shapes = [f"{n}:{','.join(map(str, d))}" for n, d in le.input_shapes(le.ONE_B, 2, 3, 5).items()]
    rows: dict[str, list[tuple[float, int, str]]] = {"floor": [], "convert --no-verify": [], "convert (verified)": []}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / "out.onnx"
        base = [CONVERT, str(path), "--tokens", "--layout", "keep-all", "-q", "-o", str(out)]
        commands = {
            "floor": [sys.executable, "-c", FLOOR, str(path), str(out)],
            "convert --no-verify": [*base, "--no-verify"],
            "convert (verified)": [*base, *(a for s in shapes for a in ("--input-shape", s))],
        }
        for _ in range(repeats):
            for name, cmd in commands.items():
                rows[name].append(_measure(cmd))
                for f in Path(tmp).iterdir():
                    f.unlink() if f.is_file() else shutil.rmtree(f)
    table = Table(title=f"~1.1B-parameter Llama (float32, {weights / 1e9:.2f} GB with the graph), fresh processes")
    for col in ("command", "seconds (median)", "peak RSS GB (max)", "last line"):
        table.add_column(col)
    result: dict = {"weight_bytes": weights}
    for name, runs in rows.items():
        secs, peak = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
        result[name] = {"seconds": secs, "peak_rss": peak, "last": runs[-1][2]}
        table.add_row(name, f"{secs:.1f}", f"{peak / 1e9:.2f}", runs[-1][2][:90])
    console.print(table)
    floor = result["floor"]["seconds"]
    result["time_ratio"] = result["convert --no-verify"]["seconds"] / floor
    result["peak_ratio"] = result["convert (verified)"]["peak_rss"] / weights
    console.print(
        f"conversion / floor: x{result['time_ratio']:.2f} (goal <= 2); "
        f"peak of the verified run / weight bytes: x{result['peak_ratio']:.2f} (goal <= 2)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--forms", action="store_true", help="the per-form latency table (the default when nothing is chosen)")
    p.add_argument("--nbits", action="store_true", help="MatMulNBits against its converted form, one token")
    p.add_argument("--scale", action="store_true", help="the 1B conversion: time and peak memory against the floor")
    p.add_argument("--runs", type=int, default=30, help="timed runs per model (default: 30)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per command in --scale (default: 2)")
    p.add_argument("--cache", type=Path, default=le.DEFAULT_OUT, help=f"where the exports are kept (default: {le.DEFAULT_OUT})")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/llm.json"))
    args = p.parse_args(argv)
    if le.missing():
        print(f"benchmarks.llm needs torch and transformers: {le.missing()}", file=sys.stderr)
        return 2
    console = Console()
    report: dict = {}
    if args.forms or not (args.nbits or args.scale):
        report["forms"] = forms(args.runs, console)
    if args.nbits:
        report["nbits"] = nbits(args.runs, console)
    if args.scale:
        report["scale"] = scale(args.repeats, console, args.cache)
    publish(console, args.json, [report], runs=args.runs, onnxruntime=ort.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
