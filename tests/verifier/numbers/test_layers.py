"""The layer-level numbers: a correct 1x1 Conv passes within its rounding bound, and each kind of error fails."""

from __future__ import annotations

import numpy as np
import pytest

from converter.verifier.numbers.layers import LAMBDA, check_layer


def layer(n=2, h=3, w=5, c=16, k=8, dtype=np.float32, seed=0):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = (rng.standard_normal((k, c)) / np.sqrt(c)).astype(dtype)  # [K, C]
    b = rng.standard_normal(k).astype(dtype)
    z = (x.astype(np.float32) @ wt.T.astype(np.float32) + b).astype(dtype)  # the original's result, NHWC
    return x, wt, b, z


def nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_correct_layer_passes_with_room(dtype) -> None:  # noqa: ANN001
    x, wt, b, z = layer(c=512, k=64, dtype=dtype)
    r = check_layer(nchw(x), nchw(z), wt, b, x, z)
    assert r.passed and r.exercised and 0 < r.output_ratio < 0.5 and r.widened == 1.0
    assert r.shape == (2, 3, 5, 512) and r.noise > 0


def test_a_wrong_weight_element_fails() -> None:
    x, wt, b, z = layer()
    wrong = wt.copy()
    wrong[3, 7] *= np.float32(1.001)
    z_bad = x @ wrong.T + b
    r = check_layer(nchw(x), nchw(z_bad), wt, b, x, z)
    assert not r.passed and r.output_bad > 0 and r.output_ratio > 1


def test_a_missing_bias_fails() -> None:
    x, wt, b, z = layer()
    r = check_layer(nchw(x), nchw(x @ wt.T), wt, b, x, z)
    assert not r.passed and r.output_bad == 2 * 3 * 5 * 8


@pytest.mark.parametrize("axes", [(0, 2, 1, 3), (1, 0, 2, 3)])
def test_an_input_in_the_wrong_layout_fails_even_when_the_shapes_agree(axes) -> None:  # noqa: ANN001
    x, wt, b, z = layer(n=3, h=3, w=3)
    moved = np.ascontiguousarray(np.transpose(x, axes))
    r = check_layer(nchw(moved), nchw(moved @ wt.T + b), wt, b, x, z)
    assert r.exercised and not r.input_ok and r.input_rel_error > 0.5 and not r.passed


def test_rows_with_nan_are_skipped_and_all_nan_is_not_exercised() -> None:
    x, wt, b, z = layer()
    x[0, 0, 0, 0] = np.nan
    z = x @ wt.T + b
    assert check_layer(nchw(x), nchw(z), wt, b, x, z).passed
    x[:] = np.nan
    r = check_layer(nchw(x), nchw(x @ wt.T + b), wt, b, x, x @ wt.T + b)
    assert not r.exercised and "no finite values" in r.why_not and not r.passed


def test_one_repeated_value_is_not_exercised() -> None:
    x, wt, b, _ = layer()
    x[:] = 0.5
    z = x @ wt.T + b
    r = check_layer(nchw(x), nchw(z), wt, b, x, z)
    assert not r.exercised and "repeated value" in r.why_not


def test_a_kernel_less_precise_than_the_bound_widens_it_and_a_wrong_original_fails() -> None:
    x, wt, b, z = layer(c=64)
    exact = x.astype(np.float64) @ wt.T.astype(np.float64) + b
    bound = (np.abs(x.astype(np.float64)) @ np.abs(wt.T.astype(np.float64)) + np.abs(b)) * LAMBDA * 8 * 2.0**-24
    noisy = (exact + 3 * bound).astype(np.float32)  # 3x the bound: a coarse kernel, in both models
    r = check_layer(nchw(x), nchw(noisy), wt, b, x, noisy)
    assert r.passed and r.widened > 3
    r = check_layer(nchw(x), nchw(z), wt, b, x, z * 2)  # the original is not X @ W + b at all
    assert not r.passed and "is not its input times the weight" in r.problem


def test_big_tensors_are_checked_on_a_sample_of_positions() -> None:
    x, wt, b, z = layer(n=2, h=64, w=96, c=8, k=4)
    z_bad = z.copy()
    z_bad[..., 2] += 1.0  # one output channel wrong everywhere: any sampled position shows it
    r = check_layer(nchw(x), nchw(z_bad), wt, b, x, z)
    assert not r.passed and 0 < r.output_bad <= 4096
