"""Hostile models and paths (issue 11): the command ends every bad case in one line and exit 2.

Each case runs ``convert`` and checks the promises of README's "Safety and reliability": the
documented exit status, exactly one stderr line starting ``convert: error:`` (no traceback),
every file in the folder unchanged, and nothing new left behind (no output, no temporary file).
A case runs in this process (``converter.cli.main``, tests/conftest.py's ``run_cli``) unless
a child process is the point: resource limits, peak memory, the locale, signals, library noise at
start-up; those, and every in-process case once more through the installed script, are the slow tier.

Classes: 2 paths we write, 3 what the user or the model caused (never a traceback), 4 resource
bombs, 5 signals, 7 stderr stays one line. The tests of verification's budget and timeout
(``--max-memory``, ``--timeout``) check what verify.py does with the options the CLI passes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.cli import main
from tests.conftest import CliResult, GiB, RunCli, dense_model
from tests.test_reliability import external

SMALL = 256 << 20  # peak memory of a run that refuses early (the command itself takes about 60 MiB)
STRICT_UTF8 = {"LC_ALL": "C.UTF-8"}  # a strict UTF-8 locale; PYTHONIOENCODING is always unset here


# ---------------------------------------------------------------------------------------------
# Helpers: look at a folder


def snapshot(folder: Path) -> dict[str, object]:
    """Everything under ``folder``: each file's bytes and mode, links, folders and special files."""
    seen: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            p = Path(root) / name
            st = p.lstat()
            key = os.fsdecode(p.relative_to(folder))
            if stat.S_ISLNK(st.st_mode):
                seen[key] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                # Sparse bombs are many GB: compare what identifies them rather than their bytes.
                content = p.read_bytes() if st.st_size < (64 << 20) else (st.st_size, st.st_mtime_ns)
                seen[key] = ("file", content, stat.S_IMODE(st.st_mode))
            elif stat.S_ISDIR(st.st_mode):
                seen[key] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                seen[key] = ("special", stat.S_IFMT(st.st_mode))
    return seen


def assert_one_line_error(r: CliResult, message: str | None = None) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error:"), r.stderr
    assert r.stdout == "", r.stdout
    if message is not None:
        assert message in lines[0], lines[0]
    assert not any(c in r.stderr for c in "\x1b\r\x00\x07"), repr(r.stderr)


def small_model() -> onnx.ModelProto:
    return dense_model(x_shape=(1, 3, 5, 4))


def save_model(model: onnx.ModelProto | bytes, path: Path) -> None:
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())


# ---------------------------------------------------------------------------------------------
# The cases: each prepares a folder and returns the arguments (relative to the folder)


@dataclass
class Case:
    setup: Callable[[Path], list[str | bytes]]
    message: str | None = None  # a piece of the one error line
    env: dict[str, str] = field(default_factory=dict)
    limits: dict[int, int] = field(default_factory=dict)
    max_rss: int | None = None  # the child must not have used more than this
    timeout: float = 120

    @property
    def child(self) -> bool:
        """Limits, peak memory and the locale need the command in a child process; the rest runs in this one."""
        return bool(self.env or self.limits or self.max_rss is not None)


def with_model(
    *args: str | bytes, model: Callable[[], onnx.ModelProto] = small_model, before: Callable[[Path], None] | None = None
):
    def setup(folder: Path) -> list[str | bytes]:
        save_model(model(), folder / "m.onnx")
        if before is not None:
            before(folder)
        return ["m.onnx", *args]

    return setup


def mkfifo(name: str) -> Callable[[Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def mknull(name: str) -> Callable[[Path], None]:
    """A character device like /dev/null, made inside the test folder (never the real one)."""

    def make(folder: Path) -> None:
        try:
            os.mknod(folder / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("cannot create device nodes here")

    return make


def mkdir(name: str, mode: int = 0o755) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).mkdir()
        (folder / name).chmod(mode)

    return make


def symlink(name: str, target: str, make_target: bool = True) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        if make_target:
            (folder / target).write_bytes(b"the link's target")
        (folder / name).symlink_to(target)

    return make


def regular(name: str, mode: int = 0o644, content: bytes = b"a file the user had") -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).write_bytes(content)
        (folder / name).chmod(mode)

    return make


def npz(folder: Path) -> None:
    np.savez(folder / "in.npz", x=np.ones((1, 3, 5, 4), np.float32))


def both(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for m in makers:
            m(folder)

    return make


def ext_model(folder: Path) -> list[str | bytes]:
    """A model whose weight lives in w.bin beside it."""
    (folder / "w.bin").write_bytes(np.ones(2, np.float32).tobytes())
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [external("w.bin")],
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "e.onnx")
    return ["e.onnx"]


def savedmodel_folder(folder: Path) -> None:
    (folder / "sm").mkdir()
    (folder / "sm" / "saved_model.pb").write_bytes(b"not really a SavedModel, but the user's file")


TOO_LONG_FOR_TEMP = "a" * 245 + ".onnx"  # 250 bytes: fits NAME_MAX, but ".<name>.XXXXXXXX.tmp" does not
TOO_LONG = "a" * 300 + ".onnx"


def target_cases(flag: str, default_name: str) -> dict[str, Case]:
    """What ``-o`` and ``--report`` must refuse before any work (class 2)."""

    def at(value: str | bytes, before: Callable[[Path], None] | None = None, message: str | None = None) -> Case:
        return Case(with_model(flag, value, before=before), message)

    return {
        "missing folder": at(f"nope/{default_name}", message="does not exist"),
        "parent is a file": at(f"m.onnx/{default_name}", message="not a folder"),
        "existing folder": at("sub", mkdir("sub"), "is a folder"),
        "dot": at(".", message="is a folder"),
        "trailing slash": at("newdir/", message="folder"),
        "read-only folder": at(f"ro/{default_name}", mkdir("ro", 0o555), "not writable"),
        "empty string": at("", message="empty"),
        "name too long for the temporary name": at(TOO_LONG_FOR_TEMP, message="too long"),
        "name too long": at(TOO_LONG, message="too long"),
        "fifo": at(default_name, mkfifo(default_name), "named pipe"),
        "device": at(default_name, mknull(default_name), "device"),
        "symlink to a file": at(default_name, symlink(default_name, "target.bin"), "symbolic link"),
        "dangling symlink": at(default_name, symlink(default_name, "nowhere.bin", make_target=False), "symbolic link"),
        "symlink to a folder": at(default_name, both(mkdir("d"), symlink(default_name, "d", make_target=False)), "symbolic link"),
        "read-only file": at(default_name, regular(default_name, 0o444), "read-only"),
        "non-UTF-8 missing folder": Case(with_model(flag, b"\xff\xfe/" + default_name.encode()), "does not exist", STRICT_UTF8),
    }


CLASS_2: dict[str, Case] = {
    **{f"-o {k}": v for k, v in target_cases("-o", "out.onnx").items()},
    **{f"--report {k}": v for k, v in target_cases("--report", "r.json").items()},
    "-o is the --inputs file": Case(with_model("--inputs", "in.npz", "-o", "in.npz", before=npz), "would overwrite"),
    "-o data file is a fifo": Case(with_model("-o", "out.onnx", before=mkfifo("out.onnx.data")), "named pipe"),
    "-o data file is a folder": Case(with_model("-o", "out.onnx", before=mkdir("out.onnx.data")), "is a folder"),
    "-o data file is a symlink": Case(with_model("-o", "out.onnx", before=symlink("out.onnx.data", "t.bin")), "symbolic link"),
    "-o inside the SavedModel folder": Case(
        lambda f: (savedmodel_folder(f), ["sm", "-o", "sm/saved_model.pb"])[1], "would overwrite"
    ),
    "--report is the input": Case(with_model("--report", "m.onnx"), "would overwrite"),
    "--report is the input by another name": Case(
        with_model("--report", "./sub/../m.onnx", before=mkdir("sub")), "would overwrite"
    ),
    "--report is a hard link to the input": Case(
        with_model("--report", "r.json", before=lambda f: os.link(f / "m.onnx", f / "r.json")), "would overwrite"
    ),
    "--report is the input's external data": Case(lambda f: [*ext_model(f), "--report", "w.bin"], "would overwrite"),
    "--report is the output": Case(with_model("-o", "out.onnx", "--report", "out.onnx"), "would overwrite"),
    "--report is the default output": Case(with_model("--report", "m_conv.onnx", before=regular("m_conv.onnx")), "would overwrite"),
    "--report is the output's data file": Case(with_model("-o", "out.onnx", "--report", "out.onnx.data"), "would overwrite"),
    "--report is the --inputs file": Case(with_model("--inputs", "in.npz", "--report", "in.npz", before=npz), "would overwrite"),
    "--report inside the SavedModel folder": Case(
        lambda f: (savedmodel_folder(f), ["sm", "--report", "sm/saved_model.pb"])[1], "would overwrite"
    ),
}


def text_file(name: str, text: str | bytes) -> Callable[[Path], list[str | bytes]]:
    def setup(folder: Path) -> list[str | bytes]:
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return [name, "-o", "out.onnx"]

    return setup


def input_type(kind: str, elem_type: int) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        m = small_model()
        getattr(m.graph, kind)[0].type.tensor_type.elem_type = elem_type
        return m

    return make


def renamed_output(name: str) -> onnx.ModelProto:
    m = small_model()
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    m.graph.output[0].name = name
    return m


def named_file(name: bytes, content: Callable[[], bytes]) -> Callable[[Path], list[str | bytes]]:
    def setup(folder: Path) -> list[str | bytes]:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(content())
        return [name]

    return setup


def fsize_limited_output(folder: Path) -> list[str | bytes]:
    from models.graphs import big_dense

    save_model(big_dense(2, 128), folder / "m.onnx")  # 128 KiB of weights, beyond the 4 KiB limit below
    return ["m.onnx", "-o", "out.onnx", "--no-verify"]


def npz_with(members: dict[str, bytes]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        with zipfile.ZipFile(folder / "in.npz", "w") as z:
            for name, data in members.items():
                z.writestr(name, data)

    return make


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


CLASS_3: dict[str, Case] = {
    "bad .json": Case(text_file("m.json", '{"graph": {"node": [}'), "not a readable ONNX model"),
    "json that is not a model": Case(text_file("m.json", "[1, 2]"), "not a readable ONNX model"),
    "json with a wrong field type": Case(text_file("m.json", '{"graph": 5}'), "not a readable ONNX model"),
    "json that is not UTF-8": Case(text_file("m.json", b'{"producerName": "\xff\xfe"}'), "not a readable ONNX model"),
    "bad .textproto": Case(text_file("m.textproto", 'graph { node { op_type: "Relu" '), "not a readable ONNX model"),
    "textproto with an unknown field": Case(text_file("m.textproto", "frobnicate: 1\n"), "not a readable ONNX model"),
    "bad .onnxtxt": Case(
        text_file("m.onnxtxt", "<ir_version: 8> agraph (float x) => (float y) { y = Relu(x"), "not a readable ONNX model"
    ),
    "input elem_type 0": Case(with_model("-o", "out.onnx", model=input_type("input", 0)), "element type"),
    "input elem_type 999": Case(with_model("-o", "out.onnx", model=input_type("input", 999)), "element type"),
    "output elem_type 999": Case(with_model("-o", "out.onnx", model=input_type("output", 999)), "element type"),
    "input elem_type 999 with --no-verify": Case(
        with_model("-o", "out.onnx", "--no-verify", model=input_type("input", 999)), "element type"
    ),
    "NUL byte in an external location": Case(
        lambda f: (
            save_model(
                helper.make_model(
                    helper.make_graph(
                        [helper.make_node("Add", ["x", "w"], ["y"])],
                        "g",
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                        [external("w\x00.bin")],
                    )
                ),
                f / "m.onnx",
            ),
            ["m.onnx", "-o", "out.onnx"],
        )[1],
        "NUL",
    ),
    "external data of a training_info graph leaves the folder": Case(
        lambda f: (save_model(_placed("training_info", external("../outside.bin"), 2), f / "m.onnx"), ["m.onnx"])[1],
        "leaves the model's folder",
    ),
    "non-UTF-8 input name (empty file)": Case(named_file(b"e\xff.onnx", lambda: b""), "file is empty", STRICT_UTF8),
    "non-UTF-8 -o folder": Case(with_model("-o", b"\xff/out.onnx"), "does not exist", STRICT_UTF8),
    "newline in a file name": Case(named_file(b"a\nb.onnx", lambda: b""), "file is empty"),
    "escape sequence in a file name": Case(named_file(b"\x1b[2J\x1b[31m.onnx", lambda: b""), "file is empty"),
    "carriage return in --input-shape": Case(with_model("--input-shape", "x\r:1,2"), None),
    ".npy given to --inputs": Case(
        with_model("--inputs", "x.npy", "-o", "out.onnx", before=lambda f: np.save(f / "x.npy", np.ones((1, 3, 5, 4), np.float32))),
        ".npz",
    ),
    "--inputs is not a zip": Case(
        with_model("--inputs", "in.npz", before=regular("in.npz", content=b"PK\x03\x04garbage")), "in.npz"
    ),
    "--inputs truncated zip": Case(
        with_model(
            "--inputs",
            "in.npz",
            before=lambda f: (npz(f), (f / "in.npz").write_bytes((f / "in.npz").read_bytes()[:-30])),
        ),
        "in.npz",
    ),
    "--inputs member is not an array": Case(with_model("--inputs", "in.npz", before=npz_with({"x.npy": b"hello"})), "in.npz"),
    "--inputs member holds less than its header says": Case(
        with_model("--inputs", "in.npz", before=npz_with({"x.npy": npy_header((1, 3, 5, 4)) + b"\0" * 8})), "in.npz"
    ),
    "--inputs is a folder": Case(with_model("--inputs", "sub", before=mkdir("sub")), "sub"),
    "write fails: file too large (ulimit -f)": Case(fsize_limited_output, "File too large", limits={resource.RLIMIT_FSIZE: 4096}),
}


def bomb_npz(total: int) -> Callable[[Path], None]:
    """A real zip bomb: one member of ``total`` bytes of zeros, compressed about 200:1."""

    def make(folder: Path) -> None:
        with zipfile.ZipFile(folder / "in.npz", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            with z.open("x.npy", "w", force_zip64=True) as f:
                f.write(npy_header((total // 4,)))
                chunk = bytes(1 << 24)
                for _ in range(total // len(chunk)):
                    f.write(chunk)

    return make


def external_of(length: int, dims: list[int], file_size: int) -> Callable[[Path], list[str | bytes]]:
    def setup(folder: Path) -> list[str | bytes]:
        with open(folder / "w.bin", "wb") as f:
            f.truncate(file_size)  # sparse: costs no disk
        t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
        for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(length))):
            t.external_data.add(key=k, value=v)
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
            [t],
        )
        save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "m.onnx")
        return ["m.onnx", "-o", "out.onnx"]

    return setup


def external_special(make: Callable[[Path], None]) -> Callable[[Path], list[str | bytes]]:
    def setup(folder: Path) -> list[str | bytes]:
        make(folder)
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
            [external("w.bin")],
        )
        save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "m.onnx")
        return ["m.onnx", "-o", "out.onnx"]

    return setup


def sparse_model_file(size: int) -> Callable[[Path], list[str | bytes]]:
    def setup(folder: Path) -> list[str | bytes]:
        with open(folder / "m.onnx", "wb") as f:
            f.truncate(size)
        return ["m.onnx", "-o", "out.onnx"]

    return setup


def declared_dims(dims: list[int]) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        m = small_model()
        shape = m.graph.input[0].type.tensor_type.shape
        for d, v in zip(shape.dim, dims, strict=True):
            d.Clear()
            d.dim_value = v
        return m

    return make


def tensor_dims(dims: list[int], data: bytes) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        m = small_model()
        w = next(t for t in m.graph.initializer if t.name == "W")
        del w.dims[:]
        w.dims.extend(dims)
        w.raw_data = data
        return m

    return make


CLASS_4: dict[str, Case] = {
    "negative dim declared on the input": Case(with_model("-o", "out.onnx", model=declared_dims([1, -3, 5, 4])), "negative"),
    "input dims overflow int64": Case(with_model("-o", "out.onnx", model=declared_dims([1, 2**40, 2**40, 4])), "too large"),
    "--input-shape overflows int64": Case(
        with_model("--input-shape", f"x:{2**40},{2**40},5,4", model=lambda: dense_model(x_shape=("N", "H", 5, 4))), "too large"
    ),
    "--input-shape beyond int64": Case(
        with_model("--input-shape", f"x:{10**30},3,5,4", model=lambda: dense_model(x_shape=("N", 3, 5, 4)))
    ),
    "tensor with a negative dim": Case(with_model("-o", "out.onnx", model=tensor_dims([-4, 6], bytes(96))), "negative"),
    "tensor dims overflow": Case(with_model("-o", "out.onnx", model=tensor_dims([2**62, 2**62, 6], bytes(96)))),
    "external data is a FIFO": Case(external_special(mkfifo("w.bin")), "not a regular file", timeout=60),
    "external data is a device": Case(external_special(mknull("w.bin")), "not a regular file", timeout=60),
    "external data is a folder": Case(external_special(mkdir("w.bin")), "not a regular file", timeout=60),
    "external data of 64 GiB in a sparse file": Case(external_of(64 * GiB, [16 * GiB], 64 * GiB + 4096), "memory", max_rss=SMALL),
    "external data longer than its tensor": Case(
        external_of(64 * GiB, [1, 2], 64 * GiB), "does not match its shape", max_rss=SMALL
    ),
    "model file of 2.5 GiB (sparse)": Case(sparse_model_file(5 * GiB // 2), "2 GiB", max_rss=SMALL, timeout=60),
    "model file of 1.5 GiB of zeros (sparse)": Case(sparse_model_file(3 * GiB // 2), None, max_rss=SMALL, timeout=60),
    "input model is a FIFO": Case(lambda f: (os.mkfifo(f / "m.onnx"), ["m.onnx"])[1], "not a regular file", timeout=60),
    "input model is a device": Case(lambda f: (mknull("m.onnx")(f), ["m.onnx"])[1], "not a regular file", timeout=60),
    "--inputs is a FIFO": Case(with_model("--inputs", "in.npz", before=mkfifo("in.npz")), "not a regular file", timeout=60),
    "npz header bomb (2**40 floats in 8 bytes)": Case(
        with_model("--inputs", "in.npz", before=npz_with({"x.npy": npy_header((2**40,)) + bytes(8)})), "in.npz", max_rss=SMALL
    ),
    "npz header with a negative dim": Case(
        with_model("--inputs", "in.npz", before=npz_with({"x.npy": npy_header((-1, 4)) + bytes(16)})), "in.npz"
    ),
    "npz zip bomb past --max-memory": Case(
        with_model("--inputs", "in.npz", "--max-memory", "64M", before=bomb_npz(256 << 20)), "--max-memory", max_rss=SMALL
    ),
    "npz zip bomb past the default budget": Case(
        with_model("--inputs", "in.npz", before=bomb_npz(4 * GiB + (64 << 20))), "--max-memory", max_rss=SMALL
    ),
    "--max-memory is not a size": Case(with_model("--max-memory", "lots"), "--max-memory"),
    "--max-memory is negative": Case(with_model("--max-memory", "-5G"), "--max-memory"),
    "--max-memory is zero": Case(with_model("--max-memory", "0"), "--max-memory"),
    "--timeout is negative": Case(with_model("--timeout", "-1"), "--timeout"),
    "--timeout is not a number": Case(with_model("--timeout", "nan"), "--timeout"),
    "--trials is zero": Case(with_model("--trials", "0"), "--trials"),
}


CASES = {
    **{f"2: {k}": v for k, v in CLASS_2.items()},
    **{f"3: {k}": v for k, v in CLASS_3.items()},
    **{f"4: {k}": v for k, v in CLASS_4.items()},
}


def _refused(run_cli: RunCli, tmp_path: Path, c: Case, child: bool | None) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"a file beside the folder")
    args = c.setup(folder)
    before = snapshot(tmp_path)
    try:
        r = run_cli(*args, cwd=folder, env=c.env, limits=c.limits, timeout=c.timeout, child=child)
        after = snapshot(tmp_path)
    finally:
        for p in folder.rglob("*"):  # undo read-only modes so pytest can clean up
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    assert_one_line_error(r, c.message)
    assert after == before
    if c.max_rss is not None:
        assert r.maxrss is not None and r.maxrss < c.max_rss, f"peak memory {(r.maxrss or 0) / GiB:.2f} GiB"


@pytest.mark.parametrize("case", [pytest.param(k, marks=[pytest.mark.slow] if c.child else []) for k, c in CASES.items()])
def test_refused_in_one_line_with_nothing_written(run_cli: RunCli, tmp_path: Path, case: str) -> None:
    _refused(run_cli, tmp_path, CASES[case], True if CASES[case].child else None)


@pytest.mark.slow
@pytest.mark.parametrize("case", [k for k, c in CASES.items() if not c.child])
def test_refused_by_the_installed_script_too(run_cli: RunCli, tmp_path: Path, case: str) -> None:
    """The cases the fast tier runs in this process, through the real script in a child (a fresh interpreter, the
    command's own start-up and imports, stdin closed)."""
    _refused(run_cli, tmp_path, CASES[case], child=True)


# ---------------------------------------------------------------------------------------------
# Class 3: tensor data that disagrees with its dims or dtype, wherever the tensor sits


def _tensor(how: str, n: int) -> TensorProto:
    """A [1, n] tensor named w, spoiled as ``how`` says."""
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, n])
    if how == "float_data short":
        t.float_data.extend([1.0] * (n - 1))
    elif how == "float_data long":
        t.float_data.extend([1.0] * (n + 1))
    elif how == "raw_data short":
        t.raw_data = bytes(4 * n - 1)
    elif how == "string_data in a FLOAT tensor":
        t.string_data.extend([b"a"] * n)
    elif how == "int64_data in a FLOAT tensor":
        t.int64_data.extend([1] * n)
    elif how == "STRING tensor where a number is expected":
        t.data_type = TensorProto.STRING
        t.string_data.extend([b"a"] * n)
    elif how == "raw_data in a STRING tensor":
        t.data_type = TensorProto.STRING
        t.raw_data = bytes(4 * n)
    elif how == "data_type 999":
        t.data_type = 999
        t.raw_data = bytes(4 * n)
    elif how == "data_type 0":
        t.data_type = TensorProto.UNDEFINED
        t.raw_data = bytes(4 * n)
    elif how == "negative dim":
        t.dims[:] = [-1, n]
        t.raw_data = bytes(4 * n)
    elif how == "no data at all":
        pass
    elif how == "int32_data short for FLOAT16":
        t.data_type = TensorProto.FLOAT16
        t.int32_data.extend([0] * (n - 1))
    elif how == "dims overflow":
        t.dims[:] = [2**62, 2**62, n]
        t.raw_data = bytes(4 * n)
    else:
        raise ValueError(how)
    return t


def _io(n: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    return (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
    )


def _placed(where: str, t: TensorProto, n: int) -> onnx.ModelProto:
    inputs, outputs = _io(n)
    opset = [helper.make_opsetid("", 17)]
    add = helper.make_node("Add", ["x", "w"], ["y"])
    if where in ("initializer", "large initializer"):
        graph = helper.make_graph([add], "g", inputs, outputs, [t])
    elif where == "Constant node":
        graph = helper.make_graph([helper.make_node("Constant", [], ["w"], value=t), add], "g", inputs, outputs)
    elif where == "If branch":
        then = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["yt"])],
            "then",
            [],
            [helper.make_tensor_value_info("yt", TensorProto.FLOAT, [1, n])],
            [t],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["ye"])],
            "else",
            [],
            [helper.make_tensor_value_info("ye", TensorProto.FLOAT, [1, n])],
        )
        cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
        graph = helper.make_graph([node], "g", [*inputs, cond], outputs)
    elif where == "sparse initializer":
        t.name = "w_values"
        values_dims = [n]
        t.dims[:] = values_dims if list(t.dims) == [1, n] else t.dims
        indices = numpy_helper.from_array(np.arange(n, dtype=np.int64), "w_indices")
        graph = helper.make_graph([add], "g", inputs, outputs, sparse_initializer=[helper.make_sparse_tensor(t, indices, [1, n])])
    elif where == "function":
        fn = helper.make_function(
            "local",
            "F",
            ["a"],
            ["b"],
            [helper.make_node("Constant", [], ["k"], value=t), helper.make_node("Add", ["a", "k"], ["b"])],
            opset,
        )
        graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="local")], "g", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[*opset, helper.make_opsetid("local", 1)], functions=[fn])
        return model
    elif where == "training_info":
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", inputs, outputs)
        model = helper.make_model(graph, opset_imports=opset)
        t.name = "t"
        t_out = helper.make_tensor_value_info("t_out", t.data_type, None)
        init = helper.make_graph([helper.make_node("Identity", ["t"], ["t_out"])], "init", [], [t_out], [t])
        model.training_info.add().initialization.CopyFrom(init)
        return model
    else:
        raise ValueError(where)
    return helper.make_model(graph, opset_imports=opset)


SPOILS = [
    "float_data short",
    "float_data long",
    "raw_data short",
    "string_data in a FLOAT tensor",
    "int64_data in a FLOAT tensor",
    "STRING tensor where a number is expected",
    "raw_data in a STRING tensor",
    "data_type 999",
    "data_type 0",
    "negative dim",
    "no data at all",
    "int32_data short for FLOAT16",
    "dims overflow",
]
FEW = [
    "float_data short",
    "string_data in a FLOAT tensor",
    "data_type 999",
    "no data at all",
    "STRING tensor where a number is expected",
]
TENSOR_CASES = [
    *((where, how) for where in ("large initializer", "Constant node") for how in SPOILS),
    *((where, how) for where in ("initializer", "If branch", "sparse initializer", "function") for how in FEW),
    *(("training_info", how) for how in FEW[:4]),
]


@pytest.mark.parametrize("no_verify", [False, True], ids=["verify", "no-verify"])
@pytest.mark.parametrize(("where", "how"), TENSOR_CASES, ids=[f"{w}: {h}" for w, h in TENSOR_CASES])
def test_spoiled_tensor_data_is_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], where: str, how: str, no_verify: bool
) -> None:
    n = 2048 if where == "large initializer" else 2  # 8 KB: large enough that the checker never sees its data
    (tmp_path / "m.onnx").write_bytes(_placed(where, _tensor(how, n), n).SerializeToString())
    before = snapshot(tmp_path)
    rc = main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), *(["--no-verify"] if no_verify else [])])
    captured = capfd.readouterr()
    assert_one_line_error(CliResult(rc, captured.out, captured.err))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Class 3: names and paths are data, printed safely, on the success path too


@pytest.mark.parametrize(
    "name",
    ["[/bold]y", "[red]y[/red]", ":smile: y", "y\x1b[31mred\x1b[0m", "y\r\nPASSED: fake", "y\x07\x08", "y\u202egnp.exe"],
    ids=["closing tag", "markup", "emoji code", "ANSI escape", "CR LF", "bell", "bidi override"],
)
def test_model_names_are_printed_as_data(run_cli: RunCli, tmp_path: Path, name: str) -> None:
    save_model(renamed_output(name), tmp_path / "m.onnx")
    for extra in ([], ["--dry-run"], ["-q"]):
        r = run_cli("m.onnx", "-o", "out.onnx", *extra, cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == ""
        assert not any(c in r.stdout for c in "\x1b\r\x07\x08\u202e"), repr(r.stdout)
        assert r.stdout.splitlines()[-1].startswith(("PASSED", "DRY RUN"))
        if not extra and name.isprintable():
            assert name in r.stdout  # shown as it is, not interpreted as markup
    assert onnx.load(tmp_path / "out.onnx").graph.output[0].name == name


@pytest.mark.slow  # the locale is read when the interpreter starts
@pytest.mark.parametrize("locale_env", [STRICT_UTF8, {"LC_ALL": "C"}], ids=["C.UTF-8", "C"])
def test_non_utf8_paths_on_the_success_path(run_cli: RunCli, tmp_path: Path, locale_env: dict[str, str]) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xff\xfe"))
    folder.mkdir()
    save_model(small_model(), folder / os.fsdecode(b"m\xe9.onnx"))
    r = run_cli(b"m\xe9.onnx", "--report", b"r\xff.json", cwd=folder, env=locale_env, child=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (folder / os.fsdecode(b"m\xe9_conv.onnx")).exists()
    assert json.loads((folder / os.fsdecode(b"r\xff.json")).read_bytes())["ok"]
    assert "PASSED" in r.stdout


# ---------------------------------------------------------------------------------------------
# Class 3: write errors are one line naming the path, with no temporary file left


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("write", errno.ENOSPC),
        ("write", errno.EDQUOT),
        ("fsync", errno.EIO),
        ("replace", errno.EACCES),
        ("replace", errno.EISDIR),
        ("mkstemp", errno.ENAMETOOLONG),
        ("mkstemp", errno.EROFS),
    ],
)
@pytest.mark.parametrize("what", ["model", "report", "external data"])
def test_write_errors_are_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str, error: int, what: str
) -> None:
    import tempfile

    save_module = sys.modules["converter.files.save"]  # converter.files.save is also the name of the function

    from models.graphs import big_dense

    save_model(big_dense(1, 32) if what == "external data" else small_model(), tmp_path / "m.onnx")  # 4 KiB goes to the data file
    before = snapshot(tmp_path)
    victim = {"model": ".out.onnx.", "report": ".r.json.", "external data": ".out.onnx.data."}[what]
    if what == "external data":
        monkeypatch.setattr(save_module, "EXTERNAL_DATA_ABOVE", 0)

    def fail(real: Callable, name_of: Callable[..., str]) -> Callable:
        def wrapper(*args, **kwargs):
            if victim in name_of(*args, **kwargs):
                raise OSError(error, os.strerror(error))
            return real(*args, **kwargs)

        return wrapper

    fd_names: dict[int, str] = {}
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if where == "mkstemp" and victim.rstrip(".") in kwargs.get("prefix", ""):
            raise OSError(error, os.strerror(error))
        fd, name = real_mkstemp(*args, **kwargs)
        fd_names[fd] = name
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    if where == "replace":
        monkeypatch.setattr(os, "replace", fail(os.replace, lambda src, dst: os.fspath(src)))
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", fail(os.fsync, lambda fd: fd_names.get(fd, "")))
    elif where == "write":
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            if victim not in fd_names.get(fd, ""):
                return f

            class Failing(io.BufferedWriter):
                def write(self, data):  # noqa: ARG002
                    raise OSError(error, os.strerror(error))

            f.close()
            return Failing(io.FileIO(os.open(fd_names[fd], os.O_WRONLY), "w"))

        monkeypatch.setattr(os, "fdopen", fdopen)
    args = [str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--no-verify"]
    if what == "report":
        args += ["--report", str(tmp_path / "r.json")]
    rc = main(args)
    captured = capfd.readouterr()
    line = captured.err.strip()
    assert rc == 2 and len(captured.err.splitlines()) == 1 and line.startswith("convert: error:"), captured.err
    assert os.strerror(error) in line, line
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if what != "report":  # a report fails after the model was written, and says so
        assert snapshot(tmp_path) == before
    else:
        assert "out.onnx" in line and not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------------------------
# Class 2: --report - writes the JSON to stdout and nothing else


def test_report_to_stdout(run_cli: RunCli, tmp_path: Path) -> None:
    save_model(small_model(), tmp_path / "m.onnx")
    r = run_cli("m.onnx", "--report", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout holds only the JSON
    assert report["ok"] and report["written"]
    assert r.stderr.splitlines() == [next(ln for ln in r.stderr.splitlines() if ln.startswith("PASSED"))]
    assert not (tmp_path / "-").exists()


def test_report_dash_dash_names_a_file(run_cli: RunCli, tmp_path: Path) -> None:
    save_model(small_model(), tmp_path / "m.onnx")
    r = run_cli("m.onnx", "--report", "./-", cwd=tmp_path)
    assert r.returncode == 0 and json.loads((tmp_path / "-").read_text())["ok"]


# ---------------------------------------------------------------------------------------------
# Class 4: a sparse data file much larger than its tensor is read only as far as needed


@pytest.mark.slow  # peak memory: a child's
def test_sparse_data_file_is_read_only_as_far_as_needed(run_cli: RunCli, tmp_path: Path) -> None:
    args = external_of(8, [1, 2], 16 * GiB)(tmp_path)
    r = run_cli(*args, cwd=tmp_path, child=True)
    assert r.returncode == 0, r.stderr
    assert r.maxrss is not None and r.maxrss < SMALL


# ---------------------------------------------------------------------------------------------
# Class 4, verification side: these need the budget and timeout that verification implements (the lead's)


# Needs verification's budget (--max-memory).
@pytest.mark.parametrize(
    "args",
    [
        ["--max-memory", "1M"],
        ["--max-memory", "1M", "--input-shape", "x:1,128,128,16"],
    ],
    ids=["declared input of 4 MiB", "--input-shape of 1 MiB"],
)
def test_verification_budget(run_cli: RunCli, tmp_path: Path, args: list[str]) -> None:
    dims = ("N", 128, 128, 16) if "--input-shape" in args else (4, 128, 128, 16)
    save_model(dense_model(x_shape=dims, weight_shape=(16, 6)), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    r = run_cli("m.onnx", "-o", "out.onnx", *args, cwd=tmp_path)
    assert_one_line_error(r, "--max-memory")
    assert snapshot(tmp_path) == before


# Needs verification's budget: a huge declared input is refused before anything is allocated.
@pytest.mark.slow  # peak memory: a child's
def test_huge_declared_input_is_refused_before_allocating(run_cli: RunCli, tmp_path: Path) -> None:
    save_model(declared_dims([1, 100_000, 100_000, 4])(), tmp_path / "m.onnx")
    r = run_cli("m.onnx", "-o", "out.onnx", cwd=tmp_path, child=True)
    assert_one_line_error(r)
    assert r.maxrss is not None and r.maxrss < GiB


# Needs verification's --timeout. No wall-clock bound here (a loaded machine stretches any): the message says the
# deadline cut a run short or came before one, which a timeout that never fired cannot print.
def test_verification_timeout(run_cli: RunCli, tmp_path: Path) -> None:
    from models.graphs import big_dense

    save_model(big_dense(8, 1024, h=64, w=64), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    r = run_cli("m.onnx", "-o", "out.onnx", "--timeout", "0.2", cwd=tmp_path)
    assert_one_line_error(r)
    assert "did not finish in time" in r.stderr or "ran out of time" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Class 5: SIGTERM and SIGINT during the work and while the output is written leave the previous file and no
# temporary. The command runs in a child whose work blocks at a chosen point and says so on a pipe; the signal
# comes only then, so it always lands where the test says (no race with a fast machine, no sleep on a slow one).

# argv: READY_FD WHERE convert-args...; WHERE is "work" (after the rewrite, before verification) or "saving" (the
# temporary file written and synced, not yet renamed into place).
_BLOCKED = """
import os, sys, time
ready, where = int(sys.argv.pop(1)), sys.argv.pop(1)

def block():
    os.write(ready, b"ready")
    os.close(ready)
    time.sleep(600)  # the signal's handler (the command's) raises out of this

if where == "work":
    import converter.pipeline as pipeline
    real_rewrite = pipeline.rewrite_in_place

    def rewrite_in_place(*args, **kwargs):
        report = real_rewrite(*args, **kwargs)
        block()
        return report

    pipeline.rewrite_in_place = rewrite_in_place
else:
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            block()

    os.fsync = fsync
from converter.cli import main
sys.argv[0] = "convert"
sys.exit(main())
"""


def run_blocked(where: str, sig: int, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """The command in a child, blocked at ``where``; ``sig`` is sent once it says it got there."""
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    p = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED, str(write_end), where, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        ready = select.select([read_end], [], [], 300)[0] and os.read(read_end, 16)
    finally:
        os.close(read_end)
    if ready != b"ready":  # it ended (or hung) before getting there: a failure, not a skip
        p.kill()
        stdout, stderr = p.communicate(timeout=60)
        pytest.fail(f"the command never reached {where}: exit {p.returncode}, {stderr.decode()[-2000:]}")
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


SIGNALS = [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS, ids=["TERM", "INT"])
def test_signal_while_saving(tmp_path: Path, sig: int, code: int, word: str) -> None:
    save_model(small_model(), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous output")
    p = run_blocked("saving", sig, [str(tmp_path / "m.onnx"), "-o", str(out), "--no-verify", "-q"])
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convert: {word}") and "Traceback" not in p.stderr.decode(), p.stderr
    assert "nothing was written" in lines[0], lines[0]
    assert p.stdout == b""
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "out.onnx"]
    assert out.read_bytes() == b"the previous output"


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS, ids=["TERM", "INT"])
def test_signal_during_the_work(tmp_path: Path, sig: int, code: int, word: str) -> None:
    (tmp_path / "in").mkdir()
    save_model(small_model(), tmp_path / "in" / "m.onnx")
    p = run_blocked("work", sig, [str(tmp_path / "in" / "m.onnx"), "-o", str(tmp_path / "out.onnx")])
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convert: {word}") and "Traceback" not in p.stderr.decode(), p.stderr
    assert os.listdir(tmp_path) == ["in"] and os.listdir(tmp_path / "in") == ["m.onnx"]


# ---------------------------------------------------------------------------------------------
# Class 7: stderr stays empty on success and one line on failure, whatever libraries want to say


@pytest.mark.slow  # what libraries print as a fresh process imports them
@pytest.mark.parametrize(
    ("env", "fmt"),
    [
        ({"HOME": "/nonexistent"}, "protobuf"),
        ({"HOME": "/nonexistent", "XDG_CACHE_HOME": "/nonexistent/cache"}, "protobuf"),
        ({}, "onnxtxt"),
        ({}, "json"),
        ({}, "textproto"),
        ({"PYTHONWARNINGS": "always"}, "onnxtxt"),
        ({"PYTHONWARNINGS": "error"}, "onnxtxt"),
    ],
    ids=["HOME unwritable", "cache unwritable", "onnxtxt", "json", "textproto", "PYTHONWARNINGS=always", "PYTHONWARNINGS=error"],
)
def test_no_library_noise_on_stderr(run_cli: RunCli, tmp_path: Path, env: dict[str, str], fmt: str) -> None:
    suffix = {"protobuf": "onnx", "onnxtxt": "onnxtxt", "json": "json", "textproto": "textproto"}[fmt]
    onnx.save(small_model(), tmp_path / f"m.{suffix}", format=fmt)
    r = run_cli(f"m.{suffix}", "-o", "out.onnx", cwd=tmp_path, env=env, child=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    r = run_cli(f"m.{suffix}", "-o", "nope/out.onnx", cwd=tmp_path, env=env, child=True)
    assert_one_line_error(r, "does not exist")


def test_verbose_still_shows_the_traceback(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("[1, 2]")
    r = run_cli("m.json", "-v", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith("convert: error:")
