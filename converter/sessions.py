"""One model in onnxruntime for verification: built once, run on several inputs, with inner tensors exposed.

Verification compares tensors inside the graph (each rewritten layer's input and output), not only
the graph outputs; onnxruntime only returns graph outputs, so the session is built from a copy of
the model that lists those tensors as extra outputs. Every run has a deadline: a watchdog sets
onnxruntime's terminate flag when it passes (a model can loop forever), and the run then ends
with ``VerificationTimeout``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ConverterError, InputError
from .graph import weight_bytes
from .runtime import make_session
from .save import EXTERNAL_DATA_ABOVE, save


class VerificationTimeout(InputError):
    """Verification ran past its time limit."""


class Runner:
    """``model`` in onnxruntime, returning its graph outputs and the ``expose``d tensors by name."""

    def __init__(
        self, model: onnx.ModelProto, providers: Sequence[str], expose: Sequence[str] = (), which: str = "original"
    ) -> None:
        self.which = which
        declared = [o.name for o in model.graph.output]
        inputs = {i.name for i in model.graph.input}
        extra = [n for n in dict.fromkeys(expose) if n and n not in declared and n not in inputs]
        self.names = declared + extra
        added = len(extra)
        # The extra outputs are listed on the model only while it is serialized; the caller's model is unchanged.
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
        try:
            self.session = _session(model, providers, which)
        finally:
            if added:
                del model.graph.output[len(model.graph.output) - added :]

    def run(self, feeds: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        options = ort.RunOptions()
        options.log_severity_level = 4  # failures are reported by us, in one line
        timer = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VerificationTimeout(f"verification ran out of time before running the {self.which} model")
            timer = threading.Timer(left, lambda: setattr(options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            outputs = self.session.run(None, feeds, options)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many unrelated types
            if options.terminate:
                raise VerificationTimeout(
                    f"verification did not finish in time: the {self.which} model was still running "
                    "(an endless Loop?); give --timeout SECONDS, or --no-verify"
                ) from None
            raise InputError(f"onnxruntime cannot run the {self.which} model: {_first_line(e)}") from e
        finally:
            if timer is not None:
                timer.cancel()
        return dict(zip(self.names, outputs, strict=True))


def _session(model: onnx.ModelProto, providers: Sequence[str], which: str) -> ort.InferenceSession:
    try:
        if weight_bytes(model) < EXTERNAL_DATA_ABOVE:
            return make_session(model.SerializeToString(), providers)
        # Past protobuf's limit a model cannot be handed over as bytes: onnxruntime reads it from disk.
        with tempfile.TemporaryDirectory(prefix="converter-verify-") as folder:
            path = Path(folder) / f"{which}.onnx"
            save(model, path, external_data=True)
            return make_session(str(path), providers)
    except ConverterError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many unrelated types
        raise InputError(f"onnxruntime cannot load the {which} model: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return text if len(text) <= 300 else text[:297] + "..."
