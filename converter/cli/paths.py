"""The paths only the command writes or reads (``--report``, ``--inputs``), and what a run changed on disk.

The model's output path is the library's: ``convert`` checks it, once, before any work (files/paths.py's
``check_output``). Here, also before any work: the ``--report`` file may not replace the input model, its
external data, the output or its data file, or the ``--inputs`` file; nor may the output replace the
``--inputs`` file (the library never sees that file, only its arrays). Each path the run may write is
fingerprinted first, so that an interrupted or failed run can say which of them changed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from converter.cli.text import shown
from converter.errors import InputError
from converter.files.load import external_data_files
from converter.files.paths import check_target, refuse_inside, refuse_overwriting
from converter.files.save import write_atomic
from converter.pipeline import default_output
from converter.report import ConvertReport

Fingerprints = dict[Path, "tuple[int, ...] | None"]


def intended_output(ns: argparse.Namespace) -> Path:
    """Where the model goes: ``-o``, or the library's default beside the input (not checked here: ``convert`` does).

    Raises:
        InputError: no ``-o`` and an input path with no name to make one from (``.``, ``/``).
    """
    return Path(ns.output) if ns.output is not None else default_output(ns.input)


def check_paths(ns: argparse.Namespace) -> Fingerprints:
    """The command's own path checks (see the module docstring), made before any work.

    Args:
        ns: the parsed arguments (``input``, ``output``, ``inputs``, ``report``, ``dry_run``).

    Returns:
        Every path the run may write, with its fingerprint now (None: nothing there).

    Raises:
        InputError: a path that would replace a file the run needs, or a report path that cannot be written.
    """
    source = Path(ns.input)
    output = intended_output(ns)
    data = output.with_name(output.name + ".data") if output.name else output
    inputs = [(Path(ns.inputs), "the --inputs file")] if ns.inputs else []
    if not ns.dry_run:
        refuse_overwriting(output, inputs)
        refuse_overwriting(data, inputs, "output's data file")
    written = [] if ns.dry_run else [output, data]
    if ns.report is not None and ns.report != "-":
        report = check_target(ns.report, "report")
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
    return {path: fingerprint(path) for path in written}


def report_json(report: ConvertReport) -> str:
    """The JSON report's text (report.py's ``to_dict``, schema in its docstring), strict JSON, ending in a newline."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def write_report(path: Path, report: ConvertReport) -> None:
    """Write the JSON report to ``path`` atomically (a temporary file renamed into place).

    Raises:
        InputError: it could not be written; the message says when the model was written all the same.
    """
    try:
        write_atomic(path, report_json(report).encode(), what="report")
    except InputError as e:
        if report.written:
            raise InputError(f"{e}; the model was written to {report.output}") from e
        raise


def what_was_written(watched: Fingerprints) -> str:
    """``nothing was written``, or which of the watched paths changed since they were fingerprinted."""
    changed = [shown(path) for path, before in watched.items() if fingerprint(path) != before]
    if not changed:
        return "nothing was written"
    return f"{', '.join(changed)} {'was' if len(changed) == 1 else 'were'} written"


def fingerprint(path: Path) -> tuple[int, ...] | None:
    """What identifies the file at ``path`` now (device, inode, modification time, size); None when there is none."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
