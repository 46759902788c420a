"""The ``convert`` command: parsing, tables, progress and exit codes over ``converter.convert``.

Exit status: 0 success (also when nothing needed rewriting), 1 verification mismatch (nothing
written), 2 usage errors and bad input (one line on stderr; the traceback only with -v).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
from rich.console import Console
from rich.table import Table

from .errors import ConverterError, InputError
from .pipeline import convert
from .report import ConvertReport, VerifyReport
from .save import write_atomic

PROG = "convert"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the user asked for the exact problem.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Rewrite dense layers (MatMul + Add) on 4D tensors into 1x1 Convs and verify the result in onnxruntime.",
    )
    p.add_argument("input", help="ONNX model, TensorFlow SavedModel folder, or Keras .keras file")
    p.add_argument("-o", "--output", help="where to write the result (default: <stem>_conv.onnx beside the input)")
    p.add_argument("--no-verify", action="store_true", help="skip running both models in onnxruntime")
    p.add_argument(
        "--no-fold-transposes", action="store_true", help="keep every Transpose the rewrite adds (skip the layout cleanup)"
    )
    p.add_argument("--ep", choices=["cpu", "cuda"], default="cpu", help="execution provider for checks (default: cpu)")
    p.add_argument("--atol", type=_tolerance, help="absolute tolerance (default per dtype: fp32 1e-5, fp16 1e-2)")
    p.add_argument("--rtol", type=_tolerance, help="relative tolerance (default per dtype: fp32 1e-4, fp16 1e-2)")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        type=_input_shape,
        metavar="NAME:DIMS",
        help="concrete shape for an input with symbolic dims, e.g. x:1,224,224,3 (repeatable)",
    )
    p.add_argument("--inputs", metavar="FILE.npz", help="feed these arrays (keyed by input name) instead of random data")
    p.add_argument("--report", metavar="FILE.json", help="write the full report as JSON")
    p.add_argument("--dry-run", action="store_true", help="list every candidate with its decision; write nothing")
    p.add_argument("--force", action="store_true", help="write the result even when verification finds a mismatch")
    p.add_argument("--seed", type=int, default=0, help="seed for the random verification inputs (default: 0)")
    tf = p.add_argument_group("TensorFlow input")
    tf.add_argument("--signature", default="serving_default", help="SavedModel signature (default: serving_default)")
    tf.add_argument("--tag", default="serve", help="SavedModel tag (default: serve)")
    tf.add_argument("--opset", type=int, default=17, help="ONNX opset tf2onnx converts to (default: 17)")
    tf.add_argument("--allow-h5", action="store_true", help="load a legacy Keras .h5 file (runs its Lambda layers' code)")
    tf.add_argument(
        "--trust-model",
        action="store_true",
        help="run a SavedModel even if it uses ops outside the audited allowlist (file or network I/O, Python calls, ...)",
    )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="print only the final verdict line")
    noise.add_argument("-v", "--verbose", action="store_true", help="show tracebacks for errors")
    return p


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {text!r}")
    return value


def _input_shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition(":")
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected NAME:DIM,DIM,... with non-negative integers, got {text!r}")
    return name, shape


def _load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read input arrays ({e})") from e


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Console(highlight=False, soft_wrap=True)
    # Our own stream to the terminal: the TensorFlow front end silences file descriptor 2 while
    # TensorFlow's native code runs, and our progress and errors must not go with it.
    err = Console(file=os.fdopen(os.dup(2), "w"), highlight=False, soft_wrap=True)
    try:
        shapes = dict(args.input_shape)
        inputs = _load_npz(args.inputs) if args.inputs else None
        with _progress(err, enabled=not args.quiet and err.is_terminal) as on_step:
            report = convert(
                args.input,
                args.output,
                verify_outputs=not args.no_verify,
                fold_transposes=not args.no_fold_transposes,
                providers=args.ep,
                atol=args.atol,
                rtol=args.rtol,
                input_shapes=shapes,
                inputs=inputs,
                dry_run=args.dry_run,
                signature=args.signature,
                tag=args.tag,
                opset=args.opset,
                native_logs=args.verbose,
                force=args.force,
                allow_h5=args.allow_h5,
                trust_model=args.trust_model,
                on_step=on_step,
            )
        if args.report:
            write_atomic(Path(args.report), json.dumps(report.to_dict(), indent=2).encode() + b"\n")
    except ConverterError as e:
        if args.verbose:
            traceback.print_exc()
        err.print(f"{PROG}: error: {e}", markup=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print(f"{PROG}: interrupted; nothing was written", markup=False)
        return 130
    for warning in report.warnings:
        err.print(f"{PROG}: warning: {warning}", markup=False)
    if not args.quiet:
        print_report(out, report)
    out.print(verdict(report), markup=False)
    return 0 if report.ok else 1


@contextlib.contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[object]:
    if not enabled:
        yield None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(message)


def verdict(report: ConvertReport) -> str:
    rw = report.rewrite
    what = f"rewrote {rw.rewritten} of {rw.candidates} candidates"
    if report.dry_run:
        return f"DRY RUN: {rw.rewritten} of {rw.candidates} candidates would be rewritten; nothing written"
    if not report.ok and report.forced:
        return f"FAILED: verification found mismatches; wrote {report.output} anyway (--force)"
    if not report.ok:
        return f"FAILED: verification found mismatches; {report.output} was not written"
    checked = "verified" if report.verify is not None else "not verified (--no-verify)"
    return f"PASSED: {what}, {checked}, wrote {report.output}"


def print_report(console: Console, report: ConvertReport) -> None:
    rw = report.rewrite
    console.print(f"{report.input} -> {report.output or '(dry run)'}", markup=False)
    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("before", justify="right")
    ops.add_column("after", justify="right")
    for op in sorted(set(rw.ops_before) | set(rw.ops_after)):
        b, a = rw.ops_before.get(op, 0), rw.ops_after.get(op, 0)
        ops.add_row(op, str(b), str(a) if a == b else f"[bold]{a}[/bold]")
    console.print(ops)
    console.print(f"Rewritten {rw.rewritten} of {rw.candidates} candidates", markup=False)
    if rw.cleanup is not None:
        console.print(
            f"Transposes: {rw.ops_rewritten.get('Transpose', 0)} after the rewrite, "
            f"{rw.ops_after.get('Transpose', 0)} after the layout cleanup",
            markup=False,
        )
    kept_bias = [d for d in rw.decisions if d.rewritten and d.notes.get("bias_reason")]
    if kept_bias:
        console.print(
            f"  {len(kept_bias)} kept their Add ({', '.join(sorted({d.notes['bias_reason'] for d in kept_bias}))})", markup=False
        )
    for reason, n in rw.skipped_by_reason.items():
        example = next(d for d in rw.decisions if d.reason == reason)
        console.print(f"  skipped {n} x {reason}: e.g. {example.node} ({example.detail})", markup=False)
    if report.dry_run:
        console.print(_decisions_table(report))
    for check, against in ((report.verify, "original"), (report.verify_reference, "")):
        if check is None:
            continue
        console.print(_verify_table(check, against or check.providers[0]))
        for line in check.assumptions:
            console.print(f"  assumed: {line}", markup=False)
        for line in check.interface_problems:
            console.print(f"  interface: {line}", markup=False)
    console.print("Timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in report.timings.items()), markup=False)


def _decisions_table(report: ConvertReport) -> Table:
    t = Table(title="Candidates", title_justify="left")
    for col in ("graph", "node", "decision", "reason"):
        t.add_column(col)
    for d in report.rewrite.decisions:
        if d.rewritten:
            bias = "bias folded" if d.notes.get("bias_folded") else f"Add kept: {d.notes.get('bias_reason') or 'no Add'}"
            t.add_row(d.graph, d.node, f"rewrite ({d.rule})", bias)
        else:
            t.add_row(d.graph, d.node, "skip", f"{d.reason}: {d.detail}")
    return t


def _verify_table(v: VerifyReport, against: str) -> Table:
    feeds = "; ".join(f"{i.name} {i.dtype} {_dims(i.shape)} {i.source}" for i in v.inputs)
    where = "onnxruntime " + ", ".join(v.providers) if against == "original" else against
    t = Table(
        title=f"Verification: rewritten vs {'original on ' + where if against == 'original' else where} (seed {v.seed})",
        title_justify="left",
        caption=f"inputs: {feeds}",
        caption_justify="left",
    )
    for col, just in (
        ("output", "left"),
        ("dtype", "left"),
        ("shape", "left"),
        ("max abs", "right"),
        ("max rel", "right"),
        ("atol/rtol", "right"),
        ("result", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for o in v.outputs:
        result = "[green]pass[/green]" if o.passed else f"[red]FAIL[/red] {o.problem or f'{o.mismatched} elements'}"
        t.add_row(
            o.name,
            o.dtype,
            _dims(o.shape),
            f"{o.max_abs_error:.2g}",
            f"{o.max_rel_error:.2g}",
            f"{o.atol:.2g}/{o.rtol:.2g}",
            result,
        )
    return t


def _dims(shape: list[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"
