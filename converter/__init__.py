"""Turn dense layers (MatMul + Add) on 4D tensors into 1x1 convolutions, and prove it in onnxruntime.

import converter
result = converter.rewrite(model)                      # ModelProto -> result.model, result.report
check = converter.verify(model, result.model)          # check.passed, check.outputs
report = converter.convert("model.onnx", "out.onnx")   # load -> rewrite -> verify -> save
converter.rewrite(model, layout="never-worse")         # decline layers that would add Transposes (LAYOUTS)
converter.rewrite(model, tokens=True)                  # also dense layers on token sequences [B, S, C] (transformers)
converter.rewrite("model.onnx"), converter.rewrite(graph)  # a path, or an onnx-graphsurgeon gs.Graph (gs back)
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:  # the installed distribution's version, so `convert --version` and pip agree
    __version__ = _version("dense2conv")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from .errors import ConverterError, InputError, ProviderUnavailable
from .layout import DEFAULT_LAYOUT, LAYOUTS
from .pipeline import RULES, RewriteResult, convert, load, rewrite
from .report import ConvertReport, Decision, LayoutReport, OutputCheck, RewriteReport, VerifyReport
from .save import save
from .verify import verify, verify_reference

__all__ = [
    "DEFAULT_LAYOUT",
    "__version__",
    "LAYOUTS",
    "RULES",
    "ConvertReport",
    "ConverterError",
    "Decision",
    "InputError",
    "LayoutReport",
    "OutputCheck",
    "ProviderUnavailable",
    "RewriteReport",
    "RewriteResult",
    "VerifyReport",
    "convert",
    "load",
    "rewrite",
    "save",
    "verify",
    "verify_reference",
]
