"""The command parses its arguments before it imports what a conversion needs: ``--help``, ``--version`` and usage
errors import none of it. Checked by what a fresh interpreter has imported, which is deterministic; how long the
start takes is measured by ``python -m benchmarks.startup``, not here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What only a conversion needs: the summary's libraries and the command's own heavy modules ...
COMMAND_HEAVY = ("rich", "converter.cli.render", "converter.cli.paths")
# ... and the libraries the package's API pulls in.
LIBRARY_HEAVY = ("onnx", "numpy", "onnxruntime", "converter.pipeline")


def imported_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after ``main(argv)`` ran (and, for --help, exited)."""
    code = (
        "import json, sys\n"
        "from converter.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["m.onnx", "--timeout", "x"]], ids=["help", "version", "usage"])
def test_no_conversion_module_before_the_arguments_are_parsed(argv: list[str]) -> None:
    modules = imported_after(argv)
    assert not modules & set(COMMAND_HEAVY), sorted(modules & set(COMMAND_HEAVY))


def test_help_imports_no_library() -> None:
    modules = imported_after(["--help"])
    assert not modules & set(LIBRARY_HEAVY), sorted(modules & set(LIBRARY_HEAVY))
