"""ONNX graphs in the shapes exporters write them, built with onnx.helper and random weights.

Shared by the tests, the benchmarks and the model zoo. The rewrite's correctness does not depend
on weight values, so seeded random weights stand in for trained ones (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


class Builder:
    """A small graph writer: each call adds a node and returns its output name."""

    def __init__(self, seed: int = 0, prefix: str = "") -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.prefix = prefix
        self.n = 0

    def _name(self, op: str) -> str:
        self.n += 1
        return f"{self.prefix}{op.lower()}{self.n}"

    def const(self, value: np.ndarray, dtype: type = np.float32) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def dense(self, x: str, c: int, k: int, bias: bool = True) -> str:
        """A Linear / Dense layer as exporters write it: MatMul by a [C, K] weight, then Add."""
        y = self.op("MatMul", x, self.const(self.rng.standard_normal((c, k)) / np.sqrt(c)))
        return self.op("Add", y, self.const(self.rng.standard_normal(k) * 0.1)) if bias else y

    def gelu(self, x: str) -> str:
        """GELU the way torch.onnx writes it before opset 20: x * 0.5 * (1 + erf(x / sqrt 2))."""
        e = self.op("Erf", self.op("Div", x, self.const(np.array(np.sqrt(2.0)))))
        return self.op("Mul", self.op("Mul", x, self.op("Add", e, self.const(np.array(1.0)))), self.const(np.array(0.5)))

    def depthwise(self, x: str, c: int, k: int = 7) -> str:
        w = self.const(self.rng.standard_normal((c, 1, k, k)) / k)
        return self.op("Conv", x, w, self.const(np.zeros(c)), group=c, kernel_shape=[k, k], pads=[k // 2] * 4)

    def layernorm(self, x: str, c: int) -> str:
        return self.op("LayerNormalization", x, self.const(np.ones(c)), self.const(np.zeros(c)), axis=-1, epsilon=1e-6)

    def model(
        self, inputs: Sequence[tuple[str, Sequence[int | str]]], outputs: Sequence[str], opset: int = 17, name: str = "g"
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, F32, None) for n in outputs],
            self.inits,
        )
        return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare graph output types as shape inference finds them (the checker wants a shape), then check."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.CopyFrom(known[out.name])
        if not out.type.tensor_type.HasField("shape"):  # inference gave up (an invalid model on purpose)
            out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, [None] * 4))
    onnx.checker.check_model(model)
    return model


def convnext_pointwise(b: Builder, x: str, c: int, layer_scale: bool = True, act: str = "gelu") -> str:
    """PyTorch ConvNeXt block minus depthwise conv and norm: permute, Linear, GELU, Linear, scale, permute."""
    t = b.op("Transpose", x, perm=[0, 2, 3, 1])
    y = b.dense(t, c, 4 * c)
    y = b.gelu(y) if act == "gelu" else b.op(act, y)
    y = b.dense(y, 4 * c, c)
    if layer_scale:
        y = b.op("Mul", y, b.const(b.rng.standard_normal(c) * 0.1))
    return b.op("Transpose", y, perm=[0, 3, 1, 2])


def convnext_block(layer_scale: bool = True, residual: bool = True, act: str = "gelu", c: int = 8, h: int = 5, w: int = 7):
    """The PyTorch ConvNeXt block's pointwise part as torch.onnx exports it (NCHW in and out)."""
    b = Builder(1)
    y = convnext_pointwise(b, "x", c, layer_scale, act)
    if residual:
        y = b.op("Add", "x", y)
    return b.model([("x", ["N", c, h, w])], [y])


def convnext_stage(c: int, h: int, w: int, blocks: int = 3, layernorm: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A ConvNeXt stage as PyTorch exports it: per block a depthwise 7x7 Conv, (LayerNorm,) two pointwise
    Linears with GELU between, layer scale, the permutes around them, and the residual."""
    b = Builder(seed)
    x = "x"
    for _ in range(blocks):
        y = b.depthwise(x, c)
        if layernorm:
            t = b.layernorm(b.op("Transpose", y, perm=[0, 2, 3, 1]), c)
            y = b.dense(t, c, 4 * c)
            y = b.dense(b.gelu(y), 4 * c, c)
            y = b.op("Transpose", b.op("Mul", y, b.const(b.rng.standard_normal(c) * 0.1)), perm=[0, 3, 1, 2])
        else:
            y = convnext_pointwise(b, y, c)
        x = b.op("Add", x, y)
    return b.model([("x", [1, c, h, w])], [x], name=f"convnext_c{c}_{h}x{w}")


def dense_chain(blocks: int, c: int = 16, h: int = 4, w: int = 6, seed: int = 0) -> onnx.ModelProto:
    """``blocks`` dense layers with ReLU on an NHWC tensor: 3 nodes per block (for size scaling)."""
    b = Builder(seed)
    x = "x"
    for _ in range(blocks):
        x = b.op("Relu", b.dense(x, c, c))
    return b.model([("x", [1, h, w, c])], [x], name=f"dense_chain_{blocks}")


def big_dense(layers: int, c: int, h: int = 2, w: int = 3, seed: int = 0) -> onnx.ModelProto:
    """``layers`` wide dense layers: 4 * c * c * layers bytes of weights (c=4096, 12 layers: ~805 MB)."""
    b = Builder(seed)
    x = "x"
    for _ in range(layers):
        y = b.op("MatMul", x, b.const(b.rng.standard_normal((c, c), dtype=np.float32) * np.float32(1 / np.sqrt(c))))
        x = b.op("Relu", b.op("Add", y, b.const(np.zeros(c))))
    graph = helper.make_graph(
        b.nodes,
        f"big_dense_{layers}x{c}",
        [helper.make_tensor_value_info("x", F32, [1, h, w, c])],
        [helper.make_tensor_value_info(x, F32, [1, h, w, c])],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reshape_sandwich(
    core: str = "MatMul",
    target: str = "runtime",
    c: int = 6,
    k: int = 5,
    h: int = 3,
    w: int = 4,
    batch: int | str = "N",
    bias: str | None = "add",
    trans_b: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    share_shape: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """A dense layer on [N, H, W, C] written as Reshape -> MatMul/Gemm -> Reshape.

    ``target`` is how the second Reshape gets [N, H, W, K]: "runtime" (tf2onnx's
    Shape -> Cast -> Gather -> Concat -> Cast), "slice" (Shape -> Slice -> Concat), "static"
    (a constant), "static_minus_one" (a constant with -1 for the batch), or a wrong one for
    negative tests: "swapped" ([N, W, H, K]) or "flat" ([N, H*W, K]).
    ``bias``: "add" (Add after the sandwich), "gemm" (Gemm's C input), None.
    ``share_shape``: the Shape output also feeds a graph output, so the shape nodes must stay.
    """
    b = Builder(seed)
    x = "x"
    n_static = batch if isinstance(batch, int) else None
    rows_first = -1 if n_static is None else n_static * h * w
    rows = b.op("Reshape", x, b.const(np.array([rows_first, c]), np.int64))
    weight = b.rng.standard_normal((k, c) if trans_b else (c, k)) / np.sqrt(c)
    if core == "MatMul":
        flat = b.op("MatMul", rows, b.const(weight))
    else:
        inputs = [rows, b.const(weight)] + ([b.const(b.rng.standard_normal(k))] if bias == "gemm" else [])
        flat = b.op("Gemm", *inputs, transB=trans_b, alpha=alpha, beta=beta)
    extra_outputs = []
    if target in ("runtime", "slice"):
        shape = b.op("Shape", x)
        if share_shape:
            extra_outputs.append(shape)
        if target == "runtime":
            head = b.op(
                "Cast",
                b.op("Gather", b.op("Cast", shape, to=TensorProto.INT32), b.const(np.array([0, 1, 2]), np.int64), axis=0),
                to=TensorProto.INT64,
            )
        else:
            head = b.op("Slice", shape, b.const(np.array([0]), np.int64), b.const(np.array([3]), np.int64))
        new_shape = b.op("Cast", b.op("Concat", head, b.const(np.array([k]), np.int64), axis=0), to=TensorProto.INT64)
    else:
        n = n_static if n_static is not None else 2
        values = {"static": [n, h, w, k], "static_minus_one": [-1, h, w, k], "swapped": [n, w, h, k], "flat": [n, h * w, k]}[target]
        new_shape = b.const(np.array(values), np.int64)
    y = b.op("Reshape", flat, new_shape)
    if bias == "add":
        y = b.op("Add", y, b.const(b.rng.standard_normal(k) * 0.1))
    inputs = [("x", [batch, h, w, c])]
    graph = helper.make_graph(
        b.nodes,
        "sandwich",
        [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
        [
            helper.make_tensor_value_info(
                y, F32, {"flat": [batch, h * w, k], "swapped": [batch, w, h, k]}.get(target, [batch, h, w, k])
            )
        ]
        + [helper.make_tensor_value_info(o, TensorProto.INT64, [4]) for o in extra_outputs],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def mixer_block(h: int = 6, w: int = 8, c: int = 12, seed: int = 3) -> onnx.ModelProto:
    """An MLP-Mixer-style block on an NHWC tensor: token mixing along W (transposed to the last axis),
    then channel mixing, each a two-layer MLP with GELU, LayerNorm before and a residual after."""
    b = Builder(seed)
    t = b.op("Transpose", b.layernorm("x", c), perm=[0, 1, 3, 2])  # [N, H, C, W]
    t = b.dense(b.gelu(b.dense(t, w, 2 * w)), 2 * w, w)
    x = b.op("Add", "x", b.op("Transpose", t, perm=[0, 1, 3, 2]))
    y = b.dense(b.gelu(b.dense(b.layernorm(x, c), c, 2 * c)), 2 * c, c)
    return b.model([("x", ["N", h, w, c])], [b.op("Add", x, y)], name="mixer_block")


def dense_in_if(h: int = 3, w: int = 5, c: int = 4, k: int = 6, seed: int = 3) -> onnx.ModelProto:
    """Dense layers inside both branches of an If, reading an outer input and an outer weight."""
    rng = np.random.default_rng(seed)
    outer = [numpy_helper.from_array(rng.standard_normal((c, k)).astype(np.float32), "W_outer")]

    def branch(tag: str, bias: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["x", "W_outer"], [f"mm_{tag}"], name=f"dense_{tag}")]
        inits = []
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), f"b_{tag}"))
            nodes.append(helper.make_node("Add", [f"mm_{tag}", f"b_{tag}"], [f"y_{tag}"], name=f"add_{tag}"))
        else:
            nodes.append(helper.make_node("Relu", [f"mm_{tag}"], [f"y_{tag}"], name=f"relu_{tag}"))
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"y_{tag}", F32, None)], inits)

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["cond"], ["y"], name="branch", then_branch=branch("then", True), else_branch=branch("else", False)
            )
        ],
        "dense_in_if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("x", F32, ["N", h, w, c])],
        [helper.make_tensor_value_info("y", F32, ["N", h, w, k])],
        outer,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def vgg_style(h: int = 32, w: int = 24, seed: int = 4, ir_version: int | None = None) -> onnx.ModelProto:
    """Conv/ReLU/MaxPool twice, Flatten, Gemm head: nothing here is a dense layer on a 4D tensor.

    ``ir_version=3`` writes it the old way, every initializer also listed as a graph input."""
    b = Builder(seed)
    x = "x"
    for cin, cout in ((3, 8), (8, 16)):
        w_ = b.const(b.rng.standard_normal((cout, cin, 3, 3)) * 0.2)
        x = b.op(
            "MaxPool",
            b.op("Relu", b.op("Conv", x, w_, b.const(np.zeros(cout)), pads=[1, 1, 1, 1])),
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
    flat = b.op("Flatten", x)
    y = b.op("Gemm", flat, b.const(b.rng.standard_normal((16 * (h // 4) * (w // 4), 10)) * 0.05), b.const(np.zeros(10)))
    model = b.model([("x", [1, 3, h, w])], [y], opset=17 if ir_version is None else 8, name="vgg_style")
    if ir_version is not None:
        model.ir_version = ir_version
        for t in model.graph.initializer:
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        onnx.checker.check_model(model)
    return model


def resnet_style(h: int = 20, w: int = 28, c: int = 8, seed: int = 5) -> onnx.ModelProto:
    """Conv + BatchNormalization + ReLU with a residual Add, global pooling and a Gemm head."""
    b = Builder(seed)

    def conv_bn(x: str, cin: int, cout: int, relu: bool = True) -> str:
        y = b.op("Conv", x, b.const(b.rng.standard_normal((cout, cin, 3, 3)) * 0.2), pads=[1, 1, 1, 1])
        y = b.op(
            "BatchNormalization",
            y,
            b.const(np.ones(cout)),
            b.const(np.zeros(cout)),
            b.const(b.rng.standard_normal(cout) * 0.1),
            b.const(np.ones(cout)),
        )
        return b.op("Relu", y) if relu else y

    stem = conv_bn("x", 3, c)
    out = b.op("Relu", b.op("Add", stem, conv_bn(conv_bn(stem, c, c), c, c, relu=False)))
    pooled = b.op("Flatten", b.op("GlobalAveragePool", out))
    y = b.op("Gemm", pooled, b.const(b.rng.standard_normal((c, 10)) * 0.2), b.const(np.zeros(10)))
    return b.model([("x", ["N", 3, h, w])], [y], name="resnet_style")
