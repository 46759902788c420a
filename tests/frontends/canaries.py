"""Canaries for hostile-model tests: a file that must not be opened, and connections that must not be made.

``FifoCanary`` is a named pipe that notices a reader: opening a FIFO for writing without blocking
succeeds only while something has it open for reading, so a thread tries every few milliseconds
and, when it succeeds, hands the reader a few bytes and records it. Whatever opens the file is
seen, whichever op or library does it, and the reader never hangs.

``run_in_private_network`` runs a command in a network namespace made for it (``unshare -rn``,
no privilege needed), with a listener on the loopback interface there and ``GCE_METADATA_HOST``
pointing at it: TensorFlow's ``gs://`` file system asks that host for a token before anything
else, so a model that touches ``gs://...`` connects to the listener. Nothing can leave the
namespace. Run as a module, this file is that namespace's side:

    python -m tests.frontends.canaries RESULT.json COMMAND...
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

# ioctl requests and flag from <linux/sockios.h> and <net/if.h>, to bring the loopback interface up.
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


class FifoCanary:
    """A FIFO at ``path`` that records whether anything opened it for reading while the block ran."""

    def __init__(self, path: Path, payload: bytes = b"secret") -> None:
        self.path = path
        self.payload = payload
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> FifoCanary:
        os.mkfifo(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                time.sleep(0.005)
                continue
            self.opened = True
            try:
                os.write(fd, self.payload)
            except OSError:
                pass
            finally:
                os.close(fd)
            time.sleep(0.05)


def private_network_unavailable() -> str | None:
    """Why ``run_in_private_network`` cannot run here (None when it can)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux's unshare is not installed"
    probe = subprocess.run([unshare, "-rn", sys.executable, "-c", ""], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"the kernel refused a user and network namespace ({probe.stderr.strip() or probe.returncode})"
    return None


def run_in_private_network(command: list[str], result: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run ``command`` in a new network namespace with a listener; its exit status, output and the connections made.

    Args:
        command: the command line (the real ``convert``).
        result: a file for the namespace's side to write its findings to.
        env: the command's environment (``GCE_METADATA_HOST`` is added in the namespace).
        cwd: the repository's root, where ``tests`` is a package.
    """
    subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "tests.frontends.canaries", str(result), *command],
        env=env,
        cwd=cwd,
        timeout=900,
        check=True,
    )
    return json.loads(result.read_text())


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _serve(argv: list[str]) -> None:
    result, command = Path(argv[0]), argv[1:]
    _loopback_up()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    requests: list[str] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    requests.append(connection.recv(200).decode("latin-1").split("\r\n", 1)[0])
                except OSError:
                    requests.append("")

    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "GCE_METADATA_HOST": f"127.0.0.1:{listener.getsockname()[1]}"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    time.sleep(0.2)  # a connection made just before the command ended is counted
    listener.close()
    result.write_text(json.dumps({"returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr, "requests": requests}))


if __name__ == "__main__":
    _serve(sys.argv[1:])
