"""The model zoo: one entry per model, how to build it, its input shapes, how many rewrites to expect.

Nothing is downloaded: Keras applications are built with ``weights=None`` (random weights; the
rewrite's correctness does not depend on their values) and exported as SavedModels, the other
graphs are written with onnx.helper in the shapes exporters produce.

    python -m models.zoo [NAME ...] [--cache DIR]     build into the cache (default: .zoo-cache)
    python -m models.report                            convert everything and print the table
"""

from __future__ import annotations

import argparse
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
            4,
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


def build(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The model's path in the cache, building it on first use."""
    entry = ZOO[name]
    folder = cache / name
    done = folder / ".built"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path = entry.build(folder)
        done.write_text(path.name)
    return folder / done.read_text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build zoo models into a cache folder.")
    p.add_argument("names", nargs="*", choices=[[], *ZOO], help="models to build (default: all)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    for name in args.names or ZOO:
        print(f"{name}: {build(name, args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
