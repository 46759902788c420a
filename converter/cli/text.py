"""The command's one-line messages, and names and paths as inert text (``shown``): what the command prints
about a model never acts on the terminal.

Its own module, importing nothing heavy: argument parsing needs ``shown`` (an argparse error quotes what was
typed), and an error line must be writable even when importing the libraries a conversion needs is what
failed. The summary and its tables are render.py's.
"""

from __future__ import annotations

import contextlib
from typing import TextIO


def shown(text: object) -> str:
    """``text`` safe to print: control characters, bidi overrides and undecodable bytes become escapes.

    Args:
        text: anything; its ``str()`` is shown.
    """
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


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most ``limit`` characters (its type's name when it has none).

    Args:
        error: the exception.
        limit: the longest line returned; longer ones end in ``...``.
    """
    text = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def say(stream: TextIO, *lines: str) -> None:
    """Write lines (each shown as data) and flush; a stream that is gone (a closed terminal, a full disk) must
    not turn a message into a traceback.

    Args:
        stream: where they go (the command's copy of stderr).
        lines: the lines, without their newlines.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in lines:
            stream.write(shown(line) + "\n")
        stream.flush()
