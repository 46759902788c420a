"""onnxruntime sessions: which providers to use and what they can run.

Both the rewrite (which dtypes may become Conv) and the verifier go through here, so the
rewrite never produces a Conv that the provider used for checking cannot execute.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from converter.errors import ProviderUnavailable

EP_ALIASES = {
    "cpu": ("CPUExecutionProvider",),
    # CPU stays in the list because onnxruntime places nodes CUDA has no kernel for (shape ops) there;
    # make_session still refuses to run when CUDA itself did not load.
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


def resolve_providers(ep: str | Sequence[str]) -> tuple[str, ...]:
    """``"cpu"``/``"cuda"`` or an explicit provider list -> a provider tuple, checked for availability."""
    providers = EP_ALIASES.get(ep.lower(), (ep,)) if isinstance(ep, str) else tuple(ep)
    available = ort.get_available_providers()
    for p in providers:
        if p not in available:
            hint = " (install onnxruntime-gpu and a matching CUDA runtime)" if p == "CUDAExecutionProvider" else ""
            raise ProviderUnavailable(f"{p} is not available in this onnxruntime build{hint}; available: {', '.join(available)}")
    return providers


def make_session(
    model: bytes | str, providers: Sequence[str], initializers: dict[str, ort.OrtValue] | None = None
) -> ort.InferenceSession:
    """A session that runs the graph as written (no ORT graph rewrites) on exactly the providers asked for.

    ``initializers`` replace the model's initializers of those names with the caller's buffers,
    used in place: they must outlive the session. Weight prepacking, which would copy them, is off then.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # onnxruntime's own error log would repeat, on stderr, the failure we report in one line.
    options.log_severity_level = 4
    # Without its arena, onnxruntime returns a run's memory when the run ends instead of keeping
    # the largest it ever needed: verification holds two sessions and big activations.
    options.enable_cpu_mem_arena = False
    for name, value in (initializers or {}).items():
        options.add_initializer(name, value)
    if initializers:
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(model, options, providers=list(providers))
    # onnxruntime silently drops a provider whose libraries fail to load; we never fall back silently.
    if providers[0] not in session.get_providers():
        raise ProviderUnavailable(
            f"{providers[0]} could not be initialised (onnxruntime fell back to {', '.join(session.get_providers())})"
        )
    return session


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` with onnxruntime's own logging limited to fatal errors (we report failures)."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    return session.run(None, feeds, options)


def opset_allows_conv(elem_type: int, opset: int) -> bool:
    schema = onnx.defs.get_schema("Conv", max(opset, 1))
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}["T"]
    return f"tensor({dtype_name(elem_type)})" in allowed


@lru_cache(maxsize=64)
def provider_runs_conv(elem_type: int, providers: tuple[str, ...], opset: int) -> bool:
    """Whether the providers can really execute a 1x1 Conv of this dtype, found by running one.

    A table would go stale with every onnxruntime release (its CPU Conv has float and float16
    kernels but no double one today); asking the runtime cannot.
    """
    np_dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    x = helper.make_tensor_value_info("x", elem_type, [1, 2, 3, 4])
    y = helper.make_tensor_value_info("y", elem_type, None)
    w = onnx.numpy_helper.from_array(np.ones([2, 2, 1, 1], dtype=np_dtype), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        session = make_session(model.SerializeToString(), providers)
        run(session, {"x": np.ones([1, 2, 3, 4], dtype=np_dtype)})
    except ProviderUnavailable:
        raise
    except Exception:  # noqa: BLE001 - any failure means "this provider cannot run it"
        return False
    return True


def dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()
