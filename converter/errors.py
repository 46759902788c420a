"""Exceptions a user sees: each carries a one-line message and the exit status the CLI uses.

Anything else that escapes the library is a bug and stays a traceback.
"""

from __future__ import annotations


class ConverterError(Exception):
    """A problem with the user's input or environment, not with the converter."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the wrapped library said.
        super().__init__(" ".join(str(message).split()))


class InputError(ConverterError):
    """The model, the options or the data given to us cannot be used."""


class ProviderUnavailable(ConverterError):
    """The execution provider the user asked for cannot run here."""
