"""Shared test helpers: the two tiers, the one way to run the ``convert`` command, tiny dense-layer graphs and the
helper that proves a rewrite twice.

Tiers. ``python -m pytest`` runs the fast tier: every test not marked ``slow``. ``python -m pytest -m slow`` runs the
rest (the TensorFlow front end and the Keras applications, the 2 GiB model, the PyTorch zoo, and the cases that need
the command in a child process: resource limits, peak memory, signals, locale). Together they are the whole suite;
``.ci/run`` runs both. A test marked ``tf``, or any test under ``tests/frontends/``, is ``slow`` automatically.

The command. ``run_cli`` (a fixture, and ``run_command`` for module-level helpers) runs ``convert ARGS`` either in this
process, through ``converter.cli.main(argv)`` with file descriptors 1 and 2 captured (the default: no interpreter
start, no imports to pay), or in a child process (``child=True``: the installed script, with resource limits and
its peak memory), and gives back the same ``CliResult`` either way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from models.graphs import with_output_shapes

# CI runs the same examples every time (derandomized), so a submission cannot land or fail by luck; the "explore"
# profile draws fresh examples, for hunting (CONVERTER_HYPOTHESIS_PROFILE=explore CONVERTER_HYPOTHESIS_EXAMPLES=2000).
_EXAMPLES = int(os.environ.get("CONVERTER_HYPOTHESIS_EXAMPLES", "200"))
settings.register_profile("ci", max_examples=_EXAMPLES, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=_EXAMPLES, deadline=None)
settings.load_profile(os.environ.get("CONVERTER_HYPOTHESIS_PROFILE", "ci"))

# H != W everywhere, so a swapped spatial axis cannot hide.
N, H, W_, C, K = 2, 3, 5, 4, 6


@dataclass
class Dense:
    """Options for one MatMul(+Add) graph; the defaults give the plain foldable case."""

    x_shape: Sequence[int | str | None] | None = ("N", H, W_, C)  # None: declare no shape at all
    # "declared": x is a graph input; "inferred": x comes out of an Identity (rank by shape inference);
    # "unknowable": x comes out of a Reshape to a runtime shape of unknown length.
    x_source: str = "declared"
    dtype: int = TensorProto.FLOAT
    # initializer | constant_node | graph_input | runtime, or an initializer read through ops exporters leave
    # on constants: identity | identity_chain | cast | transposed | reshaped | unsqueezed
    weight: str = "initializer"
    weight_shape: Sequence[int] = (C, K)
    bias: str | None = "initializer"  # None, or any kind the weight may be
    bias_shape: Sequence[int] = (K,)
    bias_first: bool = False  # Add(b, y) instead of Add(y, b)
    fanout: bool = False  # the MatMul output also feeds a Relu that is a graph output
    matmul_is_output: bool = False  # the MatMul output is also a graph output
    opset: int = 17
    ir_version: int = 8
    seed: int = 0
    extra: dict = field(default_factory=dict)


# Operand kinds that are an initializer behind one op exporters leave on constants (TorchScript's
# deduplicated tensors behind Identity, fp16 weights behind Cast, ...): constants all the same.
FOLDED_KINDS = {
    "identity": "Identity",
    "identity_chain": "Identity",
    "cast": "Cast",
    "transposed": "Transpose",
    "reshaped": "Reshape",
    "unsqueezed": "Unsqueeze",
}


def dense_model(o: Dense | None = None, **kw) -> onnx.ModelProto:
    o = o or Dense(**kw)
    rng = np.random.default_rng(o.seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(o.dtype)
    nodes, inits, inputs = [], [], []
    x_name = "x"
    if o.x_source == "declared":
        inputs.append(helper.make_tensor_value_info("x", o.dtype, o.x_shape))
    elif o.x_source == "inferred":
        inputs.append(helper.make_tensor_value_info("x_in", o.dtype, o.x_shape))
        nodes.append(helper.make_node("Identity", ["x_in"], ["x"], name="pass"))
    else:
        inputs.append(helper.make_tensor_value_info("x_in", o.dtype, o.x_shape))
        inputs.append(helper.make_tensor_value_info("x_shape", TensorProto.INT64, ["rank"]))
        nodes.append(helper.make_node("Reshape", ["x_in", "x_shape"], ["x"], name="reshape"))

    def operand(kind: str, name: str, shape: Sequence[int]) -> None:
        value = (rng.standard_normal(shape) * 0.5).astype(np_dtype)
        if kind == "initializer":
            inits.append(numpy_helper.from_array(value, name))
        elif kind == "graph_input":
            inits.append(numpy_helper.from_array(value, name))
            inputs.append(helper.make_tensor_value_info(name, o.dtype, list(shape)))
        elif kind == "constant_node":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")))
        elif kind == "runtime":
            inputs.append(helper.make_tensor_value_info(name, o.dtype, list(shape)))
        elif kind in FOLDED_KINDS:
            src, op, extra_inputs, attrs = f"{name}_src", FOLDED_KINDS[kind], [], {}
            stored = value
            if kind == "cast":
                stored = value.astype(np.float16)
                attrs["to"] = o.dtype
            elif kind == "transposed":
                stored = np.ascontiguousarray(value.T)
                attrs["perm"] = list(reversed(range(value.ndim)))
            elif kind == "reshaped":
                stored = value.reshape(-1)
                inits.append(numpy_helper.from_array(np.array(value.shape, np.int64), f"{name}_shape"))
                extra_inputs = [f"{name}_shape"]
            elif kind == "unsqueezed":  # stored without its leading 1
                stored = value.reshape(value.shape[1:])
                inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{name}_axes"))
                extra_inputs = [f"{name}_axes"]
            inits.append(numpy_helper.from_array(stored, src))
            if kind == "identity_chain":
                nodes.append(helper.make_node("Identity", [src], [f"{name}_mid"], name=f"{name}_copy1"))
                src = f"{name}_mid"
            nodes.append(helper.make_node(op, [src, *extra_inputs], [name], name=f"{name}_{kind}", **attrs))
        else:
            raise ValueError(kind)

    operand(o.weight, "W", o.weight_shape)
    nodes.append(helper.make_node("MatMul", [x_name, "W"], ["mm"], name="dense"))
    outputs = []
    if o.bias is None:
        outputs.append(helper.make_tensor_value_info("mm", o.dtype, None))
    else:
        operand(o.bias, "b", o.bias_shape)
        pair = ["b", "mm"] if o.bias_first else ["mm", "b"]
        nodes.append(helper.make_node("Add", pair, ["y"], name="bias_add"))
        outputs.append(helper.make_tensor_value_info("y", o.dtype, None))
        if o.matmul_is_output:
            outputs.append(helper.make_tensor_value_info("mm", o.dtype, None))
    if o.x_source == "unknowable":  # graph outputs need a declared rank: flatten the unknowable one
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", [outputs[0].name, "flat"], ["flat_out"], name="flatten"))
        outputs[0] = helper.make_tensor_value_info("flat_out", o.dtype, ["total"])
    if o.fanout:
        nodes.append(helper.make_node("Relu", ["mm"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", o.dtype, None))
    graph = helper.make_graph(nodes, "dense", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", o.opset)], producer_name="tests")
    model.ir_version = o.ir_version
    return with_output_shapes(model)


def concrete_shapes(model: onnx.ModelProto, n: int = N) -> dict[str, list[int]]:
    """Shapes for every symbolic input dim: batch n, the rest from the test constants."""
    shapes = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else n for d in dims]
    return shapes


def assert_rewritten(
    original: onnx.ModelProto,
    result: converter.RewriteResult,
    expected_ops: dict[str, int],
    *,
    input_shapes: dict[str, list[int]] | None = None,
    providers: str = "cpu",
) -> converter.VerifyReport:
    """Structure (exact op counts, valid model, same interface) and numbers (onnxruntime) in one call."""
    onnx.checker.check_model(result.model, full_check=True)
    assert count_ops(result.model.graph) == expected_ops
    for kind in ("input", "output"):
        assert list(getattr(result.model.graph, kind)) == list(getattr(original.graph, kind)), kind
    check = converter.verify(
        original,
        result,  # with its layer claims: every rewritten layer is proved and checked on its own
        providers=providers,
        input_shapes=input_shapes if input_shapes is not None else concrete_shapes(original),
    )
    assert check.passed, check.to_dict()
    assert check.structure["proved"] and all(layer.verified for layer in check.layers)
    for out in check.outputs:
        assert out.max_abs_error <= out.atol + 1e-12 or out.max_rel_error <= out.rtol
    return check


@pytest.fixture
def tmp_model(tmp_path):
    """Save a model under tmp_path and return the path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx"):
        path = tmp_path / name
        onnx.save(model, path)
        return path

    return save


# ---------------------------------------------------------------------------------------------
# The two tiers (pyproject.toml deselects `slow` by default; `python -m pytest -m slow` runs the rest)

_FRONTENDS = Path(__file__).resolve().parent / "frontends"
# Files there that need no TensorFlow (the audit read from hand-written protobuf bytes): they stay in the fast tier.
_NO_TENSORFLOW = frozenset({"test_audit_program.py"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, so that the marks added here count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """TensorFlow costs 10-20 s a process: every test that uses it belongs to the slow tier."""
    for item in items:
        if item.path.is_relative_to(_FRONTENDS) and item.path.name not in _NO_TENSORFLOW:
            item.add_marker(pytest.mark.tf)
        if item.get_closest_marker("tf") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    """Where slow tests may run with torch installed, load torch's dynamo before anything loads TensorFlow.

    In one process, ``import keras`` (TensorFlow) and then ``import torch._dynamo`` ends in a segmentation fault
    (in triton's import); the other order works. tests/frontends/ import Keras as they are collected, the PyTorch
    zoo and the layout corpus export with dynamo later: without this the slow tier dies there.
    """
    if config.option.markexpr != "not slow" and importlib.util.find_spec("torch") is not None:
        import torch._dynamo  # noqa: F401


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier does not even collect tests/frontends/'s TensorFlow tests: every one is slow, and collecting them
    imports TensorFlow and Keras (seconds, and hundreds of MB) only to deselect them."""
    if config.option.markexpr != "not slow" or not collection_path.is_relative_to(_FRONTENDS):
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return collection_path.name not in _NO_TENSORFLOW
    return None


def pytest_report_header(config: pytest.Config) -> str:
    expr = config.option.markexpr
    if expr == "not slow":
        return "tier: fast (tests marked slow are deselected; `python -m pytest -m slow` runs them)"
    return f"tier: -m {expr!r}" if expr else "tier: every test (no -m)"


# ---------------------------------------------------------------------------------------------
# The command: in this process through converter.cli.main(argv), or the installed script in a child

BIN = Path(sys.executable).parent
CONVERT = BIN / "convert"  # the console scripts pip installs beside the interpreter
DENSE2CONV = BIN / "dense2conv"
GiB = 1 << 30
# What only a fresh process can honour: the locale and Python's start-up settings are read at start, onnxruntime
# reads HOME once per process. A test that sets one of these runs the command with child=True.
_CHILD_ONLY_ENV = ("LC_", "LANG", "PYTHON", "HOME", "XDG_")
# CONVERTER_TESTS_IN_CHILD=1 runs every command in a child, the in-process ones too: the switch that shows a test
# passes the same both ways.
ALWAYS_IN_CHILD = os.environ.get("CONVERTER_TESTS_IN_CHILD", "") not in ("", "0")
# A run in this process may grow this much beyond what the process has mapped, so that a regression that would
# allocate a bomb ends in a MemoryError (the command's "out of memory" line) instead of hurting the machine.
IN_PROCESS_HEADROOM = 4 * GiB


@dataclass
class CliResult:
    """What one run of the command gave: its exit status, what it printed, and (child=True) its peak memory."""

    returncode: int
    stdout: str
    stderr: str
    maxrss: int | None = None  # bytes: the child's peak resident memory; None in this process


def run_command(
    *args: str | bytes | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    child: bool | None = None,
    script: str = "convert",
    limits: dict[int, int] | None = None,
    timeout: float = 300,
) -> CliResult:
    """Run ``convert ARGS`` and return its status and output; fails the test if it runs past ``timeout`` seconds.

    Args:
        args: the command's arguments; bytes are file names that need not be UTF-8.
        cwd: the folder to run in (the test's own is kept otherwise).
        env: variables set for the run, on top of this process's (PYTHONIOENCODING is always unset).
        child: True runs the installed script in a child process, where the child is the point: resource
            ``limits``, peak memory (``maxrss``), signals, the locale, HOME. None (the default) runs in this
            process, through ``converter.cli.main(argv)`` with file descriptors 1 and 2 captured, unless
            CONVERTER_TESTS_IN_CHILD=1 sends it to a child too; False runs in this process always (a test
            that patches the command in this process).
        script: ``convert`` or ``dense2conv``, the name the command runs under (it names itself in errors).
        limits: resource limits of the child (``resource.RLIMIT_*``: value); RLIMIT_AS is 8 GiB unless given.
        timeout: seconds before the run counts as hung.
    """
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]
    if child or (child is None and ALWAYS_IN_CHILD):
        return _in_child(argv, cwd, env or {}, script, limits or {}, timeout)
    if limits:
        raise ValueError("resource limits need the command in a child: run_command(..., child=True)")
    unfit = [k for k in (env or {}) if k.startswith(_CHILD_ONLY_ENV)]
    if unfit:
        raise ValueError(f"{', '.join(unfit)} take effect only in a fresh process: run_command(..., child=True)")
    return _in_process([os.fsdecode(a) for a in argv], cwd, env or {}, script, timeout)


RunCli = Callable[..., CliResult]  # run_command's signature, for annotating the fixture


@pytest.fixture
def run_cli() -> RunCli:
    """``run_command``: the ``convert`` command, in this process (default) or in a child (``child=True``)."""
    return run_command


# Linux keeps a process's peak memory across exec, so a child forked from this (large) pytest process would
# report pytest's size. A small launcher forks the command and reports its peak.
_LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def _in_child(
    argv: list[bytes], cwd: Path | None, env: dict[str, str], script: str, limits: dict[int, int], timeout: float
) -> CliResult:
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    full_env.update(env)
    # Resource limits keep a case that would exhaust memory today from harming the machine.
    limits = {resource.RLIMIT_AS: 8 * GiB, **limits}

    def apply_limits() -> None:
        for which, value in limits.items():
            resource.setrlimit(which, (value, value))

    with tempfile.TemporaryDirectory(prefix="run-command-") as scratch:
        files = {k: Path(scratch) / k for k in ("stdout", "stderr", "status")}
        with open(files["stdout"], "wb") as out, open(files["stderr"], "wb") as err:
            launcher = [os.fsencode(a) for a in (sys.executable, "-S", "-c", _LAUNCH, files["status"], BIN / script)]
            p = subprocess.Popen(
                [*launcher, *argv],
                cwd=cwd,
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                preexec_fn=apply_limits,
                start_new_session=True,
            )
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                pytest.fail(f"{script} {argv} hung for {timeout} s")
        returncode, maxrss = map(int, files["status"].read_text().split())
        stdout, stderr = (files[k].read_bytes().decode("utf-8", "backslashreplace") for k in ("stdout", "stderr"))
    return CliResult(returncode, stdout, stderr, maxrss * 1024)


class _Hung(BaseException):
    """Raised by the timer of a run in this process (a BaseException: the command's handlers do not catch it)."""


_RESTORED_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGALRM) if s is not None
)


def _in_process(argv: list[str], cwd: Path | None, env: dict[str, str], script: str, timeout: float) -> CliResult:
    """``main(argv)`` with fds 1 and 2 on files, as a child would have them; everything it may change is put back:
    the streams and fds (the command sends fd 2 to /dev/null while it works), the signal handlers it installs,
    the environment, the working folder and sys.argv."""
    from converter.cli import main

    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_handlers = {s: signal.getsignal(s) for s in _RESTORED_SIGNALS}
    saved_environ, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in saved_streams[1:]:
            stream.flush()
        saved_fds = (os.dup(1), os.dup(2))
        hung = False
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            # What a child's streams are on a pipe, under a UTF-8 locale.
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # closed below
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            sys.stdin = open(os.devnull)
            os.environ.pop("PYTHONIOENCODING", None)
            os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            sys.argv = [str(BIN / script)]
            signal.signal(signal.SIGALRM, _raise_hung)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                with _memory_guard():
                    returncode = main(argv)
            except _Hung:
                hung, returncode = True, -1
            except SystemExit as e:  # argparse's errors, --help, --version: as the interpreter ends
                returncode = _exit_status(e)
            except BaseException:  # noqa: BLE001 - what escapes main: a child prints the traceback and exits 1
                import traceback

                traceback.print_exc()
                returncode = 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for stream in (sys.stdout, sys.stderr, sys.stdin):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
                stream.close()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_environ)
            sys.argv = saved_argv
            for s, handler in saved_handlers.items():
                if handler is not None:
                    signal.signal(s, handler)
        if hung:
            pytest.fail(f"{script} {argv} hung for {timeout} s")
        out.seek(0)
        err.seek(0)
        return CliResult(returncode, out.read().decode("utf-8", "backslashreplace"), err.read().decode("utf-8", "backslashreplace"))


def _raise_hung(_signum: int, _frame: object) -> None:
    raise _Hung


def _exit_status(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _memory_guard() -> Iterator[None]:
    """Address space limited to what the process has mapped now plus IN_PROCESS_HEADROOM, while the command runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        status = Path("/proc/self/status").read_text()
        mapped = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        yield
        return
    limit = mapped + IN_PROCESS_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
