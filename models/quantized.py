"""Quantized models as users make them: ``onnxruntime.quantization`` on a float model, a small random calibration set.

Shared by tests/test_quantized.py and benchmarks/quantized.py. The quantizer is onnxruntime's own
(``quantize_static`` in QDQ or QOperator format, ``quantize_dynamic``); nothing here changes what it writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static


@dataclass(frozen=True)
class Form:
    """How a model is quantized: ``fmt`` qdq | qoperator | dynamic, int8 or uint8, per channel or per tensor."""

    fmt: str = "qdq"
    signed: bool = True
    per_channel: bool = True

    @property
    def name(self) -> str:
        if self.fmt == "dynamic":
            return f"dynamic-{'s8' if self.signed else 'u8'}-{'channel' if self.per_channel else 'tensor'}"
        return f"{self.fmt}-{'s8' if self.signed else 'u8'}-{'channel' if self.per_channel else 'tensor'}"


QDQ_FORMS = tuple(Form("qdq", s, p) for s in (True, False) for p in (True, False))


class RandomReader(CalibrationDataReader):
    """``count`` seeded standard-normal feeds, symbolic dims given by ``shapes`` (else 2)."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, count: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        constants = {t.name for t in model.graph.initializer}
        feeds = []
        for _ in range(count):
            feed = {}
            for vi in model.graph.input:
                if vi.name in constants:
                    continue
                given = (shapes or {}).get(vi.name)
                shape = given or [d.dim_value if d.HasField("dim_value") else 2 for d in vi.type.tensor_type.shape.dim]
                dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                feed[vi.name] = rng.standard_normal(shape).astype(dtype)
            feeds.append(feed)
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(source: Path, target: Path, form: Form, shapes: dict[str, list[int]] | None = None) -> Path:
    """Quantize the float model at ``source`` into ``target`` with onnxruntime.quantization."""
    weight = QuantType.QInt8 if form.signed else QuantType.QUInt8
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice
    if form.fmt == "dynamic":
        quantize_dynamic(source, target, per_channel=form.per_channel, weight_type=weight)
    else:
        quantize_static(
            source,
            target,
            RandomReader(onnx.load(source), shapes),
            quant_format=QuantFormat.QDQ if form.fmt == "qdq" else QuantFormat.QOperator,
            per_channel=form.per_channel,
            activation_type=weight,
            weight_type=weight,
        )
    return target


def keras_convnext_onnx(target: Path, cache: Path | None = None) -> Path:
    """The zoo's Keras ConvNeXtTiny (TensorFlow + tf2onnx, built once into the zoo cache) as float ONNX at ``target``.

    Needs TensorFlow; its Dense layers on [N, H, W, C] are tf2onnx Tensordots (Reshape -> MatMul -> Reshape).
    """
    from converter.frontends.savedmodel import load_tensorflow
    from models.zoo import DEFAULT_CACHE, build

    if not target.exists():
        onnx.save(load_tensorflow(build("convnext_tiny", cache or DEFAULT_CACHE)), target)
    return target
