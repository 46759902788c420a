"""The PyTorch zoo's table: per model and exporter, what the converter did and what it costs on onnxruntime CPU.

    python -m models.zoo --torch                   # export the zoo into .zoo-cache (needs the [torch] extra)
    python -m benchmarks.torch_zoo [NAME ...] [--cache DIR] [--runs 10] [--threads 1] [--layouts MODE ...]
                                   [--no-verify] [--json FILE]

Reads the cached exports of models/zoo.py's TORCH_ZOO; an entry not in the cache is exported first
when torch is installed, and left out with a note when it is not. Per entry: the MatMul/Gemm
candidates the rules looked at, the Linears on a rank-4 tensor with a constant weight (read from the
export by models/torch_exports.py; for a token entry, those on a rank-3 token sequence and the Reshape
sandwiches around a Gemm, converted with ``tokens=True``, whose default layout is nchw), how many
were rewritten, the declined ones by reason, the rewritten ones whose bias stayed an Add (by reason),
Transposes in the original and after the rewrite in each layout mode, the verdict of verification in
each mode, and onnxruntime CPU latency of the original and the default result at batch 1 (median of
interleaved runs after a warm-up, default graph optimizations, fixed thread count). Figures only: nothing here asserts a timing.

Layout modes: each mode given with ``--layouts`` (default: every mode, the default one last) is
passed to ``converter.rewrite``; the declined and kept-Add columns and latency are those of the default.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console

import converter
from benchmarks._results import machine, publish
from benchmarks.inference import compare
from models.torch_exports import linear_layers, sandwich_linears
from models.zoo import DEFAULT_CACHE, TORCH_EXTRA, TORCH_ZOO, build, torch_missing


def layout_modes(requested: list[str] | None) -> tuple[list[str], str]:
    """The modes to measure and the default one (the table's "default"), measured last."""
    default = converter.DEFAULT_LAYOUT
    modes = requested or [*(m for m in converter.LAYOUTS if m != default), default]
    return list(dict.fromkeys(modes)), default


def rewrite(model: onnx.ModelProto, mode: str, tokens: bool = False) -> converter.RewriteResult:
    return converter.rewrite(model, layout=mode, tokens=tokens)


def cached(name: str, cache: Path) -> Path | None:
    """The entry's export, built when missing and torch is installed; None when it cannot be had."""
    done = cache / name / ".built"
    if done.exists() or not torch_missing():
        return build(name, cache)
    return None


def measure(name: str, source: Path, modes: list[str], default: str, runs: int, threads: int, verify: bool) -> dict[str, Any]:
    entry = TORCH_ZOO[name]
    original = converter.load(source)
    if entry.tokens:  # rank-3 Linears, rewritten with tokens=True; its default layout is nchw
        layers = [x.node for x in linear_layers(original) if x.token_candidate] + sandwich_linears(original)
        default = "nchw"
        modes = list(dict.fromkeys([*modes, default]))
    else:
        layers = [x.node for x in linear_layers(original) if x.candidate]
    row: dict[str, Any] = {"model": name, "linears_rank4": len(layers), "tokens": entry.tokens, "transposes": {}, "verify": {}}
    row["transposes"]["original"] = sum(n.op_type == "Transpose" for n in original.graph.node)
    shapes = entry.input_shapes or None
    default_result = None
    for mode in modes:
        try:
            result = rewrite(original, mode, entry.tokens)
        except converter.InputError as err:  # a mode this version of the converter refuses
            row["transposes"][mode] = row["verify"][mode] = f"n/a ({err})"
            continue
        row["transposes"][mode] = result.report.ops_after.get("Transpose", 0)
        if verify:
            check = converter.verify(original, result.model, layers=result.report.layers, input_shapes=shapes)
            row["verify"][mode] = check.verdict
        if mode == default:
            default_result = result
        else:
            del result
    assert default_result is not None
    rw = default_result.report
    row["candidates"] = rw.candidates
    row["rewritten"] = rw.rewritten
    row["declined"] = rw.skipped_by_reason
    row["kept_adds"] = dict(Counter(d.notes.get("bias_reason") for d in rw.decisions if d.rewritten and d.notes.get("bias_reason")))
    batch1 = {k: [1, *v[1:]] for k, v in (entry.input_shapes or {}).items()}
    original_ms, converted_ms = compare(original, default_result.model, runs, threads, batch1 or None)
    row["original_ms"] = round(original_ms, 3)
    row["converted_ms"] = round(converted_ms, 3)
    row["latency_ratio"] = round(converted_ms / original_ms, 3)
    return row


def markdown(rows: list[dict[str, Any]], modes: list[str], default: str, runs: int, threads: int) -> str:
    head = [
        "model / exporter",
        "candidates",
        "rank-4 Linears",
        "rewritten",
        "declined (reason)",
        "bias kept as Add (reason)",
        "Transposes original → " + " / ".join(f"{m} (default)" if m == default else m for m in modes),
        "verified: " + " / ".join(modes),
        f"latency ms, batch 1 ({threads} thread, median of {runs}): original → converted",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["transposes"]
        cells = [
            f"`{r['model']}`",
            str(r["candidates"]),
            f"{r['linears_rank4']} (rank 3, --tokens)" if r.get("tokens") else str(r["linears_rank4"]),
            str(r["rewritten"]),
            ", ".join(f"{k} {v}" for k, v in r["declined"].items()) or "-",
            ", ".join(f"{k} {v}" for k, v in r["kept_adds"].items()) or "-",
            f"{t['original']} → " + " / ".join(str(t.get(m, "-")) for m in modes),
            " / ".join(str(r["verify"].get(m, "not run")) for m in modes),
            f"{r['original_ms']:.2f} → {r['converted_ms']:.2f} (x{r['latency_ratio']:.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", choices=[[], *TORCH_ZOO], help="entries (default: all of TORCH_ZOO)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--runs", type=int, default=10, help="timed runs per model (default: 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layouts", nargs="*", default=None, help="layout modes to pass through (when the converter has them)")
    p.add_argument("--no-verify", action="store_true", help="skip verifying the results")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and the machine as JSON")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    modes, default = layout_modes(args.layouts)
    rows, missing = [], []
    for name in args.names or list(TORCH_ZOO):
        source = cached(name, args.cache)
        if source is None:
            missing.append(name)
            continue
        console.print(f"{name} ...", style="dim")
        rows.append(measure(name, source, modes, default, args.runs, args.threads, not args.no_verify))
    print(markdown(rows, modes, default, args.runs, args.threads))
    if missing:
        print(f"\nnot in {args.cache} and not exportable here ({TORCH_EXTRA}): {', '.join(missing)}")
    if args.json is not None:
        publish(Console(), args.json, rows, runs=args.runs, threads=args.threads, layouts=modes)
    else:
        print(f"\nmachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
