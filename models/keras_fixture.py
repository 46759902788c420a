"""Build the committed Keras fixture: a small ConvNeXt from Keras's own application code, as the TensorFlow front end
converts it (tf2onnx), written to ``models/fixtures/keras_convnext_small.onnx``.

The zoo's Keras ConvNeXtTiny (models/zoo.py) takes minutes to build, export and convert on every run; this is the
same application code (``keras.src.applications.convnext.ConvNeXt``: stem, LayerNorm, depthwise 7x7 Conv, the two
pointwise Dense layers that tf2onnx writes as Tensordots, GELU, layer scale, residual, downsampling, the head) at
narrow widths, one block per stage, so the fast test tier converts real tf2onnx output in a fraction of a second
without TensorFlow. Weights: ``keras.utils.set_random_seed(0)``, then every weight perturbed by N(0, 0.02) noise
(nonzero, no two tensors equal: a fresh model's zero biases and equal layer scales would hide a swapped operand).

    python -m models.keras_fixture [-o models/fixtures/keras_convnext_small.onnx]   (needs the [tf] extra)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

DEFAULT_TARGET = Path(__file__).resolve().parent / "fixtures" / "keras_convnext_small.onnx"
DEPTHS = [1, 1, 1, 1]  # one ConvNeXt block per stage
DIMS = [8, 16, 24, 32]  # ConvNeXtTiny has [96, 192, 384, 768]
INPUT_SHAPE = (64, 48, 3)  # the zoo's ConvNeXtTiny size: H != W
CLASSES = 10
DENSE_LAYERS = 2 * sum(DEPTHS)  # each block's two pointwise Dense layers: the rewrite's candidates on 4D tensors


def build_keras(folder: Path) -> Path:
    """The small ConvNeXt, exported as a SavedModel under ``folder``; returns the SavedModel's path."""
    import keras
    import numpy as np
    from keras.src.applications.convnext import ConvNeXt

    keras.utils.set_random_seed(0)
    model = ConvNeXt(depths=DEPTHS, projection_dims=DIMS, weights=None, input_shape=INPUT_SHAPE, classes=CLASSES, name="convnext")
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0.0, 0.02, w.shape).astype(w.dtype) for w in model.get_weights()])
    path = folder / "saved_model"
    model.export(str(path), verbose=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args(argv)

    import onnx

    from converter.frontends.savedmodel import load_tensorflow

    with tempfile.TemporaryDirectory(prefix="keras-fixture-") as folder:
        model = load_tensorflow(build_keras(Path(folder)))
    onnx.save(model, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, {len(model.graph.node)} nodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
