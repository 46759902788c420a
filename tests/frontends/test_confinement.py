"""Hostile SavedModels, round two, through the real ``convert`` command: each class with a canary.

1. The audit covers the whole program: code nothing seems to call (a TensorFlow 1 local variable's
   initializer, a function only ``api_implements`` names) is refused, and the worker does not run
   it even with ``--trust-model``. Canary: a file that must not be written, a FIFO that must not
   be opened.
2. Path ops are confined: a RestoreV2 whose prefix comes from constants is refused. Canaries: a
   secret checkpoint outside the folder whose values must not reach the output, and a listener in
   a private network namespace that a ``gs://`` prefix must not reach.
3. Defence in depth: with ``--trust-model`` the worker still cannot connect anywhere, nor write
   outside its folder (test_untrusted.py has the writes), and every request has a deadline.
4. Paths through links: a link out of the folder, a FIFO, a socket or a link loop in it is refused
   in one line before anything reads it, so ``-o`` and ``--report`` cannot destroy the model's files.

Each test of a guard was seen to fail with that guard taken out (and with the audit as it was before).
The clean TensorFlow 1 model and the hard link are what must keep working.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.frontends.test_untrusted import CONVERT, REFUSAL, one_line, snapshot

pytestmark = [pytest.mark.tf, pytest.mark.slow]
tf = pytest.importorskip("tensorflow")
from tests.frontends import hostile  # noqa: E402
from tests.frontends.canaries import FifoCanary, private_network_unavailable, run_in_private_network  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECRET = np.array([1234.5, -8765.25, 4242.125, 31415.9], np.float32).reshape(1, 1, 1, 4)
RESTORE_REFUSED = "RestoreV2 on a path other than the model's own variables"
TRUSTED = "--trust-model"


def run(*args: str | Path, tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed command, with its temporary files under ``tmp``, stopped after ``timeout`` seconds."""
    tmp.mkdir(exist_ok=True)
    environment = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([CONVERT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=environment)


def built(tmp_path: Path, build, name: str) -> tuple[Path, Path]:
    """Build ``name`` with its target as a plain empty file (building may touch it), then remove the target."""
    target = tmp_path / f"{name}.target"
    target.write_text("")
    folder = build(tmp_path / name, target)
    target.unlink()
    return folder, target


# 1. The whole program ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "op", "where", "mode"),
    [
        ("tf1_local_variable_writes", "WriteFile", "the graph", ["--dry-run"]),  # the loader runs local initializers
        ("implements_swap_writes", "WriteFile", "__inference_write_", []),  # grappler swaps it into the reference run
    ],
)
def test_code_nothing_calls_that_writes_is_refused(name: str, op: str, where: str, mode: list[str], tmp_path: Path) -> None:
    folder, target = built(tmp_path, hostile.HIDDEN[name], name)
    before = snapshot(folder)
    r = run(folder, "-o", tmp_path / "out.onnx", *mode, tmp=tmp_path / "tmp")
    assert r.returncode == 2, r.stderr
    assert one_line(r).startswith(f"convert: error: {folder}: {REFUSAL}{op} (in {where}")
    assert not target.exists() and snapshot(folder) == before


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("tf1_local_variable_reads", "the graph"),
        ("implements_swap_reads_on_load", "__inference_<lambda>_"),  # swapped in while a table initializes, on load
    ],
)
def test_code_nothing_calls_that_reads_is_refused_before_it_opens_anything(name: str, where: str, tmp_path: Path) -> None:
    folder, target = built(tmp_path, hostile.HIDDEN[name], name)
    with FifoCanary(target) as canary:
        r = run(folder, "-o", tmp_path / "out.onnx", "--dry-run", tmp=tmp_path / "tmp")
    assert r.returncode == 2, r.stderr
    assert one_line(r).startswith(f"convert: error: {folder}: {REFUSAL}ReadFile (in {where}")
    assert not canary.opened


@pytest.mark.parametrize("name", ["tf1_local_variable_reads", "implements_swap_reads_on_load"])
def test_trusted_the_worker_does_not_run_code_nothing_calls(name: str, tmp_path: Path) -> None:
    """--trust-model: TensorFlow 1's default local init and grappler's implementation selector are off in the worker."""
    folder, target = built(tmp_path, hostile.HIDDEN[name], name)
    with FifoCanary(target) as canary:
        r = run(folder, "-o", tmp_path / "out.onnx", TRUSTED, tmp=tmp_path / "tmp")
    assert r.returncode == 0, r.stderr
    assert one_line(r, "warning").startswith(f"convert: warning: {folder}: ran with --trust-model: ")
    assert not canary.opened and (tmp_path / "out.onnx").exists()


def test_a_clean_tf1_savedmodel_with_its_saver_converts(tmp_path: Path) -> None:
    """TensorFlow 1's saver (a placeholder with a default, its restore op, its save and merge) passes the audit."""
    folder = hostile.tf1_dense(tmp_path / "tf1")
    r = run(folder, "-o", tmp_path / "out.onnx", "-q", tmp=tmp_path / "tmp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PASSED: rewrote 1 of 1")


# 2. Path ops are confined -----------------------------------------------------------------------


@pytest.mark.parametrize("build", [hostile.restore_from_constant, hostile.restore_through_argument], ids=["constant", "argument"])
def test_a_checkpoint_outside_the_folder_is_not_read(build, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "secret"
    secret.parent.mkdir()
    hostile.write_checkpoint(secret, SECRET.ravel())
    folder = build(tmp_path / "model", str(secret))
    out = tmp_path / "out.onnx"
    r = run(folder, "-o", out, tmp=tmp_path / "tmp")
    assert r.returncode == 2, r.stderr
    assert one_line(r).startswith(f"convert: error: {folder}: {REFUSAL}{RESTORE_REFUSED} (in __inference_")
    assert not out.exists()
    # The canary: TensorFlow itself reads the secret through this model (so the model really does).
    x = np.ones((1, 2, 2, 1), np.float32)
    y = tf.saved_model.load(str(folder)).signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    np.testing.assert_array_equal(y[0, 0, 0], SECRET.ravel())


@pytest.fixture(scope="module")
def private_network() -> None:
    reason = private_network_unavailable()
    if reason:
        pytest.skip(f"no private network namespace for the listener: {reason}")


def in_private_network(tmp_path: Path, *args: str | Path) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    return run_in_private_network([CONVERT, *map(str, args)], tmp_path / "result.json", env, ROOT)


@pytest.mark.parametrize(
    ("build", "mode", "refused"),
    [
        (hostile.restore_from_constant, ["--dry-run"], RESTORE_REFUSED),  # tf2onnx would fold (run) it while converting
        (hostile.merge_at, [], "MergeV2Checkpoints on a path other than the model's own variables"),  # the reference run
    ],
    ids=["restore_dry_run", "merge"],
)
def test_a_url_prefix_is_refused_and_connects_nowhere(
    private_network, build, mode: list[str], refused: str, tmp_path: Path
) -> None:
    folder = build(tmp_path / "model", "gs://bucket/checkpoint")
    result = in_private_network(tmp_path, folder, "-o", tmp_path / "out.onnx", *mode)
    assert result["returncode"] == 2, result["stderr"]
    assert result["stderr"].startswith(f"convert: error: {folder}: {REFUSAL}{refused} (in __inference_")
    assert result["requests"] == []


# 3. Defence in depth: the worker -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "mode"),
    [(hostile.restore_from_constant, ["--dry-run"]), (hostile.merge_at, [])],
    ids=["restore_dry_run", "merge"],
)
def test_trusted_the_worker_connects_nowhere(private_network, build, mode: list[str], tmp_path: Path) -> None:
    """--trust-model lets the gs:// read run; the worker's own network namespace keeps it from the listener.

    Where the test can make a namespace for its listener, the worker can make one for itself.
    """
    folder = build(tmp_path / "model", "gs://bucket/checkpoint")
    result = in_private_network(tmp_path, folder, "-o", tmp_path / "out.onnx", TRUSTED, *mode)
    assert result["returncode"] == 2, result["stderr"]  # it tried, and found no network
    assert result["requests"] == []


def test_the_listener_does_see_a_connection(private_network, tmp_path: Path) -> None:
    """The canary itself: the same model, called in TensorFlow in the namespace, does reach the listener."""
    folder = hostile.restore_from_constant(tmp_path / "model", "gs://bucket/checkpoint")
    call = f"import tensorflow as tf; tf.saved_model.load({str(folder)!r}).signatures['serving_default'](x=tf.ones([1, 2, 2, 1]))"
    result = run_in_private_network([sys.executable, "-c", call], tmp_path / "result.json", dict(os.environ), ROOT)
    assert result["requests"] and all("computeMetadata" in line for line in result["requests"]), result


def test_every_request_has_a_deadline_converting_too(tmp_path: Path) -> None:
    """Loading for the conversion (not only the reference run) is stopped at the deadline: one line, quickly."""
    folder = hostile.endless_on_load(tmp_path / "endless")
    code = (
        "import sys\n"
        "from converter.errors import InputError\n"
        "from converter.frontends.savedmodel import open_tensorflow\n"
        "try:\n"
        f"    with open_tensorflow({str(folder)!r}, timeout=5): pass\n"
        "except InputError as e:\n"
        "    print(e)\n"
        "    sys.exit(2)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert (
        r.stdout.strip()
        == f"{folder}: TensorFlow did not finish converting it within 5 s (an endless loop?); give --timeout SECONDS"
    )


# 4. Paths through links, special files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.dense(tmp_path_factory.mktemp("dense") / "dense")


def copy_of(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "sm", symlinks=True))


def test_output_through_a_linked_variables_folder_is_refused(dense_model: Path, tmp_path: Path) -> None:
    sm = copy_of(dense_model, tmp_path)
    (sm / "variables").rename(tmp_path / "vars")
    (sm / "variables").symlink_to("../vars")
    before = snapshot(tmp_path / "vars")
    r = run(sm, "-o", tmp_path / "vars" / "variables.index", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    assert one_line(r) == (
        f"convert: error: {sm}: variables is a symbolic link that leads outside the SavedModel folder; "
        "refusing to read through it (copy the folder with its links resolved, e.g. cp -rL)"
    )
    assert snapshot(tmp_path / "vars") == before


@pytest.mark.parametrize("link", ["saved_model.pb", "fingerprint.pb"])
def test_report_through_a_linked_file_is_refused(dense_model: Path, link: str, tmp_path: Path) -> None:
    sm = copy_of(dense_model, tmp_path)
    real = tmp_path / f"real_{link}"
    (sm / link).rename(real)
    (sm / link).symlink_to(f"../{real.name}")  # relative, to ../
    content = real.read_bytes()
    r = run(sm, "-o", tmp_path / "out.onnx", "--report", real, tmp=tmp_path / "tmp")
    assert r.returncode == 2
    assert one_line(r).startswith(f"convert: error: {sm}: {link} is a symbolic link that leads outside the SavedModel folder")
    assert real.read_bytes() == content and not (tmp_path / "out.onnx").exists()


def test_a_linked_assets_folder_with_an_output_in_it_is_refused(dense_model: Path, tmp_path: Path) -> None:
    sm = copy_of(dense_model, tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "vocab.txt").write_text("the model's own asset\n")
    shutil.rmtree(sm / "assets", ignore_errors=True)
    (sm / "assets").symlink_to("../shared")
    r = run(sm, "-o", shared / "vocab.txt", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    assert one_line(r).startswith(f"convert: error: {sm}: assets is a symbolic link that leads outside")
    assert (shared / "vocab.txt").read_text() == "the model's own asset\n"


def make_special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()


@pytest.mark.parametrize(
    ("where", "kind", "said"),
    [
        ("fingerprint.pb", "fifo", "named pipe (FIFO)"),
        ("variables/variables.index", "fifo", "named pipe (FIFO)"),
        ("assets/vocab.txt", "fifo", "named pipe (FIFO)"),
        ("assets/socket", "socket", "socket"),
    ],
)
def test_special_files_in_the_folder_are_refused_before_anything_reads_them(
    dense_model: Path, where: str, kind: str, said: str, tmp_path: Path
) -> None:
    sm = copy_of(dense_model, tmp_path)
    (sm / where).parent.mkdir(exist_ok=True)
    (sm / where).unlink(missing_ok=True)
    make_special(kind, sm / where)
    try:
        r = run(sm, "-o", tmp_path / "out.onnx", "--timeout", "30", tmp=tmp_path / "tmp", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a {said} at {where} hung the conversion")
    assert r.returncode == 2
    assert one_line(r) == f"convert: error: {sm}: {where} is a {said}, not a regular file; refusing to read the SavedModel"


@pytest.mark.parametrize(("where", "to"), [("loop", "loop"), ("assets/a", "b")], ids=["self", "pair"])
def test_a_link_loop_in_the_folder_is_one_line(dense_model: Path, where: str, to: str, tmp_path: Path) -> None:
    sm = copy_of(dense_model, tmp_path)
    (sm / where).parent.mkdir(exist_ok=True)
    (sm / where).symlink_to(to)
    if to == "b":
        (sm / "assets" / "b").symlink_to("a")
    r = run(sm, "-o", tmp_path / "out.onnx", tmp=tmp_path / "tmp")
    assert r.returncode == 2
    line = one_line(r)
    assert line.startswith(f"convert: error: {sm}: {where if to != 'b' else 'assets/'}")
    assert line.endswith("is a symbolic link that cannot be resolved (a symbolic link loop)")


def test_a_fifo_as_the_keras_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m.keras")
    r = run(tmp_path / "m.keras", "-o", tmp_path / "out.onnx", tmp=tmp_path / "tmp", timeout=120)
    assert r.returncode == 2
    assert one_line(r) == f"convert: error: {tmp_path / 'm.keras'}: is a named pipe (FIFO), not a regular file"


def test_hard_links_are_read_and_an_output_onto_one_leaves_the_model_whole(dense_model: Path, tmp_path: Path) -> None:
    """A hard link is one file with two names: the output is renamed into place, so the model keeps its bytes."""
    sm = copy_of(dense_model, tmp_path)
    index = sm / "variables" / "variables.index"
    os.link(index, tmp_path / "other_name.index")
    content = index.read_bytes()
    r = run(sm, "-o", tmp_path / "other_name.index", "-q", tmp=tmp_path / "tmp")
    assert r.returncode == 0, r.stderr
    assert index.read_bytes() == content and onnx.load(tmp_path / "other_name.index").graph.node
    assert run(sm, "-o", tmp_path / "again.onnx", "-q", tmp=tmp_path / "tmp").returncode == 0
