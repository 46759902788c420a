"""Export PyTorch vision models to ONNX with both of torch's exporters, random weights, nothing downloaded.

Each model is exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) and
the dynamo exporter (``dynamo=True``), in eval mode, with weights from ``torch.manual_seed(0)``.
Every export is checked in onnxruntime against torch at a shape with N=2 and H != W, and described
(size, op counts, input dims and which are symbolic, rank-4 MatMuls after ONNX shape inference)
in ``summary.json`` beside the files.

torch, torchvision and timm are imported inside the functions, so this module imports without them;
running it needs a separate environment with torch (the converter's own venv does not have it):

    python models/torch_exports.py -o /work/exports                       # every model, both exporters
    python models/torch_exports.py -o out --models tv_convnext_small_dynamic --exporters ts
    python models/torch_exports.py --list

A model that one exporter cannot handle is recorded in the summary with the error, and the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORTERS = ("ts", "dynamo")
DEFAULT_OPSETS = {"ts": 17, "dynamo": 18}
CHECK_SHAPE = (2, 3, 64, 96)  # N=2 and H != W, so swapped H and W cannot pass unnoticed
INPUT_NAME = "x"
OUTPUT_NAME = "logits"
COUNTED_OPS = (
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Transpose",
    "Reshape",
    "Identity",
    "Conv",
    "LayerNormalization",
    "ReduceMean",
    "Erf",
    "Gelu",
    "Softmax",
    "Shape",
    "Constant",
)


@dataclass(frozen=True)
class TorchModel:
    name: str
    description: str
    build: Callable[[], Any]  # returns the torch module (random weights, eval mode is set by the caller)
    shape: tuple[int, int, int, int] = (2, 3, 64, 96)  # the example input used for export
    dynamic: bool = False  # dynamic N, H and W
    min_hw: int = 32  # smallest H and W the model accepts (its total stride), for the dynamo exporter's Dims
    check_shapes: tuple[tuple[int, int, int, int], ...] = field(default=(CHECK_SHAPE,))
    needs: str = "torchvision"


# ---------------------------------------------------------------------------------------------
# model builders (torch imported lazily)


def _tv_convnext_tiny() -> Any:
    from torchvision.models import convnext_tiny

    return convnext_tiny(weights=None)


def _tv_convnext_small_arch() -> Any:
    """torchvision's ConvNeXt class with a tiny block setting: 2 stages (16, 32 channels), 1 block each."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return ConvNeXt(setting, stochastic_depth_prob=0.0, num_classes=10)


def perturb(model: Any, scale: float = 0.02, seed: int = 1) -> Any:
    """Add small noise to every parameter and float buffer, so no two tensors stay equal.

    Fresh models have many identical tensors (zero biases, layer scales all 1e-6, LayerNorm weights
    all 1) that an exporter may share or deduplicate; trained ones do not.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    return model


def _tv_convnext_small_trained() -> Any:
    return perturb(_tv_convnext_small_arch())


def _tv_swin_t() -> Any:
    from torchvision.models import swin_t

    return swin_t(weights=None)


def _tv_maxvit_t(shape: tuple[int, int]) -> Callable[[], Any]:
    def build() -> Any:
        from torchvision.models import maxvit_t

        return maxvit_t(weights=None, input_size=shape)

    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return build


MODELS: dict[str, TorchModel] = {
    m.name: m
    for m in [
        TorchModel(
            "tv_convnext_tiny_dynamic",
            "torchvision convnext_tiny, dynamic N, H, W",
            _tv_convnext_tiny,
            dynamic=True,
            check_shapes=(CHECK_SHAPE, (1, 3, 96, 64)),
        ),
        TorchModel("tv_convnext_tiny_static", "torchvision convnext_tiny, static [2, 3, 64, 96]", _tv_convnext_tiny),
        TorchModel(
            "tv_convnext_small_dynamic",
            "torchvision ConvNeXt class, block setting 16->32 / 32, 1 block per stage, 10 classes, dynamic N, H, W",
            _tv_convnext_small_arch,
            dynamic=True,
            min_hw=8,
            check_shapes=(CHECK_SHAPE, (1, 3, 40, 24)),
        ),
        TorchModel(
            "tv_convnext_small_trained_dynamic",
            "the small ConvNeXt with every parameter perturbed by N(0, 0.02) noise (no equal tensors), dynamic N, H, W",
            _tv_convnext_small_trained,
            dynamic=True,
            min_hw=8,
            check_shapes=(CHECK_SHAPE, (1, 3, 40, 24)),
        ),
        TorchModel(
            "timm_convnext_atto_dynamic",
            "timm convnext_atto (fresh init; atto sets conv_mlp=True, so its MLPs are 1x1 Convs already), dynamic N, H, W",
            _timm("convnext_atto"),
            dynamic=True,
            check_shapes=(CHECK_SHAPE, (1, 3, 96, 64)),
            needs="timm",
        ),
        TorchModel(
            "timm_convnext_atto_linear_dynamic",
            "timm convnext_atto with conv_mlp=False (its MLPs as nn.Linear on NHWC, as in convnext_tiny), dynamic N, H, W",
            _timm("convnext_atto", conv_mlp=False),
            dynamic=True,
            check_shapes=(CHECK_SHAPE, (1, 3, 96, 64)),
            needs="timm",
        ),
        TorchModel(
            "timm_mixer_s16_static",
            "timm mixer_s16_224 built with img_size=(64, 96) (24 tokens), fresh init: its head is zero, the output is constant",
            _timm("mixer_s16_224", img_size=(64, 96)),
            needs="timm",
        ),
        TorchModel(
            "timm_gmlp_ti16_static",
            "timm gmlp_ti16_224 built with img_size=(64, 96), fresh init: zero head (MlpMixer class), the output is constant",
            _timm("gmlp_ti16_224", img_size=(64, 96)),
            needs="timm",
        ),
        TorchModel(
            "timm_sequencer2d_s_static",
            "timm sequencer2d_s (BiLSTM2d, its MLPs are nn.Linear on NHWC), fresh init: zero head, the output is constant",
            _timm("sequencer2d_s"),
            needs="timm",
        ),
        TorchModel(
            "tv_swin_t_static",
            "torchvision swin_t, static [2, 3, 224, 320]",
            _tv_swin_t,
            shape=(2, 3, 224, 320),
            check_shapes=((2, 3, 224, 320),),
        ),
        TorchModel(
            # torchvision's MaxViT only runs square inputs: (224, 448) fails in torch itself (98 vs 49
            # in the attention), (448, 224) fails its grid-partition check
            "tv_maxvit_t_static",
            "torchvision maxvit_t, static [2, 3, 224, 224] (torchvision's MaxViT fails on non-square inputs)",
            _tv_maxvit_t((224, 224)),
            shape=(2, 3, 224, 224),
            check_shapes=((2, 3, 224, 224),),
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# export


def export(model: Any, spec: TorchModel, exporter: str, path: Path, opset: int) -> None:
    """Write ``model`` to ``path`` as a single self-contained ONNX file."""
    import torch

    x = torch.randn(*spec.shape)
    if exporter == "ts":
        dynamic_axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N"}} if spec.dynamic else None
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
        )
        return
    dynamic_shapes = None
    if spec.dynamic:
        dim = torch.export.Dim
        dynamic_shapes = ({0: dim("N", min=1, max=1024), 2: dim("H", min=spec.min_hw), 3: dim("W", min=spec.min_hw)},)
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
    )
    # one self-contained file: torch.onnx.export(..., f=path, dynamo=True) would put the weights in path.data
    # (its external_data defaults to True, whatever the model's size)
    program.save(str(path), external_data=False)


def check(model: Any, path: Path, shapes: tuple[tuple[int, int, int, int], ...]) -> list[dict]:
    """Run the export in onnxruntime (all optimizations off and on) and compare with torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    results = []
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(123))
        with torch.no_grad():
            want = model(x).numpy()
        row: dict[str, Any] = {"shape": list(shape), "torch_output_std": float(want.std())}
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        for level, optimization in levels.items():
            opts = ort.SessionOptions()
            opts.graph_optimization_level = optimization
            try:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
                row[f"ort_{level}"] = {
                    "output_shape": list(got.shape),
                    "max_abs_diff": float(np.max(np.abs(got - want))) if got.shape == want.shape else None,
                }
            except Exception as err:  # noqa: BLE001 - recorded, not raised: one failing shape must not hide the rest
                row[f"ort_{level}"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:400]}"}
        results.append(row)
    return results


# ---------------------------------------------------------------------------------------------
# description of an ONNX file (needs only onnx)


def _dims(value_info: Any) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None) for d in t.shape.dim]


def describe(path: Path) -> dict:
    """Size, op counts, inputs/outputs, rank-4 MatMuls and the Identity nodes that feed weights."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    ops = Counter(n.op_type for n in graph.node)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    ranks: dict[str, int | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        ranks[vi.name] = len(t.shape.dim) if t.HasField("shape") else None
    for i in graph.initializer:
        ranks[i.name] = len(i.dims)
    const_out = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    identity_src = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.op_type)

    matmul_rank: Counter = Counter()
    matmul_weight: Counter = Counter()
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        matmul_rank[str(ranks.get(n.input[0]))] += 1
        w = n.input[1]
        if w in inits:
            matmul_weight["initializer"] += 1
        elif w in identity_src:
            matmul_weight["Identity(initializer)" if identity_src[w] in inits else "Identity(other)"] += 1
        elif w in const_out:
            matmul_weight["Constant"] += 1
        else:
            matmul_weight["computed"] += 1
    identity_feeds = Counter(
        f"{'initializer' if src in inits else 'tensor'}->{'/'.join(sorted(set(consumers.get(out, ['<graph output>']))))}"
        for out, src in identity_src.items()
    )
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(graph.node),
        "initializers": len(graph.initializer),
        "functions": len(model.functions),
        "ops": {op: ops.get(op, 0) for op in COUNTED_OPS},
        "ops_all": dict(sorted(ops.items())),
        "inputs": [{"name": i.name, "dims": _dims(i)} for i in graph.input if i.name not in inits],
        "outputs": [{"name": o.name, "dims": _dims(o)} for o in graph.output],
        "outputs_inferred": [{"name": o.name, "dims": _dims(o)} for o in inferred.graph.output],
        "matmul_activation_rank": dict(matmul_rank),
        "matmul_rank4": matmul_rank.get("4", 0),
        "matmul_weight_source": dict(matmul_weight),
        "identity_feeds": dict(identity_feeds),
    }


# ---------------------------------------------------------------------------------------------
# driver


def run_one(spec: TorchModel, exporters: list[str], out: Path, opsets: dict[str, int]) -> list[dict]:
    import torch

    rows = []
    torch.manual_seed(0)
    model = spec.build().eval()
    for exporter in exporters:
        path = out / f"{spec.name}_{exporter}.onnx"
        row: dict[str, Any] = {"model": spec.name, "exporter": exporter, "opset_requested": opsets[exporter]}
        row["description"] = spec.description
        row["export_shape"] = list(spec.shape)
        row["dynamic"] = spec.dynamic
        start = time.perf_counter()
        try:
            export(model, spec, exporter, path, opsets[exporter])
        except Exception as err:  # noqa: BLE001 - an exporter that fails is a result, the others go on
            row["export_error"] = f"{type(err).__name__}: {str(err)[:2000]}"
            row["export_traceback_tail"] = traceback.format_exc()[-3000:]
            rows.append(row)
            print(f"[{spec.name} {exporter}] export FAILED: {row['export_error'][:300]}", file=sys.stderr)
            continue
        row["export_seconds"] = round(time.perf_counter() - start, 1)
        row.update(describe(path))
        row["check"] = check(model, path, spec.check_shapes)
        rows.append(row)
        diffs = [c.get("ort_disabled", {}).get("max_abs_diff") for c in row["check"]]
        print(f"[{spec.name} {exporter}] {row['size_bytes']} bytes, {row['nodes']} nodes, max abs diff {diffs}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("torch-exports"), help="output folder (default: torch-exports)")
    parser.add_argument("--models", nargs="*", default=None, help="which models (default: all); see --list")
    parser.add_argument("--exporters", nargs="*", choices=EXPORTERS, default=list(EXPORTERS))
    parser.add_argument("--ts-opset", type=int, default=DEFAULT_OPSETS["ts"])
    parser.add_argument("--dynamo-opset", type=int, default=DEFAULT_OPSETS["dynamo"])
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for m in MODELS.values():
            print(f"{m.name:36} {m.description}")
        return 0
    names = args.models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["versions"] = _versions()
    opsets = {"ts": args.ts_opset, "dynamo": args.dynamo_opset}
    for name in names:
        spec = MODELS[name]
        if spec.needs == "timm" and "timm" not in summary["versions"]:
            summary.setdefault("results", {})[name] = [{"model": name, "export_error": "timm is not installed"}]
            continue
        summary.setdefault("results", {})[name] = run_one(spec, args.exporters, args.out, opsets)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    failed = [r for rows in summary["results"].values() for r in rows if "export_error" in r]
    print(f"wrote {summary_path}; {len(failed)} export(s) failed", file=sys.stderr)
    return 0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for pkg in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


if __name__ == "__main__":
    sys.exit(main())
