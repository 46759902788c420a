"""Export small decoder LLMs with a KV cache from transformers, random weights, nothing downloaded.

Three families, each in a small configuration (2 layers, hidden 64, 4 query heads over 2 key/value heads:
grouped-query attention) with ``torch.manual_seed(0)`` weights perturbed so that no two tensors are equal:

- ``llama``: rotary embeddings, RMSNorm, SwiGLU MLP (gate, up, down), untied head;
- ``qwen2``: Llama's blocks with biases on q, k and v, and a head tied to the embedding;
- ``phi``: partial rotary embeddings, LayerNorm, a GELU MLP (fc1, fc2) beside the attention, biases everywhere.

Each is exported by torch's two exporters (TorchScript, ``dynamo=False``, opset 17; dynamo, ``dynamo=True``,
opset 18) with the interface onnxruntime-genai and optimum use::

    inputs   input_ids [batch, sequence] int64, attention_mask [batch, total_sequence] int64,
             position_ids [batch, sequence] int64, past_key_values.<i>.key / .value [batch, kv_heads, past_sequence, head_dim]
    outputs  logits [batch, sequence, vocab], present.<i>.key / .value [batch, kv_heads, total_sequence, head_dim]

where ``total_sequence = past_sequence + sequence``. The dynamo exporter names dims itself (``s10``, ...);
they are renamed to the names above where they are exactly one of them. ``--dtype float16`` exports the
model in half precision (weights, activations, cache). ``quantize`` writes a float export's MatMuls with
onnxruntime's ``MatMulNBitsQuantizer`` in 4 bits: as ``MatMulNBits`` (QOperator) or as a blocked
``DequantizeLinear`` before each MatMul (QDQ).

torch and transformers are imported inside the functions, so this module imports without them::

    python -m models.llm_exports                        # every family, both exporters, float32, into .zoo-cache/llm
    python -m models.llm_exports --families llama --exporters ts --dtype float16
    python -m models.llm_exports --scale 1b             # the ~1.1B-parameter Llama of benchmarks/llm.py (TorchScript)

``feeds`` makes inputs the models accept (positions after the cache, a mask over past and new tokens) and
``torch_outputs`` runs the same inputs through transformers, for the tests to compare with.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(".zoo-cache") / "llm"
EXPORTERS = ("ts", "dynamo")
OPSETS = {"ts": 17, "dynamo": 18}
FAMILIES = ("llama", "qwen2", "phi")
DIMS = ("batch", "sequence", "past_sequence", "total_sequence")


@dataclass(frozen=True)
class Config:
    """A decoder's size: small for the tests, about 1.1B parameters (TinyLlama's shape) for the scale benchmark."""

    vocab: int = 128
    hidden: int = 64
    intermediate: int = 96
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SMALL = Config()
# TinyLlama-1.1B's shape: 22 layers of 2048 (32 query heads, 4 key/value heads), SwiGLU 5632, 32000 tokens.
ONE_B = Config(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4)
# For latency: large enough that the dense layers dominate (about 16M parameters).
MEDIUM = Config(vocab=4096, hidden=512, intermediate=1536, layers=4, heads=8, kv_heads=2)
SCALES = {"small": SMALL, "medium": MEDIUM, "1b": ONE_B}


def build(family: str, config: Config = SMALL, dtype: str = "float32", perturb: bool = True) -> Any:
    """The transformers model of ``family`` with ``torch.manual_seed(0)`` weights (eager attention), in eval mode.

    Args:
        family: ``llama``, ``qwen2`` or ``phi``.
        config: its size.
        dtype: ``float32`` or ``float16``.
        perturb: add small noise to every parameter, so no two tensors are equal (fresh norms are all 1).
    """
    import torch
    import transformers

    common = {
        "vocab_size": config.vocab,
        "hidden_size": config.hidden,
        "intermediate_size": config.intermediate,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "max_position_embeddings": 4096,
    }
    if family == "llama":
        cfg, cls = transformers.LlamaConfig(**common, tie_word_embeddings=False), transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = transformers.Qwen2Config(**common, tie_word_embeddings=True), transformers.Qwen2ForCausalLM
    elif family == "phi":
        cfg, cls = transformers.PhiConfig(**common, tie_word_embeddings=False), transformers.PhiForCausalLM
    else:
        raise ValueError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
    cfg._attn_implementation = "eager"  # plain MatMul / Softmax, as both exporters write them
    torch.manual_seed(0)
    model = cls(cfg).eval()
    if perturb:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    if dtype == "float16":
        model = model.half()
    elif dtype != "float32":
        raise ValueError(f"unknown dtype {dtype!r} (float32 or float16)")
    return model


def _wrapper(model: Any) -> Any:
    """``model`` as a module of flat tensors: (input_ids, attention_mask, position_ids, *past) -> (logits, *present)."""
    import torch
    from transformers.cache_utils import DynamicCache

    config = model.config

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple:
            cache = DynamicCache(config=config)
            for i in range(config.num_hidden_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
            )
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return Flat().eval()


def names(layers: int) -> tuple[list[str], list[str]]:
    """The inputs' and outputs' names of an export with ``layers`` layers."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def feeds(config: Config, batch: int, sequence: int, past: int, dtype: str = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs a decoder accepts: ``sequence`` new tokens after ``past`` cached ones, every position attended."""
    rng = np.random.default_rng(seed)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    inputs, _ = names(config.layers)
    out: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, config.vocab, (batch, sequence)).astype(np.int64),
        "attention_mask": np.ones((batch, past + sequence), np.int64),
        "position_ids": np.broadcast_to(np.arange(past, past + sequence, dtype=np.int64), (batch, sequence)).copy(),
    }
    for name in inputs[3:]:
        out[name] = rng.standard_normal((batch, config.kv_heads, past, config.head_dim)).astype(np_dtype)
    return out


def input_shapes(config: Config, batch: int, sequence: int, past: int) -> dict[str, list[int]]:
    """The shapes of :func:`feeds`, for ``--input-shape`` / ``input_shapes=``."""
    return {k: list(v.shape) for k, v in feeds(config, batch, sequence, past).items()}


def torch_outputs(model: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What transformers computes on ``inputs`` (the feeds of an export): logits, then the present keys and values."""
    import torch

    flat = _wrapper(model)
    names_in, _ = names(model.config.num_hidden_layers)
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names_in]
    with torch.no_grad():
        return [t.numpy() for t in flat(*args)]


def export(
    family: str,
    exporter: str,
    path: Path,
    config: Config = SMALL,
    dtype: str = "float32",
    external_data: bool = False,
) -> Path:
    """Build ``family`` (:func:`build`) and write it to ``path`` with ``exporter`` (``ts`` or ``dynamo``).

    Args:
        family: ``llama``, ``qwen2`` or ``phi``.
        exporter: ``ts`` (TorchScript) or ``dynamo``.
        path: the ONNX file to write (its folder is made).
        config: the model's size.
        dtype: ``float32`` or ``float16``.
        external_data: write the weights to ``<path>.data`` (what a model over 2 GB needs).
    """
    import onnx
    import torch

    model = build(family, config, dtype)
    flat = _wrapper(model)
    example = feeds(config, 2, 3, 5, dtype)
    names_in, names_out = names(config.layers)
    args = tuple(torch.from_numpy(example[n]) for n in names_in)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "ts":
        axes: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"},
        }
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in names_in[3:]})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in names_out[1:]})
        # Past 2 GB the legacy exporter writes each weight to a file of its own beside the model: it writes into a
        # folder of its own here, and the model is saved again with one data file.
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            target = Path(tmp) / path.name if external_data else path
            with warnings.catch_warnings():  # the legacy exporter is the point here, not a mistake
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    flat,
                    args,
                    str(target),
                    dynamo=False,
                    opset_version=OPSETS["ts"],
                    input_names=names_in,
                    output_names=names_out,
                    dynamic_axes=axes,
                )
            if external_data:
                del model, flat, args  # the torch weights: the ONNX copy is loaded next
                onnx.save(onnx.load(str(target)), str(path), save_as_external_data=True, location=path.name + ".data")
        return path
    if exporter != "dynamo":
        raise ValueError(f"unknown exporter {exporter!r} (ts or dynamo)")
    import logging

    for name in ("onnxscript", "onnx_ir"):  # the dynamo exporter's passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    dim = torch.export.Dim.DYNAMIC
    # The forward takes the cache as *past: its dynamic shapes are one tuple, as its inputs are.
    dynamic = ({0: dim, 1: dim}, {0: dim, 1: dim}, {0: dim, 1: dim}, tuple({0: dim, 2: dim} for _ in names_in[3:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            flat,
            args,
            dynamo=True,
            opset_version=OPSETS["dynamo"],
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=dynamic,
            verbose=False,
        )
    program.save(str(path), external_data=external_data)
    proto = onnx.load(str(path), load_external_data=False)
    _name_dims(proto)
    _drop_stack_traces(proto)
    onnx.save(proto, str(path))
    return path


def _name_dims(model: Any) -> None:
    """The dynamo exporter's own dim names (``s10``) replaced by :data:`DIMS` where a graph input shows which is which."""
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    rename: dict[str, str] = {}

    def take(name: str, axis: int, new: str) -> None:
        vi = inputs.get(name)
        if vi is not None and len(vi.type.tensor_type.shape.dim) > axis:
            d = vi.type.tensor_type.shape.dim[axis]
            if d.dim_param and d.dim_param not in rename:
                rename[d.dim_param] = new

    take("input_ids", 0, "batch")
    take("input_ids", 1, "sequence")
    take("attention_mask", 1, "total_sequence")
    past = next((n for n in inputs if n.startswith("past_key_values.")), None)
    if past is not None:
        take(past, 2, "past_sequence")
    # Dims the exporter did not relate to the others (the mask's own batch) are the batch too: one batch per call.
    take("attention_mask", 0, "batch")
    words = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b") if rename else None
    for vi in (*graph.input, *graph.output, *graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if words is None or not d.dim_param:
                continue
            named = words.sub(lambda m: rename[m.group(1)], d.dim_param)  # "s15 + s70": an expression of them
            d.dim_param = "total_sequence" if named in ("past_sequence + sequence", "sequence + past_sequence") else named


def _drop_stack_traces(model: Any) -> None:
    """The dynamo exporter's per-node stack traces hold the exporting machine's paths: dropped."""
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if "stack_trace" not in p.key]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def quantize(path: Path, out: Path, form: str, block_size: int = 32, symmetric: bool = False) -> Path:
    """``path``'s MatMuls with constant weights quantized to 4 bits in blocks by onnxruntime's ``MatMulNBitsQuantizer``.

    Args:
        path: a float32 export.
        out: where to write the quantized model.
        form: ``nbits`` (``MatMulNBits``, com.microsoft) or ``qdq`` (``DequantizeLinear`` in blocks before each MatMul).
        block_size: elements per block along the input channels (16 to 128).
        symmetric: no zero points (int4 in QDQ form), else uint4 with zero points.
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    fmt = {"nbits": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}[form]
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    model = onnx.load(str(path))
    if form == "qdq":  # a blocked DequantizeLinear needs opset 21
        model = _at_opset(model, 21)
    config = mq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, quant_format=fmt)
    quantizer = mq.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    result = quantizer.model.model
    if form == "nbits":
        result = _at_opset(result, 21)  # the converted form's blocked DequantizeLinear needs opset 21
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(result, str(out))
    return out


def _at_opset(model: Any, opset: int) -> Any:
    """``model`` importing the default domain at ``opset`` at least (onnx's version converter, where it is lower)."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= opset:
        return model
    return onnx.version_converter.convert_version(model, opset)


def cached(
    family: str, exporter: str, dtype: str = "float32", form: str = "", out: Path = DEFAULT_OUT, scale: str = "small"
) -> Path:
    """The export under ``out`` (made when missing): ``<family>_<dtype>_<exporter>[_<scale>][_<form>].onnx``, ``form`` one
    of ``nbits``, ``qdq`` (4-bit, blocks of 32, with zero points) or ``""`` (not quantized), ``scale`` a key of SCALES."""
    stem = f"{family}_{dtype}_{exporter}" + ("" if scale == "small" else f"_{scale}")
    base = out / f"{stem}.onnx"
    if not base.exists():
        export(family, exporter, base, SCALES[scale], dtype, external_data=scale == "1b")
    if not form:
        return base
    path = out / f"{stem}_{form}.onnx"
    if not path.exists():
        quantize(base, path, form)
    return path


def missing() -> str | None:
    """What is not installed for exporting (torch, transformers), or None."""
    import importlib.util

    absent = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(absent)} not installed" if absent else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--families", nargs="*", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--exporters", nargs="*", choices=EXPORTERS, default=list(EXPORTERS))
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--quantize", nargs="*", choices=["nbits", "qdq"], default=[], help="also write these 4-bit forms")
    p.add_argument("--scale", choices=list(SCALES), default="small", help="small (the tests') or 1b (TinyLlama's shape)")
    args = p.parse_args(argv)
    config = SCALES[args.scale]
    for family in args.families:
        for exporter in args.exporters:
            start = time.perf_counter()
            suffix = "" if args.scale == "small" else f"_{args.scale}"
            path = args.out / f"{family}_{args.dtype}_{exporter}{suffix}.onnx"
            export(family, exporter, path, config, args.dtype, external_data=args.scale != "small")
            print(f"{path}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
            for form in args.quantize:
                q = quantize(path, path.with_name(f"{path.stem}_{form}.onnx"), form)
                print(f"{q}", file=sys.stderr)
    return 0


def small(**changes: int) -> Config:
    """The small configuration with some sizes changed (``small(layers=1)``)."""
    return replace(SMALL, **changes)


if __name__ == "__main__":
    sys.exit(main())
