"""Untrusted TensorFlow models through the real ``convert`` command.

A SavedModel that writes, reads, prints to a file or calls Python is refused before TensorFlow
runs (also with --dry-run and --no-verify): exit 2, one line, the file untouched, the model folder
unchanged, nothing left behind. With --trust-model it runs, and does what it was built to do,
which proves the test models really are hostile. TensorFlow crashing, TensorFlow missing and
mutated saved_model.pb files each end in one line too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import converter
from converter.frontends.audit import Audit

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
from tests.conftest import CONVERT as CONVERT_SCRIPT  # noqa: E402
from tests.frontends.hostile import HOSTILE, dense  # noqa: E402

CONVERT = str(CONVERT_SCRIPT)
WORKER = str(Path(converter.__file__).parent / "frontends" / "worker.py")
REFUSED_OP = {
    "initializer_writes": "WriteFile",
    "initializer_reads": "ReadFile",
    "signature_writes": "WriteFile",
    "signature_prints_to_file": "PrintV2",
    "signature_calls_python": "EagerPyFunc",
}
REFUSAL = "refusing to run TensorFlow ops outside the audited allowlist: "


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each hostile SavedModel with the file it touches (which does not exist), and a harmless one."""
    folder = tmp_path_factory.mktemp("untrusted")
    out = {}
    for name, build in HOSTILE.items():
        target = folder / f"{name}.target"
        target.write_text("")  # TensorFlow initializes a table as it creates it: the reader needs its file
        out[name] = (build(folder / name, target), target)
        target.unlink()
    out["dense"] = (dense(folder / "dense"), folder / "dense.target")
    return out


def convert(*args: str | Path, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, with its temporary files under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    environment = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
    return subprocess.run([CONVERT, *map(str, args)], capture_output=True, text=True, timeout=600, env=environment)


def one_line(r: subprocess.CompletedProcess[str], kind: str = "error") -> str:
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convert: {kind}: "), r.stderr
    return lines[0]


def writes_not_confined(tmp: Path) -> str:
    """Why the TensorFlow worker cannot confine its writes here ("" when it can): its own answer, in a child."""
    code = (
        "import runpy, sys; worker = runpy.run_path(sys.argv[1]); "
        "print(worker['confine_writes'](__import__('pathlib').Path(sys.argv[2])))"
    )
    tmp.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", code, WORKER, str(tmp)], capture_output=True, text=True, timeout=60, check=True)
    answer = r.stdout.strip()
    return "" if answer.startswith("confined") else answer


def left_behind(tmp: Path) -> list[str]:
    """What a run left in its temporary folder (onnxruntime keeps a session id file, .ses, there)."""
    return sorted(p.name for p in tmp.iterdir() if p.name != ".ses")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("mode", [[], ["--dry-run"], ["--no-verify"]], ids=["default", "dry_run", "no_verify"])
@pytest.mark.parametrize("name", list(REFUSED_OP))
def test_hostile_models_are_refused_before_tensorflow_runs(models, name: str, mode: list[str], tmp_path: Path) -> None:
    folder, target = models[name]
    before = snapshot(folder)
    out = tmp_path / "out.onnx"
    r = convert(folder, "-o", out, *mode, tmp=tmp_path / "tmp")
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r)
    assert line.startswith(f"convert: error: {folder}: {REFUSAL}{REFUSED_OP[name]} (in __inference_"), line
    assert line.endswith("; pass --trust-model if you trust this model")
    assert not target.exists()
    assert snapshot(folder) == before  # byte for byte, no file added
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"] and left_behind(tmp_path / "tmp") == []


@pytest.mark.parametrize(
    ("name", "options", "doing"),
    [
        ("initializer_writes", ["--no-verify"], "cannot load the SavedModel signature"),  # loading runs the initializer
        ("signature_writes", [], "TensorFlow could not run the signature"),  # the signature runs in the reference run
        ("signature_prints_to_file", [], "TensorFlow could not run the signature"),
    ],
)
def test_trusted_hostile_models_run_and_their_writes_are_denied(
    models, name: str, options: list[str], doing: str, tmp_path: Path
) -> None:
    """--trust-model skips the audit, not the worker's confinement: the write is tried, and Landlock denies it."""
    folder, target = models[name]
    unconfined = writes_not_confined(tmp_path)
    try:
        r = convert(folder, "-o", tmp_path / "out.onnx", "--trust-model", *options, tmp=tmp_path / "tmp")
        if unconfined:  # no Landlock here: the model does what it was built to (docs/safety.md)
            assert r.returncode == 0, r.stderr
            assert f"{REFUSED_OP[name]} (in " in one_line(r, "warning") and target.exists()
            pytest.skip(f"writes are not confined here: {unconfined}")
        assert r.returncode == 2 and not target.exists() and not (tmp_path / "out.onnx").exists()
        line = one_line(r)
        assert line.startswith(f"convert: error: {folder}: {doing} 'serving_default' (")
        assert line.endswith(f"{REFUSED_OP[name]}: {target}; Permission denied)"), line  # it tried: proof it is hostile
    finally:
        target.unlink(missing_ok=True)


def test_trusted_model_reads_the_file_it_names(models, tmp_path: Path) -> None:
    folder, target = models["initializer_reads"]
    r = convert(folder, "-o", tmp_path / "out.onnx", "--trust-model", "--no-verify", tmp=tmp_path / "tmp")
    assert r.returncode == 2  # the file is missing: loading fails on reading exactly that file
    assert f"ReadFile: {target}; No such file or directory" in one_line(r)
    target.write_text("secret")
    try:
        r = convert(folder, "-o", tmp_path / "out.onnx", "--trust-model", "--no-verify", tmp=tmp_path / "tmp")
        assert r.returncode == 0, r.stderr
    finally:
        target.unlink()


def test_trusted_python_call_fails_in_one_line(models, tmp_path: Path) -> None:
    # Saving keeps the EagerPyFunc op but not its Python body: another process cannot find it.
    folder, target = models["signature_calls_python"]
    r = convert(folder, "-o", tmp_path / "out.onnx", "--trust-model", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "TensorFlow could not run the signature 'serving_default'" in lines[0], r.stderr
    assert "Could not find callback with key=pyfunc_" in lines[0] and not target.exists()


def test_tensorflow_crash_is_one_line(tmp_path: Path) -> None:
    # tf2onnx (through TensorFlow's shape code) segfaults on this input shape: exit 139 and nothing said, before.
    inp = keras.Input((100_000, 100_000, 64), batch_size=1)
    folder = tmp_path / "huge"
    keras.Model(inp, keras.layers.Dense(6)(inp)).export(str(folder), verbose=False)
    r = convert(folder, "-o", tmp_path / "out.onnx", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    line = one_line(r)
    assert re.fullmatch(
        rf"convert: error: {re.escape(str(folder))}: TensorFlow crashed \(signal SIG[A-Z]+\) while converting it; "
        "run with -v to see its log",
        line,
    ), line
    assert not (tmp_path / "out.onnx").exists() and left_behind(tmp_path / "tmp") == []


def test_missing_tensorflow_says_which_extra_to_install(models, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    for name in ("tensorflow", "tf2onnx", "keras"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError({f'No module named {name!r}'!r})\n")
    inp = keras.Input((2, 3, 4))
    keras_file = tmp_path / "m.keras"
    keras.Model(inp, keras.layers.Dense(5)(inp)).save(keras_file)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    for source in (models["dense"][0], keras_file):
        r = convert(source, "-o", tmp_path / "out.onnx", tmp=tmp_path / "tmp", env=env)
        assert r.returncode == 2
        line = one_line(r)
        assert line.startswith(f"convert: error: {source}: SavedModel and Keras input need TensorFlow and tf2onnx")
        assert line.endswith("pip install 'dense2conv[tf]'")


def test_the_parent_process_never_imports_tensorflow(models, tmp_path: Path) -> None:
    folder = models["dense"][0]
    before = snapshot(folder)
    code = (
        "import sys; from converter.cli import main; "
        f"rc = main([{str(folder)!r}, '-o', {str(tmp_path / 'o.onnx')!r}, '-q']); "
        "assert not {'tensorflow', 'tf2onnx', 'keras'} & set(sys.modules), 'imported'; sys.exit(rc)"
    )
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PASSED") and (tmp_path / "o.onnx").exists()
    assert snapshot(folder) == before and left_behind(tmp_path / "tmp") == []


def test_tensorflow_loads_the_audited_copy_and_stops_with_the_block(models) -> None:
    from converter.frontends.savedmodel import open_tensorflow, run_tensorflow

    folder = models["dense"][0]
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 1)).astype(np.float32)
    with open_tensorflow(folder) as source:
        copy = source.saved_model
        assert copy != folder and (copy / "saved_model.pb").read_bytes() == (folder / "saved_model.pb").read_bytes()
        assert (copy / "variables").is_symlink() and (copy / "variables").resolve() == (folder / "variables").resolve()
        expected = tf.saved_model.load(str(folder)).signatures["serving_default"](x=tf.constant(x))["y"].numpy()
        np.testing.assert_allclose(run_tensorflow(source, {"x": x})["y"], expected, rtol=1e-6)
        process = source.worker._process  # the child itself, to see that it ends
    assert not copy.exists() and process is not None and process.poll() is not None


def test_a_savedmodel_only_in_text_form_cannot_be_audited(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pbtxt").write_text("saved_model_schema_version: 1\n")
    r = convert(tmp_path / "m", "-o", tmp_path / "o.onnx", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    assert one_line(r) == (
        f"convert: error: {tmp_path / 'm'}: refusing to run a SavedModel without saved_model.pb "
        "(a .pbtxt or .cpb cannot be audited); pass --trust-model if you trust this model"
    )


def test_keras_files_are_audited_after_their_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from converter.frontends import savedmodel

    seen: list[bytes] = []

    def refuse_everything(data: bytes) -> Audit:
        seen.append(data)
        audit = Audit()
        audit.ops["WriteFile"].add("f")
        return audit

    inp = keras.Input((2, 3, 4))
    path = tmp_path / "m.keras"
    keras.Model(inp, keras.layers.Dense(5)(inp)).save(path)
    monkeypatch.setattr(savedmodel, "audit_saved_model", refuse_everything)
    with pytest.raises(converter.InputError, match=f"{REFUSAL}WriteFile \\(in f\\)"):
        converter.load(path)
    assert len(seen) == 1 and seen[0]  # the export's saved_model.pb, audited once


CLI_FUZZ_CASES = max(4, int(os.environ.get("CONVERTER_FUZZ_CASES", "150")) // 25)


def test_mutated_saved_model_pb_in_the_real_command(models, tmp_path: Path) -> None:
    """Flips, truncations and splices of saved_model.pb: exit 0, 1 or 2, never a traceback or a hang."""
    from tests.test_fuzz import mutate

    original = models["dense"][0]
    data = (original / "saved_model.pb").read_bytes()
    rng = np.random.default_rng(2024)
    outcomes: dict[int, int] = {}
    for i in range(CLI_FUZZ_CASES):
        folder = tmp_path / f"m{i}"
        shutil.copytree(original, folder)
        (folder / "saved_model.pb").write_bytes(mutate(data, rng))
        out = tmp_path / f"o{i}.onnx"
        r = convert(folder, "-o", out, "-q", tmp=tmp_path / "tmp")
        assert r.returncode in (0, 1, 2, 3) and "Traceback" not in r.stdout + r.stderr, (i, r.stderr)
        if r.returncode == 2:
            one_line(r)
            assert not out.exists()
        outcomes[r.returncode] = outcomes.get(r.returncode, 0) + 1
    assert outcomes.get(2), outcomes
    assert left_behind(tmp_path / "tmp") == []


def test_a_tensorflow_run_that_never_ends_is_stopped(tmp_path: Path) -> None:
    """The reference run has the verification's deadline: an endless tf.while_loop ends in one line."""
    from converter.errors import InputError
    from converter.frontends.savedmodel import open_tensorflow, run_tensorflow

    class Endless(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
        def __call__(self, x):
            n = tf.while_loop(lambda i: tf.reduce_sum(x) > -1e30, lambda i: i + 1, [tf.constant(0)])
            return {"y": x + tf.cast(n, tf.float32)}

    module = Endless()
    tf.saved_model.save(module, str(tmp_path / "endless"), signatures={"serving_default": module.__call__})
    with open_tensorflow(tmp_path / "endless") as source:
        with pytest.raises(InputError, match=r"TensorFlow did not finish running its signature .* within 2 s"):
            run_tensorflow(source, {"x": np.ones(2, np.float32)}, timeout=2)
