"""What every measurement script ends with: the machine it ran on, printed and saved with the rows."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.console import Console


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def publish(console: Console, path: Path, rows: list[dict], **settings: object) -> None:
    """Print the machine line and write ``{"machine", **settings, "rows"}`` as JSON to ``path``."""
    console.print(f"machine: {machine()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **settings, "rows": rows}, indent=2) + "\n")
