"""Bad input gets one clear line and exit 2, nothing is ever lost, and untrusted models stay in their folder.

The command runs in this process (tests/conftest.py's ``run_command``): its exit status, its one stderr line and the
files around it are the same as a child's; tests/test_hostile.py runs such cases through the installed script too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli.test_cli import random_op_model
from tests.conftest import dense_model, run_command


def tiny(nodes, inits=(), opset: int = 17, ir: int = 8, sparse=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        list(inits),
        sparse_initializer=list(sparse),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def external(location: str, length: int = 8, name: str = "w") -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1, 2], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


def add_w(*inits: TensorProto) -> onnx.ModelProto:
    return tiny([helper.make_node("Add", ["x", "w"], ["y"])], inits)


def raw(n: int, nbytes: int, name: str = "w") -> TensorProto:
    """A float tensor of ``n`` elements whose raw data holds ``nbytes`` (4 * n would be right)."""
    return TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n], raw_data=bytes(nbytes))


def with_unused(t: TensorProto) -> onnx.ModelProto:
    return add_w(numpy_helper.from_array(np.ones([1, 2], np.float32), "w"), t)


def sparse_with(location: str) -> onnx.ModelProto:
    values = external(location, length=8, name="w_values")
    values.dims[:] = [2]
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "w_indices")
    return tiny([helper.make_node("Add", ["x", "w"], ["y"])], sparse=[helper.make_sparse_tensor(values, indices, [1, 2])])


def setup_files(folder: Path) -> None:
    (folder / "w.bin").write_bytes(np.ones(2, np.float32).tobytes())
    (folder / "short.bin").write_bytes(b"\0\0\0")
    outside = folder.parent / f"{folder.name}_secret.bin"
    outside.write_bytes(np.ones(2, np.float32).tobytes())
    (folder / "link.bin").symlink_to(outside)
    os.link(outside, folder / "hard.bin")
    (folder / "sub").mkdir()


CASES: dict[str, tuple[Callable[[], onnx.ModelProto | bytes], str]] = {
    "truncated": (lambda: dense_model().SerializeToString()[:-7], "not a readable ONNX model"),
    "random bytes": (lambda: np.random.default_rng(0).bytes(300), "not a readable ONNX model"),
    "no graph": (lambda: onnx.ModelProto(ir_version=8, producer_name="x"), "no graph"),
    "dangling input": (lambda: tiny([helper.make_node("Add", ["x", "nowhere"], ["y"])]), "topologically sorted"),
    "cycle": (
        lambda: tiny([helper.make_node("Relu", ["z"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]),
        "topologically sorted",
    ),
    "duplicate names": (
        lambda: tiny([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])]),
        "single static assignment",
    ),
    "unknown operator": (lambda: tiny([helper.make_node("Frobnicate", ["x"], ["y"])]), "No Op registered for Frobnicate"),
    "opset too new": (lambda: tiny([helper.make_node("Relu", ["x"], ["y"])], opset=99), "opset 99 is newer"),
    "IR too new": (lambda: tiny([helper.make_node("Relu", ["x"], ["y"])], ir=99), "ir_version 99"),
    "raw data too short": (lambda: with_unused(raw(2, 7, "small")), "raw_data size (7 bytes) is too small"),
    # Above 64 KB the size is learned without reading the data; both directions must still be caught.
    "large raw data too short": (lambda: with_unused(raw(40000, 159996, "big")), "holds 159996 bytes, expected 160000"),
    "large raw data too long": (lambda: with_unused(raw(40000, 160004, "big")), "holds 160004 bytes, expected 160000"),
    "external missing": (lambda: add_w(external("nope.bin")), "external data file 'nope.bin' is missing"),
    "external too short": (lambda: add_w(external("short.bin")), "is too short"),
    "external length lies": (lambda: add_w(external("w.bin", length=4)), "does not match its shape"),
    "external absolute": (lambda: add_w(external("/etc/passwd")), "is absolute"),
    "external ../": (lambda: add_w(external("../w.bin")), "leaves the model's folder"),
    "external sub/../..": (lambda: add_w(external("sub/../../w.bin")), "leaves the model's folder"),
    "external symlink": (lambda: add_w(external("link.bin")), "leads outside the model's folder"),
    "external hard link": (lambda: add_w(external("hard.bin")), "is a hard link"),
    "sparse external ../": (lambda: sparse_with("../w.bin"), "leaves the model's folder"),
    "sparse external absolute": (lambda: sparse_with("/etc/passwd"), "is absolute"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_is_one_line_exit_2_and_nothing_written(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    setup_files(folder)
    make, message = CASES[case]
    content = make()
    path = folder / "bad.onnx"
    path.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
    r = run_command(path, "-o", folder / "out.onnx")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (folder / "out.onnx").exists() and not list(folder.glob(".out.onnx*"))
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()} == before


def test_good_external_data_is_read(tmp_path: Path) -> None:
    setup_files(tmp_path)
    (tmp_path / "m.onnx").write_bytes(add_w(external("w.bin")).SerializeToString())
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert r.returncode == 0, r.stderr
    assert numpy_helper.to_array(onnx.load(tmp_path / "out.onnx").graph.initializer[0]).tolist() == [[1.0, 1.0]]


def test_output_may_not_replace_the_inputs_external_data(tmp_path: Path) -> None:
    setup_files(tmp_path)
    (tmp_path / "m.onnx").write_bytes(add_w(external("w.bin")).SerializeToString())
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "w.bin")
    assert r.returncode == 2 and "would overwrite the input" in r.stderr
    assert (tmp_path / "w.bin").read_bytes() == np.ones(2, np.float32).tobytes()
    (tmp_path / "x.data").write_bytes(b"")
    os.replace(tmp_path / "w.bin", tmp_path / "o.onnx.data")
    (tmp_path / "m2.onnx").write_bytes(add_w(external("o.onnx.data")).SerializeToString())
    r = run_command(tmp_path / "m2.onnx", "-o", tmp_path / "o.onnx")  # its data file would be o.onnx.data
    assert r.returncode == 2 and "would overwrite the input" in r.stderr


def test_force_writes_after_a_mismatch_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "noisy.onnx"
    onnx.save(random_op_model(), path)
    r = run_command(path, "--force", "--report", tmp_path / "r.json")
    assert r.returncode == 1
    assert (tmp_path / "noisy_conv.onnx").exists()
    assert "anyway (--force)" in r.stdout.strip().splitlines()[-1]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["forced"] and report["written"] and not report["ok"]


@pytest.mark.parametrize("external_data", [False, True])
def test_same_input_same_bytes(tmp_path: Path, external_data: bool) -> None:
    from converter.files.save import save
    from models.graphs import convnext_block

    save(convnext_block(), tmp_path / "in.onnx", external_data=external_data, size_threshold=0)
    outputs = []
    for i in range(2):
        out = tmp_path / f"run{i}" / "out.onnx"
        out.parent.mkdir()
        r = run_command(tmp_path / "in.onnx", "-o", out, "-q")
        assert r.returncode == 0, r.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
