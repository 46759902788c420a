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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time each name is imported on first use
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

# Where each public name lives. Importing ``converter`` (which ``converter.cli`` does first) imports none of
# onnx, numpy or onnxruntime: ``convert --help`` answers without them.
_EXPORTS = {
    **dict.fromkeys(("ConverterError", "InputError", "ProviderUnavailable"), "converter.errors"),
    "save": "converter.files.save",
    **dict.fromkeys(
        ("DEFAULT_LAYOUT", "LAYOUTS", "ConvertOptions", "OutputOptions", "RewriteOptions", "TensorFlowOptions", "VerifyOptions"),
        "converter.options",
    ),
    **dict.fromkeys(("RULES", "RewriteResult", "convert", "load", "rewrite"), "converter.pipeline"),
    **dict.fromkeys(
        ("ConvertReport", "Decision", "LayoutReport", "OutputCheck", "RewriteReport", "VerifyReport"), "converter.report"
    ),
    **dict.fromkeys(("verify", "verify_reference"), "converter.verifier.run"),
}


def _version() -> str:
    """The installed distribution's version, so that ``convert --version`` and pip agree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dense2conv")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata costs a tenth of a second: only when asked
        globals()[name] = _version()
        return globals()[name]
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'converter' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
