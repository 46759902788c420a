"""Quantized models: what the rewrite does to onnxruntime.quantization output, and what it costs or saves.

For each zoo model (its ONNX builders at the zoo's sizes) and each quantization form, the float model is
quantized by onnxruntime.quantization (random calibration), converted as the command does by default
(rewrite, cleanup, the never-worse layout policy, verification), and the table shows: layers rewritten of
the quantized dense layers, Transposes before -> after, the verification verdict, the largest output
difference in quantization steps of the output (onnxruntime, default optimizations as deployed, where the
QDQ groups are fused into integer kernels; and with optimizations off, where every op runs as written), and
the latency ratio converted / original at batch 1.

A second table times one dense layer of each model alone, same integers in every form: the original
MatMulInteger (uint8 x int8, NHWC), the ConvInteger the rule wrote before (uint8 x int8, NCHW) and the one it
writes now (uint8 x uint8, weight and zero point + 128): onnxruntime's kernel choice, without the graph around it.

    python -m benchmarks.quantized [--runs 30] [--threads 1] [--json benchmarks/results/quantized.json]
    python -m benchmarks.quantized --model keras --format dynamic --runs 20 --json /tmp/keras_dynamic.json

``--model`` (a part of the model's label) and ``--format`` (qdq, qoperator, dynamic) pick rows, each repeatable;
a run that picks rows writes its JSON only where ``--json`` says (the default file holds the whole table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

import converter
from benchmarks._results import machine, publish
from models import graphs
from models.quantized import QDQ_FORMS, Form, quantize

MODELS: dict[str, tuple[Callable[[], onnx.ModelProto], list[int]]] = {
    "pytorch_convnext_block (C=32, 14x10)": (lambda: graphs.convnext_block(c=32, h=14, w=10), [2, 32, 14, 10]),
    "convnext_stage_ln (C=96, 28x20, 2 blocks)": (
        lambda: graphs.convnext_stage(96, 28, 20, blocks=2, layernorm=True),
        [1, 96, 28, 20],
    ),
}
FORMS = (*QDQ_FORMS, *(Form(f, s, p) for f in ("qoperator", "dynamic") for s in (True, False) for p in (True, False)))
_DENSE = {"MatMul", "QLinearMatMul", "MatMulInteger"}


def session(model: onnx.ModelProto, threads: int, optimized: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def output_step(model: onnx.ModelProto) -> float | None:
    """The scale of a per-tensor DequantizeLinear writing the first output, if one does."""
    producer = next((n for n in model.graph.node if n.output and n.output[0] == model.graph.output[0].name), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    inits = {t.name: t for t in model.graph.initializer}
    scale = numpy_helper.to_array(inits[producer.input[1]]) if producer.input[1] in inits else None
    return float(scale) if scale is not None and scale.size == 1 else None


def max_steps(original: onnx.ModelProto, result: onnx.ModelProto, feeds: dict[str, np.ndarray], optimized: bool) -> str:
    want = session(original, 1, optimized).run(None, feeds)[0]
    got = session(result, 1, optimized).run(None, feeds)[0]
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    step = output_step(original)
    if diff == 0.0:
        return "0 (bit-exact)"
    return f"{diff / step:.2f} steps" if step else f"{diff:.2e} abs"


def latency_ratio(
    original: onnx.ModelProto, result: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, threads: int
) -> float:
    a, b = session(original, threads), session(result, threads)
    for s in (a, b):
        for _ in range(3):
            s.run(None, feeds)
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(runs):
        order = [(0, a), (1, b)] if i % 2 == 0 else [(1, b), (0, a)]
        for k, s in order:
            start = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[1]) / statistics.median(times[0])


# One layer of each model: (label, H, W, C, K), batch 1, the expanding and the projecting dense layer.
LAYERS = [
    ("block expand", 14, 10, 32, 128),
    ("block project", 14, 10, 128, 32),
    ("stage expand", 28, 20, 96, 384),
    ("stage project", 28, 20, 384, 96),
]


def _integer_layer(op: str, x: np.ndarray, w: np.ndarray, w_zero: np.ndarray) -> onnx.ModelProto:
    """One MatMulInteger or 1x1 ConvInteger on ``x`` (its activation zero point 131) and a constant weight."""
    x_type = helper.np_dtype_to_tensor_dtype(x.dtype)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(131, np.uint8), "xz")]
    inits.append(numpy_helper.from_array(w_zero, "wz"))
    attrs = {"kernel_shape": [1, 1]} if op == "ConvInteger" else {}
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **attrs)],
        "layer",
        [helper.make_tensor_value_info("x", x_type, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _median_us(s: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(5):
        s.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def layer_timings(runs: int, threads: int) -> list[dict]:
    """Per layer: median microseconds of the original MatMulInteger and the two ConvInteger forms, same integers."""
    rows = []
    for label, h, w, c, k in LAYERS:
        rng = np.random.default_rng(0)
        weight = rng.integers(-128, 128, (c, k)).astype(np.int8)  # quantize_dynamic's symmetric int8: zero point 0
        x = rng.integers(0, 256, (1, h, w, c)).astype(np.uint8)
        x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        w_kc11 = np.ascontiguousarray(weight.T).reshape(k, c, 1, 1)
        shift = lambda v: (v.astype(np.int16) + 128).astype(np.uint8)  # noqa: E731
        forms = {
            "matmul_integer_u8s8": (_integer_layer("MatMulInteger", x, weight, np.array(0, np.int8)), x),
            "conv_integer_u8s8": (_integer_layer("ConvInteger", x_nchw, w_kc11, np.array(0, np.int8)), x_nchw),
            "conv_integer_u8u8_shifted": (
                _integer_layer("ConvInteger", x_nchw, shift(w_kc11), shift(np.array(0, np.int8))),
                x_nchw,
            ),
            # What is left of the gap: MatMulInteger's own uint8 x uint8 kernel, on the same shifted integers.
            "matmul_integer_u8u8_shifted": (_integer_layer("MatMulInteger", x, shift(weight), shift(np.array(0, np.int8))), x),
        }
        sessions = {name: session(model, threads) for name, (model, _) in forms.items()}
        outs = {name: sessions[name].run(None, {"x": feed})[0] for name, (_, feed) in forms.items()}
        reference = outs["matmul_integer_u8s8"]
        assert all(np.array_equal(o if n.startswith("matmul") else o.transpose(0, 2, 3, 1), reference) for n, o in outs.items())
        row: dict = {"layer": f"{label} ({h}x{w}, C={c}, K={k})"}
        row |= {f"{name}_us": _median_us(sessions[name], {"x": feed}, runs) for name, (_, feed) in forms.items()}
        rows.append(row)
    return rows


def _models(folder: Path) -> list[tuple[str, Callable[[Path], Path], list[int], tuple[Form, ...]]]:
    """(label, float model writer, input shape, forms): the ONNX builders, and the Keras ConvNeXtTiny (tf2onnx's
    Tensordots, every form) where TensorFlow is installed."""

    def writer(build: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
        return lambda path: (onnx.save(build(), path), path)[1]

    found = [(label, writer(build), shape, FORMS) for label, (build, shape) in MODELS.items()]
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return found
    from models.quantized import keras_convnext_onnx

    keras = lambda path: keras_convnext_onnx(folder / "keras_convnext_tiny.onnx")  # noqa: E731
    return [*found, ("Keras ConvNeXtTiny (64x48, tf2onnx)", keras, [1, 64, 48, 3], FORMS)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/quantized.json, for a whole run")
    p.add_argument("--model", action="append", default=[], help="only the models whose label holds this (repeatable)")
    p.add_argument("--format", action="append", default=[], choices=("qdq", "qoperator", "dynamic"), help="only this form")
    args = p.parse_args(argv)
    picked = bool(args.model or args.format)
    if args.json is None and not picked:
        args.json = Path("benchmarks/results/quantized.json")
    console = Console()
    rows: list[dict] = []
    table = Table(title=f"onnxruntime {ort.__version__} CPU: onnxruntime.quantization output, converted")
    for col in (
        "model",
        "form",
        "rewritten",
        "Transposes",
        "verdict",
        "max error (optimized)",
        "max error (as written)",
        "latency b1",
    ):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, make, shape, all_forms in _models(folder):
            if args.model and not any(m.lower() in label.lower() for m in args.model):
                continue
            forms = [f for f in all_forms if not args.format or f.fmt in args.format]
            source = make(folder / "float.onnx")
            x = onnx.load(source).graph.input[0].name
            for form in forms:
                qpath = quantize(source, folder / f"{form.name}.onnx", form, {x: shape})
                original = onnx.load(qpath)
                dense = sum(n.op_type in _DENSE for n in original.graph.node)
                report = converter.convert(qpath, folder / "out.onnx", force=True)  # the default layout policy
                result = onnx.load(folder / "out.onnx")
                rw = report.rewrite
                feeds = {x: np.random.default_rng(3).standard_normal(shape).astype(np.float32)}
                one = {x: feeds[x][:1]}
                row = {
                    "model": label,
                    "form": form.name,
                    "rewritten": rw.rewritten,
                    "dense_layers": dense,
                    "transposes_before": rw.ops_before.get("Transpose", 0),
                    "transposes_after": rw.ops_after.get("Transpose", 0),
                    "verdict": report.verify.verdict if report.verify else "not verified",
                    "error_optimized": max_steps(original, result, feeds, True),
                    "error_as_written": max_steps(original, result, feeds, False),
                    "latency_ratio_b1": latency_ratio(original, result, one, args.runs, args.threads),
                }
                rows.append(row)
                table.add_row(
                    label,
                    form.name,
                    f"{row['rewritten']} of {dense}",
                    f"{row['transposes_before']} -> {row['transposes_after']}",
                    row["verdict"],
                    row["error_optimized"],
                    row["error_as_written"],
                    f"{row['latency_ratio_b1']:.2f}",
                )
    console.print(table)
    layers = layer_timings(max(args.runs, 100), args.threads)
    kernels = Table(title="One dense layer, batch 1, same integers: median us (ratio to MatMulInteger)")
    for col in (
        "layer",
        "MatMulInteger u8 x s8",
        "ConvInteger u8 x s8 (before)",
        "ConvInteger u8 x u8, + 128 (now)",
        "MatMulInteger u8 x u8, + 128",
    ):
        kernels.add_column(col)
    forms = ("conv_integer_u8s8", "conv_integer_u8u8_shifted", "matmul_integer_u8u8_shifted")
    for row in layers:
        base = row["matmul_integer_u8s8_us"]
        cells = [f"{row[f'{n}_us']:.1f} ({row[f'{n}_us'] / base:.2f})" for n in forms]
        kernels.add_row(row["layer"], f"{base:.1f}", *cells)
    console.print(kernels)
    if args.json is None:
        console.print(f"machine: {machine()}\nnot saved: a run of picked rows writes only where --json says")
        return 0
    publish(console, args.json, rows, threads=args.threads, runs=args.runs, layers=layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
