"""The ``convert`` command: exit codes, files written or not, the JSON report (in this process through
``converter.cli.main``; in a child where that is the point: ``python -m converter``, a terminal, TensorFlow unimported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import W_, C, CliResult, H, dense_model, run_command, with_output_shapes


def run(*args: str | Path, cwd: Path | None = None) -> CliResult:
    """The command in this process (tests/conftest.py's run_command); the tests that need a child start their own."""
    return run_command(*args, cwd=cwd, env={"COLUMNS": "120"})


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "dense.onnx"
    onnx.save(dense_model(x_shape=("N", H, W_, C)), path)
    return path


def test_default_output_beside_input_and_summary(model_file: Path) -> None:
    before = model_file.read_bytes()
    r = run(model_file)
    assert r.returncode == 0, r.stderr
    out = model_file.with_name("dense_conv.onnx")
    assert out.exists() and model_file.read_bytes() == before
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Transpose", "Conv", "Transpose"]
    assert "Rewritten 1 of 1 candidates" in r.stdout
    assert "MatMul" in r.stdout and "Conv" in r.stdout
    assert "dim 'N' set to 2" in r.stdout  # verification chose the batch size, and says why
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED")
    assert r.stderr == ""  # no progress output when stderr is not a terminal


def test_python_dash_m_is_the_same_command(model_file: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "converter", str(model_file), "-o", str(tmp_path / "m.onnx"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("PASSED") and len(r.stdout.strip().splitlines()) == 1


def test_json_report(model_file: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    r = run(model_file, "-o", tmp_path / "out.onnx", "--report", report, "--input-shape", f"x:3,{H},{W_},{C}")
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["ok"] and data["written"] and data["output"] == str(tmp_path / "out.onnx")
    assert data["rewrite"]["candidates"] == 1 and data["rewrite"]["rewritten"] == 1
    assert data["rewrite"]["ops_before"] == {"Add": 1, "MatMul": 1}
    assert data["rewrite"]["ops_after"] == {"Conv": 1, "Transpose": 2}
    assert data["rewrite"]["decisions"][0]["notes"] == {"bias_folded": True}
    v = data["verify"]
    assert v["passed"] and v["inputs"][0]["shape"] == [3, H, W_, C] and v["assumptions"] == []
    assert v["outputs"][0]["max_abs_error"] <= v["outputs"][0]["atol"]
    assert set(data["timings"]) == {"load", "rewrite", "verify", "save"}


def test_skipped_candidates_grouped_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(dense_model(weight="runtime"), path)
    r = run(path, "--input-shape", f"x:1,{H},{W_},{C}")
    assert r.returncode == 0, r.stderr  # nothing to rewrite is a normal result
    assert "Rewritten 0 of 1 candidates" in r.stdout and "weight_not_constant" in r.stdout
    assert (tmp_path / "m_conv.onnx").exists()


def test_dry_run_lists_decisions_and_writes_nothing(tmp_path: Path, model_file: Path) -> None:
    before = files(tmp_path)
    r = run(model_file, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dense" in r.stdout and "bias folded" in r.stdout and "DRY RUN" in r.stdout
    assert files(tmp_path) == before


def test_no_verify(model_file: Path, tmp_path: Path) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "--no-verify")
    assert r.returncode == 0 and "not verified" in r.stdout and "Verification" not in r.stdout
    assert (tmp_path / "o.onnx").exists()


def random_op_model() -> onnx.ModelProto:
    """A dense layer next to an unseeded random op: the two runs cannot agree, so verification must fail."""
    model = dense_model(x_shape=(1, H, W_, C))
    model.graph.node.append(helper.make_node("RandomNormalLike", ["x"], ["noise"], dtype=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, [1, H, W_, C]))
    return with_output_shapes(model)


def test_verification_mismatch_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "noisy.onnx"
    onnx.save(random_op_model(), path)
    report = tmp_path / "r.json"
    r = run(path, "--report", report)
    assert r.returncode == 1, r.stdout + r.stderr
    assert not (tmp_path / "noisy_conv.onnx").exists()
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED")
    data = json.loads(report.read_text())
    assert not data["ok"] and not data["written"]
    assert {o["name"]: o["passed"] for o in data["verify"]["outputs"]} == {"y": True, "noise": False}


def test_inputs_npz(model_file: Path, tmp_path: Path) -> None:
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((2, H, W_, C)).astype(np.float32))  # constant data proves nothing
    r = run(model_file, "-o", tmp_path / "o.onnx", "--inputs", npz, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verify"]["inputs"][0]["source"] == "file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "no such file"),
        (["{model}", "--atol", "abc"], "not a number"),
        (["{model}", "--rtol", "-1"], "non-negative"),
        (["{model}", "--input-shape", "x"], "NAME:DIM"),
        (["{model}", "--input-shape", "x:[1,2"], "NAME:[DIM,DIM,...]"),
        (["{model}", "--input-shape", "nope:1,2"], "no input named 'nope'"),
        (["{model}", "--input-shape", "x:1,2,3"], "does not fit input 'x'"),
        (["{model}", "--inputs", "{tmp}/none.npz"], "cannot read input arrays"),
        (["{model}", "-o", "{model}"], "would overwrite the input"),
        (["{model}", "-o", "{tmp}/no/such/dir/out.onnx"], "does not exist"),
        (["{model}", "--ep", "tpu"], "invalid choice"),
        (["{empty}"], "file is empty"),
        (["{garbage}"], "not a readable ONNX model"),
        (["{tmp}"], "not a SavedModel folder (no saved_model.pb)"),
        (["{nograph}"], "no graph"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, model_file: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "garbage.onnx").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nograph.onnx").write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    subs = {
        "model": model_file,
        "tmp": tmp_path,
        "empty": tmp_path / "empty.onnx",
        "garbage": tmp_path / "garbage.onnx",
        "nograph": tmp_path / "nograph.onnx",
    }
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = run(*[a.format(**subs) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("convert: error:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing changed


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "e.onnx").write_bytes(b"")
    r = run(tmp_path / "e.onnx", "-v")
    assert r.returncode == 2 and "Traceback" in r.stderr and "file is empty" in r.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_exits_2(model_file: Path, tmp_path: Path) -> None:
    r = run(model_file, "--ep", "cuda")
    assert r.returncode == 2 and "CUDAExecutionProvider is not available" in r.stderr
    assert not model_file.with_name("dense_conv.onnx").exists()


def test_convert_does_not_import_tensorflow(model_file: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from converter.cli import main; "
        f"rc = main([{str(model_file)!r}, '-o', {str(tmp_path / 'o.onnx')!r}, '-q']); "
        "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _stderr_on_a_terminal(*args: str | Path) -> tuple[int, bytes]:
    """Run with stderr on a pseudo-terminal: (status, what the terminal got). tests/test_everyday.py has the runner."""
    from tests.test_everyday import _stderr_on_a_terminal as run_on_a_terminal

    rc, _, seen = run_on_a_terminal(*args)
    return rc, seen


def test_progress_only_on_a_terminal_and_not_with_quiet(model_file: Path, tmp_path: Path) -> None:
    rc, seen = _stderr_on_a_terminal(model_file, "-o", tmp_path / "a.onnx")
    assert rc == 0 and b"saving" in seen  # the spinner's last step, cleared when done
    rc, seen = _stderr_on_a_terminal(model_file, "-o", tmp_path / "b.onnx", "-q")
    assert rc == 0 and seen == b""


def test_layout_cleanup_on_by_default_and_switchable(tmp_path: Path) -> None:
    from models.graphs import convnext_block

    path = tmp_path / "block.onnx"
    onnx.save(convnext_block(layer_scale=True, residual=True), path)
    r = run(path, "--report", tmp_path / "on.json", "-q")
    assert r.returncode == 0, r.stderr
    on = json.loads((tmp_path / "on.json").read_text())["rewrite"]
    assert on["ops_rewritten"]["Transpose"] == 6 and "Transpose" not in on["ops_after"]
    assert on["cleanup"]["transposes_after"] == 0
    r = run(path, "--no-fold-transposes", "-o", tmp_path / "off.onnx", "--report", tmp_path / "off.json")
    assert r.returncode == 0, r.stderr
    assert "Transposes:" not in r.stdout
    off = json.loads((tmp_path / "off.json").read_text())["rewrite"]
    assert off["ops_after"]["Transpose"] == 6 and off["cleanup"] is None
    assert [n.op_type for n in onnx.load(tmp_path / "off.onnx").graph.node].count("Transpose") == 6


def test_incomplete_verification_exits_3_writes_nothing_and_says_why(tmp_path: Path) -> None:
    """Every value NaN whatever the input: the layers cannot be checked by numbers, so no PASSED."""
    from tests.verifier.test_verify import head_model

    path = tmp_path / "nan.onnx"
    onnx.save(head_model("nan"), path)
    r = run(path, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    assert r.returncode == 3, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("INCOMPLETE: 2 of 2 rewritten layers lack evidence") and "no finite values" in last
    assert "(--force writes it)" in last and not (tmp_path / "out.onnx").exists()
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "incomplete" and not data["ok"] and data["verify"]["verdict"] == "incomplete"
    assert "Layers lacking evidence" in r.stdout
    forced = run(path, "-o", tmp_path / "out.onnx", "--force")
    assert forced.returncode == 3 and (tmp_path / "out.onnx").exists()
    assert "wrote" in forced.stdout.strip().splitlines()[-1] and "anyway (--force)" in forced.stdout


def test_no_verify_is_done_not_passed(model_file: Path, tmp_path: Path) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "--no-verify")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith("DONE: rewrote 1 of 1 candidates, not verified")
    assert "PASSED" not in r.stdout


def test_seed_and_trials_reach_verification(model_file: Path, tmp_path: Path) -> None:
    reports = []
    for seed in ("3", "4"):
        r = run(
            model_file, "-o", tmp_path / f"o{seed}.onnx", "--seed", seed, "--trials", "3", "--report", tmp_path / f"r{seed}.json"
        )
        assert r.returncode == 0, r.stderr
        reports.append(json.loads((tmp_path / f"r{seed}.json").read_text())["verify"])
    assert [v["seed"] for v in reports] == [3, 4] and all(v["trials"] == 3 for v in reports)
    assert reports[0]["layers"][0]["output_bound_ratio"] != reports[1]["layers"][0]["output_bound_ratio"]


def test_verbose_lists_the_evidence_for_every_layer(tmp_path: Path) -> None:
    from models.graphs import convnext_block

    onnx.save(convnext_block(), tmp_path / "b.onnx")
    r = run(tmp_path / "b.onnx", "-o", tmp_path / "o.onnx", "-v")
    assert r.returncode == 0, r.stderr
    assert "Layers: 2 rewritten; structure proved for 2; numbers passed for 2" in r.stdout
    table = r.stdout[r.stdout.index("Layers\n") : r.stdout.index("Timings")]
    assert table.count("│ proved") == 2 and table.count("│ passed") == 2


@pytest.fixture
def windows_file(tmp_path: Path) -> Path:
    from tests.rewriter.layout.test_optimizer import window_block

    path = tmp_path / "windows.onnx"
    onnx.save(window_block(), path)
    return path


def _transposes(path: Path) -> int:
    return [n.op_type for n in onnx.load(path).graph.node].count("Transpose")


@pytest.fixture
def stuck_file(tmp_path: Path) -> Path:
    from tests.rewriter.layout.test_optimizer import stuck_pair

    path = tmp_path / "stuck.onnx"
    onnx.save(stuck_pair(), path)
    return path


def test_the_optimizer_declines_what_would_add_transposes(stuck_file: Path, tmp_path: Path) -> None:
    """Two Linears around an op no Transpose moves through (com.microsoft Gelu): converting either would add
    Transposes inside the model at the optimum, so the default declines both (layout_cost, with the number) and
    writes the model as it was; --layout keep-all converts them and writes more."""
    r = run(stuck_file, "-o", tmp_path / "o.onnx", "--report", tmp_path / "o.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Rewritten 0 of 2 candidates" in r.stdout
    assert "Layout optimal: Transposes 0 in the original -> 0 final; 2 layers declined for layout_cost" in r.stdout
    assert "skipped 2 x layout_cost" in r.stdout
    data = json.loads((tmp_path / "o.json").read_text())["rewrite"]
    assert data["layout"]["mode"] == "optimal" and data["layout"]["declined"] == 2
    layout = data["layout"]
    assert (layout["transposes_original"], layout["transposes_final"], layout["transposes_optimum"]) == (0, 0, 0)
    assert data["skipped_by_reason"] == {"layout_cost": 2}
    assert all("converting it would add 1 Transpose even with" in d["detail"] for d in data["decisions"])
    assert _transposes(tmp_path / "o.onnx") == 0

    r = run(stuck_file, "-o", tmp_path / "all.onnx", "--layout", "keep-all", "--report", tmp_path / "all.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED: rewrote 2 of 2 candidates")
    assert "Layout keep-all: Transposes 0 in the original -> 4 final (0 -> 2 of them at the model's inputs/outputs)" in r.stdout
    assert json.loads((tmp_path / "all.json").read_text())["rewrite"]["layout"]["mode"] == "keep-all"
    assert _transposes(tmp_path / "all.onnx") == 4


def test_the_optimizer_converts_windowed_layers_at_no_cost(windows_file: Path, tmp_path: Path) -> None:
    """MaxViT-style windows (the greedy policy declined both Linears): the partition and its reverse take the
    layout change in, the LayerNorm is written out channels-first, and both layers are converted, 2 -> 2."""
    r = run(windows_file, "-o", tmp_path / "w.onnx", "--report", tmp_path / "w.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED: rewrote 2 of 2 candidates")
    assert "Layout optimal: Transposes 2 in the original -> 2 final; 1 LayerNorm written out channels-first" in r.stdout
    assert _transposes(tmp_path / "w.onnx") == 2


def test_dry_run_and_verbose_show_the_policy_per_candidate(stuck_file: Path, tmp_path: Path) -> None:
    before = files(tmp_path)
    r = run(stuck_file, "--dry-run")
    assert r.returncode == 0, r.stderr
    table = r.stdout[r.stdout.index("Candidates") :]
    assert table.count("decline (layout)") == 2
    assert r.stdout.strip().splitlines()[-1] == (
        "DRY RUN: 0 of 2 candidates would be rewritten (2 declined for layout_cost); nothing written"
    )
    assert files(tmp_path) == before
    r = run(stuck_file, "-o", tmp_path / "v.onnx", "--layout", "keep-all", "-v")
    assert r.returncode == 0, r.stderr
    assert "Candidates" in r.stdout and r.stdout.count("rewrite (matmul_add_to_conv)") == 2


def test_layout_help_and_bad_combinations(windows_file: Path, tmp_path: Path) -> None:
    r = run("--help")
    assert r.returncode == 0 and "--layout {optimal,keep-all,never-worse,nchw}" in r.stdout and "layout_cost" in r.stdout
    r = run(windows_file, "-o", tmp_path / "o.onnx", "--no-fold-transposes", "--layout", "optimal")
    assert r.returncode == 2 and not (tmp_path / "o.onnx").exists()
    assert r.stderr.strip().splitlines() == [
        "convert: error: layout optimal needs the Transpose cleanup; without it (--no-fold-transposes) use keep-all"
    ]
    r = run(windows_file, "--dry-run", "--layout", "tidy")
    assert r.returncode == 2 and "invalid choice: 'tidy'" in r.stderr


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    from tests.rewriter.rules.test_matmul_tokens_to_conv import transformer_block

    path = tmp_path / "block.onnx"
    onnx.save(transformer_block(), path)
    return path


def test_without_tokens_rank3_layers_are_declined_and_the_graph_is_unchanged(tokens_file: Path, tmp_path: Path) -> None:
    r = run(tokens_file, "-o", tmp_path / "plain.onnx", "--report", tmp_path / "plain.json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "plain.json").read_text())["rewrite"]
    assert [(d["rule"], d["reason"]) for d in data["decisions"]] == [("matmul_add_to_conv", "rank_not_4")] * 2
    assert onnx.load(tmp_path / "plain.onnx").graph.SerializeToString() == onnx.load(tokens_file).graph.SerializeToString()


def test_tokens_flag_rewrites_rank3_layers(tokens_file: Path, tmp_path: Path) -> None:
    r = run("--help")
    assert "--tokens" in r.stdout and "[B, C, 1, S]" in r.stdout
    r = run(tokens_file, "-o", tmp_path / "t.onnx", "--tokens", "--no-verify", "--report", tmp_path / "t.json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "t.json").read_text())["rewrite"]
    assert [(d["rule"], d["rewritten"]) for d in data["decisions"]] == [("matmul_tokens_to_conv", True)] * 2
    assert data["layout"]["mode"] == "optimal"  # one default, with or without --tokens
    ops = [n.op_type for n in onnx.load(tmp_path / "t.onnx").graph.node]
    assert ops.count("Conv") == 2 and "MatMul" not in ops and ops.count("Transpose") == 2
    r = run(tokens_file, "--tokens", "--dry-run", "--layout", "nchw", "--report", "-")
    assert r.returncode == 0 and json.loads(r.stdout)["rewrite"]["layout"]["mode"] == "optimal"  # the older name
