"""Hand-built graphs of onnxruntime's quantized ops (QOperator and dynamic forms), for the handler and certificate tests.

The models import the ``com.microsoft`` domain beside the default one, as onnxruntime.quantization writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.graphs import Builder

MS = "com.microsoft"
NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def model_of(
    b: Builder,
    inputs: Sequence[tuple[str, Sequence[int]]],
    outputs: Sequence[str],
    opset: int = 17,
    shape: Sequence[int] | None = None,
) -> onnx.ModelProto:
    """The model of ``b``'s nodes; every output float of ``shape`` (default: the first input's)."""
    graph = helper.make_graph(
        b.nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape or inputs[0][1]) for n in outputs],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    onnx.checker.check_model(model)
    return model


def qlinear(
    b: Builder, op: str, a: str, a_params: tuple[str, str], other: str, b_params: tuple[str, str], y_params: tuple[str, str]
) -> str:
    """``QLinearAdd`` / ``QLinearMul`` (com.microsoft) of ``a`` and ``other``, each with its scale and zero point."""
    return b.op(op, a, *a_params, other, *b_params, *y_params, domain=MS)


def params(b: Builder, scale: float, zero: int, dtype: type) -> tuple[str, str]:
    return b.const(np.array(scale, np.float32)), b.const(np.array(zero), dtype)
