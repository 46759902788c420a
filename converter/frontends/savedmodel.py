"""TensorFlow input: SavedModel folders and Keras ``.keras`` files, audited here, converted in a child process.

A SavedModel is a program: loading it runs its resource initializers, calling its signature runs
the signature's ops, and either may write files or call Python. So, in this process:

1. ``saved_model.pb`` is read once and audited without TensorFlow (audit.py): a model that can
   run an op outside the allowlist is refused unless the user passes ``trust_model``.
2. The audited bytes are copied into a private temporary folder beside links to the model's other
   files (variables, assets), so TensorFlow loads exactly what was audited.
3. TensorFlow, Keras and tf2onnx run only in a child interpreter (worker.py), for the conversion
   and for the reference run that verification compares against. A crash, an abort or the kernel's
   out-of-memory killer ends the child, not us, and becomes one line; TensorFlow's native logs go
   to a file there unless ``native_logs``. This process never imports TensorFlow.

A ``.keras`` file is loaded (in safe mode) and exported to a SavedModel by the child first, and
that export is audited the same way before anything converts or runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from converter.errors import InputError
from converter.frontends.audit import CorruptSavedModel, audit_saved_model, printable

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "saved_model.cpb")
_MAX_PB_BYTES = 2**31 - 1  # protobuf's limit on one message: TensorFlow cannot parse more
_REPLY_LIMIT = 1 << 20


@dataclass
class TensorFlowSource:
    """Where a converted model came from, for running TensorFlow itself during verification."""

    saved_model: Path  # the audited copy TensorFlow loads (inside open_tensorflow's private folder)
    signature: str
    tag: str
    model: onnx.ModelProto
    native_logs: bool = False
    warnings: list[str] = field(default_factory=list)
    worker: TensorFlowWorker | None = field(default=None, repr=False)


@contextlib.contextmanager
def open_tensorflow(
    path: str | os.PathLike[str],
    *,
    signature: str = "serving_default",
    tag: str = "serve",
    opset: int = 17,
    native_logs: bool = False,
    allow_h5: bool = False,
    trust_model: bool = False,
) -> Iterator[TensorFlowSource]:
    """Audit and convert a SavedModel folder or ``.keras`` file; TensorFlow stays available inside the block.

    Raises InputError (one line) for a model the audit refuses (unless ``trust_model``, which turns
    the refusal into a warning in ``source.warnings``), a corrupt one, one tf2onnx cannot convert,
    a TensorFlow crash, or a missing TensorFlow. TensorFlow's native logging is silenced unless
    ``native_logs``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    warnings = []
    if p.suffix == ".h5":
        if not allow_h5:
            raise InputError(
                f"{p}: legacy .h5 Keras files run their Lambda layers' code when loaded; "
                "pass --allow-h5 if you trust it, or export a .keras file or a SavedModel"
            )
        warnings.append(f"{p}: loaded a legacy .h5 file with --allow-h5: any Lambda layer code in it has run")
    if p.is_dir() and not any((p / name).is_file() for name in _SAVED_MODEL_FILES):
        raise InputError(f"{p}: not a SavedModel folder (no saved_model.pb)")
    with tempfile.TemporaryDirectory(prefix="converter-tf-") as tmp, TensorFlowWorker(Path(tmp), native_logs, str(p)) as worker:
        folder = Path(tmp)
        if p.is_dir():
            exported = p
        else:
            exported = folder / "exported"
            worker.request("export", "loading it", path=str(p.resolve()), target=str(exported))
        saved = _audited_copy(exported, folder / "saved_model", shown_as=p, trust_model=trust_model, warnings=warnings)
        onnx_path = folder / "model.onnx"
        worker.request(
            "convert",
            "converting it",
            saved_model=str(saved),
            signature=signature,
            tag=tag,
            opset=opset,
            output=str(onnx_path),
        )
        model = onnx.load_model_from_string(onnx_path.read_bytes())
        onnx_path.unlink()
        yield TensorFlowSource(saved, signature, tag, model, native_logs, warnings, worker)


def load_tensorflow(path: str | os.PathLike[str], **options: object) -> onnx.ModelProto:
    """The tf2onnx ONNX model of a SavedModel folder or ``.keras`` file (before any rewrite)."""
    with open_tensorflow(path, **options) as source:  # type: ignore[arg-type]
        return source.model


def run_tensorflow(source: TensorFlowSource, feeds: dict[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
    """Run the SavedModel's signature on ``feeds`` (keyed by ONNX input names, the signature's names).

    Only inside ``open_tensorflow``'s block: TensorFlow runs in its child process, which is stopped
    if it has not answered within ``timeout`` seconds.
    """
    if source.worker is None:
        raise ValueError("run_tensorflow needs a source from open_tensorflow, used inside its with block")
    folder = source.worker.folder
    names = list(feeds)
    np.savez(folder / "feeds.npz", *(np.asarray(feeds[n]) for n in names))
    reply = source.worker.request(
        "run",
        f"running its signature {source.signature!r}",
        timeout=timeout,
        saved_model=str(source.saved_model),
        signature=source.signature,
        tag=source.tag,
        names=names,
        feeds=str(folder / "feeds.npz"),
        outputs=str(folder / "outputs.npz"),
    )
    with np.load(folder / "outputs.npz", allow_pickle=False) as data:
        return {name: data[f"arr_{i}"] for i, name in enumerate(reply["names"])}


def _audited_copy(folder: Path, target: Path, *, shown_as: Path, trust_model: bool, warnings: list[str]) -> Path:
    """Audit ``folder``'s saved_model.pb and lay out ``target`` for TensorFlow: the audited bytes, links to the rest.

    With ``trust_model`` a refusal becomes a warning, and TensorFlow gets the folder as it is.
    """
    refusal = corrupt = None
    data = _read_saved_model_pb(folder, shown_as)
    try:
        audit = audit_saved_model(data) if data is not None else None
    except CorruptSavedModel as e:
        corrupt = f"saved_model.pb is not a valid SavedModel ({e})"
    else:
        if audit is None:
            refusal = "a SavedModel without saved_model.pb (a .pbtxt or .cpb cannot be audited)"
        elif audit.refused:
            refusal = f"TensorFlow ops outside the audited allowlist: {audit.describe_refused()}"
    if trust_model:
        if refusal or corrupt:
            warnings.append(f"{shown_as}: ran with --trust-model: {refusal or corrupt}")
        return folder.resolve()
    if corrupt:
        raise InputError(f"{shown_as}: {corrupt}")
    if refusal:
        raise InputError(f"{shown_as}: refusing to run {refusal}; pass --trust-model if you trust this model")
    target.mkdir()
    (target / "saved_model.pb").write_bytes(data)  # type: ignore[arg-type] - None was refused above
    for entry in folder.iterdir():
        if entry.name not in _SAVED_MODEL_FILES:
            (target / entry.name).symlink_to(entry.resolve())
    return target


def _read_saved_model_pb(folder: Path, shown_as: Path) -> bytes | None:
    """saved_model.pb's bytes, read once (None when there is only a .pbtxt or .cpb, which we cannot audit).

    No FIFO, device or runaway size gets to block or exhaust us.
    """
    pb = folder / "saved_model.pb"
    if not pb.exists() and not pb.is_symlink():
        return None
    try:
        fd = os.open(pb, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(f"{shown_as}: cannot read saved_model.pb ({e.strerror})") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{shown_as}: saved_model.pb is not a regular file")
        if info.st_size > _MAX_PB_BYTES:
            raise InputError(f"{shown_as}: saved_model.pb is larger than protobuf's 2 GiB limit")
        data = f.read(info.st_size + 1)
    if len(data) != info.st_size:
        raise InputError(f"{shown_as}: saved_model.pb changed while it was read")
    return data


class TensorFlowWorker:
    """The child interpreter that runs TensorFlow (worker.py), started on the first request.

    Files for it go in ``folder`` (private to us). Its stdout and stderr go to a log file there,
    or to our stderr with ``native_logs``. A request it cannot serve is an InputError with its
    one-line message; a child that dies (a signal, an exit) is an InputError saying so.
    """

    def __init__(self, folder: Path, native_logs: bool, shown_as: str) -> None:
        self.folder = folder
        self.native_logs = native_logs
        self.shown_as = shown_as  # the model as the user named it, for messages
        self._process: subprocess.Popen[bytes] | None = None
        self._replies = None

    def __enter__(self) -> TensorFlowWorker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # After an error or Ctrl-C the child may be busy in TensorFlow (it ignores SIGINT): stop it now.
        self.close(kill=exc_type is not None)

    def request(self, op: str, doing: str, timeout: float | None = None, **fields: object) -> dict:
        """Send one request and wait for its reply; ``doing`` ("converting it") names the request if the child dies.

        With ``timeout`` (seconds), a child that has not replied by then is stopped: one InputError line.
        """
        process = self._start()
        line = b""
        try:
            assert process.stdin is not None and self._replies is not None
            process.stdin.write(json.dumps({"op": op, "shown_as": self.shown_as, **fields}).encode() + b"\n")
            process.stdin.flush()
            if timeout is not None and not select.select([self._replies], [], [], max(timeout, 0.0))[0]:
                process.kill()
                process.wait()
                raise InputError(
                    f"{self.shown_as}: TensorFlow did not finish {doing} within {timeout:.0f} s "
                    "(an endless loop?); give --timeout SECONDS, or --no-verify"
                )
            line = self._replies.readline(_REPLY_LIMIT)
        except BrokenPipeError:
            pass
        if not line.endswith(b"\n"):
            raise InputError(self._death(doing))
        reply = json.loads(line)
        if "error" in reply:
            # TensorFlow's messages name the audited copy (name the user's model instead) and may quote
            # names the model chose (no control characters reach the terminal).
            message = reply["error"].replace(str(self.folder / "saved_model"), self.shown_as)
            raise InputError(printable(" ".join(message.split()), limit=1000))
        return reply

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is not None:
            return self._process
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logging reads it at import
        # worker.py runs by path: it needs nothing of our package (and none of our imports' time).
        bootstrap = f"import runpy; runpy.run_path({str(Path(__file__).with_name('worker.py'))!r}, run_name='__main__')"
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # no script folder on sys.path ...
        # Its output: a log file in our folder, or with native_logs the user's stderr (stdout is for our report).
        log = None if self.native_logs else open(self.folder / "tensorflow.log", "wb")  # noqa: SIM115 - closed below
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, *flags, "-c", bootstrap, str(write_end)],
                stdin=subprocess.PIPE,
                stdout=log if log is not None else 2,
                stderr=log,
                pass_fds=(write_end,),
                cwd=self.folder,  # ... and our private folder as the working directory
                env=env,
            )
        finally:
            os.close(write_end)
            if log is not None:
                log.close()
        self._replies = os.fdopen(read_end, "rb")
        return self._process

    def _death(self, doing: str) -> str:
        assert self._process is not None
        try:
            code = self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        if code < 0:
            name = _signal_name(-code)
            what = f"TensorFlow crashed (signal {name})"
            if -code == signal.SIGKILL:
                what = "TensorFlow was killed (signal SIGKILL; out of memory?)"
        else:
            what = f"TensorFlow exited with status {code}"
            last = self._last_log_line()
            if last:  # a Python-level death says why on its last line
                what += f" ({last})"
        hint = "" if self.native_logs else "; run with -v to see its log"
        return f"{self.shown_as}: {what} while {doing}{hint}"

    def _last_log_line(self) -> str:
        log = self.folder / "tensorflow.log"
        if self.native_logs or not log.is_file():
            return ""
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return printable(lines[-1], 200) if lines else ""

    def close(self, kill: bool = False) -> None:
        """End the child: it exits when its stdin closes (``kill``: at once)."""
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        with contextlib.suppress(OSError):
            process.stdin.close()  # type: ignore[union-attr]
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._replies is not None:
            self._replies.close()
            self._replies = None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
