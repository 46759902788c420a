"""What a caller chooses, as frozen records: one per stage, and one that holds them all for ``convert``.

The command builds these records from its argument groups (cli/args.py); the library functions take them
(``convert(path, options=ConvertOptions(...))``, ``rewrite(model, RewriteOptions(...))``,
``verify(a, b, VerifyOptions(...))``). Every field has a real default, written here, and its meaning in the
record's ``Attributes:`` block. The keyword shortcuts of ``convert``/``rewrite``/``verify`` (``layout=``,
``tokens=``, ``atol=``, ...) are listed in ``SHORTCUTS``: each names one field of one record, so a call like
``convert("m.onnx", tokens=True)`` is ``convert("m.onnx", options=ConvertOptions(rewrite=RewriteOptions(tokens=True)))``.

What is not a choice stays out of these records: callbacks (``on_step``), the weights store that the stages
share, and the inputs to compare against (``inputs``, arrays a caller loaded, are in ``VerifyOptions`` because
the command reads them from ``--inputs``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import InputError

# The layout policies (rewriter/layout/ says what each does).
LAYOUTS = ("optimal", "keep-all")
DEFAULT_LAYOUT = "optimal"
# Older names, still accepted: ``never-worse`` (declining the layers whose Transposes a greedy cleanup could not
# absorb) and ``nchw`` (writing every LayerNorm out channels-first) are what ``optimal`` now decides per layer and
# per LayerNorm, for the whole graph at once.
LAYOUT_ALIASES = {"never-worse": "optimal", "nchw": "optimal"}

DEFAULT_TRIALS = 2
DEFAULT_TIMEOUT = 600.0  # seconds for the whole verification
DEFAULT_MAX_MEMORY = 4 << 30  # bytes of inputs and outputs verification may hold
# The longest --timeout a deadline can hold (time.monotonic() + timeout must stay a finite float that
# threading's waits accept): about 31 years.
MAX_TIMEOUT = 1e9
# The most input sets one verification runs (each runs both models; the plan of trials is a list).
MAX_TRIALS = 100_000


@dataclass(frozen=True, kw_only=True)
class TensorFlowOptions:
    """How a TensorFlow SavedModel folder or Keras file becomes ONNX (frontends/; ignored for ONNX input).

    Attributes:
        signature: the SavedModel signature to convert (``--signature``).
        tag: the meta graph's tag set (``--tag``).
        opset: the ONNX opset tf2onnx writes (``--opset``).
        allow_h5: load legacy Keras ``.h5`` files, which runs their Lambda layers' Python code (``--allow-h5``).
        trust_model: skip the static audit of the SavedModel's ops and run whatever it holds (``--trust-model``).
        native_logs: let TensorFlow's native logging through (the command sets it with ``-v``).
    """

    signature: str = "serving_default"
    tag: str = "serve"
    opset: int = 17
    allow_h5: bool = False
    trust_model: bool = False
    native_logs: bool = False


@dataclass(frozen=True, kw_only=True)
class RewriteOptions:
    """What the rewrite does: rules, the Transpose cleanup and the layout policy.

    Attributes:
        layout: ``optimal`` (the default) chooses every tensor's layout for the whole graph at once and converts
            every dense layer whose conversion costs no Transpose at that optimum (the result never has more
            Transposes inside the model than the original); ``keep-all`` converts every layer the rules accept,
            with the Transposes placed as well as that allows. ``never-worse`` and ``nchw``, the older names,
            mean ``optimal``. None: the default (``mode`` is the policy that runs).
        fold_transposes: run the layout cleanup after the rules (``--no-fold-transposes`` turns it off,
            which only ``keep-all`` allows).
        tokens: also rewrite dense layers on rank-3 token sequences ``[B, S, C]`` into 1x1 Convs in the
            ``[B, C, 1, S]`` layout (``--tokens``).
        matmul_nbits: also rewrite onnxruntime's MatMulNBits (4- and 8-bit weights in blocks) into
            ``DequantizeLinear`` in blocks -> 1x1 Conv (``--matmul-nbits``); off by default, as onnxruntime's CPU runs
            MatMulNBits much faster (docs/quantized.md).
        providers: the onnxruntime execution providers the result is meant to run on, as the user names
            them (``"cpu"``, ``"cuda"``) or as onnxruntime does: a dtype becomes Conv only where they have a
            Conv kernel for it.
    """

    layout: str | None = None
    fold_transposes: bool = True
    tokens: bool = False
    matmul_nbits: bool = False
    providers: str | tuple[str, ...] = "cpu"

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS and self.layout not in LAYOUT_ALIASES:
            raise InputError(f"unknown layout {self.layout!r} (choose one of {', '.join(LAYOUTS)})")
        if not self.fold_transposes and self.layout not in (None, "keep-all"):
            raise InputError(f"layout {self.layout} needs the Transpose cleanup; without it (--no-fold-transposes) use keep-all")
        if isinstance(self.providers, list):
            object.__setattr__(self, "providers", tuple(self.providers))

    @property
    def mode(self) -> str:
        """The layout policy that runs: ``layout``, or the default for the other choices when it is None."""
        if self.layout is not None:
            return LAYOUT_ALIASES.get(self.layout, self.layout)
        return "keep-all" if not self.fold_transposes else DEFAULT_LAYOUT


@dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    """How the rewritten model is proved against the original (verifier/).

    Attributes:
        providers: the execution providers both models run on (``--ep``; ``"cpu"`` or ``"cuda"``).
        atol, rtol: the end-to-end tolerance, ``|rewritten - original| <= atol + rtol * |original|``;
            None: per dtype (float32 1e-5 / 1e-4, float16 1e-2 / 1e-2).
        seed: seeds the random inputs (``--seed``, >= 0).
        trials: input sets per run (None: 2; at most ``MAX_TRIALS``).
        max_memory: bytes of inputs and outputs verification may hold (None: 4 GiB), all trials together.
        timeout: seconds for the whole verification (None: 600; at most ``MAX_TIMEOUT``).
        input_shapes: a concrete shape for inputs with symbolic dims, by input name.
        inputs: arrays to feed instead of random data, by input name.
    """

    providers: str | tuple[str, ...] = "cpu"
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    trials: int | None = None
    max_memory: int | None = None
    timeout: float | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, not {value}")
        if self.seed < 0:
            raise InputError(f"the seed must be >= 0, not {self.seed}")
        if self.trials is not None and not 1 <= self.trials <= MAX_TRIALS:
            raise InputError(f"trials must be from 1 to {MAX_TRIALS}, not {self.trials}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise InputError(f"max_memory must be positive, not {self.max_memory}")
        if self.timeout is not None and not (0 < self.timeout <= MAX_TIMEOUT):
            raise InputError(f"the timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {self.timeout}")
        shapes = {str(k): _shape(k, v) for k, v in dict(self.input_shapes or {}).items()}
        object.__setattr__(self, "input_shapes", shapes)
        if isinstance(self.providers, list):
            object.__setattr__(self, "providers", tuple(self.providers))


def _shape(name: object, dims: object) -> tuple[int, ...]:
    """One ``input_shapes`` entry as Python ints: whole numbers only (2.5, "3" or True are refused, not rounded).
    Whether the sizes make sense (at least 1, fit the budget) is verification's to say (verifier/inputs.py)."""
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        raise InputError(f"input_shapes[{name!r}] must be a sequence of dims, not {dims!r}")
    out = []
    for d in dims:
        try:
            if isinstance(d, bool):
                raise TypeError
            out.append(operator.index(d))  # int and numpy's integers; never a float or a string
        except TypeError:
            raise InputError(f"input_shapes[{name!r}]: {d!r} is not a dim (a whole number)") from None
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """What is written, and when.

    Attributes:
        path: where the result goes (None: ``<stem>_conv.onnx`` beside the input).
        dry_run: rewrite and report, verify nothing and write nothing.
        force: write the result even when verification failed or is incomplete (``report.forced`` says so).
    """

    path: Path | None = None
    dry_run: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """Everything ``convert`` takes, one record per stage.

    Attributes:
        tensorflow: for SavedModel and Keras input.
        rewrite: rules, cleanup and layout.
        verify: how the result is proved; None skips verification (``--no-verify``).
        output: where and when the result is written.
    """

    tensorflow: TensorFlowOptions = field(default_factory=TensorFlowOptions)
    rewrite: RewriteOptions = field(default_factory=RewriteOptions)
    verify: VerifyOptions | None = field(default_factory=VerifyOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


# The keyword shortcuts: keyword -> (record of ConvertOptions, field). ``providers`` fills both the
# rewrite's and the verification's (the rewrite only makes Convs that the verifying provider can run).
SHORTCUTS: dict[str, tuple[tuple[str, str], ...]] = {
    **{k: (("tensorflow", k),) for k in ("signature", "tag", "opset", "allow_h5", "trust_model", "native_logs")},
    **{k: (("rewrite", k),) for k in ("layout", "fold_transposes", "tokens", "matmul_nbits")},
    "providers": (("rewrite", "providers"), ("verify", "providers")),
    **{k: (("verify", k),) for k in ("atol", "rtol", "seed", "trials", "max_memory", "timeout", "input_shapes", "inputs")},
    **{k: (("output", k),) for k in ("dry_run", "force")},
}


def with_shortcuts(options: ConvertOptions | None, shortcuts: Mapping[str, Any]) -> ConvertOptions:
    """``options`` (default: all defaults) with the keyword shortcuts applied; an unknown keyword is a TypeError.

    ``verify_outputs=False`` (the shortcut of ``--no-verify``) sets ``verify`` to None. A keyword whose value
    is None keeps the record's default, so callers may pass what they were given through.
    """
    options = options or ConvertOptions()
    changes: dict[str, dict[str, Any]] = {}
    skip_verify = False
    for key, value in shortcuts.items():
        if key == "verify_outputs":
            skip_verify = not value
            continue
        if key not in SHORTCUTS:
            raise TypeError(f"unknown option {key!r} (the options are {', '.join(sorted([*SHORTCUTS, 'verify_outputs']))})")
        if value is None:
            continue
        for record, name in SHORTCUTS[key]:
            changes.setdefault(record, {})[name] = value
    records: dict[str, Any] = {}
    for record, fields in changes.items():
        current = getattr(options, record)
        if current is None:  # verification was off: a verification shortcut turns it on again
            current = VerifyOptions()
        records[record] = dataclasses.replace(current, **fields)
    if skip_verify:
        records["verify"] = None
    return dataclasses.replace(options, **records) if records else options


def rewrite_options(options: RewriteOptions | None, shortcuts: Mapping[str, Any]) -> RewriteOptions:
    """``options`` with ``rewrite``'s keyword shortcuts (``layout``, ``fold_transposes``, ``tokens``, ``matmul_nbits``,
    ``providers``)."""
    unknown = set(shortcuts) - {"layout", "fold_transposes", "tokens", "matmul_nbits", "providers"}
    if unknown:
        raise TypeError(f"unknown rewrite option {sorted(unknown)[0]!r} (layout, fold_transposes, tokens, matmul_nbits, providers)")
    given = {k: v for k, v in shortcuts.items() if v is not None}
    return dataclasses.replace(options or RewriteOptions(), **given) if given else options or RewriteOptions()


def verify_options(options: VerifyOptions | None, shortcuts: Mapping[str, Any]) -> VerifyOptions:
    """``options`` with ``verify``'s keyword shortcuts (the fields of :class:`VerifyOptions`)."""
    names = {f.name for f in dataclasses.fields(VerifyOptions)}
    unknown = set(shortcuts) - names
    if unknown:
        raise TypeError(f"unknown verify option {sorted(unknown)[0]!r} ({', '.join(sorted(names))})")
    given = {k: v for k, v in shortcuts.items() if v is not None}
    return dataclasses.replace(options or VerifyOptions(), **given) if given else options or VerifyOptions()
