"""The ``convert`` command (also installed as ``dense2conv``): ``main(argv)`` and its exit codes, over
``converter.convert``.

A thin layer: the argument groups (args.py) build the option records, ``convert`` does the work, render.py
shows the result. Arguments are parsed before anything heavy is imported, so ``--help``, ``--version`` and
usage errors answer at once; onnx, numpy, onnxruntime and rich are imported after, inside the quiet block
(process.py), so that what they print on import does not reach the terminal.

Every failure is one line on stderr and an exit code (``EXIT_CODES``, also in ``--help``): a user error or a
problem of the machine (a path, a write that failed, memory) is 2; anything the command did not expect is a
bug, 4, with the error named and ``-v`` for its traceback. A finished conversion keeps its status when the
summary cannot be shown (stdout closed, full or gone): one line on stderr says so.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import traceback
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from converter.cli import process
from converter.cli.args import CommandArgs, Parser, Style, StyleArgs, VersionAction
from converter.cli.text import first_line, say
from converter.errors import ConverterError

if TYPE_CHECKING:
    from rich.console import Console

    from converter.report import ConvertReport

PROG = "convert"
# The same command under a name no other tool has: on most Linux machines ImageMagick's `convert` may come first on PATH.
ALIAS = "dense2conv"

EXIT_OK = 0  # PASSED, UNCHANGED, DONE (--no-verify), DRY RUN
EXIT_MISMATCH = 1  # FAILED: verification found a mismatch
EXIT_USAGE = 2  # a usage error, input that cannot be used, or a problem of the machine (a path, a write, memory)
EXIT_INCOMPLETE = 3  # INCOMPLETE: nothing disagreed, but some rewritten layer lacks its proof or its numbers
EXIT_INTERNAL = 4  # an error the command did not expect: a bug
EXIT_STATUS = {"failed": EXIT_MISMATCH, "incomplete": EXIT_INCOMPLETE}  # by ConvertReport.status; the rest: EXIT_OK

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    PASSED, UNCHANGED (nothing to rewrite), DONE (--no-verify) or DRY RUN
  {EXIT_MISMATCH}    FAILED: verification found a mismatch (nothing written unless --force)
  {EXIT_USAGE}    usage error, unusable input, or a path, write or memory problem (one line on stderr)
  {EXIT_INCOMPLETE}    INCOMPLETE: nothing disagreed, but evidence is missing (nothing written unless --force)
  {EXIT_INTERNAL}    internal error, a bug (one line naming it; -v shows the traceback)
  128+N stopped by signal N: 130 SIGINT, 143 SIGTERM, 129 SIGHUP (temporary files removed)"""

# Names that lived in this module before it became a package of its own (cli.shown, cli.verdict, ...), where
# they live now; imported on first use, so that importing converter.cli stays light.
_MOVED = {
    "shown": "converter.cli.text",
    "verdict": "converter.cli.render",
    "print_report": "converter.cli.render",
    "layout_line": "converter.cli.render",
    "_round_up": "converter.cli.render",
    "step_words": "converter.cli.process",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command's parser: every argument group (args.py), ``--version``, and the exit codes as its epilog."""
    p = Parser(
        prog=prog,
        description="Rewrite dense layers (MatMul + Add) on 4D tensors into 1x1 Convs and verify the result in onnxruntime.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(prog=prog)
    p.add_argument("--version", action=VersionAction)
    CommandArgs().add_to(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return its exit code (``EXIT_CODES``).

    Args:
        argv: the arguments, without the program's name.
    """
    process.standard_fds()
    ns = build_parser(_prog_name()).parse_args(argv)
    # Our own stream to the terminal: while the work runs, file descriptor 2 goes to /dev/null
    # (unless -v), and the TensorFlow front end silences it too; our progress and errors must not go with it.
    with process.stderr_copy() as stderr:
        return _run(ns, StyleArgs().parse(ns), stderr)


def _prog_name() -> str:
    """``dense2conv`` when run under that name, else ``convert`` (also for ``python -m converter``)."""
    return ALIAS if Path(sys.argv[0] if sys.argv else "").stem == ALIAS else PROG


def _run(ns: argparse.Namespace, style: Style, stderr: TextIO) -> int:
    """Check the command's paths, build the options, convert, write the report, show the result."""
    prog = ns.prog
    watched: dict[Path, Any] = {}
    try:
        with process.signals_raise(), process.quiet(enabled=not style.verbose):
            # The heavy imports, inside the quiet block: onnxruntime prints its warnings as it loads.
            from converter.cli import paths, render
            from converter.pipeline import convert

            out, err = render.consoles(process.tolerant(sys.stdout), stderr)
            if ns.check is not None:  # verify a candidate against the input; nothing is written (cli/check.py)
                from converter.cli import check

                return check.run(ns, CommandArgs().parse(ns), style, out, err, stderr, process.progress, EXIT_STATUS)
            watched = paths.check_paths(ns)
            options = CommandArgs().parse(ns)
            with process.progress(err, enabled=not style.quiet and err.is_terminal) as on_step:
                # -o as typed: convert() checks the output path, once (a trailing "/" or "" must reach the check).
                report = convert(ns.input, ns.output, options=options, on_step=on_step)
            if ns.report is not None and ns.report != "-":
                paths.write_report(Path(ns.report), report)
            status = EXIT_STATUS.get(report.status, EXIT_OK)
            for warning in report.warnings:
                say(stderr, f"{prog}: warning: {warning}")
            if ns.report == "-":
                return _show_json(prog, report, stderr, status)
            return _show(prog, report, out, style, ns, stderr, status)
    except ConverterError as e:
        _traceback(stderr, style)
        say(stderr, f"{prog}: error: {e}")
        return e.exit_code
    except MemoryError:
        _traceback(stderr, style)
        hint = "--max-memory, a smaller --input-shape or --no-verify may help"
        say(stderr, f"{prog}: error: out of memory; {_what_was_written(watched)} ({hint})")
        return EXIT_USAGE
    except (process.Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, process.Stopped) else signal.SIGINT
        say(stderr, f"{prog}: {process.STOP_WORDS.get(signum, 'stopped')}; {_what_was_written(watched)}")
        return 128 + signum
    except Exception as e:  # noqa: BLE001 - the catch-all: a bug is still one line (and its traceback with -v)
        _traceback(stderr, style)
        where = "the traceback is above" if style.verbose else "run it again with -v for the traceback"
        say(stderr, f"{prog}: internal error: {first_line(e)}; {_what_was_written(watched)} (a bug in {prog}; {where})")
        return EXIT_INTERNAL


def _show(prog: str, report: ConvertReport, out: Console, style: Style, ns: argparse.Namespace, stderr: TextIO, status: int) -> int:
    """The summary and the verdict on stdout; a stdout that cannot take them leaves ``status`` as it is."""
    from converter.cli import render

    if sys.stdout is None:  # started with file descriptor 1 closed (``>&-``)
        say(stderr, f"{prog}: stdout is closed; {render.verdict(report)}")
        return status
    try:
        render.show(out, report, quiet=style.quiet, verbose=style.verbose, atol=ns.atol, rtol=ns.rtol)
    except BrokenPipeError:
        # The reader went away (``convert ... | head``): the work is done, its status stands.
        process.drop_stdout()
    except (OSError, ValueError) as e:  # a full disk (/dev/full), a stream closed under us
        if isinstance(e, ValueError) and not sys.stdout.closed:
            raise  # not the stream's: a bug, for the catch-all
        process.drop_stdout()
        say(stderr, f"{prog}: cannot write to stdout ({_reason(e)}); {render.verdict(report)}")
    return status


def _show_json(prog: str, report: ConvertReport, stderr: TextIO, status: int) -> int:
    """``--report -``: the JSON on stdout, the verdict on stderr. The JSON was asked for: not delivering it is an error."""
    from converter.cli import paths, render

    text = paths.report_json(report)
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, "stdout is closed")
        render.show_json(sys.stdout, text)
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and not sys.stdout.closed:
            raise  # not the stream's: a bug, for the catch-all
        process.drop_stdout()
        model = f"the model was written to {report.output}" if report.written else "the model was not written"
        say(stderr, f"{prog}: error: cannot write the JSON report to stdout ({_reason(e)}); {model}")
        return EXIT_USAGE
    say(stderr, render.verdict(report))
    return status


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or first_line(e)


def _traceback(stderr: TextIO, style: Style) -> None:
    if style.verbose:
        say(stderr, *traceback.format_exc().splitlines())


def _what_was_written(watched: dict[Path, Any]) -> str:
    if not watched:
        return "nothing was written"
    from converter.cli import paths

    return paths.what_was_written(watched)
