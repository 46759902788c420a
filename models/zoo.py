"""The model zoo: one entry per model, how to build it, its input shapes, how many rewrites to expect.

Nothing is downloaded: Keras applications are built with ``weights=None`` (random weights; the
rewrite's correctness does not depend on their values) and exported as SavedModels, the other
graphs are written with onnx.helper in the shapes exporters produce.

``TORCH_ZOO`` holds real PyTorch exports: torchvision and timm models with ``torch.manual_seed(0)``
weights, each written by both of torch's exporters (TorchScript, ``dynamo=False``, and dynamo,
``dynamo=True``) through ``models/torch_exports.py``. Building them needs the ``[torch]`` extra
(``pip install -e .[torch]``); without it ``torch_missing()`` says what is missing and nothing else
changes (``ZOO`` and ``models.report`` never import torch).

    python -m models.zoo [NAME ...] [--cache DIR]     build into the cache (default: .zoo-cache)
    python -m models.zoo --torch                       build every PyTorch export instead (needs the [torch] extra)
    python -m models.report                            convert everything and print the table
    python -m benchmarks.torch_zoo                     the PyTorch zoo's table
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from models import graphs

DEFAULT_CACHE = Path(".zoo-cache")


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    build: Callable[[Path], Path]  # writes the model under the given folder, returns its path
    expected_rewrites: int
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # concrete shapes for symbolic inputs
    inputs: Callable[[], dict] | None = None  # explicit feeds, where random ones would not exercise it
    tensorflow: bool = False
    torch: bool = False  # exported by torch (models/torch_exports.py): needs the [torch] extra
    # Reasons a Linear on a rank-4 tensor with a constant weight may be declined with (every other one
    # must be rewritten): the layout policy's refusal where a layer's Transposes cannot be absorbed.
    allowed_declines: frozenset[str] = frozenset()
    # A token model (issue 13): converted with tokens=True (``--tokens``, under the default layout), and
    # expected_rewrites counts its Linears on rank-3 token sequences with a constant weight instead.
    tokens: bool = False


def _onnx(builder: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        onnx.save(builder(), path)
        return path

    return build


def _keras(app: str, shape: tuple[int, int, int]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import keras

        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, app)(weights=None, input_shape=shape)
        path = folder / "saved_model"
        model.export(str(path), verbose=False)
        return path

    return build


def _torch(model: str, exporter: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        from models.torch_exports import export_model

        return export_model(model, exporter, folder / "model.onnx")

    return build


TORCH_PACKAGES = ("torch", "torchvision", "timm", "onnxscript")
TORCH_EXTRA = "needs the [torch] extra: pip install -e .[torch]"


def torch_missing() -> list[str]:
    """The packages of the [torch] extra that are not installed (empty: the torch zoo can be built)."""
    return [p for p in TORCH_PACKAGES if importlib.util.find_spec(p) is None]


def _if_inputs() -> dict:
    import numpy as np

    return {"cond": np.array(True), "x": np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)}


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            "convnext_tiny",
            "Keras ConvNeXtTiny, 64x48 (18 blocks, 36 pointwise dense layers)",
            _keras("ConvNeXtTiny", (64, 48, 3)),
            36,
            tensorflow=True,
        ),
        ZooModel("mobilenet_v2", "Keras MobileNetV2, 64x48", _keras("MobileNetV2", (64, 48, 3)), 0, tensorflow=True),
        ZooModel(
            "mobilenet_v3_small", "Keras MobileNetV3Small, 64x48", _keras("MobileNetV3Small", (64, 48, 3)), 0, tensorflow=True
        ),
        ZooModel("efficientnet_b0", "Keras EfficientNetB0, 64x48", _keras("EfficientNetB0", (64, 48, 3)), 0, tensorflow=True),
        ZooModel("resnet50", "Keras ResNet50, 64x48", _keras("ResNet50", (64, 48, 3)), 0, tensorflow=True),
        ZooModel(
            "pytorch_convnext_block",
            "PyTorch ConvNeXt block: permute, Linear, GELU, Linear, layer scale, permute, residual",
            _onnx(lambda: graphs.convnext_block(c=32, h=14, w=10)),
            2,
            {"x": [2, 32, 14, 10]},
        ),
        ZooModel(
            "convnext_stage_ln",
            "ConvNeXt stage as PyTorch exports it, with LayerNorm, C=96 @28x20",
            _onnx(lambda: graphs.convnext_stage(96, 28, 20, blocks=2, layernorm=True)),
            4,
        ),
        ZooModel(
            "mlp_mixer_block",
            "MLP-Mixer-style block on an NHWC tensor (token + channel MLPs)",
            _onnx(graphs.mixer_block),
            4,  # the optimizer's layout costs no Transpose inside the graph; 2 sit at the model's input and output
            {"x": [2, 6, 8, 12]},
        ),
        ZooModel(
            "gemm_sandwich",
            "Reshape -> Gemm -> Reshape as onnxsim/onnxslim leave a 4D MatMul + Add",
            _onnx(lambda: graphs.reshape_sandwich(core="Gemm", target="static", batch=2, bias="gemm")),
            1,
        ),
        ZooModel(
            "tensordot_runtime",
            "tf2onnx's Tensordot with a run-time target shape and a bias Add",
            _onnx(lambda: graphs.reshape_sandwich(target="runtime")),
            1,
            {"x": [2, 3, 4, 6]},
        ),
        ZooModel("dense_in_if", "dense layers inside both branches of an If", _onnx(graphs.dense_in_if), 2, inputs=_if_inputs),
        ZooModel("vgg_style", "VGG-style CNN with a Flatten + Gemm head (nothing to rewrite)", _onnx(graphs.vgg_style), 0),
        ZooModel(
            "resnet_style",
            "ResNet-style CNN with BatchNormalization (nothing to rewrite)",
            _onnx(graphs.resnet_style),
            0,
            {"x": [2, 3, 20, 28]},
        ),
        ZooModel(
            "old_ir_vgg",
            "IR 3 graph listing its initializers as graph inputs (nothing to rewrite)",
            _onnx(lambda: graphs.vgg_style(ir_version=3)),
            0,
        ),
    ]
}


# What the torch zoo is about: Linear layers on NHWC (rank-4) tensors, from the exporters people use.
# expected_rewrites counts those with a constant weight, as models/torch_exports.py's linear_layers()
# reads them from the export. Every one is converted under the default layout (the optimizer chooses every
# tensor's layout for the whole graph: Swin's window partitions and EdgeNeXt's transposed attention take the
# layout change in).
_NHWC_64x96 = {"x": [2, 3, 64, 96]}
_TORCH_MODELS = (
    # (torch_exports model, description, Linears on rank 4 with a constant weight, input shapes, allowed declines)
    ("tv_convnext_tiny_dynbatch", "torchvision convnext_tiny, dynamic N, 64x96", 36, _NHWC_64x96, ()),
    ("tv_convnext_tiny_dynamic", "torchvision convnext_tiny, dynamic N, H, W (run at 2x3x64x96)", 36, _NHWC_64x96, ()),
    ("tv_swin_t_dynbatch", "torchvision swin_t, dynamic N, 224x320", 27, {"x": [2, 3, 224, 320]}, ()),
    ("timm_convnext_tiny_dynbatch", "timm convnext_tiny (nn.Linear MLPs), dynamic N, 64x96", 36, _NHWC_64x96, ()),
    ("timm_edgenext_xx_small_dynbatch", "timm edgenext_xx_small, dynamic N, 64x96", 24, _NHWC_64x96, ()),
    ("timm_mambaout_femto_dynbatch", "timm mambaout_femto, dynamic N, 64x96", 36, _NHWC_64x96, ()),
)
_EXPORTER_NAMES = {"ts": "TorchScript exporter (dynamo=False)", "dynamo": "dynamo exporter (dynamo=True)"}
# Token models: Linears on [B, S, C] (rank 3), rewritten with tokens=True. The count is every rank-3 Linear
# with a constant weight: MatMuls on rank 3 (models/torch_exports.py's linear_layers) and the Reshape sandwiches
# around a Gemm that MultiheadAttention's out_proj is exported as (sandwich_linears).
_TOKEN_MODELS = (
    ("timm_vit_tiny_dynbatch", "timm vit_tiny (img 64x96: 24 tokens + class token), dynamic N", 48, _NHWC_64x96, ()),
    ("timm_deit_tiny_dynbatch", "timm deit_tiny (img 64x96), dynamic N", 48, _NHWC_64x96, ()),
    # All 32 convert, the token-mixing MLPs (a Linear over the tokens, on [B, C, S]) included, at no more Transposes.
    ("timm_mixer_s16_dynbatch", "timm mixer_s16 (img 64x96: 24 tokens), dynamic N", 32, _NHWC_64x96, ("layout_cost",)),
    # The optimum is not carried into this graph (its qkv split reads the tokens through Gathers the cleanup does
    # not move): the safety net keeps the original and declines every layer.
    (
        "torch_encoder_dynbatch",
        "torch.nn.TransformerEncoder (batch_first, 2 layers, d_model 32), dynamic N",
        8,
        {"x": [2, 7, 32]},
        ("layout_cost",),
    ),
)

TORCH_ZOO: dict[str, ZooModel] = {
    f"{model}_{exporter}": ZooModel(
        f"{model}_{exporter}",
        f"{description}; {_EXPORTER_NAMES[exporter]}",
        _torch(model, exporter),
        linears,
        shapes,
        torch=True,
        allowed_declines=frozenset(allowed),
    )
    for model, description, linears, shapes, allowed in _TORCH_MODELS
    for exporter in ("ts", "dynamo")
} | {
    f"{model}_{exporter}": ZooModel(
        f"{model}_{exporter}",
        f"{description}; {_EXPORTER_NAMES[exporter]}; --tokens",
        _torch(model, exporter),
        linears,
        shapes,
        torch=True,
        tokens=True,
        allowed_declines=frozenset(allowed),
    )
    for model, description, linears, shapes, allowed in _TOKEN_MODELS
    for exporter in ("ts", "dynamo")
}


def build(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The model's path in the cache, building it on first use."""
    entry = ZOO[name] if name in ZOO else TORCH_ZOO[name]
    folder = cache / name
    done = folder / ".built"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path = entry.build(folder)
        done.write_text(path.name)
    return folder / done.read_text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build zoo models into a cache folder.")
    p.add_argument("names", nargs="*", choices=[[], *ZOO, *TORCH_ZOO], help="models to build (default: all of ZOO)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--torch", action="store_true", help="build every PyTorch export (TORCH_ZOO) instead of ZOO")
    args = p.parse_args(argv)
    names = args.names or list(TORCH_ZOO if args.torch else ZOO)
    if any(n in TORCH_ZOO for n in names) and torch_missing():
        p.error(f"{TORCH_EXTRA} (missing: {', '.join(torch_missing())})")
    for name in names:
        print(f"{name}: {build(name, args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
