"""Decoder LLMs with a KV cache under ``--tokens``: Llama-, Qwen2- and Phi-style models exported fresh from
transformers (models/llm_exports.py: small configs, random weights, grouped-query attention, rotary embeddings,
SwiGLU or GELU MLPs, tied and untied heads) by both of torch's exporters, in float32 and float16, and their 4-bit
forms (MatMulNBits, and DequantizeLinear in blocks).

Each conversion: every projection (q, k, v, o or dense, gate, up, down or fc1, fc2, lm_head) a Conv, the interface
unchanged (names, dtypes, symbolic batch / sequence / past dims), verification at sequence 3 > 1 with 5 > 0 cached
tokens ending PASSED with every layer proved and checked, and the outputs those of transformers itself. Slow (each
export takes seconds, dynamo's tens of seconds; they are cached in .zoo-cache/llm/), and skipped without torch or
transformers.

The shapes are given (``input_shapes``): the verifier's own choice of sizes does not yet relate the mask's length to
past + sequence (the verification issue's "decoders with a KV cache").
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converter
from models import llm_exports as le

pytestmark = [pytest.mark.slow, pytest.mark.skipif(le.missing() is not None, reason=le.missing() or "")]

BATCH, SEQUENCE, PAST = 2, 3, 5
# The projections each family has per layer, and its head: every one must become a Conv.
PROJECTIONS = {"llama": 7, "qwen2": 7, "phi": 6}
ATTENTION_MATMULS = 2  # q @ k^T and attn @ v per layer: their "weights" are activations


def _interface(model: onnx.ModelProto) -> list[tuple[str, int, list[str | int]]]:
    return [
        (vi.name, vi.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim])
        for vi in (*model.graph.input, *model.graph.output)
    ]


def _convert(path, **options) -> tuple[onnx.ModelProto, converter.RewriteResult, converter.VerifyReport]:  # noqa: ANN001, ANN003
    model = onnx.load(path)
    result = converter.rewrite(model, tokens=True, layout="keep-all", **options)
    check = converter.verify(model, result, input_shapes=le.input_shapes(le.SMALL, BATCH, SEQUENCE, PAST))
    return model, result, check


def _assert_converted(family: str, model: onnx.ModelProto, result: converter.RewriteResult, check: converter.VerifyReport) -> None:
    layers = le.SMALL.layers
    expected = PROJECTIONS[family] * layers + 1
    decisions = result.report.decisions
    assert sum(d.rewritten for d in decisions) == expected, Counter((d.rule, d.reason) for d in decisions)
    # Attention's q @ k^T and attn @ v stay: their "weights" are activations (of a rank shape inference may not know
    # past a MatMulNBits, which onnx does not infer).
    declined = [d for d in decisions if not d.rewritten]
    assert len(declined) == ATTENTION_MATMULS * layers and {d.op_type for d in declined} == {"MatMul"}
    assert {d.reason for d in declined} <= {"weight_not_constant", "rank_unknown"}
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["Conv"] == expected and ops["MatMul"] == ATTENTION_MATMULS * layers and ops["MatMulNBits"] == 0
    assert _interface(result.model) == _interface(model)
    assert check.passed and check.structure["proved"], check.to_dict()
    assert len(check.layers) == expected and all(layer.verified for layer in check.layers)


def _matches_transformers(family: str, dtype: str, converted: onnx.ModelProto, atol: float) -> None:
    feeds = le.feeds(le.SMALL, BATCH, SEQUENCE, PAST, dtype, seed=4)
    want = le.torch_outputs(le.build(family, le.SMALL, dtype), feeds)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=0, atol=atol)


@pytest.mark.parametrize("exporter", le.EXPORTERS)
@pytest.mark.parametrize("family", le.FAMILIES)
def test_every_projection_becomes_a_conv_and_the_outputs_are_transformers(family: str, exporter: str) -> None:
    model, result, check = _convert(le.cached(family, exporter))
    _assert_converted(family, model, result, check)
    _matches_transformers(family, "float32", result.model, atol=2e-5)


@pytest.mark.parametrize("family", le.FAMILIES)
def test_in_float16(family: str) -> None:
    model, result, check = _convert(le.cached(family, "ts", "float16"))
    _assert_converted(family, model, result, check)
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    _matches_transformers(family, "float16", result.model, atol=2e-2)


@pytest.mark.parametrize("exporter", le.EXPORTERS)
@pytest.mark.parametrize("form", ["nbits", "qdq"])
@pytest.mark.parametrize("family", le.FAMILIES)
def test_block_quantized_weights(family: str, form: str, exporter: str) -> None:
    """The 4-bit forms of onnxruntime's MatMulNBitsQuantizer: MatMulNBits (with ``matmul_nbits``) and a blocked
    DequantizeLinear before each MatMul: every projection a Conv of a blocked DequantizeLinear."""
    model, result, check = _convert(le.cached(family, exporter, form=form), matmul_nbits=form == "nbits")
    _assert_converted(family, model, result, check)
    weights = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(weights) == PROJECTIONS[family] * le.SMALL.layers + 1
    assert all(any(a.name == "block_size" and a.i == 32 for a in n.attribute) for n in weights)


def test_through_the_command(tmp_path, run_cli) -> None:  # noqa: ANN001
    path = le.cached("llama", "dynamo", form="nbits")
    shapes = [f"{name}:{','.join(map(str, dims))}" for name, dims in le.input_shapes(le.SMALL, BATCH, SEQUENCE, PAST).items()]
    args = [path, "--tokens", "--matmul-nbits", "--layout", "keep-all", "-o", tmp_path / "out.onnx"]
    for shape in shapes:
        args += ["--input-shape", shape]
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
