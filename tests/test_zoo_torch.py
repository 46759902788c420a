"""The PyTorch zoo (models/zoo.py's TORCH_ZOO): torchvision and timm models exported by both of torch's
exporters, converted end to end (pytest -m zoo).

Needs the [torch] extra (pip install -e .[torch]); without it every test here skips, saying so. Each
entry is exported on first use into a session cache (tens of seconds for the large ones) and
converted once; the tests split the acceptance of issue 12 so that each criterion passes or fails on
its own: every Linear on a rank-4 tensor with a constant weight is rewritten (or declined with a
reason the entry lists), each foldable constant bias, also one read through an Identity, is folded
into its Conv, verification passes, and the default result has at most as many Transposes as the
original. "Default" is what the `convert` command does without options (its layout mode, when the
converter has layout modes; the API's default may differ).

Token entries (``entry.tokens``: ViT, DeiT, Mixer, nn.TransformerEncoder; issue 13) are converted as
``convert --tokens`` does: every Linear on a rank-3 token sequence with a constant weight is rewritten (or
declined with a reason the entry lists), MultiheadAttention's out_proj sandwich too, and the outputs match
the original's. No entry ends with more Transposes than the original (issue 21).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import converter
import models.zoo as zoo
from converter.report import ConvertReport
from models.torch_exports import LinearLayer, linear_layers, sandwich_linears, unmet
from models.zoo import TORCH_EXTRA, TORCH_ZOO, build, torch_missing

pytestmark = pytest.mark.zoo
# Each entry's tests, slow and skipped without the extra.
NAMES = [
    pytest.param(n, marks=[pytest.mark.slow, pytest.mark.skipif(bool(torch_missing()), reason=TORCH_EXTRA)]) for n in TORCH_ZOO
]


def command_layout(tokens: bool = False) -> dict[str, object]:
    """The default layout mode (the acceptance's "default result"), the same for the command and the API."""
    return {"layout": converter.DEFAULT_LAYOUT, "tokens": tokens}


@dataclass
class Converted:
    layers: list[LinearLayer]
    report: ConvertReport
    sandwiches: list[str]  # Gemm / MatMul nodes between Reshapes with a constant weight (token entries count them)


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Converted]:
    cache = tmp_path_factory.mktemp("torch-zoo")
    done: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in done:
            entry = TORCH_ZOO[name]
            source = build(name, cache)
            model = converter.load(source)
            layers, sandwiches = linear_layers(model), sandwich_linears(model)
            report = converter.convert(
                source,
                cache / f"{name}_conv.onnx",
                input_shapes=entry.input_shapes or None,
                **command_layout(entry.tokens),  # type: ignore[arg-type]
            )
            done[name] = Converted(layers, report, sandwiches)
        return done[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_export_has_the_expected_linears(name: str, converted: Callable[[str], Converted]) -> None:
    c, entry = converted(name), TORCH_ZOO[name]
    if entry.tokens:
        assert sum(x.token_candidate for x in c.layers) + len(c.sandwiches) == entry.expected_rewrites
    else:
        assert sum(x.candidate for x in c.layers) == entry.expected_rewrites


@pytest.mark.parametrize("name", NAMES)
def test_verification_passes(name: str, converted: Callable[[str], Converted]) -> None:
    report = converted(name).report
    assert report.verify is not None
    assert report.verify.interface_problems == []
    assert report.verify.passed, (report.verify.verdict, report.verify.to_dict())
    assert report.ok and report.written


@pytest.mark.parametrize("name", NAMES)
def test_every_rank4_linear_is_rewritten(name: str, converted: Callable[[str], Converted]) -> None:
    c, entry = converted(name), TORCH_ZOO[name]
    assert unmet(c.layers, c.report.rewrite.decisions, entry.allowed_declines, tokens=entry.tokens)["not_rewritten"] == []
    if entry.tokens:  # the sandwiches (out_proj) too
        decisions = c.report.rewrite.decisions
        settled = {d.node for d in decisions if d.rewritten or d.reason in entry.allowed_declines}
        assert [s for s in c.sandwiches if s not in settled] == []
        declined = sum(d.reason in entry.allowed_declines for d in decisions)
        assert c.report.rewrite.rewritten + declined == entry.expected_rewrites


@pytest.mark.parametrize("name", NAMES)
def test_constant_biases_are_folded_identity_fed_ones_too(name: str, converted: Callable[[str], Converted]) -> None:
    c, entry = converted(name), TORCH_ZOO[name]
    assert unmet(c.layers, c.report.rewrite.decisions, entry.allowed_declines, tokens=entry.tokens)["bias_not_folded"] == []


@pytest.mark.parametrize("name", NAMES)
def test_no_more_transposes_than_the_original(name: str, converted: Callable[[str], Converted]) -> None:
    """Never more Transposes inside the model; any more in all sit at its edge (between an input and the first op
    that cares about layout, or the last one and an output), where feeding the model in NCHW removes them
    (docs/layout.md: nn.TransformerEncoder's dynamo export under --tokens, 16 -> 18 with 15 inside both times)."""
    rw = converted(name).report.rewrite
    before, after = rw.ops_before.get("Transpose", 0), rw.ops_after.get("Transpose", 0)
    lay = rw.layout
    inside_before, inside_after = lay.transposes_original - lay.edge_original, lay.transposes_final - lay.edge_final
    assert inside_after <= inside_before, f"inside {inside_before} -> {inside_after} (in all {before} -> {after})"
    assert after - before <= max(0, lay.edge_final - lay.edge_original), f"Transposes {before} -> {after}, edge {lay}"


def test_without_torch_the_user_is_told_which_extra_installs_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What a user without torch is told, with torch hidden from the import system (this runs with or without it):
    the torch zoo's tests skip naming the extra, ``python -m models.zoo --torch`` refuses naming it and what is
    missing, and that extra (pyproject.toml) is what installs the missing packages."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return None if name.split(".")[0] in zoo.TORCH_PACKAGES else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert torch_missing() == list(zoo.TORCH_PACKAGES)
    with pytest.raises(SystemExit) as stopped:
        zoo.main(["--torch", "--cache", str(tmp_path)])
    assert stopped.value.code == 2 and list(tmp_path.iterdir()) == []  # refused before building anything
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"error: {TORCH_EXTRA} (missing: {', '.join(zoo.TORCH_PACKAGES)})"), error
    # Every entry's tests skip with that line (the reason pytest prints).
    reasons = [m.kwargs["reason"] for param in NAMES for m in param.marks if m.name == "skipif"]
    assert len(reasons) == len(TORCH_ZOO) and set(reasons) == {TORCH_EXTRA}
    # The extra it names exists and holds every package the zoo needs.
    extra = re.search(r"pip install -e \.\[(\w+)\]", TORCH_EXTRA)
    assert extra is not None, TORCH_EXTRA
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()  # (tomllib: Python 3.11+)
    line = re.search(rf"^{extra.group(1)} = \[(.*)\]$", pyproject.split("[project.optional-dependencies]")[1], re.M)
    assert line is not None, f"pyproject.toml has no extra {extra.group(1)!r}"
    required = {re.split(r"[<>=!~ \[]", r.strip().strip('"'), maxsplit=1)[0] for r in line.group(1).split(",")}
    assert set(zoo.TORCH_PACKAGES) <= required, required


def test_the_torch_zoo_holds_the_entries_its_acceptance_names() -> None:
    assert all(entry.torch and name.endswith(("_ts", "_dynamo")) for name, entry in TORCH_ZOO.items())
    assert {n.rsplit("_", 1)[0] for n in TORCH_ZOO} >= {
        "tv_convnext_tiny_dynbatch",
        "tv_convnext_tiny_dynamic",
        "tv_swin_t_dynbatch",
        "timm_convnext_tiny_dynbatch",
        "timm_edgenext_xx_small_dynbatch",
        "timm_mambaout_femto_dynbatch",
        "timm_vit_tiny_dynbatch",
        "timm_deit_tiny_dynbatch",
        "timm_mixer_s16_dynbatch",
        "torch_encoder_dynbatch",
    }
    assert {n.rsplit("_", 1)[0] for n, e in TORCH_ZOO.items() if e.tokens} == {
        "timm_vit_tiny_dynbatch",
        "timm_deit_tiny_dynbatch",
        "timm_mixer_s16_dynbatch",
        "torch_encoder_dynbatch",
    }
