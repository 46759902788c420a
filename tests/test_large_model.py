"""A model over protobuf's 2 GB limit: loaded with its external data, converted, verified, saved with external data.

The slow tier (python -m pytest -m slow): 2.13 GiB written, converted by the installed script in a child, read back.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import onnx
import pytest

from converter.files.save import EXTERNAL_DATA_ABOVE, save
from models.graphs import big_dense
from tests.conftest import run_command


@pytest.fixture(scope="session")
def huge_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("huge")
    model = big_dense(34, 4096)  # 34 x 64 MiB of weights: 2.13 GiB
    files = save(model, folder / "huge.onnx")
    assert files == [folder / "huge.onnx", folder / "huge.onnx.data"]  # external data chosen automatically
    return folder / "huge.onnx"


@pytest.mark.slow
def test_model_over_2gb_converts_and_verifies(huge_model: Path, tmp_path: Path) -> None:
    assert huge_model.with_name("huge.onnx.data").stat().st_size > EXTERNAL_DATA_ABOVE
    out = tmp_path / "out.onnx"
    r = run_command(
        huge_model,
        "-o",
        out,
        "--report",
        tmp_path / "r.json",
        child=True,
        limits={resource.RLIMIT_AS: resource.RLIM_INFINITY},  # two sessions of 2 GiB and their arenas
        timeout=1200,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rewrite"]["rewritten"] == 34 and report["verify"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data", "r.json"]
    skeleton = onnx.load(out, load_external_data=False)
    assert [n.op_type for n in skeleton.graph.node].count("Conv") == 34
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in skeleton.graph.initializer if t.dims == [4096, 4096, 1, 1])
    onnx.checker.check_model(str(out))  # the path form: the checker reads the external data itself
