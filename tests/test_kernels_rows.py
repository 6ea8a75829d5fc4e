"""softmax and layernorm (fused one-pass row kernels) on the CUDA simulator against NumPy float64."""

from __future__ import annotations

import numpy as np
import pytest

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.rows import SIM_ROW_CACHE, SIM_ROW_THREADS
from tensorai.kernels.testing import assert_matches, fresh_rng, random_array


@pytest.fixture
def rng() -> np.random.Generator:
    return fresh_rng()[0]


def softmax_reference(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    exps = np.exp(x - x.max(axis=axis, keepdims=True))
    return exps / exps.sum(axis=axis, keepdims=True)


def layernorm_reference(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((3, 5), -1),
        ((2, 2 * SIM_ROW_THREADS + 3), -1),  # rows longer than the block: several elements per thread
        ((2, SIM_ROW_CACHE + 1), -1),  # too long for the shared-memory row cache: read from global twice
        ((2, SIM_ROW_CACHE), -1),  # exactly fills the row cache
        ((5, 3, 4), 1),  # a middle axis, read with a stride; more rows than the simulator's grid
        ((2, 3, 4), 0),
        ((1, 1), -1),
        ((7,), 0),
    ],
)
def test_softmax_matches_numpy_along_any_axis(rng, dtype, shape, axis) -> None:
    x = random_array(rng, shape, dtype) * 4
    with memory.poisoned_allocations():
        got = K.softmax(x, axis=axis)
    assert_matches(got, softmax_reference(x, axis), dtype, shape[axis])


def test_softmax_is_stable_for_large_inputs(rng) -> None:
    x = random_array(rng, (2, 6), np.float32) + np.float32(1e4)
    got = K.softmax(x)
    assert np.isfinite(got).all()
    assert_matches(got, softmax_reference(x, -1), np.float32, 6)


def test_softmax_treats_minus_infinity_as_zero_probability_and_propagates_nan() -> None:
    got = K.softmax(np.array([[1.0, -np.inf, 2.0], [np.nan, 1.0, 2.0]]))
    np.testing.assert_allclose(got[0], softmax_reference(np.array([[1.0, -np.inf, 2.0]]), -1)[0])
    assert np.isnan(got[1]).all()


def test_softmax_of_empty_rows_returns_an_empty_array() -> None:
    assert K.softmax(np.ones((0, 3), np.float32)).shape == (0, 3)
    assert K.softmax(np.ones((3, 0), np.float32)).shape == (3, 0)


def test_softmax_on_a_device_array_stays_on_the_device(rng) -> None:
    x = random_array(rng, (3, 4), np.float64)
    got = K.softmax(memory.to_device(x))
    assert hasattr(got, "copy_to_host")
    assert_matches(got.copy_to_host(), softmax_reference(x, -1), np.float64, 4)


def test_softmax_axis_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(K.TensorError, match="axis 2 is out of range"):
        K.softmax(np.ones((2, 2)), axis=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2 * SIM_ROW_THREADS + 1), (2, SIM_ROW_CACHE + 1), (1, 1), (4,)])
def test_layernorm_matches_numpy(rng, dtype, shape) -> None:
    x = random_array(rng, shape, dtype) * 3 + 2
    with memory.poisoned_allocations():
        got = K.layernorm(x, eps=1e-5)
    assert_matches(got, layernorm_reference(x, 1e-5), dtype, shape[-1] * 8)


def test_layernorm_applies_weight_and_bias(rng) -> None:
    x = random_array(rng, (4, 6), np.float64)
    weight = random_array(rng, (6,), np.float64)
    bias = random_array(rng, (6,), np.float64)
    with memory.poisoned_allocations():
        got = K.layernorm(x, 1e-3, weight, bias)
    assert_matches(got, layernorm_reference(x, 1e-3) * weight + bias, np.float64, 6)


def test_layernorm_is_stable_with_a_large_offset(rng) -> None:
    # Welford keeps the variance of values near 1e4 accurate where sum-of-squares would cancel.
    x = random_array(rng, (2, 17), np.float64) + 1e4
    assert_matches(K.layernorm(x), layernorm_reference(x, 1e-5), np.float64, 17 * 1e4)


@pytest.mark.parametrize("eps", [-1.0, float("nan"), "small"])
def test_layernorm_refuses_a_bad_eps(eps) -> None:
    with pytest.raises(ValueError, match="eps must be a finite number"):
        K.layernorm(np.ones((2, 2)), eps=eps)


def test_layernorm_refuses_a_weight_of_the_wrong_length() -> None:
    with pytest.raises(K.ShapeMismatchError, match=r"weight must have shape \(3,\)"):
        K.layernorm(np.ones((2, 3)), 1e-5, np.ones(2), np.ones(2))
