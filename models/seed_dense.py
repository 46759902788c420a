"""Build models/seed_dense.onnx: the seed notebook's dense layer as ONNX.

A Dense layer with 6 units applied to a (1, 2, 2, 1) tensor: ``y = x @ W + b`` with W [1, 6]
and b [6], exactly the MatMul + Add a framework exporter writes. Run ``python models/seed_dense.py``
to rebuild it; the weights are seeded so the file is the same every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(2024)
    w = rng.standard_normal((1, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "dense/kernel"], ["dense/matmul"], name="dense/MatMul"),
            helper.make_node("Add", ["dense/matmul", "dense/bias"], ["y"], name="dense/BiasAdd"),
        ],
        "seed_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 6])],
        [numpy_helper.from_array(w, "dense/kernel"), numpy_helper.from_array(b, "dense/bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="seed_dense.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("seed_dense.onnx")
    onnx.save(build(), target)
    print(f"wrote {target}")
