"""Turn dense layers (MatMul + Add) on 4D tensors into 1x1 convolutions, and prove it in onnxruntime.

import converter
result = converter.rewrite(model)                      # ModelProto -> result.model, result.report
check = converter.verify(model, result.model)          # check.passed, check.outputs
report = converter.convert("model.onnx", "out.onnx")   # load -> rewrite -> verify -> save
"""

from .errors import ConverterError, InputError, ProviderUnavailable
from .pipeline import RULES, RewriteResult, convert, load, rewrite
from .report import ConvertReport, Decision, OutputCheck, RewriteReport, VerifyReport
from .save import save
from .verify import verify, verify_reference

__all__ = [
    "RULES",
    "ConvertReport",
    "ConverterError",
    "Decision",
    "InputError",
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
