"""Export PyTorch vision models to ONNX with both of torch's exporters, random weights, nothing downloaded.

Each model is exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) and
the dynamo exporter (``dynamo=True``), in eval mode, with weights from ``torch.manual_seed(0)``.
Every export is checked in onnxruntime against torch at a shape with N=2 and H != W, and described
(size, op counts, input dims and which are symbolic, rank-4 MatMuls after ONNX shape inference)
in ``summary.json`` beside the files.

torch, torchvision and timm are imported inside the functions, so this module imports without them;
running it needs a separate environment with torch (the converter's own venv does not have it):

    python models/torch_exports.py -o exports                             # every model, both exporters
    python models/torch_exports.py -o out --models tv_convnext_small_dynamic --exporters ts
    python models/torch_exports.py --list
    python models/torch_exports.py --scrub FILE.onnx ...                  # the paths out of files exported before

The dynamo exporter records a stack trace per node (``pkg.torch.onnx.stack_trace`` metadata) with the
exporting machine's absolute paths; every export is written without them (``scrub_paths``: the paths
become ``site-packages/...`` and paths relative to this repository, nothing else changes).

A model that one exporter cannot handle is recorded in the summary with the error, and the others go on.

The rest of the project uses three functions from here: ``export_model`` (one model, one exporter:
what models/zoo.py's TORCH_ZOO entries and models/fixtures/ are built with), ``linear_layers`` (every
MatMul of an export and where its weight and bias come from, read from the ONNX graph alone) and
``unmet`` (where a conversion falls short of the torch zoo's acceptance), which need only onnx.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Collection
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
    shape: tuple[int, ...] = (2, 3, 64, 96)  # the example input used for export (a token model's is [N, S, C])
    dynamic: bool = False  # dynamic N, H and W
    dynamic_batch: bool = False  # dynamic N only (H and W as in ``shape``): the usual deployment export
    min_hw: int = 32  # smallest H and W the model accepts (its total stride), for the dynamo exporter's Dims
    check_shapes: tuple[tuple[int, ...], ...] = field(default=(CHECK_SHAPE,))
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


def _timm_mambaout_small_arch() -> Any:
    """timm's MambaOut class at narrow widths: 2 stages (16, 24 channels), 1 gated CNN block each, 10 classes."""
    from timm.models.mambaout import MambaOut

    return MambaOut(depths=(1, 1), dims=(16, 24), num_classes=10)


def _tv_swin_small_arch() -> Any:
    """torchvision's SwinTransformer class at narrow widths: 2 stages (16, 32 channels), 2 + 1 blocks (the second one
    shifted: a cyclic roll and an attention mask), 4x4 windows."""
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 1],
        num_heads=[2, 4],
        window_size=[4, 4],
        stochastic_depth_prob=0.0,
        num_classes=10,
    )


def _equal_linears() -> Any:
    """Two Linear branches on an NHWC stream whose weights and biases are equal but not the same Parameter
    (as after copying one layer's weights into another), plus a third Linear that shares its Parameters
    with the first. TorchScript's export deduplicates the equal initializers through Identity nodes."""
    import torch
    from torch import nn

    class EqualLinears(nn.Module):
        def __init__(self, c: int = 8, k: int = 12) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, c, 3, padding=1)
            self.a = nn.Linear(c, k)
            self.b = nn.Linear(c, k)
            self.tied = nn.Linear(c, k)
            self.out = nn.Linear(k, c)
            self.head = nn.Linear(c, 10)
            with torch.no_grad():
                self.b.weight.copy_(self.a.weight)
                self.b.bias.copy_(self.a.bias)
            self.tied.weight = self.a.weight
            self.tied.bias = self.a.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
            z = torch.relu(self.a(y)) + torch.tanh(self.b(y)) + torch.sigmoid(self.tied(y))
            z = self.out(z).permute(0, 3, 1, 2)  # NHWC -> NCHW
            return self.head(z.mean((2, 3)))

    return EqualLinears()


def _perturbed(build: Callable[[], Any]) -> Callable[[], Any]:
    """``build`` with every parameter perturbed (``perturb``): timm's fresh ViT and Mixer have zero heads
    (a constant output verifies nothing) and many equal tensors."""
    return lambda: perturb(build())


def _transformer_encoder() -> Any:
    """torch.nn.TransformerEncoder, batch_first: 2 layers, d_model 32, 4 heads, feed-forward 64, no dropout.
    Its MultiheadAttention works on [S, B, E] inside (in_proj on rank 3, out_proj as Reshape -> Gemm -> Reshape)."""
    import torch

    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
    return perturb(torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))


ENCODER_SHAPE = (2, 7, 32)  # [N, S, C]: S != C, N > 1

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
            "timm_mambaout_small_dynamic",
            "timm MambaOut class, dims 16 / 24, 1 block per stage, 10 classes, dynamic N, H, W",
            _timm_mambaout_small_arch,
            dynamic=True,
            min_hw=8,
            check_shapes=(CHECK_SHAPE, (1, 3, 40, 24)),
            needs="timm",
        ),
        TorchModel(
            "tv_swin_small_static",
            "torchvision SwinTransformer class, embed dim 16, depths 2 / 1, heads 2 / 4, window 4x4, 10 classes, "
            "static [2, 3, 64, 96]",
            _tv_swin_small_arch,
        ),
        TorchModel(
            "equal_linears_dynamic",
            "a Conv stem and three Linears on NHWC (two with equal weights, one sharing the first's Parameters), dynamic N, H, W",
            _equal_linears,
            dynamic=True,
            min_hw=2,
            check_shapes=(CHECK_SHAPE, (1, 3, 40, 24)),
            needs="torch",
        ),
        TorchModel(
            "tv_convnext_tiny_dynbatch",
            "torchvision convnext_tiny, dynamic N, H and W fixed at 64x96",
            _tv_convnext_tiny,
            dynamic_batch=True,
        ),
        TorchModel(
            "tv_swin_t_dynbatch",
            "torchvision swin_t, dynamic N, H and W fixed at 224x320",
            _tv_swin_t,
            shape=(2, 3, 224, 320),
            dynamic_batch=True,
            check_shapes=((2, 3, 224, 320), (1, 3, 224, 320)),
        ),
        TorchModel(
            "timm_convnext_tiny_dynbatch",
            "timm convnext_tiny (conv_mlp=False by default: its MLPs are nn.Linear on NHWC), dynamic N, H and W fixed at 64x96",
            _timm("convnext_tiny"),
            dynamic_batch=True,
            needs="timm",
        ),
        TorchModel(
            "timm_edgenext_xx_small_dynbatch",
            "timm edgenext_xx_small (conv encoders with nn.Linear MLPs on NHWC, split depth-wise transposed attention), "
            "dynamic N, H and W fixed at 64x96",
            _timm("edgenext_xx_small"),
            dynamic_batch=True,
            needs="timm",
        ),
        TorchModel(
            "timm_mambaout_femto_dynbatch",
            "timm mambaout_femto (gated CNN blocks on NHWC: Linear -> Split -> depthwise Conv on NCHW -> Concat -> Linear), "
            "dynamic N, H and W fixed at 64x96",
            _timm("mambaout_femto"),
            dynamic_batch=True,
            needs="timm",
        ),
        # Token models (issue 13: Linears on [B, S, C], converted with tokens=True), perturbed weights.
        TorchModel(
            "timm_vit_tiny_dynbatch",
            "timm vit_tiny_patch16_224 at img_size=(64, 96) (24 patch tokens + class token), perturbed, dynamic N",
            _perturbed(_timm("vit_tiny_patch16_224", img_size=(64, 96))),
            dynamic_batch=True,
            needs="timm",
        ),
        TorchModel(
            "timm_deit_tiny_dynbatch",
            "timm deit_tiny_patch16_224 at img_size=(64, 96), perturbed, dynamic N",
            _perturbed(_timm("deit_tiny_patch16_224", img_size=(64, 96))),
            dynamic_batch=True,
            needs="timm",
        ),
        TorchModel(
            "timm_mixer_s16_dynbatch",
            "timm mixer_s16_224 at img_size=(64, 96) (24 tokens: token mixing over S), perturbed, dynamic N",
            _perturbed(_timm("mixer_s16_224", img_size=(64, 96))),
            dynamic_batch=True,
            needs="timm",
        ),
        TorchModel(
            "torch_encoder_dynbatch",
            "torch.nn.TransformerEncoder (batch_first, 2 layers, d_model 32, 4 heads), perturbed, input [N, 7, 32], dynamic N",
            _transformer_encoder,
            shape=ENCODER_SHAPE,
            dynamic_batch=True,
            check_shapes=(ENCODER_SHAPE, (1, *ENCODER_SHAPE[1:])),
            needs="torch",
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
    axes = {0: "N", 2: "H", 3: "W"} if spec.dynamic else {0: "N"} if spec.dynamic_batch else None
    if exporter == "ts":
        dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: {0: "N"}} if axes else None
        with warnings.catch_warnings():  # the legacy exporter is the point here, not a mistake
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
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
    if axes:
        dim = torch.export.Dim
        dims = {0: dim("N", min=1, max=1024), 2: dim("H", min=spec.min_hw), 3: dim("W", min=spec.min_hw)}
        dynamic_shapes = ({axis: dims[axis] for axis in axes},)
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        verbose=False,  # no progress lines on stdout (the file is the same)
    )
    # one self-contained file: torch.onnx.export(..., f=path, dynamo=True) would put the weights in path.data
    # (its external_data defaults to True, whatever the model's size)
    program.save(str(path), external_data=False)
    scrub_paths(path)


REPO = Path(__file__).resolve().parent.parent
_SITE_PACKAGES = re.compile(r"(?<![\w.])/[^\s\"'<>]*?/(?:site|dist)-packages/")


def scrub_paths(path: Path, root: Path = REPO) -> int:
    """Rewrite the ONNX file at ``path`` without the exporting machine's absolute paths; returns how many strings changed.

    Every string of the model (node, graph and value metadata, doc strings) is rewritten: an installed
    package's path becomes ``site-packages/...``, a path inside ``root`` (this repository) becomes relative
    to it. Nothing else changes: protobuf writes the other fields back byte for byte.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    prefix = str(root).rstrip("/") + "/"
    changed = 0

    def scrub(text: str) -> str:
        nonlocal changed
        new = _SITE_PACKAGES.sub("site-packages/", text).replace(prefix, "")
        changed += new != text
        return new

    def walk(message: Any) -> None:
        for field_, value in message.ListFields():
            values = list(value) if _repeated(field_) else [value]
            if field_.type == field_.TYPE_MESSAGE:
                for v in values:
                    walk(v)
            elif field_.type == field_.TYPE_STRING:
                new = [scrub(v) for v in values]
                if new != values:
                    if _repeated(field_):
                        del value[:]
                        value.extend(new)
                    else:
                        setattr(message, field_.name, new[0])

    walk(model)
    if changed:
        onnx.save(model, str(path))
    return changed


def _repeated(field_: Any) -> bool:
    is_repeated = getattr(field_, "is_repeated", None)  # protobuf 5.x+; older versions have only ``label``
    return bool(is_repeated) if is_repeated is not None else field_.label == field_.LABEL_REPEATED


def check(model: Any, path: Path, shapes: tuple[tuple[int, ...], ...]) -> list[dict]:
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


@dataclass(frozen=True)
class LinearLayer:
    """One MatMul as the exporter wrote it, read from the ONNX graph alone (not by the converter).

    ``weight`` and ``bias`` say where the operand comes from: "initializer", "identity" (an Identity
    chain ending at an initializer: TorchScript's deduplicated tensors), "constant" (a Constant node),
    "graph_input" (an initializer that is also an input), "computed"; ``bias`` is None when the
    MatMul's output feeds no Add with a constant other operand. ``bias_foldable``: that Add is the
    output's only consumer, the output is no graph output and the bias varies along the last axis only.
    """

    node: str  # node_label(): the name, or "MatMul(<output>)" when unnamed (as the converter reports it)
    output: str
    rank: int | None  # rank of the activation (input 0) after ONNX shape inference
    weight: str
    bias: str | None = None
    bias_first: bool = False  # Add(bias, y), the order TorchScript writes
    bias_foldable: bool = False

    @property
    def candidate(self) -> bool:
        """A Linear on a rank-4 tensor with a constant weight: what the converter is meant to rewrite."""
        return self.rank == 4 and self.weight in ("initializer", "identity", "constant")

    @property
    def token_candidate(self) -> bool:
        """A Linear on a rank-3 token sequence with a constant weight: what ``tokens=True`` rewrites."""
        return self.rank == 3 and self.weight in ("initializer", "identity", "constant")


def sandwich_linears(model: Any) -> list[str]:
    """Gemm / MatMul nodes between two Reshapes with an initializer weight (MultiheadAttention's out_proj):
    Linears on a rank-3 tensor that the exporter flattened to rank 2. Their node labels."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    found = []
    for n in graph.node:
        if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        first = producer.get(n.input[0])
        if first is None or first.op_type != "Reshape":
            continue
        if any(r.op_type == "Reshape" and r.input[0] == n.output[0] for r in readers.get(n.output[0], [])):
            found.append(n.name or f"{n.op_type}({n.output[0]})")
    return found


def linear_layers(model: Any) -> list[LinearLayer]:
    """Every MatMul of the main graph of ``model`` (an onnx.ModelProto), with where its operands come from."""
    from onnx import shape_inference

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inputs = {i.name for i in graph.input}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    # shape inference on a copy without the large weights' data (their dims are all it needs; small
    # tensors stay, they may be shapes that data propagation reads)
    light = type(model)()
    light.CopyFrom(model)
    for t in light.graph.initializer:
        if len(t.raw_data) > 65536:
            t.ClearField("raw_data")
    inferred = shape_inference.infer_shapes(light, data_prop=True)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if vi.type.tensor_type.HasField("shape")
    }

    def source(name: str) -> tuple[str, Any]:
        via_identity = False
        while True:
            if name in inits:
                if name in inputs:
                    return "graph_input", None
                return ("identity" if via_identity else "initializer"), inits[name]
            node = producer.get(name)
            if node is None:
                return "computed", None
            if node.op_type == "Constant":
                tensor = next((a.t for a in node.attribute if a.name == "value"), None)
                return ("identity" if via_identity else "constant"), tensor
            if node.op_type != "Identity":
                return "computed", None
            via_identity, name = True, node.input[0]

    layers = []
    for n in graph.node:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx"):
            continue
        y = n.output[0]
        weight, _ = source(n.input[1])
        bias, bias_first, foldable = None, False, False
        for add in consumers.get(y, []):
            if add.op_type != "Add" or len(add.input) != 2:
                continue
            other = add.input[1] if add.input[0] == y else add.input[0]
            kind, tensor = source(other)
            if kind in ("initializer", "identity", "constant"):
                dims = list(tensor.dims) if tensor is not None else []
                per_channel = len(dims) <= 4 and all(d == 1 for d in dims[:-1])
                bias, bias_first = kind, add.input[0] == other
                foldable = per_channel and len(consumers[y]) == 1 and y not in outputs
                break
        label = n.name or f"MatMul({y})"
        layers.append(LinearLayer(label, y, ranks.get(n.input[0]), weight, bias, bias_first, foldable))
    return layers


def unmet(
    layers: list[LinearLayer], decisions: list[Any], allowed_declines: Collection[str] = (), tokens: bool = False
) -> dict[str, list[str]]:
    """Where a conversion falls short of the torch zoo's acceptance, per layer (every list empty: met).

    With ``tokens`` the candidates are the Linears on rank-3 token sequences instead (``token_candidate``).

    ``decisions`` are the converter's (``report.rewrite.decisions``). "not_rewritten": a candidate
    Linear (rank 4, constant weight, also one behind an Identity) that was neither rewritten nor
    declined with one of ``allowed_declines``; "bias_not_folded": a rewritten one whose foldable
    constant bias (also one behind an Identity) stayed an Add.
    """
    by_node = {d.node: d for d in decisions if d.op_type == "MatMul"}
    out: dict[str, list[str]] = {"not_rewritten": [], "bias_not_folded": []}
    for layer in layers:
        if not (layer.token_candidate if tokens else layer.candidate):
            continue
        d = by_node.get(layer.node)
        if d is None:
            out["not_rewritten"].append(f"{layer.node}: no decision")
        elif not d.rewritten:
            if d.reason not in allowed_declines:
                out["not_rewritten"].append(f"{layer.node} (weight: {layer.weight}): {d.reason}: {d.detail}")
        elif layer.bias_foldable and not d.notes.get("bias_folded"):
            out["bias_not_folded"].append(f"{layer.node} (bias: {layer.bias}): {d.notes.get('bias_reason')}")
    return out


# ---------------------------------------------------------------------------------------------
# driver


def export_model(name: str, exporter: str, path: Path, opset: int | None = None) -> Path:
    """Build ``MODELS[name]`` with ``torch.manual_seed(0)`` weights and write it with ``exporter`` ("ts" or "dynamo")."""
    import torch

    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    export(model, spec, exporter, path, opset or DEFAULT_OPSETS[exporter])
    return path


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
        row["dynamic_batch"] = spec.dynamic_batch
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
    parser.add_argument("--scrub", nargs="+", type=Path, metavar="FILE", help="rewrite ONNX files without machine paths and exit")
    args = parser.parse_args(argv)
    if args.scrub:
        for path in args.scrub:
            print(f"{path}: {scrub_paths(path)} strings rewritten", file=sys.stderr)
        return 0
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
