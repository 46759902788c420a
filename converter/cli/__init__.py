"""The ``convert`` command (also installed as ``dense2conv``): parsing, tables, progress and exit codes
over ``converter.convert``.

Exit status: 0 success (also when nothing needed rewriting, and with --no-verify), 1 verification
found a mismatch, 3 verification incomplete (nothing disagreed, but some rewritten layer lacks its
structural proof or its numeric check; see verify.py) -- after 1 and 3 nothing is written unless
--force; 2 usage errors and bad input (one line on stderr; the traceback only with -v);
130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (temporary files removed, one line).

Everything printed is data: names from the model and paths from the command line are shown with
control characters escaped (an ANSI escape or a newline in a tensor name never reaches the
terminal raw) and never interpreted as rich markup. Unless -v is given, file descriptor 2 goes to
/dev/null while the work runs, so that what libraries print (onnxruntime's native log, Python
warnings) does not add to our one line; our own messages go to a copy of the real stderr.

Output that is not a terminal (a pipe, a file) is printed at full width: no table is cut to 80
columns or wrapped, so ``convert ... > log.txt`` and ``| grep`` see whole rows. Progress goes to
stderr, only when it is a terminal, is cleared when done, and never shows with -q.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from converter import __version__
from converter.errors import ConverterError, InputError
from converter.files.load import external_data_files, load_arrays, model_bytes, model_interface
from converter.files.paths import check_output, check_target, refuse_inside, refuse_overwriting
from converter.files.save import write_atomic
from converter.options import (
    DEFAULT_MAX_MEMORY,
    LAYOUTS,
    ConvertOptions,
    OutputOptions,
    RewriteOptions,
    TensorFlowOptions,
    VerifyOptions,
)
from converter.pipeline import convert, default_output
from converter.report import ConvertReport, OutputCheck, RewriteReport, VerifyReport
from converter.rewriter.layout import LAYOUT_COST
from converter.verifier.numbers.outputs import DEFAULT_TOLERANCES

PROG = "convert"
# The same command under a name no other tool has: on most Linux machines ImageMagick's `convert` may come first on PATH.
ALIAS = "dense2conv"
# Columns for output that is not a terminal: wide enough that no table is cut or wrapped.
UNLIMITED_WIDTH = 1 << 16


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the user asked for the exact problem.
        self.exit(2, f"{self.prog}: error: {shown(message)} (see {self.prog} --help)\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Rewrite dense layers (MatMul + Add) on 4D tensors into 1x1 Convs and verify the result in onnxruntime.",
    )
    p.set_defaults(prog=prog)
    p.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s (dense2conv) {__version__}",  # ImageMagick's convert says "Version: ImageMagick ..."
    )
    p.add_argument("input", help="ONNX model, TensorFlow SavedModel folder, or Keras .keras file")
    p.add_argument("-o", "--output", help="where to write the result (default: <stem>_conv.onnx beside the input)")
    p.add_argument("--no-verify", action="store_true", help="skip running both models in onnxruntime")
    p.add_argument(
        "--no-fold-transposes", action="store_true", help="keep every Transpose the rewrite adds (skip the layout cleanup)"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help=(
            "what to do with a layer whose layout Transposes the cleanup cannot absorb: never-worse (the default) "
            "declines it (reason layout_cost), so the result never has more Transposes than the original, not "
            "counting those between the model's inputs/outputs and its first/last layout-sensitive op; keep-all "
            "rewrites every layer anyway; nchw is keep-all and also carries LayerNormalization over the channel axis "
            "into NCHW (more nodes, fewer Transposes). With --no-fold-transposes only keep-all applies; with "
            "--tokens the default is nchw"
        ),
    )
    p.add_argument(
        "--tokens",
        action="store_true",
        help=(
            "also rewrite dense layers on token sequences [B, S, C] (transformers, MLP-Mixer: rank 3) into 1x1 Convs "
            "in the [B, C, 1, S] layout; Mixer's token mixing (Transpose, Linear, Transpose) becomes a Conv over the "
            "tokens. Without it such layers are declined rank_not_4 and the output is as before"
        ),
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
        help="concrete shape for an input with symbolic dims, e.g. x:1,224,224,3 or x:[1,224,224,3] (repeatable)",
    )
    p.add_argument("--inputs", metavar="FILE.npz", help="feed these arrays (keyed by input name) instead of random data")
    p.add_argument(
        "--report", metavar="FILE.json", help="write the full report as JSON ('-': to stdout, which then holds only the JSON)"
    )
    p.add_argument("--dry-run", action="store_true", help="list every candidate with its decision; write nothing")
    p.add_argument("--force", action="store_true", help="write the result even when verification fails or is incomplete")
    p.add_argument("--seed", type=int, default=0, help="seed for the random verification inputs (default: 0)")
    p.add_argument("--trials", type=_positive_int, metavar="N", help="random input sets verification runs on (default: 2)")
    p.add_argument(
        "--max-memory",
        type=_memory_size,
        metavar="SIZE",
        help="most memory verification may use for inputs and outputs, e.g. 512M, 8G, 1.5G or bytes (default: 4G)",
    )
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="stop verification after this long (default: 600)")
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
    noise.add_argument("-v", "--verbose", action="store_true", help="every layer's evidence, native logs, tracebacks for errors")
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
    """``x:1,224,224,3``, or polygraphy's ``x:[1,224,224,3]``; the name may itself hold colons."""
    name, sep, dims = text.rpartition(":")
    dims = dims.strip()
    if dims.startswith("[") and dims.endswith("]"):
        dims = dims[1:-1]
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected NAME:DIM,DIM,... or NAME:[DIM,DIM,...] with non-negative integers, got {text!r}"
        )
    if math.prod(shape) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"shape {shape} of {name!r} is too large to exist (more than 2**63 elements)")
    return name, shape


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _memory_size(text: str) -> int:
    """``512M``, ``8G``, ``1.5G``, ``64k`` or plain bytes; K, M, G and T are powers of 1024 (``GB``, ``GiB`` alike)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M, 8G, 1.5G or a number of bytes, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_prog_name()).parse_args(argv)
    out = Console(file=_tolerant(sys.stdout), highlight=False, soft_wrap=True, markup=False, emoji=False)
    if not out.is_terminal:  # a pipe or a file: whole rows, not 80 columns cut with "..." or wrapped
        out.width = UNLIMITED_WIDTH
    # Our own stream to the terminal: while the work runs, file descriptor 2 goes to /dev/null
    # (unless -v), and the TensorFlow front end silences it too; our progress and errors must not go with it.
    with _stderr_copy() as stderr:
        err = Console(file=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)
        return _run(args, out, err)


def _prog_name() -> str:
    """``dense2conv`` when run under that name, else ``convert`` (also for ``python -m converter``)."""
    return ALIAS if Path(sys.argv[0] if sys.argv else "").stem == ALIAS else PROG


def _run(args: argparse.Namespace, out: Console, err: Console) -> int:
    prog = args.prog
    to_stdout = args.report == "-"
    report: ConvertReport | None = None
    watched: dict[Path, tuple[int, ...] | None] = {}
    try:
        with _signals_raise(), _quiet(enabled=not args.verbose):
            watched = _check_paths(args)
            inputs = load_arrays(args.inputs, args.max_memory or DEFAULT_MAX_MEMORY) if args.inputs else None
            with _progress(err, enabled=not args.quiet and err.is_terminal) as on_step:
                options = ConvertOptions(
                    tensorflow=TensorFlowOptions(
                        signature=args.signature,
                        tag=args.tag,
                        opset=args.opset,
                        native_logs=args.verbose,
                        allow_h5=args.allow_h5,
                        trust_model=args.trust_model,
                    ),
                    rewrite=RewriteOptions(
                        layout=args.layout, fold_transposes=not args.no_fold_transposes, tokens=args.tokens, providers=args.ep
                    ),
                    verify=None
                    if args.no_verify
                    else VerifyOptions(
                        providers=args.ep,
                        atol=args.atol,
                        rtol=args.rtol,
                        seed=args.seed,
                        trials=args.trials,
                        max_memory=args.max_memory,
                        timeout=args.timeout,
                        input_shapes=dict(args.input_shape),
                        inputs=inputs,
                    ),
                    output=OutputOptions(dry_run=args.dry_run, force=args.force),
                )
                report = convert(args.input, args.output, options=options, on_step=on_step)
            if args.report is not None and not to_stdout:
                _write_report(Path(args.report), report)
    except ConverterError as e:
        if args.verbose:
            _say(err, *traceback.format_exc().splitlines())
        _say(err, f"{prog}: error: {shown(e)}")
        return e.exit_code
    except MemoryError:
        if args.verbose:
            _say(err, *traceback.format_exc().splitlines())
        hint = "--max-memory, a smaller --input-shape or --no-verify may help"
        _say(err, f"{prog}: error: out of memory; {_what_was_written(watched)} ({hint})")
        return 2
    except (_Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, _Stopped) else signal.SIGINT
        _say(err, f"{prog}: {_STOP_WORDS.get(signum, 'stopped')}; {_what_was_written(watched)}")
        return 128 + signum
    try:
        for warning in report.warnings:
            err.print(f"{prog}: warning: {shown(warning)}")
        if to_stdout:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
            sys.stdout.flush()
            err.print(verdict(report))
        else:
            if not args.quiet:
                print_report(out, report, verbose=args.verbose, atol=args.atol, rtol=args.rtol)
            out.print(verdict(report))
            out.file.flush()
    except BrokenPipeError:
        # The reader went away (``convert ... | head``): the work is done, its status stands.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_STATUS.get(report.status, 0)


# passed, not verified and dry run end with 0.
EXIT_STATUS = {"failed": 1, "incomplete": 3}


def _check_paths(args: argparse.Namespace) -> dict[Path, tuple[int, ...] | None]:
    """Every path this run writes, checked before any work; returns them with their state now.

    ``-o`` is checked by ``convert`` itself (pipeline.py). Here: the report may not replace the
    input, its external data, the output or its data file, or the --inputs file; nor may the
    output replace the --inputs file.
    """
    source = Path(args.input)
    output = default_output(args.input) if args.output is None else args.output
    if args.dry_run:
        output = Path(output)
    else:
        output = check_output(output, source)  # convert() checks it again; here it comes first, as it did
    data = output.with_name(output.name + ".data") if output.name else output
    inputs = [(Path(args.inputs), "the --inputs file")] if args.inputs else []
    if not args.dry_run:
        refuse_overwriting(output, inputs)
        refuse_overwriting(data, inputs, "output's data file")
    written = [] if args.dry_run else [output, data]
    if args.report is not None and args.report != "-":
        report = check_target(args.report, "report")
        protected = [
            (source, "the input model"),
            (output, "the output model"),
            (data, "the output's data file"),
            *inputs,
        ]
        if source.is_dir():
            refuse_inside(report, source, f"the input SavedModel {source}", "report")
        elif report.exists() and report.resolve().is_relative_to(source.resolve().parent):
            # Only a file beside the model can be its external data (load.py refuses any other).
            protected += [(path, "the input's external data") for path in external_data_files(source)]
        refuse_overwriting(report, protected, "report")
        written.append(report)
    return {path: _fingerprint(path) for path in written}


def _write_report(path: Path, report: ConvertReport) -> None:
    data = json.dumps(report.to_dict(), indent=2).encode() + b"\n"
    try:
        write_atomic(path, data, what="report")
    except InputError as e:
        if report.written:
            raise InputError(f"{e}; the model was written to {report.output}") from e
        raise


def _what_was_written(watched: dict[Path, tuple[int, ...] | None]) -> str:
    changed = [shown(path) for path, before in watched.items() if _fingerprint(path) != before]
    if not changed:
        return "nothing was written"
    return f"{', '.join(changed)} {'was' if len(changed) == 1 else 'were'} written"


def _fingerprint(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def shown(text: object) -> str:
    """``text`` safe to print: control characters, bidi overrides and undecodable bytes become escapes."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def _say(console: Console, *lines: str) -> None:
    """Print lines (each shown as data); a stderr that is gone (a closed terminal) must not turn them into a traceback."""
    with contextlib.suppress(OSError, ValueError):
        for line in lines:
            console.print(shown(line))
        console.file.flush()


def _stderr_copy() -> TextIO:
    """A stream on a copy of file descriptor 2, escaping what its encoding cannot hold."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        return os.fdopen(os.dup(2), "w", encoding=encoding, errors="backslashreplace")
    except OSError:  # no file descriptor 2 at all
        return open(os.devnull, "w")


def _tolerant(stream: TextIO) -> TextIO:
    """stdout that escapes what its encoding cannot hold (an ASCII locale and a name in Greek), rather than raising."""
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")
    return stream


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null and ignore Python warnings while the work runs.

    Libraries write to stderr on their own (onnxruntime's native log, e.g. a telemetry warning
    when HOME is not writable; onnx's "experimental format" warning); the promise is one line.
    Restored before any exception leaves, so a real bug's traceback is still seen.
    """
    if not enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            yield
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _Stopped(BaseException):
    """SIGTERM or SIGHUP (or SIGINT) turned into an exception, like KeyboardInterrupt: every ``finally`` runs,
    so temporary files are removed (save.py)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOPPING = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", getattr(signal, "SIGHUP", -1): "hung up"}


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    def stop(signum: int, _frame: Any) -> None:
        # One is enough: a second signal must not cut the cleanup of the first short.
        for s in _STOPPING:
            signal.signal(s, signal.SIG_IGN)
        raise _Stopped(signum)

    try:
        previous = {s: signal.signal(s, stop) for s in _STOPPING}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[object]:
    """One transient line on ``console`` (stderr): a spinner, the step with its counts, the time so far.

    The pipeline names its steps (``loading ...``, ``rewriting``, the verification's runs with their
    trial counts, ``saving ...``); here they are numbered, and those between the rewrite and the save
    are shown as verification. The line is cleared when the work ends, so nothing of it stays.
    """
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        steps = 0

        def on_step(message: str) -> None:
            nonlocal steps
            # "rewriting: candidate 40 of 800" counts inside the step "rewriting" began; the rest are steps.
            if not (message.startswith("rewriting: ") and steps):
                steps += 1
            progress.update(task, description=f"[{steps}] {shown(step_words(message))}", refresh=True)

        yield on_step


def step_words(message: str) -> str:
    """A pipeline step as the progress line says it: the verification's runs read ``verifying: ...``."""
    if message.startswith(("loading", "converting", "rewriting", "saving")):
        return message
    return f"verifying: {message}"


def verdict(report: ConvertReport) -> str:
    """The last line: PASSED, FAILED, INCOMPLETE (nothing disagreed, but evidence is missing), DONE, UNCHANGED
    (nothing to rewrite; the model is written as it was) or DRY RUN."""
    rw = report.rewrite
    what = f"rewrote {rw.rewritten} of {rw.candidates} candidates"
    output = shown(report.output)
    if report.dry_run:
        declined = rw.skipped_by_reason.get(LAYOUT_COST, 0)
        policy = f" ({declined} declined for {LAYOUT_COST})" if declined else ""
        return f"DRY RUN: {rw.rewritten} of {rw.candidates} candidates would be rewritten{policy}; nothing written"
    written = f"wrote {output} anyway (--force)" if report.forced else f"{output} was not written"
    if report.status == "failed":
        return f"FAILED: verification found mismatches; {written}"
    if report.status == "incomplete":
        return f"INCOMPLETE: {_missing_evidence(report)}; {written}" + ("" if report.forced else " (--force writes it)")
    if not rw.rewritten:
        checked = ", not verified (--no-verify)" if report.status == "not verified" else ""
        return f"UNCHANGED: nothing to rewrite ({_why_nothing(rw)}); wrote {output}, the model as it was{checked}"
    if report.status == "not verified":
        return f"DONE: {what}, not verified (--no-verify), wrote {output}"
    layers = report.verify.layers if report.verify is not None else []
    evidence = f"{len(layers)} layers proved by structure and checked by numbers" if layers else "outputs identical in structure"
    return f"PASSED: {what}, verified ({evidence}), wrote {output}"


def _why_nothing(rw: RewriteReport) -> str:
    if not rw.candidates:
        return "no MatMul or Gemm that could be a dense layer on a 4D tensor"
    reasons = ", ".join(f"{n} x {shown(reason)}" for reason, n in rw.skipped_by_reason.items())
    return f"{rw.candidates} candidate{'s' * (rw.candidates != 1)} skipped: {reasons}"


def _missing_evidence(report: ConvertReport) -> str:
    checks = [v for v in (report.verify, report.verify_reference) if v is not None]
    layers = [layer for v in checks for layer in v.layers]
    short = [layer for layer in layers if not layer.verified]
    unproved = [u for v in checks for u in (v.structure or {}).get("unproved", [])]
    if short:
        first = short[0]
        why = first.structure_detail if first.structure != "proved" else first.numbers_detail
        return f"{len(short)} of {len(layers)} rewritten layers lack evidence ({shown(first.conv)}: {shown(why)})"
    if unproved:
        return f"the structure could not be proved ({shown(unproved[0])})"
    return "verification could not prove the result"


def print_report(
    console: Console, report: ConvertReport, verbose: bool = False, atol: float | None = None, rtol: float | None = None
) -> None:
    """The human summary. Every name and path in it is shown as data (``shown``), never as markup.

    ``verbose`` lists every candidate's decision and every rewritten layer's evidence; otherwise only
    the layers that lack some. ``atol`` / ``rtol`` are those the user gave (None: the defaults ran).
    """
    rw = report.rewrite
    console.print(f"{shown(report.input)} -> {shown(report.output or '(dry run)')}")
    signature = _signature_line(report)
    if signature:
        console.print(signature)
    ops = Table(title="Ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("before", justify="right")
    ops.add_column("after", justify="right")
    ops.add_column("delta", justify="right")
    for op in sorted(set(rw.ops_before) | set(rw.ops_after)):
        b, a = rw.ops_before.get(op, 0), rw.ops_after.get(op, 0)
        ops.add_row(shown(op), str(b), Text(str(a), style="" if a == b else "bold"), f"{a - b:+d}" if a != b else "")
    console.print(ops)
    size = _size_line(report)
    if size:
        console.print(size)
    console.print(f"Rewritten {rw.rewritten} of {rw.candidates} candidates")
    if rw.layout is not None and rw.candidates:
        console.print(layout_line(rw))
    kept_bias = [d for d in rw.decisions if d.rewritten and d.notes.get("bias_reason")]
    if kept_bias:
        console.print(
            f"  {len(kept_bias)} kept their Add ({shown(', '.join(sorted({d.notes['bias_reason'] for d in kept_bias})))})"
        )
    for reason, n in rw.skipped_by_reason.items():
        example = next(d for d in rw.decisions if d.reason == reason)
        console.print(f"  skipped {n} x {shown(reason)}: e.g. {shown(example.node)} ({shown(example.detail)})")
    if report.dry_run or verbose:
        console.print(_decisions_table(report))
    for check, against in ((report.verify, "original"), (report.verify_reference, "")):
        if check is None:
            continue
        console.print(_verify_table(check, against or check.providers[0]))
        for line in _failure_lines(check):
            console.print(f"  {line}")
        console.print(f"  tolerance: {_tolerance_rule(check, atol, rtol, end_to_end=bool(against))}")
        for dim in check.dims:
            console.print(f"  dim {shown(repr(dim.name))} set to {dim.value} ({shown(dim.why)})")
        for line in check.assumptions:
            console.print(f"  assumed: {shown(line)}")
        for line in check.notes:
            console.print(f"  note: {shown(line)}")
        for line in check.interface_problems:
            console.print(f"  interface: {shown(line)}")
        if check.structure is not None:
            _print_evidence(console, check, verbose)
    console.print("Timings: " + ", ".join(f"{shown(k)} {v:.3f}s" for k, v in report.timings.items()))


def _print_evidence(console: Console, check: VerifyReport, verbose: bool) -> None:
    """One line for the layers and the structure, then the layers that lack evidence (all of them with -v)."""
    layers = check.layers
    structure = check.structure or {}
    if layers:
        proved = sum(layer.structure == "proved" for layer in layers)
        passed = [layer for layer in layers if layer.numbers == "passed"]
        worst = max((layer.output_bound_ratio for layer in passed), default=0.0)
        worst_in = max((layer.input_rel_error for layer in passed), default=0.0)
        console.print(
            f"Layers: {len(layers)} rewritten; structure proved for {proved}; numbers passed for {len(passed)} "
            f"(worst output error {worst:.2g} of its rounding bound, worst input deviation {worst_in:.2g})"
        )
        weak = sum(layer.weak_shape for layer in layers)
        if weak:
            console.print(f"  {weak} layers saw N, H or W of 1, or H == W: their layout rests on the structural proof")
    for line in structure.get("problems", []):
        console.print(f"  structure: {shown(line)}")
    for line in structure.get("unproved", [])[:5]:
        console.print(f"  not proved: {shown(line)}")
    shown_layers = layers if verbose else [layer for layer in layers if not layer.verified]
    if not shown_layers:
        return
    t = Table(title="Layers" if verbose else "Layers lacking evidence", title_justify="left")
    for col in ("conv", "graph", "where", "structure", "numbers", "error / bound", "detail"):
        t.add_column(col, justify="right" if col == "error / bound" else "left")
    for layer in shown_layers[: None if verbose else 20]:
        detail = layer.structure_detail if layer.structure != "proved" else layer.numbers_detail
        t.add_row(
            shown(layer.conv),
            shown(layer.graph),
            shown(layer.where),
            Text(layer.structure, style="" if layer.structure == "proved" else "red"),
            Text(layer.numbers, style="" if layer.numbers == "passed" else "red"),
            f"{layer.output_bound_ratio:.2g}",
            shown(detail),
        )
    console.print(t)
    if not verbose and len(shown_layers) > 20:
        console.print(f"  ... and {len(shown_layers) - 20} more (-v lists them all)")


def layout_line(rw: RewriteReport) -> str:
    """The layout policy in one line: its mode, the Transposes through the rewrite, what it declined."""
    lay = rw.layout
    assert lay is not None
    mode = lay.mode + ("" if rw.cleanup is not None or lay.mode != "keep-all" else ", no cleanup")
    line = (
        f"Layout {mode}: Transposes {lay.transposes_original} in the original -> {lay.transposes_rewritten} after the "
        f"rewrite -> {lay.transposes_final} final"
    )
    if lay.transposes_keep_all != lay.transposes_final:
        line += f" (rewriting every layer left {lay.transposes_keep_all})"
    if lay.edge_original or lay.edge_final:
        line += f"; at the model's inputs/outputs {lay.edge_original} -> {lay.edge_final}, not counted by the policy"
    if lay.declined:
        line += f"; {lay.declined} layer{'s' * (lay.declined != 1)} declined for {LAYOUT_COST}"
    return line


def _decisions_table(report: ConvertReport) -> Table:
    t = Table(title="Candidates", title_justify="left")
    for col in ("graph", "node", "input", "decision", "reason"):
        t.add_column(col)
    for d in report.rewrite.decisions:
        kind = shown(d.activation or "")
        if d.rewritten:
            bias = "bias folded" if d.notes.get("bias_folded") else f"Add kept: {d.notes.get('bias_reason') or 'no Add'}"
            t.add_row(shown(d.graph), shown(d.node), kind, shown(f"rewrite ({d.rule})"), shown(bias))
        else:
            decision = "decline (layout)" if d.reason == LAYOUT_COST else "skip"
            t.add_row(shown(d.graph), shown(d.node), kind, decision, shown(f"{d.reason}: {d.detail}"))
    return t


def _verify_table(v: VerifyReport, against: str) -> Table:
    feeds = "; ".join(f"{i.name} {i.dtype} {_dims(i.shape)} {i.source}" for i in v.inputs)
    where = "onnxruntime " + ", ".join(v.providers) if against == "original" else against
    t = Table(
        title=shown(
            f"Verification: rewritten vs {'original on ' + where if against == 'original' else where} "
            f"(seed {v.seed}, {v.trials} trial{'s' if v.trials != 1 else ''})"
        ),
        title_justify="left",
        caption=shown(f"inputs: {feeds}"),
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
        result = (
            Text("pass", style="green") if o.passed else Text.assemble(("FAIL", "red"), f" {shown(o.problem or _failing_share(o))}")
        )
        if o.degenerate:
            result.append(f" ({shown(o.degenerate)}: no evidence)", style="yellow")
        t.add_row(
            shown(o.name),
            shown(o.dtype),
            _dims(o.shape),
            f"{o.max_abs_error:.2g}",
            f"{o.max_rel_error:.2g}",
            f"{o.atol:.2g}/{o.rtol:.2g}",
            result,
        )
    return t


def _dims(shape: list[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _failing_share(o: OutputCheck, what: str = "") -> str:
    """``12 of 480 (2.5%)``: the failing elements over every trial's elements."""
    total = math.prod(o.shape) * max(1, o.trials)
    if not total:
        return f"{o.mismatched} elements"
    pct = 100 * o.mismatched / total
    share = "<0.01" if 0 < pct < 0.01 else ">99.9" if pct > 99.9 and o.mismatched < total else f"{pct:.3g}"
    return f"{o.mismatched} of {total}{what} ({share}%)"


def _failure_lines(check: VerifyReport) -> list[str]:
    """For each output that failed on its numbers: where its worst element is and what tolerance would pass.

    As polygraphy's "minimum required tolerance": ``--atol`` at the largest absolute error passes
    every element whatever ``rtol`` is; ``--rtol`` at the largest relative error does with atol 0.
    Both are rounded up, so the printed figure passes.
    """
    lines = []
    for o in check.outputs:
        if o.passed or o.problem:
            continue
        where = f"worst element at [{', '.join(map(str, o.worst_index))}]" if o.worst_index else "worst element unknown"
        trials = f" over {o.trials} trials" if o.trials > 1 else ""
        if not (o.dtype.startswith("float") or o.dtype == "bfloat16"):
            needs = "an integer or boolean output must match exactly"
        elif not math.isfinite(o.max_abs_error):
            needs = "no tolerance passes: NaN or Inf where the other model has a number"
        else:
            needs = f"would pass with --atol {_round_up(o.max_abs_error)}"
            if math.isfinite(o.max_rel_error):
                needs += f", or with --atol 0 --rtol {_round_up(o.max_rel_error)}"
        lines.append(f"{shown(o.name)}: {_failing_share(o, ' elements')} failed{trials}; {where}; {needs}")
    return lines


def _round_up(x: float) -> str:
    """``x`` to two significant digits, never below ``x`` (a tolerance printed this way passes)."""
    if x <= 0:
        return "0"
    text = f"{x:.2g}"
    if float(text) >= x:
        return text
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    text = f"{math.ceil(x / step) * step:.2g}"
    return text if float(text) >= x else f"{float(text) + step:.2g}"


# Output dtypes as the verification table names them (numpy's names), and their ONNX types.
_FLOAT_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float64": TensorProto.DOUBLE,
}


def _tolerance_rule(check: VerifyReport, atol: float | None, rtol: float | None, end_to_end: bool) -> str:
    """How the table's atol/rtol came about, in one line (compare.py's end_to_end_atol; README "How verification works")."""
    floats = sorted({o.dtype for o in check.outputs if o.dtype in _FLOAT_TYPES}, key=list(_FLOAT_TYPES).index)
    exact = any(o.dtype not in _FLOAT_TYPES for o in check.outputs)
    parts = ["an element fails past atol + rtol x |original|"]
    if floats:
        defaults = {dt: DEFAULT_TOLERANCES[_FLOAT_TYPES[dt]] for dt in floats}
        if rtol is None:
            parts.append("rtol " + ", ".join(f"{r:g} ({dt} default)" for dt, (_, r) in defaults.items()))
        else:
            parts.append(f"rtol {rtol:g} (--rtol)")
        if atol is None:
            scaled = "x max(1, rms of the output)"
            if end_to_end:
                scaled += " x max(1, sqrt(channels of the rewritten layers) / 32), at least 4x the sum of their rounding bounds"
            parts.append("atol " + ", ".join(f"{a:g} ({dt} default)" for dt, (a, _) in defaults.items()) + f" {scaled}")
        else:
            parts.append(f"atol {atol:g} (--atol)")
    if exact:
        parts.append("other outputs must match exactly")
    return "; ".join(parts)


def _signature_line(report: ConvertReport) -> str:
    """``Signature: x float32 (N,3,5,4) -> y float32 (N,3,5,6)``, from the input file (or, for a TensorFlow
    input, from the written model); empty when neither is an ONNX file that can be read."""
    source = Path(report.input)
    path = source if source.is_file() and source.suffix not in (".keras", ".h5") else None
    if path is None and report.written and report.output:
        path = Path(report.output)
    interface = model_interface(path) if path is not None else None
    if interface is None:
        return ""

    def listed(values: list[onnx.ValueInfoProto]) -> str:
        text = ", ".join(f"{shown(v.name)} {_type_words(v.type)}" for v in values[:8])
        return (text + f", ... {len(values) - 8} more" if len(values) > 8 else text) or "(none)"

    inputs, outputs = interface
    return f"Signature: {listed(inputs)} -> {listed(outputs)}"


def _type_words(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind != "tensor_type":
        return (kind or "unknown type").replace("_type", "")
    tt = t.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type in TensorProto.DataType.values() else "?"
    if not tt.HasField("shape"):
        return f"{dtype} (rank unknown)"
    dims = [str(d.dim_value) if d.HasField("dim_value") else shown(d.dim_param) if d.dim_param else "?" for d in tt.shape.dim]
    return f"{dtype} ({','.join(dims)})"


def _size_line(report: ConvertReport) -> str:
    """The model's bytes on disk (its file and any external data) before and after, as far as there are files."""
    source = Path(report.input)
    before = model_bytes(source) if source.is_file() and source.suffix not in (".keras", ".h5") else None
    after = model_bytes(Path(report.output)) if report.written and report.output else None
    external = " (model files and their external data)" if any(s and s[1] for s in (before, after)) else ""
    if before is not None and after is not None:
        change = after[0] - before[0]
        delta = "the same" if not change else ("+" if change > 0 else "-") + _bytes(abs(change))
        return f"Size: {_bytes(before[0])} -> {_bytes(after[0])} ({delta}){external}"
    if before is not None:
        return f"Size: {_bytes(before[0])}{external}; nothing written"
    if after is not None:
        return f"Size: {_bytes(after[0])} written{external}"
    return ""


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")
