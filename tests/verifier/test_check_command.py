"""``convert ORIGINAL --check CANDIDATE`` through the real command (issue 22, item 4), and the real command on the
classes of correct conversions that once ended INCOMPLETE or exit 2 (item 2).

A candidate is a rewritten model someone else wrote: here this tool's own result, edited by tests/bugs.py's
``EQUIVALENT`` edits (another tool's forms: operands of an Add swapped, a Conv's bias as an Add of its own,
``dilations`` on a 1x1 Conv, a default attribute written out, an Identity inserted, a Conv renamed), which the
check must pass, and by its ``WRONG`` edits and the model-level changes (an opset, a function's body), which it
must never pass. Nothing is ever written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from tests.bugs import EQUIVALENT, WRONG
from tests.conftest import Dense, dense_model, run_command, with_output_shapes
from tests.verifier.test_verify import BUG_MODELS

FIXTURES = Path(__file__).parents[2] / "models" / "fixtures"


def _candidate(folder: Path, make: str = "convnext_block") -> tuple[Path, onnx.ModelProto, converter.RewriteResult]:
    model = BUG_MODELS[make]()
    onnx.save(model, folder / "original.onnx")
    return folder / "original.onnx", model, converter.rewrite(model, layout="keep-all")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_correct_candidate_passes_with_the_layers_found_and_nothing_written(tmp_path: Path) -> None:
    original, _, result = _candidate(tmp_path)
    candidate = _save(result.model, tmp_path / "candidate.onnx")
    before = _listing(tmp_path)
    r = run_command(original, "--check", candidate, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("PASSED:") and "candidate.onnx computes what" in last and "nothing written" in last
    assert f"{len(result.report.layers)} rewritten layers found" in last
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "PASSED" and not report["written"] and report["output"] == str(candidate)
    assert {d["layer"]["conv"] for d in report["rewrite"]["decisions"]} == {c.conv for c in result.report.layers}
    assert _listing(tmp_path) == {**before, "r.json": _listing(tmp_path)["r.json"]}


def _edited_model(edit: str) -> onnx.ModelProto:
    """The model an edit is tried on: the ConvNeXt block, or one that has the place the edit needs (a Relu, a node on
    constants, a Conv of the original's own, an integer layer)."""
    from tests.verifier import test_check_forms as forms

    makers = {
        "relu_repeated": BUG_MODELS["saturated"],
        "constant_renamed": lambda: forms._on_constants_model("exp"),
        "constant_renamed_changed": lambda: forms._on_constants_model("gather"),
        "dilations_on_kept_1x1": forms._with_a_conv,
        "dilations_on_kept_kxk": lambda: forms._with_a_conv(kernel=3),
        "integer_weight_shifted": forms._qlinear,
        "integer_weight_shifted_alone": forms._qlinear,
        "default_changed": _with_leaky_relu,
    }
    return makers.get(edit, BUG_MODELS["convnext_block"])()


@pytest.mark.parametrize("edit", list(EQUIVALENT))
def test_an_equivalent_form_of_the_candidate_passes(tmp_path: Path, edit: str) -> None:
    model = _edited_model(edit)
    original = _save(model, tmp_path / "original.onnx")
    result = converter.rewrite(model, layout="keep-all")
    edited = onnx.ModelProto()
    edited.CopyFrom(result.model)
    assert EQUIVALENT[edit](edited, result.report.layers, np.random.default_rng(1))
    r = run_command(original, "--check", _save(edited, tmp_path / "candidate.onnx"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASSED:")


def _with_leaky_relu() -> onnx.ModelProto:
    """A dense layer, a LeakyRelu (its alpha a float attribute), another dense layer."""
    from models.graphs import Builder

    b = Builder(9)
    y = b.dense(b.op("LeakyRelu", b.dense("x", 6, 8), alpha=0.2), 8, 4)
    return b.model([("x", [2, 3, 5, 6])], [y])


@pytest.mark.parametrize("edit", list(WRONG))
def test_a_wrong_candidate_never_passes(tmp_path: Path, edit: str) -> None:
    model = _edited_model(edit)
    original = _save(model, tmp_path / "original.onnx")
    result = converter.rewrite(model, layout="keep-all")
    edited = onnx.ModelProto()
    edited.CopyFrom(result.model)
    assert WRONG[edit](edited, result.report.layers, np.random.default_rng(1))
    r = run_command(original, "--check", _save(edited, tmp_path / "candidate.onnx"))
    assert r.returncode in (1, 3), r.stdout + r.stderr
    assert "PASSED" not in r.stdout


@pytest.mark.parametrize("change", ["renamed", "missing"])
def test_a_candidate_without_one_of_the_outputs_fails_in_a_verdict(tmp_path: Path, change: str) -> None:
    """An output renamed, or left out: FAILED (exit 1) with the output named, not an internal error."""
    model = with_output_shapes(dense_model(Dense(fanout=True)))  # two outputs: y and side
    original = _save(model, tmp_path / "original.onnx")
    result = converter.rewrite(model, layout="keep-all")
    assert len(model.graph.output) == 2 and result.report.rewritten
    candidate = onnx.ModelProto()
    candidate.CopyFrom(result.model)
    last = candidate.graph.output[-1]
    if change == "renamed":
        producer = next(n for n in candidate.graph.node if last.name in n.output)
        producer.output[list(producer.output).index(last.name)] = last.name + "_renamed"
        last.name += "_renamed"
    else:
        candidate.graph.output.pop()
    r = run_command(original, "--check", _save(candidate, tmp_path / "candidate.onnx"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED:")


def test_a_candidate_in_another_opset_is_refused(tmp_path: Path) -> None:
    original, _, result = _candidate(tmp_path)
    result.model.opset_import[0].version += 1
    r = run_command(original, "--check", _save(result.model, tmp_path / "candidate.onnx"))
    assert r.returncode == 1 and "opset of domain 'ai.onnx'" in r.stdout


def test_the_original_against_itself_is_unchanged(tmp_path: Path) -> None:
    original, _, _ = _candidate(tmp_path)
    r = run_command(original, "--check", original)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith("UNCHANGED:")


@pytest.mark.parametrize("flag", [["-o", "x.onnx"], ["--dry-run"], ["--force"], ["--no-verify"]])
def test_check_writes_nothing_and_always_verifies(tmp_path: Path, flag: list[str]) -> None:
    original, _, result = _candidate(tmp_path)
    r = run_command(original, "--check", _save(result.model, tmp_path / "candidate.onnx"), *flag)
    assert r.returncode == 2 and "--check" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_check_refuses_a_report_over_a_model_and_a_missing_candidate(tmp_path: Path) -> None:
    original, _, result = _candidate(tmp_path)
    candidate = _save(result.model, tmp_path / "candidate.onnx")
    r = run_command(original, "--check", candidate, "--report", candidate)
    assert r.returncode == 2 and "candidate model" in r.stderr
    r = run_command(original, "--check", tmp_path / "missing.onnx")
    assert r.returncode == 2 and "missing.onnx" in r.stderr and "Traceback" not in r.stderr


def test_check_json_on_stdout(tmp_path: Path) -> None:
    original, _, result = _candidate(tmp_path)
    r = run_command(original, "--check", _save(result.model, tmp_path / "candidate.onnx"), "--report", "-")
    assert r.returncode == 0
    assert json.loads(r.stdout)["verification"] == "passed" and r.stderr.strip().startswith("PASSED:")


# -- item 2 through the real command: correct conversions of real exports end PASSED -------------------------------


@pytest.mark.parametrize("tokens", [[], ["--tokens"]])
def test_the_torchscript_swin_fixture_passes(tmp_path: Path, tokens: list[str]) -> None:
    """Its Pads read pads TorchScript computes from shapes: INCOMPLETE before the certificate evaluated them."""
    r = run_command(FIXTURES / "torch_swin_small_static_ts.onnx", "-o", tmp_path / "out.onnx", *tokens)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout.strip().splitlines()[-1] and (tmp_path / "out.onnx").exists()


def _decoder_with_cache() -> onnx.ModelProto:
    """A one-head attention step with a KV cache, as decoder exports write it: ``present = Concat(past, k)`` over
    ``past_sequence + sequence`` positions, and the mask over ``total_sequence`` added to the scores; onnxruntime
    runs it only when total_sequence = past_sequence + sequence."""
    from models.graphs import Builder

    b = Builder(4)
    q, k = b.dense("x", 8, 8), b.dense("x", 8, 8)
    present = b.op("Concat", "past", k, axis=1)
    scores = b.op("MatMul", q, b.op("Transpose", present, perm=[0, 2, 1]))
    masked = b.op("Add", scores, b.op("Unsqueeze", "mask", b.const(np.array([1]), np.int64)))
    out = b.op("MatMul", b.op("Softmax", masked, axis=-1), present)
    graph = onnx.helper.make_graph(
        b.nodes,
        "decoder",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "sequence", 8]),
            onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["batch", "total_sequence"]),
            onnx.helper.make_tensor_value_info("past", onnx.TensorProto.FLOAT, ["batch", "past_sequence", 8]),
        ],
        [
            onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["batch", "sequence", 8]),
            onnx.helper.make_tensor_value_info(present, onnx.TensorProto.FLOAT, ["batch", "total_sequence", 8]),
        ],
        b.inits,
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_decoder_with_a_kv_cache_is_fed_what_it_accepts(tmp_path: Path) -> None:
    """Distinct small values for the three lengths made onnxruntime refuse the model (exit 2); the relation the
    graph states (the present cache and the mask) gives total_sequence = past_sequence + sequence."""
    onnx.save(_decoder_with_cache(), tmp_path / "m.onnx")
    for extra in ([], ["--tokens"]):
        r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        dims = {d["name"]: d for d in json.loads((tmp_path / "r.json").read_text())["verify"]["dims"]}
        assert dims["total_sequence"]["value"] == dims["past_sequence"]["value"] + dims["sequence"]["value"]
        assert "as the graph relates them" in dims["total_sequence"]["why"]


def _pyramid(blocks: int = 4) -> onnx.ModelProto:
    """A pyramid transformer's stage with dynamic H and W: a stride-4 stem, then blocks whose keys and values are
    reduced by a stride-8 conv (the queries keep the resolution): the total stride is 4, not 4 * 8 ** blocks."""
    from models.graphs import Builder

    b = Builder(6)
    c = 8
    w = lambda *shape: b.const(np.random.default_rng(len(b.inits)).standard_normal(shape) * 0.1)  # noqa: E731
    x = b.op("Conv", "x", w(c, 3, 4, 4), strides=[4, 4], kernel_shape=[4, 4])
    for _ in range(blocks):
        seq = b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 3, 1]), b.const(np.array([0, -1, c]), np.int64))
        kv_map = b.op("Conv", x, w(c, c, 8, 8), strides=[8, 8], kernel_shape=[8, 8])
        kv = b.op("Reshape", b.op("Transpose", kv_map, perm=[0, 2, 3, 1]), b.const(np.array([0, -1, c]), np.int64))
        attn = b.op("Softmax", b.op("MatMul", b.dense(seq, c, c), b.op("Transpose", kv, perm=[0, 2, 1])), axis=-1)
        mixed = b.op("Add", seq, b.dense(b.op("MatMul", attn, kv), c, c))
        x = b.op("Reshape", b.op("Transpose", mixed, perm=[0, 2, 1]), b.op("Shape", x))
    return b.model([("x", ["N", 3, "H", "W"])], [x])


def test_a_pyramid_transformer_with_dynamic_h_and_w_verifies_without_input_shape(tmp_path: Path) -> None:
    """The strided key/value convs no longer compound into the total stride (it was 4096: inputs of 9 GiB)."""
    from converter.verifier.inputs import total_stride

    model = _pyramid()
    assert total_stride(model) == 32
    onnx.save(model, tmp_path / "m.onnx")
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--tokens", "--layout", "keep-all")
    assert r.returncode == 0, r.stdout + r.stderr
