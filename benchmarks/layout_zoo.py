"""The layout table of issue 21: per real export and layout mode, the Linears converted, the Transposes, the verdict, latency.

    python -m benchmarks.layout_zoo [--models PATTERN ...] [--source zoo|corpus|all] [--modes MODE ...]
                                    [--no-latency] [--no-verify] [--runs 10] [--round-seconds 0.5] [--repeats 5]
                                    [--json FILE] [--markdown FILE]

The models: every entry of models/zoo.py's TORCH_ZOO (read from ``.zoo-cache/<name>/``, exported first where
missing and torch is installed) and every export of models/layout_corpus.py (``.zoo-cache/layout/``, exported
first where missing unless ``--no-build``). The modes: every layout policy ``converter.options.LAYOUTS`` lists
(read at run time, so the table follows the converter as its policies change), each run as
``converter.rewrite(model, layout=mode)``, and ``tokens``: ``converter.rewrite(model, tokens=True)`` with the
default layout, as ``convert --tokens`` runs.

Per model and mode:

- the Linears with a constant weight on rank-4 tensors, converted / total, and with ``tokens`` those on rank-3
  token sequences (models/torch_exports.py's ``linear_layers`` and ``sandwich_linears`` read them from the export,
  not from the converter), and why the others were declined;
- Transposes of computed tensors before and after, counted as ``convert`` counts them: before, the layout policy's
  own census (``converter.rewriter.layout.census``: every graph, those at the model's input / output as ``edge``)
  with the main graph's tensor types, so a Transpose that is constant once shapes are known is left out; after,
  the result's layout record (``transposes_final``, ``edge_final``); and
  whatever ``transposes_*`` counts the result's layout record (``report.layout``) has beyond the original and the
  final one (``transposes_optimum`` when the optimizer reports it);
- the verdict of ``converter.verify`` (PASSED / FAILED / INCOMPLETE; CRASH with the error where the converter
  raised);
- onnxruntime CPU latency of the converted model over the original at batch 1 (benchmarks/inference.py's sessions
  and feeds: default graph optimizations, ``--threads`` threads): after a warm-up, ``--repeats`` rounds of runs
  that alternate between the two models (which goes first alternates too), each round at least ``--runs`` pairs
  and about ``--round-seconds`` long, so that a 1 ms model gets hundreds of runs; per round the ratio of the
  medians, and the median of the rounds' ratios with their range. Figures only: nothing here asserts a timing.

``--json FILE`` writes every row (with the layout record, the declined layers' reasons, the verifier's notes where
it did not pass); ``--markdown FILE`` writes one line per model, the modes side by side, for the docs.

A crash of the converter is a row, not the end of the run: its traceback goes into the JSON.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console
from rich.table import Table

import converter
import converter.options
from benchmarks._results import machine, publish
from benchmarks.inference import feeds_for, session
from converter.graph import collect_types
from converter.rewriter.layout.census import census
from models import layout_corpus
from models.torch_exports import linear_layers, sandwich_linears
from models.zoo import DEFAULT_CACHE, TORCH_ZOO, build, torch_missing

TOKENS = "tokens"
# The layout record's fields the Transposes column shows already (counted here by the census) or that are no counts.
_SHOWN = frozenset({"mode", "transposes_original", "transposes_final", "edge_original", "edge_final", "seconds", "declined"})


@dataclass(frozen=True)
class Entry:
    """One export to measure: where it is, what its batch-1 shapes are, and the shapes it is verified at."""

    name: str
    source: str  # "zoo" (TORCH_ZOO) or "corpus" (models/layout_corpus.py)
    path: Path
    family: str
    verify_shapes: dict[str, list[int]] | None  # concrete shapes for the symbolic dims (None: the verifier picks)
    latency_shapes: dict[str, list[int]] | None  # the same at batch 1


def modes(requested: list[str] | None) -> list[str]:
    """The modes to run: the converter's layout policies, then ``tokens`` (or those ``requested``)."""
    known = [*converter.options.LAYOUTS, TOKENS]
    chosen = requested or known
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; this converter has {', '.join(known)}")
    return list(dict.fromkeys(chosen))


def selected(name: str, patterns: list[str] | None) -> bool:
    """Whether ``name`` matches one of ``patterns`` (globs; a pattern without ``*?[`` matches as a substring)."""
    if not patterns:
        return True
    return any(fnmatch.fnmatch(name, p if any(c in p for c in "*?[") else f"*{p}*") for p in patterns)


def _batch1(shapes: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
    return {k: [1, *v[1:]] for k, v in shapes.items()} if shapes else None


def zoo_entries(cache: Path, patterns: list[str] | None, console: Console) -> list[Entry]:
    """TORCH_ZOO's entries, exported into ``cache`` first where missing (when torch is installed)."""
    found = []
    for name, entry in TORCH_ZOO.items():
        if not selected(name, patterns):
            continue
        if not (cache / name / ".built").exists():
            if torch_missing():
                console.print(f"{name}: not in {cache} and torch is not installed, left out", style="yellow")
                continue
            console.print(f"{name}: exporting into {cache} ...", style="dim")
        path = build(name, cache)
        family = "token model (zoo)" if entry.tokens else "vision (zoo)"
        shapes = entry.input_shapes or None
        found.append(Entry(name, "zoo", path, family, shapes, _batch1(shapes)))
    return found


def corpus_entries(out: Path, patterns: list[str] | None, build_missing: bool, console: Console) -> list[Entry]:
    """models/layout_corpus.py's exports in ``out``, exported first where missing (``build_missing``)."""
    wanted = [
        (model, layout_corpus.entry_name(model, variant, exporter))
        for model in layout_corpus.MODELS
        for variant in layout_corpus.VARIANTS
        for exporter in layout_corpus.EXPORTERS
    ]
    wanted = [(m, n) for m, n in wanted if selected(n, patterns)]
    have = layout_corpus.built(out)
    absent = sorted({m for m, n in wanted if n not in have})
    tried = set(layout_corpus.load_summary(out).get("results", {}))
    absent = [m for m in absent if any(n not in tried for mm, n in wanted if mm == m)]  # failed exports stay failed
    if absent and build_missing:
        buildable = [m for m in absent if not layout_corpus.missing(layout_corpus.MODELS[m])]
        if buildable:
            console.print(f"exporting {', '.join(buildable)} into {out} ...", style="dim")
            layout_corpus.main(["--out", str(out), "--missing", "--models", *buildable])
        have = layout_corpus.built(out)
    rows = layout_corpus.load_summary(out).get("results", {})
    found = []
    for model, name in wanted:
        if name not in have:
            row = rows.get(name, {})
            why = row.get("export_error", "not exported")
            console.print(f"{name}: left out ({why[:160]})", style="yellow")
            continue
        spec = layout_corpus.MODELS[model]
        dynamic = name.split("_")[-2] == "dynamic"
        shapes = {i.name: list(i.shape) for i in spec.inputs} if dynamic else None
        found.append(Entry(name, "corpus", have[name], spec.family, shapes, _batch1(shapes)))
    return found


def count_transposes(model: onnx.ModelProto) -> dict[str, int]:
    """Transposes of computed tensors (all, and those at the model's edge), counted as ``convert`` counts them: the
    layout policy's census with the main graph's tensor types, so that a Transpose that is a constant once the shapes
    are known (of the shape of a tensor whose every dim is known) is left out."""
    c = census(model, types=collect_types(model).get(()))
    return {"all": c.layout, "edge": c.edge}


def linear_sets(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The node labels of the Linears with a constant weight on rank-4 and on rank-3 tensors, read from the graph;
    those whose activation is itself computed from constants alone (a position-bias MLP on a fixed coordinate
    table) are listed apart as ``on_constants``: they are folded at load, no layout question."""
    layers = linear_layers(model)
    consts = _constant_tensors(model.graph)
    first = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.output and n.input}
    folded = {x.node for x in layers if first.get(x.output) in consts}
    sandwiches = sandwich_linears(model)
    return {
        "rank4": [x.node for x in layers if x.candidate and x.node not in folded],
        "rank3": [x.node for x in layers if x.token_candidate and x.node not in folded] + sandwiches,
        "on_constants": sorted(x.node for x in layers if (x.candidate or x.token_candidate) and x.node in folded),
    }


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """The tensors of ``graph`` computed from initializers and Constant nodes alone (graph inputs excluded)."""
    inputs = {i.name for i in graph.input}
    known = {t.name for t in graph.initializer if t.name not in inputs} | {""}
    for node in graph.node:  # nodes are in topological order
        if node.op_type == "Constant" or (node.input and all(name in known for name in node.input)):
            known.update(node.output)
    return known - {""}


def _converted(report: Any, labels: list[str]) -> tuple[int, dict[str, int]]:
    """How many of ``labels`` were rewritten, and the reasons the others were declined."""
    by_node = {d.node: d for d in report.decisions if d.op_type in ("MatMul", "Gemm")}
    done, reasons = 0, Counter()
    for label in labels:
        d = by_node.get(label)
        if d is not None and d.rewritten:
            done += 1
        else:
            reasons[d.reason if d is not None else "no decision"] += 1
    return done, dict(reasons)


def latency(original: onnx.ModelProto, result: onnx.ModelProto, entry: Entry, args: Any) -> dict:
    """The converted / original latency ratio at batch 1: its median over ``args.repeats`` rounds and their range,
    and the median ms of each model over every run."""
    sessions = (session(original, args.threads), session(result, args.threads))
    feeds = feeds_for(original, entry.latency_shapes)
    started = time.perf_counter()
    for s in sessions:
        for _ in range(5):
            s.run(None, feeds)
    pair = (time.perf_counter() - started) / 5
    runs = max(args.runs, min(1000, math.ceil(args.round_seconds / max(pair, 1e-6))))
    times: tuple[list[float], list[float]] = ([], [])
    ratios = []
    for _ in range(args.repeats):
        rounds: tuple[list[float], list[float]] = ([], [])
        for i in range(runs):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                began = time.perf_counter()
                sessions[k].run(None, feeds)
                rounds[k].append(time.perf_counter() - began)
        ratios.append(statistics.median(rounds[1]) / statistics.median(rounds[0]))
        times[0].extend(rounds[0])
        times[1].extend(rounds[1])
    return {
        "original_ms": round(statistics.median(times[0]) * 1e3, 4),
        "converted_ms": round(statistics.median(times[1]) * 1e3, 4),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "runs_per_round": runs,
    }


def measure_mode(original: onnx.ModelProto, entry: Entry, mode: str, linears: dict[str, list[str]], args: Any) -> dict:
    """One model under one mode: rewrite, count, verify, time.

    Args:
        original: the export, loaded.
        entry: where it came from and the shapes to verify and time it at.
        mode: a layout policy of ``converter.options.LAYOUTS``, or ``tokens``.
        linears: ``linear_sets(original)``.
        args: the command's options (``verify``, ``latency``, ``runs``, ``round_seconds``, ``repeats``, ``threads``).
    """
    row: dict[str, Any] = {"mode": mode}
    started = time.perf_counter()
    try:
        result = converter.rewrite(original, tokens=True) if mode == TOKENS else converter.rewrite(original, layout=mode)
    except Exception as err:  # noqa: BLE001 - a crash of the converter on a real export is a finding, recorded
        row["verdict"] = "CRASH"
        row["error"] = f"rewrite: {type(err).__name__}: {str(err)[:500]}"
        row["traceback"] = traceback.format_exc()[-3000:]
        return row
    row["rewrite_seconds"] = round(time.perf_counter() - started, 3)
    report = result.report
    for rank in ("rank4", "rank3"):
        labels = linears[rank]
        done, reasons = _converted(report, labels)
        row[rank] = {"converted": done, "total": len(labels), "declined": reasons}
    row["rewritten"] = report.rewritten
    row["candidates"] = report.candidates
    row["declined"] = dict(report.skipped_by_reason)
    # After: convert's own count (the layout record), which sizes the tensors the cleanup made with the types it
    # gave them; a fresh census of the result can tell a few more of them constant.
    lay = report.layout
    row["transposes_after"] = {"all": lay.transposes_final, "edge": lay.edge_final} if lay else count_transposes(result.model)
    row["layout"] = report.layout.to_dict() if report.layout is not None else {}
    if args.verify:
        started = time.perf_counter()
        try:
            check = converter.verify(original, result, input_shapes=entry.verify_shapes or {})
            row["verdict"] = check.verdict.upper()
            if check.verdict != "passed":
                row["verify_notes"] = _why_not_passed(check)
        except Exception as err:  # noqa: BLE001 - recorded with the rest
            row["verdict"] = "CRASH"
            row["error"] = f"verify: {type(err).__name__}: {str(err)[:500]}"
            row["traceback"] = traceback.format_exc()[-3000:]
        row["verify_seconds"] = round(time.perf_counter() - started, 3)
    if args.latency and report.rewritten:
        try:
            row["latency"] = latency(original, result.model, entry, args)
        except Exception as err:  # noqa: BLE001 - a model onnxruntime cannot time is a row with the error
            row["latency"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    return row


def _why_not_passed(check: Any) -> list[str]:
    notes = [*check.interface_problems]
    notes += [f"output {o.name}: {o.problem or f'max abs error {o.max_abs_error:.3g}'}" for o in check.outputs if not o.passed]
    notes += [f"layer {x.conv}: {x.structure} {x.structure_detail[:400]} / {x.numbers}" for x in check.layers if not x.verified][:5]
    structure = check.structure or {}
    notes += [f"structure: {p}" for p in (structure.get("problems") or [])[:3]]
    notes += [f"unproved: {p}" for p in (structure.get("unproved") or [])[:3]]
    return [str(n)[:600] for n in notes]


def measure(entry: Entry, mode_list: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The row of one export: its Linears and Transposes, and ``measure_mode`` for each mode of ``mode_list``."""
    original = converter.load(entry.path)
    linears = linear_sets(original)
    row: dict[str, Any] = {
        "model": entry.name,
        "source": entry.source,
        "family": entry.family,
        "nodes": len(original.graph.node),
        "linears": {k: len(v) for k, v in linears.items()},
        "transposes_before": count_transposes(original),
        "modes": {},
    }
    for mode in mode_list:
        row["modes"][mode] = measure_mode(original, entry, mode, linears, args)
    return row


# ---------------------------------------------------------------------------------------------
# the table


def _count(m: dict, rank: str) -> str:
    c = m.get(rank)
    return f"{c['converted']}/{c['total']}" if c else "-"


def _transposes(row: dict, m: dict) -> str:
    before, after = row["transposes_before"], m.get("transposes_after")
    if after is None:
        return "-"
    edge = f" (edge {before['edge']}→{after['edge']})" if before["edge"] or after["edge"] else ""
    return f"{before['all']} → {after['all']}{edge}"


def _extras(m: dict) -> str:
    """The layout record's other counts (``transposes_optimum`` as "optimum 6"), those that say something."""
    layout = m.get("layout") or {}
    shown = []
    for key, value in layout.items():
        if key in _SHOWN or not isinstance(value, int) or isinstance(value, bool):
            continue
        if key == "attempts" and value <= 1 or not key.startswith("transposes_") and not value:
            continue  # one attempt, no LayerNorm written out: the usual, said by leaving it out
        shown.append(f"{key.removeprefix('transposes_')} {value}")
    return ", ".join(shown)


def _declined(m: dict, ranks: tuple[str, ...]) -> str:
    """Why the counted Linears that stayed were declined: rank 4 under a layout mode, ranks 4 and 3 with tokens."""
    reasons: Counter = Counter()
    for rank in ranks:
        reasons.update((m.get(rank) or {}).get("declined", {}))
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-"


def _latency(m: dict) -> str:
    lat = m.get("latency")
    if not lat:
        return "-"
    if "error" in lat:
        return lat["error"][:40]
    return f"x{lat['ratio']:.2f} ({lat['ratio_min']:.2f}-{lat['ratio_max']:.2f}) {lat['original_ms']:.2f}ms"


def table(rows: list[dict], mode_list: list[str], title: str) -> Table:
    t = Table(title=title, show_lines=False)
    for col in (
        "model",
        "mode",
        "rank-4 conv/total",
        "rank-3 conv/total",
        "Transposes before → after",
        "layout record",
        "declined",
        "verdict",
        "latency conv/orig (range), orig",
    ):
        t.add_column(col, overflow="fold")
    for row in rows:
        for i, mode in enumerate(mode_list):
            m = row["modes"].get(mode, {})
            verdict = m.get("verdict", "-")
            style = {"PASSED": "green", "FAILED": "red", "CRASH": "bold red", "INCOMPLETE": "yellow"}.get(verdict, "")
            t.add_row(
                row["model"] if i == 0 else "",
                mode,
                _count(m, "rank4"),
                _count(m, "rank3") if mode == TOKENS else f"({_count(m, 'rank3')})",
                _transposes(row, m),
                _extras(m) or "-",
                _declined(m, ("rank4", "rank3") if mode == TOKENS else ("rank4",)),
                f"[{style}]{verdict}[/{style}]" if style else verdict,
                _latency(m),
                end_section=i == len(mode_list) - 1,
            )
    return t


_VERDICT = {"PASSED": "P", "FAILED": "F", "INCOMPLETE": "I", "CRASH": "C"}


def markdown(rows: list[dict], mode_list: list[str], title: str) -> str:
    """One line per model, the modes side by side ("a / b / c" in ``mode_list``'s order): the docs' table."""
    layouts = [m for m in mode_list if m != TOKENS]
    optimum = any("transposes_optimum" in (m.get("layout") or {}) for r in rows for m in r["modes"].values())
    order = " / ".join(mode_list)
    head = ["model", "family", f"rank-4 Linears: total, converted ({' / '.join(layouts)})"]
    head += ["rank-3 Linears converted (tokens)"] if TOKENS in mode_list else []
    head += [f"Transposes: original → {order}"]
    head += [f"optimum ({order})"] if optimum else []
    head += [f"verified ({order}; P passed, I incomplete, F failed, C crash)", f"latency converted/original ({order})"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        modes = [r["modes"].get(m, {}) for m in mode_list]
        rank4 = " / ".join(str((r["modes"].get(m, {}).get("rank4") or {}).get("converted", "-")) for m in layouts)
        folded = r["linears"].get("on_constants")
        cells = [
            f"`{r['model']}`",
            r["family"],
            f"{r['linears']['rank4']}: {rank4}" + (f" (+{folded} Linears on constants)" if folded else ""),
        ]
        if TOKENS in mode_list:
            cells.append(_count(r["modes"].get(TOKENS, {}), "rank3"))
        cells.append(
            f"{r['transposes_before']['all']} → " + " / ".join(str(m.get("transposes_after", {}).get("all", "-")) for m in modes)
        )
        if optimum:
            cells.append(" / ".join(str((m.get("layout") or {}).get("transposes_optimum", "-")) for m in modes))
        cells.append(" / ".join(_VERDICT.get(m.get("verdict", ""), "-") for m in modes))
        cells.append(" / ".join(_ratio(m) for m in modes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(m: dict) -> str:
    lat = m.get("latency")
    if not lat:
        return "=" if m.get("rewritten") == 0 else "-"  # "=": nothing rewritten, the original itself
    return "err" if "error" in lat else f"{lat['ratio']:.2f} ({lat['ratio_min']:.2f}-{lat['ratio_max']:.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="entries to measure: globs, or substrings of their names")
    p.add_argument("--source", choices=("zoo", "corpus", "all"), default="all", help="TORCH_ZOO, the layout corpus, or both")
    p.add_argument("--modes", nargs="*", default=None, help=f"modes (default: every layout the converter has, and {TOKENS})")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the zoo cache (default: .zoo-cache)")
    p.add_argument("--corpus", type=Path, default=None, help="the corpus folder (default: <cache>/layout)")
    p.add_argument("--no-build", action="store_true", help="measure only what is exported already")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip verification")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency runs")
    p.add_argument("--runs", type=int, default=10, help="the fewest interleaved pairs of runs per round (default: 10)")
    p.add_argument("--round-seconds", type=float, default=0.5, help="about how long a round lasts (default: 0.5)")
    p.add_argument("--repeats", type=int, default=5, help="rounds per model and mode (default: 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the rows, the settings and the machine as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write one line per model, the modes side by side")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    mode_list = modes(args.modes)
    entries: list[Entry] = []
    if args.source in ("zoo", "all"):
        entries += zoo_entries(args.cache, args.models, console)
    if args.source in ("corpus", "all"):
        entries += corpus_entries(args.corpus or args.cache / "layout", args.models, not args.no_build, console)
    rows = []
    for entry in entries:
        console.print(f"{entry.name} ...", style="dim")
        started = time.perf_counter()
        rows.append(measure(entry, mode_list, args))
        rows[-1]["seconds"] = round(time.perf_counter() - started, 1)
    lat = f"latency: onnxruntime CPU, {args.threads} thread, batch 1, median of {args.repeats} rounds of interleaved runs"
    Console(width=240).print(table(rows, mode_list, f"Layout table, converter {converter.__version__}; {lat}"))
    crashes = [(r["model"], mode, m.get("error")) for r in rows for mode, m in r["modes"].items() if m.get("verdict") == "CRASH"]
    for model, mode, error in crashes:
        print(f"CRASH {model} [{mode}]: {error}")
    settings = {"modes": mode_list, "runs": args.runs, "round_seconds": args.round_seconds, "repeats": args.repeats}
    settings |= {"threads": args.threads, "converter": converter.__version__}
    if args.markdown is not None:
        args.markdown.write_text(markdown(rows, mode_list, f"converter {converter.__version__}, {machine()}; {lat}"))
    if args.json is not None:
        publish(console, args.json, rows, **settings)
    else:
        print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
