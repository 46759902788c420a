"""The load -> rewrite -> verify -> save flow (``convert``), the public ``rewrite`` and ``load``, and ``check``
(verify a rewritten model someone else made against its original: load both -> find the layers -> verify).

``convert`` takes a ``ConvertOptions`` record (options.py) or keyword shortcuts for its fields; the
output path is checked here, once, before any work (files/paths.py says what is refused), and nothing
is written when verification fails (unless ``force``) or on a dry run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from converter.errors import InputError
from converter.files.load import check_acyclic, load_with_sources
from converter.files.load import load as load_onnx
from converter.files.paths import check_output
from converter.files.save import save
from converter.graph import count_ops
from converter.graph.detached import DetachedWeights
from converter.options import ConvertOptions, RewriteOptions, rewrite_options, with_shortcuts
from converter.report import ConvertReport, Decision, RewriteReport
from converter.rewriter import RULES, RewriteResult, rewrite_in_place, rewrite_model
from converter.verifier import DEFAULT_TIMEOUT, discover, verify, verify_reference

__all__ = ["RULES", "RewriteResult", "check", "convert", "default_output", "is_tensorflow_input", "load", "rewrite"]

Reference = tuple[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]


def rewrite(
    model: onnx.ModelProto | str | os.PathLike[str] | Any, options: RewriteOptions | None = None, **shortcuts: Any
) -> RewriteResult:
    """Rewrite dense layers on 4D tensors (and, with ``tokens``, on token sequences) into 1x1 Convs.

    Args:
        model: a ``ModelProto`` (not modified), a path (loaded as ``load`` does), or an onnx-graphsurgeon
            ``gs.Graph``: then ``result.model`` is a new ``gs.Graph`` too (gs.py; the ``[gs]`` extra).
        options: the choices (options.RewriteOptions: ``layout``, ``fold_transposes``, ``tokens``, ``providers``).
        **shortcuts: the same fields as keywords, e.g. ``rewrite(model, tokens=True)``.

    Returns:
        ``RewriteResult``: ``.model`` and ``.report`` (every candidate's decision, the layout record).
    """
    options = rewrite_options(options, shortcuts)
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    elif not isinstance(model, onnx.ModelProto):
        from converter import gs

        if not gs.is_graph(model):
            raise TypeError(f"rewrite() takes an onnx.ModelProto, a path or a gs.Graph, not {type(model).__name__}")
        result = rewrite_model(gs.to_model(model), options)
        return RewriteResult(gs.to_graph(result.model), result.report)
    else:
        # A file was checked as it was loaded (gs.to_model checks a gs.Graph); a model built in memory may hold a
        # cycle, and the rules' checks follow producers.
        check_acyclic(model, "the model")
    return rewrite_model(model, options)


def default_output(input_path: str | os.PathLike[str]) -> Path:
    """Where ``convert`` writes when no output is given: ``<stem>_conv.onnx`` beside the input.

    Raises:
        InputError: the input path has no name to make one from (``.``, ``..``, ``/``, an empty path).
    """
    raw = os.fsdecode(os.fspath(input_path))
    if not raw:
        raise InputError("the input path is empty")
    p = Path(raw)
    if p.name in ("", ".", ".."):
        raise InputError(f"{raw}: has no file or folder name to name the output after; give an output path (-o)")
    return p.with_name(f"{p.stem}_conv.onnx")


def load(path: str | os.PathLike[str], **tensorflow: Any) -> onnx.ModelProto:
    """An ONNX model from an ONNX file, a SavedModel folder or a ``.keras`` file (through tf2onnx).

    Args:
        path: the model file or folder.
        **tensorflow: for TensorFlow input, the fields of options.TensorFlowOptions (``signature``, ``tag``,
            ``opset``, ``trust_model``, ...).
    """
    if is_tensorflow_input(Path(path)):
        from converter.frontends.savedmodel import load_tensorflow

        return load_tensorflow(path, **tensorflow)
    return load_onnx(path)


def is_tensorflow_input(path: Path) -> bool:
    """Whether ``path`` goes through the TensorFlow front end (a folder, a ``.keras`` or ``.h5`` file)."""
    return path.is_dir() or path.suffix in (".keras", ".h5")


def convert(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    options: ConvertOptions | None = None,
    on_step: Callable[[str], None] | None = None,
    **shortcuts: Any,
) -> ConvertReport:
    """Load, rewrite, verify and save. Nothing is written when verification fails or on a dry run.

    Args:
        input_path: an ONNX file, a TensorFlow SavedModel folder or a Keras ``.keras`` file.
        output_path: where to write (default ``<stem>_conv.onnx`` beside the input; also ``options.output.path``).
        options: every choice, one record per stage (options.ConvertOptions).
        on_step: called with a short sentence as each step starts (the command's progress line).
        **shortcuts: keyword forms of the records' fields (options.SHORTCUTS), e.g. ``layout="keep-all"``,
            ``tokens=True``, ``atol=1e-4``, ``force=True``, ``dry_run=True``, ``trust_model=True``;
            ``verify_outputs=False`` skips verification.

    Returns:
        ``ConvertReport``: ``.ok`` is False after a verification mismatch, ``.written`` says whether the file
        was written, ``.forced`` that it was written anyway (``force``).

    TensorFlow inputs are converted by tf2onnx first (in a child process, after a static audit of the
    SavedModel unless ``trust_model``) and verified twice: the tf2onnx model against the rewritten one,
    and TensorFlow itself against it.
    """
    options = with_shortcuts(options, shortcuts)
    step = on_step or (lambda _msg: None)
    source_path = Path(input_path)
    if output_path is None and options.output.path is not None:
        output_path = options.output.path
    target = output_path if output_path is not None else default_output(input_path)
    # Every path we write is checked before any work, here and only here (the command leaves it to us); as given,
    # since a Path would turn "out/" into "out" and "" into ".".
    output = Path(target) if options.output.dry_run else check_output(target, source_path)
    _refuse_overwriting_input(source_path, output)
    if is_tensorflow_input(source_path):
        from converter.frontends.savedmodel import open_tensorflow, run_tensorflow

        step(f"converting {input_path} with tf2onnx")
        started = time.perf_counter()
        timeout = options.verify.timeout if options.verify is not None else None
        # The deadline bounds every TensorFlow step (loading, tf2onnx, the reference runs), not only verification.
        with open_tensorflow(source_path, **dataclasses.asdict(options.tensorflow), timeout=timeout or DEFAULT_TIMEOUT) as source:
            reference = ("TensorFlow", lambda feeds: run_tensorflow(source, feeds, timeout=timeout or DEFAULT_TIMEOUT))
            report = _convert_model(source.model, source_path, output, time.perf_counter() - started, options, step, reference)
            report.warnings.extend(source.warnings)
            return report
    started = time.perf_counter()
    step(f"loading {input_path}")
    # Large external weights go straight into arrays that the rewrite, both verification sessions
    # and save share: one copy of the weights in memory, not four (graph/detached.py says why).
    store = DetachedWeights()
    model, sources = load_with_sources(input_path, detached=store)
    for src in sources[1:]:  # nor may the output (or its data file) replace a file the input reads
        _refuse_overwriting_input(src, output)
        _refuse_overwriting_input(src, output.with_name(output.name + ".data"))
    return _convert_model(model, source_path, output, time.perf_counter() - started, options, step, store=store)


def _convert_model(
    model: onnx.ModelProto,
    source_path: Path,
    output: Path,
    load_seconds: float,
    options: ConvertOptions,
    step: Callable[[str], None],
    reference: Reference | None = None,
    store: DetachedWeights | None = None,
) -> ConvertReport:
    timings = {"load": load_seconds}
    step("rewriting")

    def counts(done: int, total: int) -> None:
        step(f"rewriting: candidate {done} of {total}")

    detached = store if store is not None else DetachedWeights()
    check = options.verify
    if check is not None:
        # The rewritten copy shares the detached arrays with the original (copying it copies no weight
        # that was detached); new weights are detached too, and written from their arrays.
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
    else:
        rewritten = model  # nothing needs the original afterwards: rewrite it in place
    result = RewriteResult(rewritten, rewrite_in_place(rewritten, options.rewrite, detached, progress=counts))
    timings["rewrite"] = result.report.seconds
    report = ConvertReport(str(source_path), str(output), result.report, dry_run=options.output.dry_run, timings=timings)
    if options.output.dry_run:
        report.output = None
        return report

    if check is not None:
        report.verify = verify(
            model,
            result.model,
            check,
            layers=result.report.layers,
            on_step=step,
            values=detached,
            release_original=True,  # from here on only the rewritten model is used
        )
        timings["verify"] = report.verify.seconds
        if reference is not None:
            name, run = reference
            step(f"running {name}")
            # The same inputs as the first trial above (the shapes it chose).
            shapes = {i.name: tuple(i.shape) for i in report.verify.inputs if i.source == "random"}
            report.verify_reference = verify_reference(
                run, name, model, result.model, dataclasses.replace(check, input_shapes=shapes), values=detached
            )
            timings["verify_reference"] = report.verify_reference.seconds
        if not report.ok:
            if not options.output.force:
                return report
            report.forced = True

    t = time.perf_counter()
    step(f"saving {output}")
    save(result.model, output, detached=detached)
    timings["save"] = time.perf_counter() - t
    report.written = True
    return report


def check(
    original_path: str | os.PathLike[str],
    candidate_path: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
    **shortcuts: Any,
) -> ConvertReport:
    """Verify a model this tool did not write (by hand, by another tool, by an older version) against its original.

    The rewritten layers are found from the two graphs (a Conv whose weight is an original dense layer's,
    transposed: verifier/certificate/claims.py) and each is proved and checked as a rewrite's own claim is; the
    verdicts, the summary and the report are ``convert``'s. Nothing is written.

    Args:
        original_path: the ONNX model before the rewrite.
        candidate_path: the ONNX model to check against it.
        options: as for ``convert``; only ``options.verify`` is used (it may not be None).
        on_step: called with a short sentence as each step starts.
        **shortcuts: keyword forms of the records' fields (``atol=1e-4``, ``input_shapes={...}``, ...).

    Returns:
        ``ConvertReport``: ``input`` the original, ``output`` the candidate (never written), ``rewrite`` the layers
        found (one decision each, rule ``found``), ``verify`` the verification.

    Raises:
        InputError: a path that is no ONNX model, or ``options.verify`` None (there is nothing to check without it).
    """
    options = with_shortcuts(options, shortcuts)
    step = on_step or (lambda _msg: None)
    if options.verify is None:
        raise InputError("--check verifies the candidate: it cannot be combined with --no-verify")
    for path, what in ((original_path, "original"), (candidate_path, "candidate")):
        if is_tensorflow_input(Path(path)):
            raise InputError(f"{path}: --check compares two ONNX models; the {what} is a TensorFlow model")
    started = time.perf_counter()
    step(f"loading {original_path}")
    original = load_onnx(original_path)
    step(f"loading {candidate_path}")
    candidate = load_onnx(candidate_path)
    _name_nodes(candidate)
    timings = {"load": time.perf_counter() - started}
    step("finding the rewritten layers")
    started = time.perf_counter()
    layers = discover(original, candidate, numpy_helper.to_array)
    decisions = [
        Decision("/".join(f"{h}.{a}" for h, a in layer.graph) or "main", layer.conv, "Conv", "found", True, layer=layer)
        for layer in layers
    ]
    found = RewriteReport(decisions, count_ops(original.graph), count_ops(candidate.graph), seconds=time.perf_counter() - started)
    report = ConvertReport(str(original_path), str(candidate_path), found, timings=timings)
    report.verify = verify(original, candidate, options.verify, layers=layers, on_step=step)
    timings["verify"] = report.verify.seconds
    return report


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node of the main graph a name no other node has (a claim names its Conv)."""
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _refuse_overwriting_input(source: Path, target: Path) -> None:
    same = target.resolve() == source.resolve()
    if not same and target.exists() and source.exists():
        same = os.path.samefile(source, target)
    if same:
        raise InputError(f"{target}: the output would overwrite the input model; choose another -o")
