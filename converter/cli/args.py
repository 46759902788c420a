"""The command's arguments as groups, one per option record (options.py), in Polygraphy's shape.

Each group adds its options to the parser (``add_to``) and turns the parsed namespace into its record
(``parse``): ``ModelArgs`` -> ``OutputOptions``, ``TensorFlowArgs`` -> ``TensorFlowOptions``, ``RewriteArgs`` ->
``RewriteOptions``, ``VerifyArgs`` -> ``VerifyOptions`` (None with ``--no-verify``), ``StyleArgs`` -> ``Style``
(``-q`` / ``-v``, the command's own). ``CommandArgs`` holds them all and builds the ``ConvertOptions``.

The value parsers (``memory_size``, ``seconds``, ``tolerance``, ``input_shape``, ...) refuse what no record could
hold with one line naming the option, before any work. Nothing here imports onnx, numpy, onnxruntime or rich:
``convert --help`` answers from this module alone (the ``--inputs`` file is read by ``VerifyArgs.parse``, which
imports the loader when it runs).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

from converter.cli.text import shown
from converter.options import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TIMEOUT,
    DEFAULT_TRIALS,
    LAYOUT_ALIASES,
    LAYOUTS,
    MAX_TIMEOUT,
    MAX_TRIALS,
    ConvertOptions,
    OutputOptions,
    RewriteOptions,
    TensorFlowOptions,
    VerifyOptions,
)

# The largest dim ONNX (int64) can declare, and the most elements a tensor can have.
MAX_ELEMENTS = 2**63 - 1


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (not the usage block): the user asked for the exact problem."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {shown(message)} (see {self.prog} --help)\n")


class VersionAction(argparse.Action):
    """``--version``: ``convert (dense2conv) 0.1.0``, the version read only when asked (importlib.metadata is slow to
    import); ImageMagick's convert says ``Version: ImageMagick ...``, so the two are told apart."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from converter import __version__

        parser._print_message(f"{parser.prog} (dense2conv) {__version__}\n", sys.stdout)  # as argparse's own action
        parser.exit(0)


# ---------------------------------------------------------------------------------------------
# Value parsers: each returns the value or raises ArgumentTypeError (argparse adds the option's name)


def tolerance(text: str) -> float:
    """``--atol`` / ``--rtol``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    return value


def input_shape(text: str) -> tuple[str, list[int]]:
    """``x:1,224,224,3``, or Polygraphy's ``x:[1,224,224,3]``; the name may itself hold colons.

    Dims are whole numbers from 0 to 2**63 - 1 (ONNX's int64); their product, leaving out the zeros, must fit
    too, so that a 0 beside huge dims cannot hide a shape whose size wraps around.
    """
    name, sep, dims = text.rpartition(":")
    dims = dims.strip()
    if dims.startswith("[") and dims.endswith("]"):
        dims = dims[1:-1]
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected NAME:DIM,DIM,... or NAME:[DIM,DIM,...] with non-negative integers, got {text!r}"
        )
    big = next((d for d in shape if d > MAX_ELEMENTS), None)
    if big is not None:
        raise argparse.ArgumentTypeError(f"dim {big} of {name!r} is larger than ONNX allows (2**63 - 1)")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise argparse.ArgumentTypeError(f"shape {shape} of {name!r} is too large to exist (more than 2**63 elements)")
    return name, shape


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_size(text: str) -> int:
    """``512M``, ``8G``, ``1.5G``, ``64k`` or plain bytes; K, M, G and T are powers of 1024 (``GB``, ``GiB`` alike)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M, 8G, 1.5G or a number of bytes, got {text!r}")
    # Exact arithmetic: 400 digits are a size too (through a float they were inf, and int(inf) an OverflowError).
    value = int(Fraction(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value


def seconds(text: str) -> float:
    """``--timeout``: more than 0 and at most ``options.MAX_TIMEOUT`` seconds (a deadline must stay a finite clock value)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    if value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TIMEOUT:.0f} seconds (about 31 years), got {text!r}")
    return value


def trial_count(text: str) -> int:
    """``--trials``: a whole number from 1 to ``options.MAX_TRIALS``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_TRIALS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_TRIALS}, got {text!r}")
    return value


def seed_number(text: str) -> int:
    """``--seed``: a whole number, 0 or more (numpy's generators take any such number)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def opset_number(text: str) -> int:
    """``--opset``: a whole number, 1 or more (tf2onnx says which it supports)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value < 1000:
        raise argparse.ArgumentTypeError(f"not an ONNX opset: {text!r}")
    return value


def model_path(text: str) -> str:
    """The input: any path but the empty one (which would name the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("the input path is empty")
    return text


# ---------------------------------------------------------------------------------------------
# The groups


class ModelArgs:
    """The model and what is written: ``input``, ``-o``, ``--dry-run``, ``--force``, ``--report``, ``--check`` (the
    command's own: cli/check.py runs it, nothing is written)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input", type=model_path, help="ONNX model, TensorFlow SavedModel folder, or Keras .keras file")
        g = parser.add_argument_group("model and output")
        g.add_argument("-o", "--output", help="where to write the result (default: <stem>_conv.onnx beside the input)")
        g.add_argument("--dry-run", action="store_true", help="list every candidate with its decision; write nothing")
        g.add_argument("--force", action="store_true", help="write the result even when verification fails or is incomplete")
        g.add_argument(
            "--report",
            metavar="FILE.json",
            help="write the full report as JSON ('-': to stdout, which then holds only the JSON)",
        )
        g.add_argument(
            "--check",
            metavar="CANDIDATE.onnx",
            type=model_path,
            help=(
                "verify CANDIDATE (a rewrite made by hand, by another tool or by an older version) against the input, "
                "with the same verdicts, exit codes, summary and report; the rewritten layers are found from the two "
                "graphs; nothing is written (not with -o, --dry-run, --force or --no-verify)"
            ),
        )

    def parse(self, ns: argparse.Namespace) -> OutputOptions:
        """``OutputOptions(dry_run, force)``.

        ``path`` stays None: the command hands ``-o`` to ``convert`` as typed, where it is checked once
        (files/paths.py); a ``Path`` would turn ``out/`` into ``out`` and ``''`` into ``.``, hiding the mistake.
        ``--report`` is the command's own (cli/paths.py checks it).
        """
        return OutputOptions(dry_run=ns.dry_run, force=ns.force)


class TensorFlowArgs:
    """TensorFlow input: ``--signature``, ``--tag``, ``--opset``, ``--allow-h5``, ``--trust-model``."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("TensorFlow input")
        g.add_argument("--signature", default="serving_default", help="SavedModel signature (default: serving_default)")
        g.add_argument("--tag", default="serve", help="SavedModel tag (default: serve)")
        g.add_argument("--opset", type=opset_number, default=17, help="ONNX opset tf2onnx converts to (default: 17)")
        g.add_argument("--allow-h5", action="store_true", help="load a legacy Keras .h5 file (runs its Lambda layers' code)")
        g.add_argument(
            "--trust-model",
            action="store_true",
            help="run a SavedModel even if it uses ops outside the audited allowlist (file or network I/O, Python calls, ...)",
        )

    def parse(self, ns: argparse.Namespace) -> TensorFlowOptions:
        """``TensorFlowOptions``; ``-v`` lets TensorFlow's native logs through (``native_logs``)."""
        return TensorFlowOptions(
            signature=ns.signature,
            tag=ns.tag,
            opset=ns.opset,
            allow_h5=ns.allow_h5,
            trust_model=ns.trust_model,
            native_logs=ns.verbose,
        )


class RewriteArgs:
    """The rewrite: ``--layout``, ``--tokens``, ``--no-fold-transposes``, ``--ep`` (shared with verification)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("rewrite")
        g.add_argument(
            "--layout",
            choices=[*LAYOUTS, *LAYOUT_ALIASES],
            help=(
                "how the layers and the Transposes around them are laid out: optimal (the default) chooses every "
                "tensor's layout for the whole graph at once and rewrites every layer whose conversion costs no "
                "Transpose at that optimum (the others are declined, reason layout_cost), so the result never has more "
                "Transposes inside the model than the original; keep-all rewrites every layer the rules accept, with "
                "the Transposes placed as well as that allows. never-worse and nchw, the older names, mean optimal. "
                "With --no-fold-transposes only keep-all applies"
            ),
        )
        g.add_argument(
            "--tokens",
            action="store_true",
            help=(
                "also rewrite dense layers on token sequences [B, S, C] (transformers, MLP-Mixer: rank 3) into 1x1 Convs "
                "in the [B, C, 1, S] layout; Mixer's token mixing (Transpose, Linear, Transpose) becomes a Conv over the "
                "tokens. Without it such layers are declined rank_not_4 and the output is as before"
            ),
        )
        g.add_argument(
            "--matmul-nbits",
            action="store_true",
            help=(
                "also rewrite onnxruntime's MatMulNBits (weights quantized to 4 or 8 bits in blocks) into a DequantizeLinear "
                "in blocks and a 1x1 Conv, with the same integers and scales, as NPU compilers take them; onnxruntime's CPU "
                "runs the original much faster, so it is off by default (declined nbits_opt_in)"
            ),
        )
        g.add_argument(
            "--no-fold-transposes", action="store_true", help="keep every Transpose the rewrite adds (skip the layout cleanup)"
        )
        g.add_argument(
            "--ep",
            choices=["cpu", "cuda"],
            default="cpu",
            help="execution provider the result is made for and checked on (default: cpu)",
        )

    def parse(self, ns: argparse.Namespace) -> RewriteOptions:
        """``RewriteOptions``; refuses ``--layout`` other than keep-all with ``--no-fold-transposes`` (InputError)."""
        return RewriteOptions(
            layout=ns.layout,
            fold_transposes=not ns.no_fold_transposes,
            tokens=ns.tokens,
            matmul_nbits=ns.matmul_nbits,
            providers=ns.ep,
        )


class VerifyArgs:
    """Verification: ``--no-verify``, ``--atol``, ``--rtol``, ``--input-shape``, ``--inputs``, ``--seed``, ``--trials``,
    ``--max-memory``, ``--timeout`` (and ``--ep``, which ``RewriteArgs`` adds)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("verification")
        g.add_argument("--no-verify", action="store_true", help="skip running both models in onnxruntime")
        g.add_argument("--atol", type=tolerance, help="absolute tolerance (default per dtype: fp32 1e-5, fp16 1e-2)")
        g.add_argument("--rtol", type=tolerance, help="relative tolerance (default per dtype: fp32 1e-4, fp16 1e-2)")
        g.add_argument(
            "--input-shape",
            action="append",
            default=[],
            type=input_shape,
            metavar="NAME:DIMS",
            help="concrete shape for an input with symbolic dims, e.g. x:1,224,224,3 or x:[1,224,224,3] (repeatable)",
        )
        g.add_argument("--inputs", metavar="FILE.npz", help="feed these arrays (keyed by input name) instead of random data")
        g.add_argument("--seed", type=seed_number, default=0, help="seed for the random verification inputs (default: 0)")
        g.add_argument(
            "--trials", type=trial_count, metavar="N", help=f"random input sets verification runs on (default: {DEFAULT_TRIALS})"
        )
        g.add_argument(
            "--max-memory",
            type=memory_size,
            metavar="SIZE",
            help=(
                "most memory verification may use for inputs and outputs, e.g. 512M, 8G, 1.5G or bytes "
                f"(default: {DEFAULT_MAX_MEMORY >> 30}G)"
            ),
        )
        g.add_argument(
            "--timeout",
            type=seconds,
            metavar="SECONDS",
            help=(f"stop verification, and each TensorFlow step, after this long (default: {DEFAULT_TIMEOUT:g})"),
        )

    def parse(self, ns: argparse.Namespace) -> VerifyOptions | None:
        """``VerifyOptions``, or None with ``--no-verify``.

        The ``--inputs`` file is read here whenever it is given (a wrong file is an error with ``--no-verify``
        too), within the ``--max-memory`` budget (files/load.py's ``load_arrays`` refuses more).
        """
        inputs = None
        if ns.inputs is not None:
            from converter.files.load import load_arrays

            inputs = load_arrays(ns.inputs, ns.max_memory or DEFAULT_MAX_MEMORY)
        if ns.no_verify:
            return None
        return VerifyOptions(
            providers=ns.ep,
            atol=ns.atol,
            rtol=ns.rtol,
            seed=ns.seed,
            trials=ns.trials,
            max_memory=ns.max_memory,
            timeout=ns.timeout,
            input_shapes=dict(ns.input_shape),
            inputs=inputs,
        )


@dataclass(frozen=True)
class Style:
    """How much the command prints: ``quiet`` (the verdict line only) or ``verbose`` (every layer, native logs,
    tracebacks); neither is the summary."""

    quiet: bool = False
    verbose: bool = False


class StyleArgs:
    """What is printed: ``-q``, ``-v`` (the command's own; no record of the library's)."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        noise = parser.add_mutually_exclusive_group()
        noise.add_argument("-q", "--quiet", action="store_true", help="print only the final verdict line")
        noise.add_argument(
            "-v", "--verbose", action="store_true", help="every layer's evidence, native logs, tracebacks for errors"
        )

    def parse(self, ns: argparse.Namespace) -> Style:
        return Style(quiet=ns.quiet, verbose=ns.verbose)


class CommandArgs:
    """Every group of the command, in the order ``--help`` lists them."""

    def __init__(self) -> None:
        self.model = ModelArgs()
        self.rewrite = RewriteArgs()
        self.verify = VerifyArgs()
        self.tensorflow = TensorFlowArgs()
        self.style = StyleArgs()

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        for group in (self.model, self.rewrite, self.verify, self.tensorflow, self.style):
            group.add_to(parser)

    def parse(self, ns: argparse.Namespace) -> ConvertOptions:
        """The ``ConvertOptions`` the namespace stands for (reads the ``--inputs`` file; see ``VerifyArgs.parse``).

        Raises:
            InputError: a combination no record accepts (e.g. ``--layout nchw --no-fold-transposes``), or an
                unreadable ``--inputs`` file.
        """
        return ConvertOptions(
            tensorflow=self.tensorflow.parse(ns),
            rewrite=self.rewrite.parse(ns),
            verify=self.verify.parse(ns),
            output=self.model.parse(ns),
        )
