"""The committed PyTorch exports (models/fixtures/, made by models/torch_exports.py): converted end to end.

No torch needed: the files are committed. Each is converted at N=2 and H != W and judged by the
acceptance of issue 12: every Linear on a rank-4 tensor with a constant weight is rewritten (or
declined with a reason its row lists), weights and biases that TorchScript reads through an Identity
(its deduplicated tensors) are rewritten and folded, and the Identity nodes that fed only them are
gone, verification passes, and the default result has at most as many Transposes as the original.
The table below also pins what each file holds, so a re-export that changes it shows up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

import converter
from converter.report import ConvertReport
from models.torch_exports import LinearLayer, linear_layers, unmet

FIXTURES = Path(__file__).resolve().parent.parent / "models" / "fixtures"
DYNAMIC = {"x": [2, 3, 64, 96]}  # N=2, H != W (and H, W multiples of every fixture's total stride)


@dataclass(frozen=True)
class Fixture:
    linears: int  # Linears on a rank-4 tensor with a constant weight (the candidates)
    identity_weights: int  # of them, weights read through an Identity
    identity_biases: int  # of them, foldable biases read through an Identity
    bias_first: int  # of them, biases added as Add(bias, y) (TorchScript's order)
    input_shapes: dict[str, list[int]] | None = None  # for symbolic inputs
    allowed_declines: tuple[str, ...] = ()  # reasons a candidate may be declined with


# Every Linear is rewritten under the default layout: ConvNeXt's, MambaOut's (Split/Concat between them), the plain
# ones, and Swin's (the optimizer's layout carries through its window partitions).
TABLE: dict[str, Fixture] = {
    "torch_convnext_small_dynamic_ts.onnx": Fixture(4, 0, 2, 4, DYNAMIC),
    "torch_convnext_small_dynamic_dynamo.onnx": Fixture(4, 0, 0, 0, DYNAMIC),
    "torch_convnext_small_trained_ts.onnx": Fixture(4, 0, 0, 4, DYNAMIC),
    "torch_convnext_small_trained_dynamo.onnx": Fixture(4, 0, 0, 0, DYNAMIC),
    "torch_equal_linears_dynamic_ts.onnx": Fixture(3, 1, 1, 3, DYNAMIC),
    "torch_equal_linears_dynamic_dynamo.onnx": Fixture(2, 0, 0, 0, DYNAMIC),
    "torch_mambaout_small_dynamic_ts.onnx": Fixture(4, 0, 2, 4, DYNAMIC),
    "torch_mambaout_small_dynamic_dynamo.onnx": Fixture(4, 0, 0, 0, DYNAMIC),
    "torch_swin_small_static_ts.onnx": Fixture(7, 0, 4, 6, None),
    "torch_swin_small_static_dynamo.onnx": Fixture(7, 0, 0, 0, None),
}
NAMES = sorted(TABLE)


@dataclass
class Converted:
    original: onnx.ModelProto
    layers: list[LinearLayer]
    report: ConvertReport
    output: Path


def layout_option(layout: str | None) -> dict[str, str]:
    """``layout=`` for converter.convert. None: the default (the acceptance's "default result")."""
    return {"layout": layout or converter.DEFAULT_LAYOUT}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Converted]:
    """Converts a fixture (once per layout mode; None: the command's default) at N=2, H != W."""
    folder = tmp_path_factory.mktemp("torch-fixtures")
    done: dict[tuple[str, str | None], Converted] = {}

    def get(name: str, layout: str | None = None) -> Converted:
        if (name, layout) not in done:
            source = FIXTURES / name
            original = converter.load(source)
            out = folder / name.replace(".onnx", f"_{layout or 'default'}.onnx")
            report = converter.convert(source, out, input_shapes=TABLE[name].input_shapes, **layout_option(layout))
            done[name, layout] = Converted(original, linear_layers(original), report, out)
        return done[name, layout]

    return get


def identity_feeders(c: Converted) -> tuple[set[str], set[str]]:
    """The Identity outputs that are read only as a candidate's weight or foldable bias: all of them, and
    those whose reader was rewritten (which must be gone from the result)."""
    graph = c.original.graph
    rewritten = {d.node for d in c.report.rewrite.decisions if d.rewritten}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    operand_of: dict[str, str] = {}  # tensor -> the candidate reading it as weight or bias
    for layer in c.layers:
        if not layer.candidate:
            continue
        node = next(n for n in graph.node if (n.name or f"MatMul({n.output[0]})") == layer.node)
        operand_of[node.input[1]] = layer.node
        if layer.bias is not None and layer.bias_foldable:
            (add,) = [n for n in readers[layer.output] if n.op_type == "Add"]
            operand_of[next(i for i in add.input if i != layer.output)] = layer.node
    feeders = {
        n.output[0]
        for n in graph.node
        if n.op_type == "Identity" and n.output[0] in operand_of and len(readers.get(n.output[0], [])) == 1
    }
    return feeders, {f for f in feeders if operand_of[f] in rewritten}


def test_every_fixture_is_in_the_table_and_the_readme() -> None:
    files = sorted(p.name for p in FIXTURES.glob("torch_*.onnx"))  # keras_*: tests/test_keras_fixture.py
    assert files == NAMES
    readme = (FIXTURES / "README.md").read_text()
    assert [n for n in NAMES if f"`{n}`" not in readme] == []
    assert all((FIXTURES / n).stat().st_size < 1_000_000 for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_holds_what_the_table_says(name: str) -> None:
    layers = [x for x in linear_layers(onnx.load(FIXTURES / name)) if x.candidate]
    want = TABLE[name]
    got = Fixture(
        len(layers),
        sum(x.weight == "identity" for x in layers),
        sum(x.bias == "identity" and x.bias_foldable for x in layers),
        sum(x.bias_first for x in layers),
        want.input_shapes,
        want.allowed_declines,
    )
    assert got == want


@pytest.mark.parametrize("name", NAMES)
def test_verifies_at_n2_and_h_not_w(name: str, converted: Callable[..., Converted]) -> None:
    c = converted(name)
    v = c.report.verify
    assert v is not None
    (x,) = [i for i in v.inputs if i.name == "x"]
    n, _, h, w = x.shape
    assert n == 2 and h != w, x
    assert v.passed, (v.verdict, v.to_dict())
    assert c.report.ok and c.report.written


@pytest.mark.parametrize("name", NAMES)
def test_every_rank4_linear_is_rewritten(name: str, converted: Callable[..., Converted]) -> None:
    c = converted(name)
    assert unmet(c.layers, c.report.rewrite.decisions, TABLE[name].allowed_declines)["not_rewritten"] == []


@pytest.mark.parametrize("name", NAMES)
def test_constant_biases_are_folded_identity_fed_ones_too(name: str, converted: Callable[..., Converted]) -> None:
    c = converted(name)
    assert unmet(c.layers, c.report.rewrite.decisions, TABLE[name].allowed_declines)["bias_not_folded"] == []


WITH_IDENTITIES = [n for n in NAMES if TABLE[n].identity_weights or TABLE[n].identity_biases]


@pytest.mark.parametrize("name", WITH_IDENTITIES)
def test_identities_that_fed_rewritten_layers_are_gone(name: str, converted: Callable[..., Converted]) -> None:
    """An Identity that fed only a weight or bias of a rewritten layer has no reader left, so it is gone."""
    c = converted(name)
    feeders, of_rewritten = identity_feeders(c)
    assert feeders  # the file has such Identity nodes (the table says so)
    assert c.report.written, "not written (verification failed?)"
    left = {n.output[0] for n in onnx.load(c.output).graph.node if n.op_type == "Identity"}
    assert sorted(left & of_rewritten) == []


@pytest.mark.parametrize("name", WITH_IDENTITIES)
def test_identity_fed_weights_and_biases_are_rewritten_and_folded(name: str, converted: Callable[..., Converted]) -> None:
    """With every layer kept (layout keep-all: no layout policy in the way), each candidate is rewritten,
    its Identity-fed weight read through the Identity, its Identity-fed bias folded, and the Identity gone."""
    c = converted(name, "keep-all")
    assert unmet(c.layers, c.report.rewrite.decisions) == {"not_rewritten": [], "bias_not_folded": []}
    feeders, of_rewritten = identity_feeders(c)
    assert of_rewritten == feeders
    assert c.report.verify is not None and c.report.verify.passed, c.report.verify and c.report.verify.verdict
    left = {n.output[0] for n in onnx.load(c.output).graph.node if n.op_type == "Identity"}
    assert sorted(left & feeders) == []


@pytest.mark.parametrize("name", NAMES)
def test_no_more_transposes_than_the_original(name: str, converted: Callable[..., Converted]) -> None:
    rw = converted(name).report.rewrite
    before, after = rw.ops_before.get("Transpose", 0), rw.ops_after.get("Transpose", 0)
    assert after <= before, f"Transposes {before} -> {after} (right after the rules: {rw.ops_rewritten.get('Transpose', 0)})"
