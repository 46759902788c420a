"""TensorFlow input: SavedModel folders and Keras ``.keras`` files, audited here, converted in a confined child process.

A SavedModel is a program: loading it runs its resource initializers, calling its signature runs
the signature's ops, and either may write files or call Python. So, in this process:

1. The folder is checked before anything reads it: every file in it, recursively, is a regular
   file or a folder, and every symlink resolves inside it (so ``-o`` and ``--report``, which may
   not be inside the folder, cannot replace a file the model reads through a link; a FIFO cannot
   hang us; a link loop is one line).
2. ``saved_model.pb`` is read once and audited without TensorFlow (audit.py): a model that holds
   an op outside the allowlist, or a path op not confined to its own variables, is refused unless
   the user passes ``trust_model``.
3. The audited bytes are copied into a private temporary folder beside links to the model's other
   files (variables, assets), so TensorFlow loads exactly what was audited.
4. TensorFlow, Keras and tf2onnx run only in a child interpreter (worker.py), for the conversion
   and for the reference run that verification compares against. Every request to it has a
   deadline. Where the OS allows, the child has no network (on Linux, its own network namespace,
   made by util-linux's ``unshare``) and may write only in the private folder (Landlock, applied
   by the child itself). A crash, an abort or the kernel's out-of-memory killer ends the child,
   not us, and becomes one line; TensorFlow's native logs go to a file there unless
   ``native_logs``. This process never imports TensorFlow.

A ``.keras`` file is loaded (in safe mode) and exported to a SavedModel by the child first, and
that export is checked and audited the same way before anything converts or runs it.
docs/safety.md says what each of these guarantees, and where it does not reach, on each OS.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx

from converter.errors import InputError
from converter.files.paths import file_kind
from converter.frontends.audit import CorruptSavedModel, audit_saved_model, printable
from converter.options import DEFAULT_TIMEOUT, MAX_TIMEOUT

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "saved_model.cpb")
_MAX_PB_BYTES = 2**31 - 1  # protobuf's limit on one message: TensorFlow cannot parse more
_MAX_FOLDER_ENTRIES = 100_000  # files and folders in one SavedModel folder: checking them stays quick
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
    # What confines the child that runs TensorFlow here: {"network": ..., "writes": ...}, each a phrase.
    confinement: dict[str, str] = field(default_factory=dict)


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
    timeout: float | None = None,
) -> Iterator[TensorFlowSource]:
    """Check, audit and convert a SavedModel folder or ``.keras`` file; TensorFlow stays available inside the block.

    Args:
        path: a SavedModel folder, a ``.keras`` file, or (with ``allow_h5``) a legacy ``.h5`` file.
        signature: the signature to convert.
        tag: the meta graph's tag set.
        opset: the ONNX opset tf2onnx writes.
        native_logs: let TensorFlow's native logging through to our stderr.
        allow_h5: load a legacy ``.h5`` file (which runs its Lambda layers' code).
        trust_model: skip the audit's refusal (it becomes a warning in ``source.warnings``); the
            folder checks and the child's confinement still hold.
        timeout: seconds each request to TensorFlow (exporting, converting, each run) may take
            before the child is stopped (default 600).

    Raises InputError (one line) for a folder that is not safe to read, a model the audit refuses,
    a corrupt one, one tf2onnx cannot convert, a TensorFlow crash or a request past ``timeout``,
    or a missing TensorFlow.
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
    if p.is_dir():
        check_folder(p, shown_as=p)
        if not any((p / name).is_file() for name in _SAVED_MODEL_FILES):
            raise InputError(f"{p}: not a SavedModel folder (no saved_model.pb)")
    else:
        _check_regular_file(p)
    deadline = DEFAULT_TIMEOUT if timeout is None else min(timeout, MAX_TIMEOUT)
    with (
        tempfile.TemporaryDirectory(prefix="converter-tf-") as tmp,
        TensorFlowWorker(Path(tmp), native_logs, str(p), deadline) as worker,
    ):
        folder = Path(tmp)
        if p.is_dir():
            exported = p
        else:
            exported = folder / "exported"
            worker.request("export", "loading it", path=str(p.resolve()), target=str(exported))
            check_folder(exported, shown_as=p)
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
        yield TensorFlowSource(saved, signature, tag, model, native_logs, warnings, worker, worker.confinement)


def load_tensorflow(path: str | os.PathLike[str], **options: object) -> onnx.ModelProto:
    """The tf2onnx ONNX model of a SavedModel folder or ``.keras`` file (before any rewrite).

    Args:
        path: as for ``open_tensorflow``.
        options: ``open_tensorflow``'s keyword arguments.
    """
    with open_tensorflow(path, **options) as source:  # type: ignore[arg-type]
        return source.model


def run_tensorflow(source: TensorFlowSource, feeds: dict[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
    """Run the SavedModel's signature on ``feeds`` (keyed by ONNX input names, the signature's names).

    Only inside ``open_tensorflow``'s block: TensorFlow runs in its child process, which is stopped
    if it has not answered within ``timeout`` seconds (default: ``open_tensorflow``'s).

    Args:
        source: what ``open_tensorflow`` gave.
        feeds: one array per signature input.
        timeout: seconds this run may take.
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
    assert data is not None  # a folder without saved_model.pb was refused above
    (target / "saved_model.pb").write_bytes(data)
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


def check_folder(folder: Path, shown_as: Path) -> None:
    """Refuse a SavedModel folder that is not safe to read: a link out of it, a link loop, or a special file in it.

    Every entry is looked at with ``lstat`` (nothing is opened, so a FIFO cannot block us): folders
    are walked, regular files pass (a hard link is one file with two names; docs/safety.md says why
    that is safe), and a symlink must resolve inside the folder, where what it names is checked
    as itself. Anything else (a FIFO, a device, a socket) is refused before anything reads it.

    Args:
        folder: the SavedModel folder (itself it may be a link: what it resolves to is the model).
        shown_as: the model as the user named it, for messages.

    Raises InputError (one line) naming the entry.
    """
    try:
        root = folder.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a link loop, before Python 3.13
        raise InputError(f"{shown_as}: cannot resolve the folder ({_reason(e)})") from None
    pending, seen = [root], 0
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listed = list(entries)
        except OSError as e:
            raise InputError(f"{shown_as}: cannot read {_inside(current, root)} ({e.strerror})") from None
        for entry in listed:
            seen += 1
            if seen > _MAX_FOLDER_ENTRIES:
                raise InputError(f"{shown_as}: more than {_MAX_FOLDER_ENTRIES} files and folders in the SavedModel folder")
            where = _inside(Path(entry.path), root)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                raise InputError(f"{shown_as}: cannot read {where} ({e.strerror})") from None
            if stat.S_ISDIR(mode):
                if not Path(entry.path).resolve().is_relative_to(root):  # a Windows junction is a folder that is a link
                    raise InputError(
                        f"{shown_as}: {where} is a folder that leads outside the SavedModel folder; refusing to read it"
                    )
                pending.append(Path(entry.path))
            elif stat.S_ISLNK(mode):
                _check_link(Path(entry.path), root, where, shown_as)
            elif not stat.S_ISREG(mode):
                raise InputError(f"{shown_as}: {where} is a {file_kind(mode)}, not a regular file; refusing to read the SavedModel")


def _check_link(link: Path, root: Path, where: str, shown_as: Path) -> None:
    """A symlink in the folder must resolve inside it (a dangling one too: nothing may be created there later)."""
    try:
        os.stat(link)  # a loop fails here on every Python (resolve() stopped saying so in 3.13)
    except FileNotFoundError:
        pass  # dangling: where it points must still be inside
    except OSError as e:
        raise InputError(f"{shown_as}: {where} is a symbolic link that cannot be resolved ({_reason(e)})") from None
    try:
        target = link.resolve(strict=False)
    except (OSError, RuntimeError) as e:
        raise InputError(f"{shown_as}: {where} is a symbolic link that cannot be resolved ({_reason(e)})") from None
    if not target.is_relative_to(root):
        raise InputError(
            f"{shown_as}: {where} is a symbolic link that leads outside the SavedModel folder; refusing to read through it "
            "(copy the folder with its links resolved, e.g. cp -rL)"
        )


def _inside(path: Path, root: Path) -> str:
    """``variables/variables.index``: where an entry is, relative to the model's folder."""
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _reason(e: BaseException) -> str:
    """An OSError's reason in words; a link loop (RuntimeError before Python 3.13, ELOOP after) says so."""
    if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP:
        return "a symbolic link loop"
    return getattr(e, "strerror", None) or str(e)


def _check_regular_file(path: Path) -> None:
    """A ``.keras`` or ``.h5`` input must be a regular file (through the link the user named): a FIFO would block the child."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: cannot read it ({_reason(e)})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is a {file_kind(mode)}, not a regular file")


class TensorFlowWorker:
    """The child interpreter that runs TensorFlow (worker.py), started on the first request.

    Files for it go in ``folder`` (private to us). Its stdout and stderr go to a log file there,
    or to our stderr with ``native_logs``. A request it cannot serve is an InputError with its
    one-line message; a child that dies (a signal, an exit) or does not answer a request within
    ``timeout`` seconds (it is then stopped) is an InputError saying so. Where the OS allows, the
    child runs in its own network namespace and confines its own writes to ``folder``;
    ``confinement`` says what held, once it has started.
    """

    def __init__(self, folder: Path, native_logs: bool, shown_as: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.folder = folder
        self.native_logs = native_logs
        self.shown_as = shown_as  # the model as the user named it, for messages
        self.timeout = timeout
        self.confinement: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: BinaryIO | None = None

    def __enter__(self) -> TensorFlowWorker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # After an error or Ctrl-C the child may be busy in TensorFlow (it ignores SIGINT): stop it now.
        self.close(kill=exc_type is not None)

    def request(self, op: str, doing: str, timeout: float | None = None, **fields: object) -> dict:
        """Send one request and wait for its reply.

        Args:
            op: the request (``export``, ``convert``, ``run``; worker.py says what each does).
            doing: what it is doing, in words ("converting it"), for the message if the child dies.
            timeout: seconds to wait for the reply (default: the worker's); the child is stopped then.
            fields: the request's fields.
        """
        self._start()
        return self._exchange(
            {"op": op, "shown_as": self.shown_as, **fields}, doing, self.timeout if timeout is None else timeout, op == "run"
        )

    def _exchange(self, message: dict | None, doing: str, timeout: float, verifying: bool) -> dict:
        """Write ``message`` (None: only read, as for the child's greeting) and read one reply within ``timeout``."""
        process = self._process
        assert process is not None and process.stdin is not None and self._replies is not None
        timeout = min(max(timeout, 0.0), MAX_TIMEOUT)
        line = b""
        try:
            if message is not None:
                process.stdin.write(json.dumps(message).encode() + b"\n")
                process.stdin.flush()
            if not select.select([self._replies], [], [], timeout)[0]:
                process.kill()
                process.wait()
                hint = "give --timeout SECONDS, or --no-verify" if verifying else "give --timeout SECONDS"
                what = f"TensorFlow did not finish {doing} within {timeout:.0f} s (an endless loop?)"
                raise InputError(f"{self.shown_as}: {what}; {hint}")
            line = self._replies.readline(_REPLY_LIMIT)
        except BrokenPipeError:
            pass
        if not line.endswith(b"\n"):
            raise InputError(self._death(doing))
        reply = json.loads(line)
        if "error" in reply:
            # TensorFlow's messages name the audited copy (name the user's model instead) and may quote
            # names the model chose (no control characters reach the terminal).
            message_text = reply["error"].replace(str(self.folder / "saved_model"), self.shown_as)
            raise InputError(printable(" ".join(message_text.split()), limit=1000))
        return reply

    def _start(self) -> None:
        """Start the child (once): no network where the OS can take it away, then its greeting, which says how
        its writes are confined."""
        if self._process is not None:
            return
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logging reads it at import
        env["TMPDIR"] = str(self.folder)  # its temporary files stay where it may write, and are removed with it
        # worker.py runs by path: it needs nothing of our package (and none of our imports' time).
        bootstrap = f"import runpy; runpy.run_path({str(Path(__file__).with_name('worker.py'))!r}, run_name='__main__')"
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # no script folder on sys.path ...
        isolate, network = network_isolation()
        # Its output: a log file in our folder, or with native_logs the user's stderr (stdout is for our report).
        log = None if self.native_logs else open(self.folder / "tensorflow.log", "wb")  # noqa: SIM115 - closed below
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [*isolate, sys.executable, *flags, "-c", bootstrap, str(write_end), str(self.folder), network],
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
        greeting = self._exchange(None, "starting", self.timeout, False)
        self.confinement = {"network": network, "writes": str(greeting.get("writes", "unknown"))}

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


@functools.cache
def network_isolation() -> tuple[list[str], str]:
    """How to start the child without network: the command prefix, and what holds in words (asked once a process).

    On Linux, util-linux's ``unshare`` puts the child in a new network namespace (in a new user
    namespace, so no privilege is needed; root needs none), where only a loopback interface exists and it is down:
    no connection can leave it, to another machine or to this one. Where the kernel or a container
    forbids new namespaces, or ``unshare`` is missing, the child runs as before and the phrase
    says why. Elsewhere (macOS, Windows) the OS offers no such thing to an unprivileged process.
    """
    if not sys.platform.startswith("linux"):
        return [], f"not isolated: {sys.platform} has no network namespaces"
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "not isolated: util-linux's unshare is not installed"
    reason = "unknown"
    variants = [["--user", "--map-root-user", "--net"]]
    if os.geteuid() == 0:
        # Root makes a network namespace without a user namespace first: in one, root would lose its power over
        # files of users the namespace does not map (a model only root may read would become unreadable).
        variants.insert(0, ["--net"])
    for options in variants:
        command = [unshare, *options, "--"]
        try:
            probe = subprocess.run([*command, sys.executable, "-c", ""], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            reason = str(e)
            continue
        if probe.returncode == 0:
            return command, "its own network namespace (no interface up)"
        lines = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {probe.returncode}"
    return [], f"not isolated: the system refused a new network namespace ({printable(reason, 200)})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
