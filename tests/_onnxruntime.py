"""Running a test model in onnxruntime as it is written: one helper for the rule and layout tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def first_output(model: onnx.ModelProto, x: np.ndarray, optimized: bool = False) -> np.ndarray:
    """The model's first output for its input ``x`` on onnxruntime's CPU provider.

    Args:
        model: a model whose one input is named ``x``.
        x: the input's values.
        optimized: run onnxruntime's graph optimizations too (as deployed); by default they are off, so that two
            graphs are compared as written (a fusion can change the last bit of a float sum).
    """
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]
