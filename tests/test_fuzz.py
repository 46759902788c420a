"""Mutated model bytes (flips, truncations, splices): the CLI ends with exit 0, 1, 2 or 3 and a clean message.

More mutations: CONVERTER_FUZZ_CASES=2000 pytest tests/test_fuzz.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from models.graphs import convnext_block, reshape_sandwich
from tests.conftest import dense_model, run_command

CASES = int(os.environ.get("CONVERTER_FUZZ_CASES", "150"))
SEEDS = [dense_model().SerializeToString(), convnext_block().SerializeToString(), reshape_sandwich().SerializeToString()]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:  # flip a few bytes
        for _ in range(int(rng.integers(1, 8))):
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del b[int(rng.integers(1, len(b))) :]
    else:  # splice: copy a chunk somewhere else
        start = int(rng.integers(len(b)))
        chunk = b[start : start + int(rng.integers(1, 64))]
        at = int(rng.integers(len(b)))
        b[at:at] = chunk
    return bytes(b)


def test_mutated_models_never_crash(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1234)
    outcomes: dict[int, int] = {}
    for i in range(CASES):
        path = tmp_path / "m.onnx"
        path.write_bytes(mutate(SEEDS[i % len(SEEDS)], rng))
        out = tmp_path / "out.onnx"
        rc = main([str(path), "-o", str(out), "-q"])  # an exception here is a crash: the test fails
        captured = capfd.readouterr()
        assert rc in (0, 1, 2, 3), (i, rc)
        outcomes[rc] = outcomes.get(rc, 0) + 1
        if rc == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("convert: error:"), (i, captured.err)
            assert not out.exists()
        if rc in (1, 3):  # a mismatch, or evidence missing: nothing written
            assert not out.exists()
        out.unlink(missing_ok=True)
    assert outcomes.get(2, 0) > 0  # the mutations do produce bad input


@pytest.mark.slow  # six children: the installed script, its start-up, and a hang it cannot catch itself
def test_mutated_models_never_hang_in_the_real_command(tmp_path: Path) -> None:
    rng = np.random.default_rng(99)
    for i in range(6):
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(mutate(SEEDS[i % len(SEEDS)], rng))
        r = run_command(path, "-o", tmp_path / f"o{i}.onnx", "-q", child=True, timeout=300)
        assert r.returncode in (0, 1, 2, 3) and "Traceback" not in r.stderr, r.stderr


def test_mutated_npz_inputs_never_crash(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--inputs`` files with flipped, cut or spliced bytes (zip directory, npy headers, data)."""
    import io
    import zipfile

    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(dense_model(x_shape=(2, 3, 5, 4)), model)
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32))
    seed = buffer.getvalue()
    rng = np.random.default_rng(7)
    outcomes: dict[int, int] = {}
    member = io.BytesIO()
    np.save(member, np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32))
    for i in range(max(20, CASES // 3)):
        npz = tmp_path / "in.npz"
        if i % 2:  # the zip's own bytes: mostly caught by its checksums
            npz.write_bytes(mutate(seed, rng))
        else:  # the .npy inside, re-zipped with valid checksums: the header and the data are what is fuzzed
            with zipfile.ZipFile(npz, "w") as z:
                z.writestr("x.npy", mutate(member.getvalue(), rng) if i % 4 else member.getvalue())
        out = tmp_path / "out.onnx"
        rc = main([str(model), "--inputs", str(npz), "-o", str(out), "-q"])
        captured = capfd.readouterr()
        assert rc in (0, 1, 2, 3), (i, rc)
        outcomes[rc] = outcomes.get(rc, 0) + 1
        if rc == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("convert: error:"), (i, captured.err)
        if rc != 0:
            assert not out.exists()
        out.unlink(missing_ok=True)
    assert outcomes.get(2, 0) > 0 and outcomes.get(0, 0) > 0, outcomes  # both readable and unreadable ones
