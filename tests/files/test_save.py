"""Saving: atomic, never touching what is not ours, and external data for models past protobuf's limit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from converter.files.save import save
from tests.conftest import concrete_shapes, dense_model
from tests.test_preservation import rich_model


def test_plain_save_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    model = rich_model()
    assert save(model, tmp_path / "m.onnx") == [tmp_path / "m.onnx"]
    assert onnx.load(tmp_path / "m.onnx") == model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("maker", [rich_model, lambda: dense_model(x_shape=(1, 3, 5, 4))], ids=["rich", "dense"])
def test_external_data_round_trips_exactly(tmp_path: Path, maker) -> None:
    model = maker()
    before = model.SerializeToString()
    files = save(model, tmp_path / "m.onnx", external_data=True, size_threshold=0)
    assert files == [tmp_path / "m.onnx", tmp_path / "m.onnx.data"]
    assert model.SerializeToString() == before  # the caller's model is untouched
    small = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    externals = [t for t in small.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert externals and all({e.key: e.value for e in t.external_data}["location"] == "m.onnx.data" for t in externals)
    assert all(int({e.key: e.value for e in t.external_data}["offset"]) % 4096 == 0 for t in externals)
    loaded = onnx.load(tmp_path / "m.onnx")  # with the data
    for a, b in zip(loaded.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
        assert (a.name, list(a.dims), a.data_type) == (b.name, list(b.dims), b.data_type)
    assert list(loaded.graph.input) == list(model.graph.input) and loaded.metadata_props == model.metadata_props
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_external_data_file_is_replaced_never_appended(tmp_path: Path) -> None:
    model = dense_model(x_shape=(1, 3, 5, 4))
    (tmp_path / "m.onnx.data").write_bytes(b"stale bytes from an earlier run" * 1000)
    save(model, tmp_path / "m.onnx", external_data=True, size_threshold=0)
    size = (tmp_path / "m.onnx.data").stat().st_size
    assert 0 < size < 30000
    save(model, tmp_path / "m.onnx", external_data=True, size_threshold=0)
    assert (tmp_path / "m.onnx.data").stat().st_size == size
    check = converter.verify(model, onnx.load(tmp_path / "m.onnx"), input_shapes=concrete_shapes(model))
    assert check.passed


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")

    class Boom(Exception):
        pass

    def explode(*_a, **_k):
        raise Boom

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(Boom):
        save(dense_model(), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save(dense_model(), tmp_path / "m.onnx")
        save(dense_model(), tmp_path / "e.onnx", external_data=True, size_threshold=0)
    finally:
        os.umask(old)
    for name in ("m.onnx", "e.onnx", "e.onnx.data"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def _symlink(p: Path) -> None:
    (p.parent / "elsewhere.onnx").write_bytes(b"the link's target")
    p.symlink_to("elsewhere.onnx")


def _read_only(p: Path) -> None:
    p.write_bytes(b"read-only")
    p.chmod(0o444)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_symlink, "symbolic link"),
        (lambda p: os.mkfifo(p), "named pipe"),
        (lambda p: p.mkdir(), "is a folder"),
        (_read_only, "read-only"),
    ],
    ids=["symlink", "fifo", "folder", "read-only"],
)
@pytest.mark.parametrize("which", ["model", "data file"])
def test_save_never_replaces_what_is_not_a_writable_file(tmp_path: Path, make, message: str, which: str) -> None:
    target = tmp_path / "m.onnx"
    make(target if which == "model" else tmp_path / "m.onnx.data")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(converter.InputError, match=message):
        save(dense_model(), target, external_data=True, size_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("external_data", [False, True])
def test_a_failing_write_is_one_input_error_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch, external_data: bool) -> None:
    import errno

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(converter.InputError, match=r"m\.onnx(\.data)?: cannot write \(No space left on device\)"):
        save(dense_model(), tmp_path / "m.onnx", external_data=external_data, size_threshold=0)
    assert list(tmp_path.iterdir()) == []
