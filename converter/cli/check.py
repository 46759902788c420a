"""``convert ORIGINAL --check CANDIDATE``: verify a model this tool did not write against its original.

The library does the work (``pipeline.check``: load both, find the rewritten layers from the two graphs, verify);
this module refuses the options that would write something (``-o``, ``--dry-run``, ``--force``, ``--no-verify``),
keeps ``--report`` off both models, and shows the result as ``convert`` does: the same summary (render.py), the
same exit codes, the same JSON report (``input`` the original, ``output`` the candidate, ``written`` false), and a
last line that says what was checked and that nothing was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from converter.cli.args import Style
from converter.cli.text import say, shown
from converter.errors import InputError
from converter.options import ConvertOptions
from converter.report import FAILED, INCOMPLETE, UNCHANGED, ConvertReport

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractContextManager

    from rich.console import Console

# Options that write a model or skip verification: nothing of the kind happens with --check.
_REFUSED = (("output", "-o"), ("dry_run", "--dry-run"), ("force", "--force"), ("no_verify", "--no-verify"))


def refuse_writing_options(ns: argparse.Namespace) -> None:
    """Refuse what cannot go with ``--check`` (one line).

    Raises:
        InputError: ``-o``, ``--dry-run``, ``--force`` or ``--no-verify`` was given, or ``--report`` names one of the
            two models.
    """
    given = [flag for attr, flag in _REFUSED if getattr(ns, attr, None) not in (None, False)]
    if given:
        raise InputError(f"--check writes nothing and always verifies: it cannot be combined with {', '.join(given)}")
    if ns.report is not None and ns.report != "-":
        from converter.files.paths import check_target, refuse_overwriting

        report = check_target(ns.report, "report")
        refuse_overwriting(report, [(Path(ns.input), "the original model"), (Path(ns.check), "the candidate model")], "report")


def run(
    ns: argparse.Namespace,
    options: ConvertOptions,
    style: Style,
    out: Console,
    err: Console,
    stderr: TextIO,
    progress: Callable[..., AbstractContextManager[Callable[[str], None]]],
    exit_status: Mapping[str, int],
) -> int:
    """Check ``ns.check`` against ``ns.input``, write the report, show the result; the exit code.

    Args:
        ns: the parsed arguments.
        options: the records they stand for (only ``options.verify`` is used).
        style: how much to print.
        out: the summary's console (stdout).
        err: the progress line's console (stderr).
        stderr: the stream for one-line messages.
        progress: ``process.progress`` (a context manager giving the progress callback).
        exit_status: the command's exit code by ``ConvertReport.status`` (the others: 0).

    Raises:
        InputError: an option that cannot go with ``--check``, a model that cannot be read, a report that cannot
            be written (to stdout too, with ``--report -``).
    """
    from converter.cli import paths, render
    from converter.pipeline import check

    refuse_writing_options(ns)
    with progress(err, enabled=not style.quiet and err.is_terminal) as on_step:
        report = check(ns.input, ns.check, options=options, on_step=on_step)
    if ns.report is not None and ns.report != "-":
        paths.write_report(Path(ns.report), report)
    status = exit_status.get(report.status, 0)
    if ns.report == "-":
        try:
            render.show_json(stdout_or_fail(), paths.report_json(report))
        except OSError as e:
            raise InputError(f"cannot write the JSON report to stdout ({getattr(e, 'strerror', None) or e})") from None
        say(stderr, verdict(report))
        return status
    if not style.quiet:
        render.print_report(out, report, verbose=style.verbose, atol=ns.atol, rtol=ns.rtol)
    out.print(verdict(report))
    out.file.flush()
    return status


def stdout_or_fail() -> TextIO:
    import sys

    if sys.stdout is None:
        raise OSError(9, "stdout is closed")
    return sys.stdout


def verdict(report: ConvertReport) -> str:
    """The last line of a check: its verdict word (``report.verdict``), what it rests on, and that nothing was written."""
    candidate, original = shown(report.output or ""), shown(report.input)
    word = report.verdict
    check = report.verify
    layers = check.layers if check is not None else []
    if word == FAILED:
        return f"{word}: {candidate} does not compute what {original} does (verification found mismatches); nothing written"
    if word == INCOMPLETE:
        short = [layer for layer in layers if not layer.verified]
        unproved = (check.structure or {}).get("unproved", []) if check is not None else []
        if short:
            first = short[0]
            why = first.structure_detail if first.structure != "proved" else first.numbers_detail
            missing = f"{len(short)} of {len(layers)} rewritten layers lack evidence ({shown(first.conv)}: {shown(why)})"
        else:
            missing = f"the structure could not be proved ({shown(unproved[0])})" if unproved else "evidence is missing"
        return f"{word}: {candidate} against {original}: {missing}; nothing written"
    if word == UNCHANGED:
        return f"{word}: {candidate} computes what {original} does, with no dense layer rewritten; nothing written"
    return (
        f"{word}: {candidate} computes what {original} does ({len(layers)} rewritten layer{'s' * (len(layers) != 1)} "
        "found, proved by structure and checked by numbers); nothing written"
    )
