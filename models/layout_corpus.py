"""A corpus of real PyTorch exports for the layout work (issue 21): the architectures people deploy, random weights.

models/zoo.py's TORCH_ZOO holds ConvNeXt, Swin, EdgeNeXt, MambaOut, ViT-style and MLP-Mixer exports. The layout
optimizer has to hold on more than those: here are windowed image encoders, hierarchical and pyramid ViTs, hybrid
conv-attention models, encoder-only text transformers, speech encoders and self-supervised ViTs, built from timm
and transformers classes with small configs (nothing downloaded: ``pretrained=False`` or a config object),
every parameter perturbed (``models.torch_exports.perturb``) so that no two tensors are equal and no head is zero.
They differ where the layout problem does: Linears on rank-4 NHWC streams and on rank-3 token sequences, window
partitions and reverses, head split and merge, LayerNorm before and after permutes, relative position biases,
Conv stems and depthwise Convs between Linears.

Each model is exported in two variants, each with both of torch's exporters (TorchScript, ``dynamo=False``;
dynamo, ``dynamo=True``):

- ``static``: every dim fixed, batch 1 (what an accelerator compiler is given);
- ``dynamic``: batch 2 at export, the batch dim symbolic, and where the model allows it the spatial or
  sequence dims too (``CorpusModel.dynamic`` names them).

Every export is run in onnxruntime against torch (max abs diff, graph optimizations off and on) and described
(``models.torch_exports.describe``; rank-3 and rank-4 Linears from ``linear_layers``) in ``summary.json``.
An export that fails is recorded there with its error, and the others go on.

    python -m models.layout_corpus                          # every model, both variants and exporters
    python -m models.layout_corpus --models hf_bert_tiny --exporters ts --variants static
    python -m models.layout_corpus --list

The exports go to ``.zoo-cache/layout/`` (``--out``), named ``<model>_<variant>_<exporter>.onnx``.
torch, timm and transformers are imported inside the builders: the module imports with onnx alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.torch_exports import DEFAULT_OPSETS, EXPORTERS, describe, linear_layers, perturb, sandwich_linears

DEFAULT_OUT = Path(".zoo-cache") / "layout"
VARIANTS = ("static", "dynamic")
FAMILIES = (
    "windowed image encoder",
    "hierarchical / pyramid ViT",
    "hybrid conv-attention",
    "encoder-only text transformer",
    "speech encoder",
    "self-supervised ViT",
)
OUTPUT_NAME = "y"
IMAGE = (2, 3, 64, 96)  # N=2 and H != W, as models/torch_exports.py's CHECK_SHAPE


@dataclass(frozen=True)
class Input:
    """One model input: its name, its shape at export (batch 2), floats or token ids below ``high``."""

    name: str
    shape: tuple[int, ...]
    ids: bool = False  # int64 token ids in [0, high) instead of normal floats
    high: int = 0


@dataclass(frozen=True)
class CorpusModel:
    """One architecture of the corpus.

    ``dynamic`` maps an input's axis to its symbol in the dynamic variant (the batch axis at least) and the
    smallest size the model takes there (dynamo's ``Dim`` minimum); ``check`` adds shapes the dynamic
    variant is checked at besides its export shape (the batch at 1, another sequence length or image size).
    """

    name: str
    family: str
    description: str
    build: Callable[[], Any]  # the torch module, random weights; eval mode is set by the caller
    inputs: tuple[Input, ...]
    dynamic: dict[int, tuple[str, int]] = field(default_factory=lambda: {0: ("N", 1)})
    check: tuple[tuple[int, ...], ...] = ()
    needs: str = "timm"

    def shapes(self, variant: str) -> list[tuple[int, ...]]:
        """The shapes the export of ``variant`` is checked at (of the first input; the others follow its batch)."""
        first = self.inputs[0].shape
        if variant == "static":
            return [(1, *first[1:])]
        return [first, *self.check, (1, *first[1:])]


def entry_name(model: str, variant: str, exporter: str) -> str:
    """The corpus entry's name, and its file's stem: ``<model>_<variant>_<exporter>``."""
    return f"{model}_{variant}_{exporter}"


# ---------------------------------------------------------------------------------------------
# builders (torch, timm and transformers imported inside)


def _last_hidden(make: Callable[[], Any]) -> Callable[[], Any]:
    """A builder of a torch module that returns the transformers model ``make()``'s ``last_hidden_state`` (a plain
    tensor to export), every parameter perturbed."""

    def build() -> Any:
        import torch

        class LastHidden(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x).last_hidden_state

        return perturb(LastHidden(make()))

    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import timm

        return perturb(timm.create_model(name, pretrained=False, **kwargs))

    return build


def _timm_maxvit() -> Any:
    """timm's MaxxVit class as MaxViT-rmlp at narrow widths: 2 stages of one MaxViT block (MBConv, block
    attention, grid attention), relative position MLPs, all attention on NHWC partitions."""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _rw_max_cfg

    cfg = MaxxVitCfg(
        embed_dim=(32, 64), depths=(1, 1), block_type=("M", "M"), stem_width=(16, 32), **_rw_max_cfg(rel_pos_type="mlp", dim_head=8)
    )
    return perturb(MaxxVit(cfg, img_size=(64, 96), num_classes=10))


def _gcvit() -> Any:
    """timm's GlobalContextVit class at narrow widths: 3 stages of one block (window 4, 4, 2), 10 classes."""
    from timm.models.gcvit import GlobalContextVit

    return perturb(
        GlobalContextVit(
            img_size=(64, 96), embed_dim=32, depths=(1, 1, 1), num_heads=(2, 4, 8), window_size=(4, 4, 2), num_classes=10
        )
    )


def _caformer() -> Any:
    """timm's MetaFormer class as CAFormer (caformer_s18's mixers and norms) at narrow widths, one block per stage."""
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    return perturb(
        MetaFormer(
            depths=(1, 1, 1, 1),
            dims=(32, 64, 96, 128),
            token_mixers=(SepConv, SepConv, Attention, Attention),
            norm_layers=(LayerNorm2dNoBias,) * 2 + (LayerNormNoBias,) * 2,
            num_classes=10,
        )
    )


def _hf(config: str, model: str, module: str | None = None, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import importlib

        import transformers

        cls = getattr(importlib.import_module(module), model) if module else getattr(transformers, model)
        return cls(getattr(transformers, config)(**kwargs))

    return _last_hidden(make)


_TEXT = dict(vocab_size=512, max_position_embeddings=64)
_BERTLIKE = dict(_TEXT, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_TOKENS = (2, 12)  # [N, S]: S != hidden size, N > 1
_TOKENS_CHECK = ((2, 20),)

MODELS: dict[str, CorpusModel] = {
    m.name: m
    for m in [
        # windowed image encoders
        CorpusModel(
            "timm_swinv2_cr_small",
            FAMILIES[0],
            "timm SwinTransformerV2Cr (swinv2_cr_tiny_ns_224 class): embed 32, depths 2 / 1, heads 2 / 4, window 4, "
            "img 64x96; NHWC between blocks, window attention on [N*windows, 16, C] and the MLP on [N, H*W, C] (rank-3 "
            "Linears), the patch merge's Linear on rank 4, cyclic shift, scaled cosine attention, a position-bias MLP",
            _timm(
                "swinv2_cr_tiny_ns_224",
                img_size=(64, 96),
                embed_dim=32,
                depths=(2, 1),
                num_heads=(2, 4),
                window_size=4,
                num_classes=10,
            ),
            (Input("x", IMAGE),),
        ),
        CorpusModel(
            "timm_swin_small",
            FAMILIES[0],
            "timm SwinTransformer (swin_tiny_patch4_window7_224 class): embed 32, depths 2 / 2, heads 2 / 4, window 4, "
            "img 64x96; NHWC between blocks, rank-3 window attention and MLP, the patch merge's Linear on rank 4, a "
            "relative position bias table, shifted windows with a mask",
            _timm(
                "swin_tiny_patch4_window7_224",
                img_size=(64, 96),
                embed_dim=32,
                depths=(2, 2),
                num_heads=(2, 4),
                window_size=4,
                num_classes=10,
            ),
            (Input("x", IMAGE),),
        ),
        CorpusModel(
            "hf_swinv2_small",
            FAMILIES[0],
            "transformers Swinv2Model: embed 32, depths 2 / 1, heads 2 / 4, window 4, img 64x96 (padded to windows); "
            "token stream [N, L, C] (rank-3 Linears), windows cut by view/permute, the continuous position-bias MLP",
            _hf("Swinv2Config", "Swinv2Model", image_size=64, embed_dim=32, depths=[2, 1], num_heads=[2, 4], window_size=4),
            (Input("x", IMAGE),),
            needs="transformers",
        ),
        CorpusModel(
            "timm_maxvit_rmlp_small",
            FAMILIES[0],
            "timm MaxxVit (maxvit_rmlp_pico_rw class): stages 32 / 64 channels, one MaxViT block each (MBConv, block "
            "and grid attention on NHWC partitions, relative position MLP), img 64x96",
            _timm_maxvit,
            (Input("x", IMAGE),),
        ),
        CorpusModel(
            "timm_gcvit_small",
            FAMILIES[0],
            "timm GlobalContextVit (gcvit_xxtiny class): embed 32, 3 stages of one block, heads 2 / 4 / 8, windows "
            "4 / 4 / 2, img 64x96; NHWC stages (LayerNorm and the MLP's Linears on rank 4), window partition / reverse, "
            "a global query from a Conv feature extractor",
            _gcvit,
            (Input("x", IMAGE),),
        ),
        # hierarchical and pyramid ViTs
        CorpusModel(
            "timm_pvt_v2_b0",
            FAMILIES[1],
            "timm pvt_v2_b0 (3.7M parameters): overlapping Conv patch embeds, spatial-reduction attention (a strided "
            "Conv on the keys' map), Mix-FFN with a depthwise Conv between token Linears; dynamic N, H, W",
            _timm("pvt_v2_b0", num_classes=10),
            (Input("x", IMAGE),),
            dynamic={0: ("N", 1), 2: ("H", 32), 3: ("W", 32)},
            check=((2, 3, 96, 64),),
        ),
        CorpusModel(
            "hf_segformer_small",
            FAMILIES[1],
            "transformers SegformerModel (Mix Transformer encoder): 2 stages, hidden 32 / 64, heads 1 / 2, depth 1 / 1, "
            "sr ratios 4 / 2; NCHW between stages, rank-3 token Linears inside; dynamic N, H, W",
            _hf(
                "SegformerConfig",
                "SegformerModel",
                num_encoder_blocks=2,
                depths=[1, 1],
                sr_ratios=[4, 2],
                hidden_sizes=[32, 64],
                patch_sizes=[7, 3],
                strides=[4, 2],
                num_attention_heads=[1, 2],
                mlp_ratios=[4, 4],
            ),
            (Input("x", IMAGE),),
            dynamic={0: ("N", 1), 2: ("H", 32), 3: ("W", 32)},
            check=((2, 3, 96, 64),),
            needs="transformers",
        ),
        CorpusModel(
            "timm_twins_svt_small",
            FAMILIES[1],
            "timm Twins-SVT (twins_svt_small class): embed 32 / 64, depths 2 / 2, locally-grouped window attention "
            "alternating with global sub-sampled attention, a conditional position Conv, img 64x96",
            _timm(
                "twins_svt_small",
                img_size=(64, 96),
                embed_dims=(32, 64),
                num_heads=(1, 2),
                mlp_ratios=(4, 4),
                depths=(2, 2),
                wss=(4, 4),
                sr_ratios=(2, 1),
                num_classes=10,
            ),
            (Input("x", IMAGE),),
        ),
        # hybrid conv-attention
        CorpusModel(
            "timm_mobilevit_xxs",
            FAMILIES[2],
            "timm mobilevit_xxs (1.3M parameters): MobileNet blocks, then unfold into patches, a transformer on "
            "[N*P, T, C] tokens and fold back, img 64x96",
            _timm("mobilevit_xxs", num_classes=10),
            (Input("x", IMAGE),),
        ),
        CorpusModel(
            "timm_efficientformer_small",
            FAMILIES[2],
            "timm EfficientFormer (efficientformer_l1 class): widths 16 / 24 / 32 / 48, depths 1 / 1 / 1 / 2, the last "
            "block a token transformer (Flat, LayerNorm, attention with a 7x7 bias table, Linear MLP), "
            "img 224x224 (the size its bias table is for)",
            _timm("efficientformer_l1", depths=(1, 1, 1, 2), embed_dims=(16, 24, 32, 48), num_vit=1, num_classes=10),
            (Input("x", (2, 3, 224, 224)),),
        ),
        CorpusModel(
            "timm_caformer_small",
            FAMILIES[2],
            "timm MetaFormer as caformer_s18 at narrow widths: dims 32 / 64 / 96 / 128, one block per stage; separable-Conv "
            "stages on NCHW, then attention stages on [N, H*W, C] tokens (LayerNorm, rank-3 Linears); "
            "dynamic N, H, W",
            _caformer,
            (Input("x", IMAGE),),
            dynamic={0: ("N", 1), 2: ("H", 32), 3: ("W", 32)},
            check=((2, 3, 96, 64),),
        ),
        CorpusModel(
            "timm_levit_small",
            FAMILIES[2],
            "timm LeViT (levit_128s class): embed 32 / 48, key dim 8, heads 2 / 3, depth 1 / 1, Linear+BatchNorm "
            "token layers, attention biases, a shrinking attention between stages, img 64x64",
            _timm(
                "levit_128s",
                img_size=64,
                embed_dim=(32, 48),
                key_dim=8,
                num_heads=(2, 3),
                depth=(1, 1),
                num_classes=10,
            ),
            (Input("x", (2, 3, 64, 64)),),
        ),
        CorpusModel(
            "timm_sequencer2d_small",
            FAMILIES[2],
            "timm Sequencer2d (sequencer2d_s class): embed 32 / 48, hidden 8 / 12, one block per stage (BiLSTM2d along "
            "H and W on NHWC, Linear MLPs), img 64x96",
            _timm(
                "sequencer2d_s",
                layers=(1, 1),
                patch_sizes=(8, 2),
                embed_dims=(32, 48),
                hidden_sizes=(8, 12),
                mlp_ratios=(2.0, 2.0),
                num_classes=10,
            ),
            (Input("x", IMAGE),),
        ),
        # encoder-only text transformers
        CorpusModel(
            "hf_bert_tiny",
            FAMILIES[3],
            "transformers BertModel: hidden 64, 2 layers, 4 heads, intermediate 128, vocab 512; input ids [N, S], dynamic N and S",
            _hf("BertConfig", "BertModel", **_BERTLIKE),
            (Input("input_ids", _TOKENS, ids=True, high=512),),
            dynamic={0: ("N", 1), 1: ("S", 2)},
            check=_TOKENS_CHECK,
            needs="transformers",
        ),
        CorpusModel(
            "hf_distilbert_tiny",
            FAMILIES[3],
            "transformers DistilBertModel: dim 64, 2 layers, 4 heads, hidden 128, vocab 512; dynamic N and S",
            _hf("DistilBertConfig", "DistilBertModel", **_TEXT, dim=64, n_layers=2, n_heads=4, hidden_dim=128),
            (Input("input_ids", _TOKENS, ids=True, high=512),),
            dynamic={0: ("N", 1), 1: ("S", 2)},
            check=_TOKENS_CHECK,
            needs="transformers",
        ),
        CorpusModel(
            "hf_electra_tiny",
            FAMILIES[3],
            "transformers ElectraModel: embedding 32 projected to hidden 64 (a rank-3 Linear before the encoder), "
            "2 layers, 4 heads, intermediate 128; dynamic N and S",
            _hf("ElectraConfig", "ElectraModel", **_BERTLIKE, embedding_size=32),
            (Input("input_ids", _TOKENS, ids=True, high=512),),
            dynamic={0: ("N", 1), 1: ("S", 2)},
            check=_TOKENS_CHECK,
            needs="transformers",
        ),
        # speech encoders
        CorpusModel(
            "hf_wav2vec2_tiny",
            FAMILIES[4],
            "transformers Wav2Vec2Model: Conv feature extractor 32 channels, strides 5 / 2 / 2, hidden 64, 2 layers, "
            "4 heads, a grouped positional Conv; raw audio [N, T], dynamic N and T",
            _hf(
                "Wav2Vec2Config",
                "Wav2Vec2Model",
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                conv_dim=(32, 32, 32),
                conv_stride=(5, 2, 2),
                conv_kernel=(10, 3, 3),
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
                mask_time_prob=0.0,
            ),
            (Input("x", (2, 400)),),
            dynamic={0: ("N", 1), 1: ("T", 400)},
            check=((2, 560),),
            needs="transformers",
        ),
        CorpusModel(
            "hf_whisper_encoder_tiny",
            FAMILIES[4],
            "transformers WhisperEncoder: 16 mel bins, two Convs (the second strided), d_model 64, 2 layers, 4 heads, "
            "ffn 128, 32 positions (the log-mel input [N, 16, 64] has the fixed length Whisper requires); dynamic N",
            _hf(
                "WhisperConfig",
                "WhisperEncoder",
                "transformers.models.whisper.modeling_whisper",
                num_mel_bins=16,
                d_model=64,
                encoder_layers=2,
                encoder_attention_heads=4,
                encoder_ffn_dim=128,
                max_source_positions=32,
            ),
            (Input("x", (2, 16, 64)),),
            needs="transformers",
        ),
        # self-supervised ViTs
        CorpusModel(
            "hf_dinov2_small",
            FAMILIES[5],
            "transformers Dinov2Model: hidden 64, 2 layers, 4 heads, patch 14, img 56x56 (16 patches + class token), "
            "layer scale, SwiGLU off",
            _hf(
                "Dinov2Config",
                "Dinov2Model",
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                mlp_ratio=2,
                patch_size=14,
                image_size=56,
            ),
            (Input("x", (2, 3, 56, 56)),),
            needs="transformers",
        ),
        CorpusModel(
            "hf_beit_small",
            FAMILIES[5],
            "transformers BeitModel: hidden 64, 2 layers, 4 heads, patch 16, img 64x96 (24 patches + class token), a "
            "relative position bias per layer, layer scale, mean pooling",
            _hf(
                "BeitConfig",
                "BeitModel",
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                image_size=(64, 96),
                use_relative_position_bias=True,
            ),
            (Input("x", IMAGE),),
            needs="transformers",
        ),
        CorpusModel(
            "timm_convnextv2_small",
            FAMILIES[5],
            "timm ConvNeXt-V2 (the FCMAE-pretrained ConvNet; convnextv2_atto class) at dims 32 / 64 / 96 / 128, one block "
            "per stage, conv_mlp=False: Linears on NHWC with a global response norm (a reduction over H and W) between "
            "them; dynamic N, H, W",
            _timm("convnextv2_atto", depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), conv_mlp=False, num_classes=10),
            (Input("x", IMAGE),),
            dynamic={0: ("N", 1), 2: ("H", 32), 3: ("W", 32)},
            check=((2, 3, 96, 64),),
        ),
        CorpusModel(
            "timm_vit_small_dinov2_reg",
            FAMILIES[5],
            "timm vit_small_patch14_reg4_dinov2 (DINOv2 with 4 register tokens, layer scale) at depth 2, img 56x84",
            _timm("vit_small_patch14_reg4_dinov2", img_size=(56, 84), depth=2, num_classes=10),
            (Input("x", (2, 3, 56, 84)),),
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# export and check


def missing(spec: CorpusModel) -> list[str]:
    """The packages ``spec`` needs that are not installed (empty: it can be built)."""
    needed = ["torch", "onnxscript", *([spec.needs] if spec.needs in ("timm", "transformers") else [])]
    return [p for p in needed if importlib.util.find_spec(p) is None]


def example(spec: CorpusModel, shape: tuple[int, ...], seed: int = 0) -> tuple[Any, ...]:
    """Seeded inputs for ``spec``: normal floats, or token ids in ``[0, high)``.

    Args:
        spec: the corpus entry.
        shape: the first input's shape; the other inputs keep their dims, with this batch.
        seed: seeds the generator (the export uses 0, the check 123).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for i, inp in enumerate(spec.inputs):
        dims = shape if i == 0 else (shape[0], *inp.shape[1:])
        if inp.ids:
            tensors.append(torch.randint(0, inp.high, dims, generator=gen, dtype=torch.int64))
        else:
            tensors.append(torch.randn(*dims, generator=gen))
    return tuple(tensors)


def export(model: Any, spec: CorpusModel, variant: str, exporter: str, path: Path, opset: int | None = None) -> None:
    """Write ``model`` (``spec``'s module, in eval mode) to ``path`` as one self-contained ONNX file.

    Args:
        model: the torch module.
        spec: its corpus entry (inputs, dynamic axes).
        variant: ``static`` (batch 1, every dim fixed) or ``dynamic`` (batch 2, ``spec.dynamic``'s axes symbolic).
        exporter: ``ts`` (TorchScript, ``dynamo=False``) or ``dynamo``.
        path: the file to write.
        opset: the opset (None: models/torch_exports.py's default for the exporter).
    """
    import torch

    opset = opset or DEFAULT_OPSETS[exporter]
    args = example(spec, spec.shapes(variant)[0])
    names = [inp.name for inp in spec.inputs]
    axes = spec.dynamic if variant == "dynamic" else {}
    if exporter == "ts":
        dynamic_axes = {
            name: {a: s for a, (s, _) in axes.items() if a < len(inp.shape)} for name, inp in zip(names, spec.inputs, strict=True)
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=({**dynamic_axes, OUTPUT_NAME: {0: "N"}} if axes else None),
            )
        return
    dynamic_shapes = None
    if axes:
        dims = {a: torch.export.Dim(s, min=lo, max=4096 if a else 1024) for a, (s, lo) in axes.items()}
        dynamic_shapes = tuple({a: d for a, d in dims.items() if a < len(inp.shape)} for inp in spec.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def check(model: Any, spec: CorpusModel, variant: str, path: Path) -> list[dict]:
    """Run the export in onnxruntime against torch at ``spec.shapes(variant)``.

    Args:
        model: the torch module that was exported (eval mode).
        spec: its corpus entry.
        variant: ``static`` or ``dynamic``: which shapes to check at.
        path: the ONNX file.

    Returns:
        One row per shape: the torch output's standard deviation (a constant output proves nothing) and, with
        onnxruntime's graph optimizations off and on, the output shape and the max abs difference (or the error).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    rows = []
    for shape in spec.shapes(variant):
        args = example(spec, shape, seed=123)
        with torch.no_grad():
            want = model(*args).numpy()
        row: dict[str, Any] = {"shape": list(shape), "torch_output_std": float(want.std())}
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        for level, optimization in levels.items():
            opts = ort.SessionOptions()
            opts.graph_optimization_level = optimization
            opts.log_severity_level = 3
            try:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
                (got,) = sess.run(None, feeds)
                diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else None
                row[f"ort_{level}"] = {"output_shape": list(got.shape), "max_abs_diff": diff}
            except Exception as err:  # noqa: BLE001 - recorded: one failing shape must not hide the rest
                row[f"ort_{level}"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:400]}"}
        rows.append(row)
    return rows


def linears(path: Path) -> dict[str, int]:
    """The export's Linears with a constant weight: on rank-4 tensors, on rank-3 token sequences (MatMuls, and
    the Reshape sandwiches around a Gemm that count as rank 3), read from the graph by models/torch_exports.py."""
    import onnx

    model = onnx.load(str(path))
    layers = linear_layers(model)
    return {
        "rank4": sum(x.candidate for x in layers),
        "rank3": sum(x.token_candidate for x in layers) + len(sandwich_linears(model)),
    }


def build_one(spec: CorpusModel, variants: list[str], exporters: list[str], out: Path) -> Iterator[dict]:
    """Build ``spec`` once (``torch.manual_seed(0)``, perturbed) and export, check and describe each variant and exporter.

    Args:
        spec: the corpus entry.
        variants: ``static`` and/or ``dynamic``.
        exporters: ``ts`` and/or ``dynamo``.
        out: the folder the files go to (``<model>_<variant>_<exporter>.onnx``).

    Yields:
        One row per export for ``summary.json``, with ``export_error`` where the exporter failed.
    """
    import torch

    torch.manual_seed(0)
    model = spec.build().eval()
    params = sum(p.numel() for p in model.parameters())
    for variant in variants:
        for exporter in exporters:
            name = entry_name(spec.name, variant, exporter)
            path = out / f"{name}.onnx"
            row: dict[str, Any] = {
                "entry": name,
                "model": spec.name,
                "family": spec.family,
                "variant": variant,
                "exporter": exporter,
                "description": spec.description,
                "parameters": params,
                "inputs": [{"name": i.name, "shape": list(i.shape), "ids": i.ids} for i in spec.inputs],
            }
            started = time.perf_counter()
            try:
                with torch.no_grad():
                    export(model, spec, variant, exporter, path)
            except Exception as err:  # noqa: BLE001 - an exporter that fails is a result, the others go on
                path.unlink(missing_ok=True)
                row["export_error"] = f"{type(err).__name__}: {_summary(str(err))}"
                row["export_traceback_tail"] = traceback.format_exc()[-2500:]
                print(f"[{name}] export FAILED: {row['export_error'][:300]}", file=sys.stderr)
                yield row
                continue
            row["export_seconds"] = round(time.perf_counter() - started, 1)
            row.update(describe(path))
            row["file"] = path.name
            row["linears"] = linears(path)
            row["check"] = check(model, spec, variant, path)
            diffs = [c.get("ort_disabled", {}).get("max_abs_diff", c.get("ort_disabled", {}).get("error")) for c in row["check"]]
            print(
                f"[{name}] {row['size_bytes'] / 1e6:.1f} MB, {row['nodes']} nodes, Linears {row['linears']}, "
                f"{row['export_seconds']} s, max abs diff {diffs}",
                file=sys.stderr,
            )
            yield row


def _summary(message: str) -> str:
    """An exporter's error in a few lines: the dynamo exporter's "Exception summary" when it gives one."""
    _, marker, tail = message.partition("## Exception summary")
    text = tail if marker else message
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "⬆️"]
    return " / ".join(lines)[:1500]


def load_summary(out: Path = DEFAULT_OUT) -> dict:
    """``summary.json`` of the corpus folder (an empty one when there is none yet)."""
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {"results": {}}


def built(out: Path = DEFAULT_OUT) -> dict[str, Path]:
    """The corpus entries whose export exists in ``out``, by entry name, in MODELS order."""
    rows = load_summary(out).get("results", {})
    found = {}
    for model in MODELS:
        for variant in VARIANTS:
            for exporter in EXPORTERS:
                name = entry_name(model, variant, exporter)
                row = rows.get(name)
                if row and "export_error" not in row and (out / row["file"]).exists():
                    found[name] = out / row["file"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--models", nargs="*", default=None, help="which models (default: all); see --list")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--exporters", nargs="*", choices=EXPORTERS, default=list(EXPORTERS))
    parser.add_argument("--missing", action="store_true", help="only the exports not done yet (failed ones are tried again)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for m in MODELS.values():
            print(f"{m.name:28} {m.family:32} {m.description}")
        return 0
    names = args.models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = load_summary(args.out)
    from models.torch_exports import _versions

    summary["versions"] = _versions() | {p: _version(p) for p in ("transformers",) if importlib.util.find_spec(p) is not None}
    for name in names:
        spec = MODELS[name]
        lacking = missing(spec)
        if lacking:
            print(f"[{name}] skipped: {', '.join(lacking)} not installed", file=sys.stderr)
            continue
        variants = args.variants
        if args.missing:
            have = built(args.out)
            variants = [v for v in variants if any(entry_name(name, v, e) not in have for e in args.exporters)]
            if not variants:
                continue
        for row in build_one(spec, variants, args.exporters, args.out):
            summary["results"][row["entry"]] = row
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    failed = [n for n, r in summary["results"].items() if "export_error" in r]
    print(f"wrote {args.out / 'summary.json'}; {len(failed)} export(s) failed: {', '.join(failed) or '-'}", file=sys.stderr)
    return 0


def _version(package: str) -> str:
    import importlib.metadata as md

    return md.version(package)


if __name__ == "__main__":
    sys.exit(main())
