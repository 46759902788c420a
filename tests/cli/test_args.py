"""The argument groups build the option records (cli/args.py): pure parses, no conversion; and the value
parsers refuse, in one line naming the option, what no record could hold."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from converter.cli import EXIT_CODES, build_parser
from converter.cli.args import CommandArgs, ModelArgs, RewriteArgs, Style, StyleArgs, TensorFlowArgs, VerifyArgs
from converter.errors import InputError
from converter.options import (
    MAX_TRIALS,
    ConvertOptions,
    OutputOptions,
    RewriteOptions,
    TensorFlowOptions,
    VerifyOptions,
)
from tests.conftest import CliResult, run_command


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["m.onnx", *argv])


def test_verify_args_build_the_verify_record() -> None:
    ns = parse("--max-memory", "1G", "--timeout", "2.5", "--trials", "3", "--seed", "7")
    assert VerifyArgs().parse(ns) == VerifyOptions(max_memory=1 << 30, timeout=2.5, trials=3, seed=7)


def test_no_options_are_the_records_defaults() -> None:
    ns = parse()
    assert CommandArgs().parse(ns) == ConvertOptions()
    assert VerifyArgs().parse(ns) == VerifyOptions()  # trials, timeout, max_memory None: the library's defaults
    assert StyleArgs().parse(ns) == Style(quiet=False, verbose=False)


def test_every_option_reaches_its_record() -> None:
    ns = parse(
        *("-o", "out.onnx", "--dry-run", "--force"),
        *("--layout", "keep-all", "--tokens", "--no-fold-transposes", "--ep", "cuda"),
        *("--atol", "1e-3", "--rtol", "0.5", "--input-shape", "x:1,2,3,4", "--input-shape", "y:[5, 6]"),
        *("--signature", "sig", "--tag", "t", "--opset", "13", "--allow-h5", "--trust-model", "-v"),
    )
    assert CommandArgs().parse(ns) == ConvertOptions(
        tensorflow=TensorFlowOptions(signature="sig", tag="t", opset=13, allow_h5=True, trust_model=True, native_logs=True),
        rewrite=RewriteOptions(layout="keep-all", fold_transposes=False, tokens=True, providers="cuda"),
        verify=VerifyOptions(providers="cuda", atol=1e-3, rtol=0.5, input_shapes={"x": (1, 2, 3, 4), "y": (5, 6)}),
        output=OutputOptions(dry_run=True, force=True),
    )
    # -o travels as typed, to convert(), which checks it once (a Path would make "out/" into "out")
    assert ModelArgs().parse(ns) == OutputOptions(dry_run=True, force=True) and ns.output == "out.onnx"
    assert StyleArgs().parse(ns) == Style(verbose=True)
    assert TensorFlowArgs().parse(parse()).native_logs is False


def test_no_verify_is_no_verify_record() -> None:
    assert VerifyArgs().parse(parse("--no-verify", "--seed", "3")) is None
    assert CommandArgs().parse(parse("--no-verify")).verify is None


def test_a_combination_no_record_takes_is_an_input_error() -> None:
    with pytest.raises(InputError, match="needs the Transpose cleanup"):
        RewriteArgs().parse(parse("--no-fold-transposes", "--layout", "optimal"))


def test_the_inputs_file_is_read_into_the_record(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.savez(tmp_path / "in.npz", x=x)
    options = VerifyArgs().parse(parse("--inputs", str(tmp_path / "in.npz")))
    assert options is not None and list(options.inputs) == ["x"]
    np.testing.assert_array_equal(options.inputs["x"], x)
    # read with --no-verify too: a wrong file is an error either way, as it always was
    with pytest.raises(InputError, match="no such file"):
        VerifyArgs().parse(parse("--no-verify", "--inputs", str(tmp_path / "missing.npz")))


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("8G", 8 << 30), ("1.5G", 3 << 29), ("1000", 1000), ("64k", 64 << 10), ("2GiB", 2 << 30)],
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse("--max-memory", text).max_memory == size


def test_a_size_of_400_digits_is_a_size() -> None:
    # through float() it was inf, and int(inf) an OverflowError: argparse let it out as a traceback
    assert parse("--max-memory", "9" * 400 + "G").max_memory == int("9" * 400) << 30


def test_help_lists_the_exit_codes() -> None:
    r = run_command("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert EXIT_CODES in r.stdout
    codes = [line.split()[0] for line in EXIT_CODES.splitlines()[1:]]
    assert codes == ["0", "1", "2", "3", "4", "128+N"]


def test_version_is_one_line_on_stdout() -> None:
    r = run_command("--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("convert (dense2conv) ") and len(r.stdout.splitlines()) == 1


def _usage_error(r: CliResult, option: str, says: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"convert: error: argument {option}: ") and says in lines[0], lines[0]


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        # a deadline of 1e10 s overflowed the clock: options.MAX_TIMEOUT bounds it, the parser says so
        ("--timeout", "1e10", "must be at most 1000000000 seconds"),
        ("--timeout", "inf", "must be a positive number of seconds"),
        ("--timeout", "nan", "must be a positive number of seconds"),
        # dims past int64, and a 0 beside dims whose product overflows (the size check saw 0)
        ("--input-shape", "x:0,99999999999999999999,99999999999999999999,4", "larger than ONNX allows"),
        ("--input-shape", "x:0,4294967296,4294967296,4", "too large to exist"),
        ("--input-shape", "x:1,-2", "non-negative integers"),
        ("--seed", "-1", "must be 0 or more"),
        ("--seed", "1.5", "not a whole number"),
        ("--trials", "0", f"must be from 1 to {MAX_TRIALS}"),
        ("--trials", "100000000000000000000", f"must be from 1 to {MAX_TRIALS}"),  # the plan of trials is a list
        ("--max-memory", "0.1", "must be more than 0 bytes"),
        ("--atol", "inf", "must be a finite number"),
        ("--rtol", "-1", "must be a non-negative number"),
        ("--opset", "0", "not an ONNX opset"),
        ("--opset", "99999999999999999999999", "not an ONNX opset"),
    ],
)
def test_values_no_record_takes_are_one_line(option: str, value: str, says: str, tmp_path: Path) -> None:
    r = run_command("m.onnx", option, value, cwd=tmp_path)
    _usage_error(r, option, says)


def test_an_empty_input_path_is_refused_before_it_names_this_folder(tmp_path: Path) -> None:
    # Path("") is Path("."): converting "" would have converted the current folder as a SavedModel
    r = run_command("", "-o", "out.onnx", cwd=tmp_path)
    _usage_error(r, "input", "the input path is empty")
