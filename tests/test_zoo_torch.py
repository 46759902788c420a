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
``convert --tokens`` does (layout nchw): every Linear on a rank-3 token sequence with a constant weight
is rewritten, MultiheadAttention's out_proj sandwich too, and the outputs match the original's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

import converter
from converter.report import ConvertReport
from models.torch_exports import LinearLayer, linear_layers, sandwich_linears, unmet
from models.zoo import TORCH_EXTRA, TORCH_ZOO, build, torch_missing

pytestmark = pytest.mark.zoo
# Each entry's tests, slow and skipped without the extra.
NAMES = [
    pytest.param(n, marks=[pytest.mark.slow, pytest.mark.skipif(bool(torch_missing()), reason=TORCH_EXTRA)]) for n in TORCH_ZOO
]


def command_layout(tokens: bool = False) -> dict[str, object]:
    """The default layout mode (the acceptance's "default result"), the same for the command and the API;
    with --tokens the command's default is nchw (options.RewriteOptions.mode)."""
    if tokens:
        return {"layout": None, "tokens": True}
    return {"layout": converter.DEFAULT_LAYOUT}


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
        rewritten = {d.node for d in c.report.rewrite.decisions if d.rewritten}
        assert [s for s in c.sandwiches if s not in rewritten] == []
        assert c.report.rewrite.rewritten == entry.expected_rewrites


@pytest.mark.parametrize("name", NAMES)
def test_constant_biases_are_folded_identity_fed_ones_too(name: str, converted: Callable[[str], Converted]) -> None:
    c, entry = converted(name), TORCH_ZOO[name]
    assert unmet(c.layers, c.report.rewrite.decisions, entry.allowed_declines, tokens=entry.tokens)["bias_not_folded"] == []


# Token entries that end with more Transposes than they had (measured; benchmarks/torch_zoo.py counts them).
# ViT, DeiT and the dynamo TransformerEncoder do not: the cleanup folds attention's Reshape/Transpose chains
# (fold_rearranges.py).
MORE_TRANSPOSES = {
    "timm_mixer_s16": "--tokens carries Mixer's LayerNorms into the channel axis (nchw): 17 -> 18 Transposes",
    "torch_encoder_dynbatch_ts": "TorchScript's nn.TransformerEncoder: the qkv split's Reshape target is computed and "
    "shape inference leaves two of its dims unknown, so that chain does not fold: 16 -> 22 Transposes",
}


@pytest.mark.parametrize("name", NAMES)
def test_no_more_transposes_than_the_original(name: str, converted: Callable[[str], Converted]) -> None:
    more = next((why for prefix, why in MORE_TRANSPOSES.items() if name.startswith(prefix)), None)
    if TORCH_ZOO[name].tokens and more:
        pytest.skip(more)
    rw = converted(name).report.rewrite
    before, after = rw.ops_before.get("Transpose", 0), rw.ops_after.get("Transpose", 0)
    assert after <= before, f"Transposes {before} -> {after} (right after the rules: {rw.ops_rewritten.get('Transpose', 0)})"


def test_torch_zoo_names_the_extra() -> None:
    """What a user without torch is told (the skip reason above, and `python -m models.zoo --torch`); runs without torch."""
    assert TORCH_EXTRA == "needs the [torch] extra: pip install -e .[torch]"
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
