"""What the command shows: the summary tables, the evidence, the verdict line, and its one-line messages.

The only module of the command that prints (ruff's T20 holds print() to converter/cli/). Everything printed
is data: names from the model and paths from the command line are shown with control characters escaped
(``shown``: an ANSI escape or a newline in a tensor name never reaches the terminal raw) and never
interpreted as rich markup.

Output that is not a terminal (a pipe, a file) is printed at full width: no table is cut to 80 columns or
wrapped, so ``convert ... > log.txt`` and ``| grep`` see whole rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.table import Table
from rich.text import Text

from converter.cli.text import shown
from converter.files.load import model_bytes, model_interface
from converter.report import DONE, DRY_RUN, FAILED, INCOMPLETE, UNCHANGED, ConvertReport, OutputCheck, RewriteReport, VerifyReport
from converter.rewriter.layout import LAYOUT_COST
from converter.verifier.numbers.outputs import DEFAULT_TOLERANCES

__all__ = ["consoles", "layout_line", "print_report", "show", "show_json", "shown", "verdict"]

# Columns for output that is not a terminal: wide enough that no table is cut or wrapped.
UNLIMITED_WIDTH = 1 << 16


def consoles(stdout: TextIO | None, stderr: TextIO) -> tuple[Console, Console]:
    """The summary's console on ``stdout`` (None: closed; rich then writes nowhere) and the messages' on ``stderr``.

    Neither highlights, reads markup or turns ``:name:`` into emoji: what is printed is data.
    """
    out = Console(file=stdout, highlight=False, soft_wrap=True, markup=False, emoji=False)
    if not out.is_terminal:  # a pipe or a file: whole rows, not 80 columns cut with "..." or wrapped
        out.width = UNLIMITED_WIDTH
    err = Console(file=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)
    return out, err


def show(console: Console, report: ConvertReport, quiet: bool, verbose: bool, atol: float | None, rtol: float | None) -> None:
    """The summary (unless ``quiet``) and the verdict line on ``console``, flushed.

    Raises:
        OSError: the stream could not take it (a full disk, a reader that went away); the caller decides.
    """
    if not quiet:
        print_report(console, report, verbose=verbose, atol=atol, rtol=rtol)
    console.print(verdict(report))
    console.file.flush()


def show_json(stream: TextIO, text: str) -> None:
    """The JSON report on ``stream`` (stdout for ``--report -``, which then holds only the JSON), flushed.

    Raises:
        OSError: the stream could not take it.
    """
    stream.write(text)
    stream.flush()


def verdict(report: ConvertReport) -> str:
    """The last line: ``report.verdict`` (PASSED, FAILED, INCOMPLETE, UNCHANGED, DONE or DRY RUN) and what it rests on."""
    rw = report.rewrite
    what = f"rewrote {rw.rewritten} of {rw.candidates} candidates"
    output = shown(report.output)
    word = report.verdict
    if word == DRY_RUN:
        declined = rw.skipped_by_reason.get(LAYOUT_COST, 0)
        policy = f" ({declined} declined for {LAYOUT_COST})" if declined else ""
        return f"{word}: {rw.rewritten} of {rw.candidates} candidates would be rewritten{policy}; nothing written"
    written = f"wrote {output} anyway (--force)" if report.forced else f"{output} was not written"
    if word == FAILED:
        return f"{word}: verification found mismatches; {written}"
    if word == INCOMPLETE:
        return f"{word}: {_missing_evidence(report)}; {written}" + ("" if report.forced else " (--force writes it)")
    if word == UNCHANGED:
        checked = ", not verified (--no-verify)" if report.verification == "not run" else ""
        return f"{word}: nothing to rewrite ({_why_nothing(rw)}); wrote {output}, the model as it was{checked}"
    if word == DONE:
        return f"{word}: {what}, not verified (--no-verify), wrote {output}"
    layers = report.verify.layers if report.verify is not None else []
    evidence = f"{len(layers)} layers proved by structure and checked by numbers" if layers else "outputs identical in structure"
    return f"{word}: {what}, verified ({evidence}), wrote {output}"


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
    """The layout optimizer in one line: its mode, the Transposes before and after (and how many sit at the
    model's edge), the LayerNorms it wrote out, the layers it declined."""
    lay = rw.layout
    assert lay is not None
    mode = lay.mode + ("" if rw.cleanup is not None or lay.mode != "keep-all" or not rw.rewritten else ", no cleanup")
    line = f"Layout {mode}: Transposes {lay.transposes_original} in the original -> {lay.transposes_final} final"
    if lay.edge_original or lay.edge_final:
        line += f" ({lay.edge_original} -> {lay.edge_final} of them at the model's inputs/outputs)"
    optimum = lay.transposes_optimum
    if optimum is not None and lay.edge_optimum is not None and optimum + lay.edge_optimum != lay.transposes_final:
        line += f" (the optimum counted {optimum + lay.edge_optimum})"
    if lay.layernorms_written_out:
        n = lay.layernorms_written_out
        line += f"; {n} LayerNorm{'s' * (n != 1)} written out channels-first"
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
    for col in ("output", "dtype", "shape", "max abs", "max rel", "atol/rtol", "result"):
        t.add_column(col, justify="right" if col in ("max abs", "max rel", "atol/rtol") else "left")
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


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")
