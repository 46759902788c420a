"""The command as a process: its standard streams, signals, what libraries print, and the progress line.

- File descriptors 0, 1 and 2 that a parent left closed are opened on /dev/null first (``standard_fds``),
  so that no model or temporary file the run opens takes their numbers and receives what a native library
  writes to "stderr".
- SIGINT, SIGTERM and SIGHUP become an exception (``Stopped``) while the work runs, so every ``finally``
  runs and temporary files are removed (files/save.py).
- Unless ``-v``: file descriptor 2 goes to /dev/null while the work runs (``quiet``), and the heavy imports
  happen inside it, so that what libraries print on their own (onnxruntime's native log, e.g. its telemetry
  warning when HOME is not writable, which it prints on import; onnx's warnings) does not add to our one line.
  Our own messages go to a copy of the real stderr (``stderr_copy``).
- The progress line (stderr, a terminal only, not with ``-q``) shows the pipeline's steps and is cleared.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from converter.cli.text import shown


def standard_fds() -> None:
    """Open /dev/null on any of file descriptors 0, 1 and 2 that is closed (``convert ... >&-``).

    ``sys.stdout`` stays None when Python started without file descriptor 1: the command still knows that
    nothing can be shown there.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: it is ``fd`` unless a lower one is closed too (opened in turn)
                os.dup2(null, fd)
                os.close(null)


def stderr_copy() -> TextIO:
    """A stream on a copy of file descriptor 2, escaping what its encoding cannot hold."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        return os.fdopen(os.dup(2), "w", encoding=encoding, errors="backslashreplace")
    except OSError:  # no file descriptor 2 at all
        return open(os.devnull, "w")


def tolerant(stream: TextIO | None) -> TextIO | None:
    """stdout that escapes what its encoding cannot hold (an ASCII locale and a name in Greek), rather than raising."""
    if stream is not None and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")
    return stream


def drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null and drop what Python still holds for it, so that the interpreter's
    last flush at exit cannot fail again on a stdout that is gone, full or closed."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    if sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # now into /dev/null


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null and ignore Python warnings while the work runs.

    Libraries write to stderr on their own (onnxruntime's native log, e.g. a telemetry warning
    when HOME is not writable; onnx's "experimental format" warning); the promise is one line.
    Restored before any exception leaves.
    """
    if not enabled:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class Stopped(BaseException):
    """SIGTERM or SIGHUP (or SIGINT) turned into an exception, like KeyboardInterrupt: every ``finally`` runs,
    so temporary files are removed (save.py)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOPPING = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", getattr(signal, "SIGHUP", -1): "hung up"}


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Stopped`` inside the block (the main thread only; elsewhere as they were)."""

    def stop(signum: int, _frame: Any) -> None:
        # One is enough: a second signal must not cut the cleanup of the first short.
        for s in _STOPPING:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

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
def progress(console: Any, enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """One transient line on ``console`` (a rich Console on stderr): a spinner, the step with its counts, the time so far.

    The pipeline names its steps (``loading ...``, ``rewriting``, the verification's runs with their
    trial counts, ``saving ...``); here they are numbered, and those between the rewrite and the save
    are shown as verification. The line is cleared when the work ends, so nothing of it stays.

    Args:
        console: where the line goes.
        enabled: False gives no line (and None for ``on_step``).
    """
    if not enabled:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        steps = 0

        def on_step(message: str) -> None:
            nonlocal steps
            # "rewriting: candidate 40 of 800" counts inside the step "rewriting" began; the rest are steps.
            if not (message.startswith("rewriting: ") and steps):
                steps += 1
            bar.update(task, description=f"[{steps}] {shown(step_words(message))}", refresh=True)

        yield on_step


def step_words(message: str) -> str:
    """A pipeline step as the progress line says it: the verification's runs read ``verifying: ...``."""
    if message.startswith(("loading", "converting", "rewriting", "saving")):
        return message
    return f"verifying: {message}"
