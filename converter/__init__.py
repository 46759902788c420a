"""Turn dense layers (MatMul + Add) on 4D tensors into 1x1 convolutions, and prove it in onnxruntime.

import converter
result = converter.rewrite(model)                      # ModelProto -> result.model, result.report
check = converter.verify(model, result)                # a RewriteResult carries its claims: check.passed
report = converter.convert("model.onnx", "out.onnx")   # load -> rewrite -> verify -> save
converter.rewrite(model, layout="keep-all")            # every layer, whatever Transposes it adds (LAYOUTS)
converter.rewrite(model, tokens=True)                  # also dense layers on token sequences [B, S, C] (transformers)
converter.rewrite("model.onnx"), converter.rewrite(graph)  # a path, or an onnx-graphsurgeon gs.Graph (gs back)
converter.convert("m.onnx", options=converter.ConvertOptions(verify=converter.VerifyOptions(atol=1e-4)))
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:  # the installed distribution's version, so `convert --version` and pip agree
    __version__ = _version("dense2conv")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from converter.errors import ConverterError, InputError, ProviderUnavailable
from converter.files.save import save
from converter.options import (
    DEFAULT_LAYOUT,
    LAYOUTS,
    ConvertOptions,
    OutputOptions,
    RewriteOptions,
    TensorFlowOptions,
    VerifyOptions,
)
from converter.pipeline import RULES, RewriteResult, convert, load, rewrite
from converter.report import ConvertReport, Decision, LayoutReport, OutputCheck, RewriteReport, VerifyReport
from converter.verifier.run import verify, verify_reference

__all__ = [
    "DEFAULT_LAYOUT",
    "__version__",
    "LAYOUTS",
    "RULES",
    "ConvertOptions",
    "ConvertReport",
    "ConverterError",
    "Decision",
    "InputError",
    "LayoutReport",
    "OutputCheck",
    "OutputOptions",
    "ProviderUnavailable",
    "RewriteOptions",
    "RewriteReport",
    "RewriteResult",
    "TensorFlowOptions",
    "VerifyOptions",
    "VerifyReport",
    "convert",
    "load",
    "rewrite",
    "save",
    "verify",
    "verify_reference",
]
