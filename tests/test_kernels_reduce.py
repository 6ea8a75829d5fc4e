"""sum and max reductions on the CUDA simulator against NumPy float64."""

from __future__ import annotations

import numpy as np
import pytest

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.rows import SIM_ROW_THREADS
from tensorai.kernels.testing import assert_matches, fresh_rng, random_array


@pytest.fixture
def rng() -> np.random.Generator:
    return fresh_rng()[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 4), (SIM_ROW_THREADS * 13 + 5,)])
def test_whole_array_sum_and_max_match_numpy(rng, dtype, shape) -> None:
    x = random_array(rng, shape, dtype)
    with memory.poisoned_allocations():
        total = K.sum(x)
        largest = K.max(x)
    assert_matches(total, np.asarray(x.astype(np.float64).sum()), dtype, x.size)
    assert_matches(largest, np.asarray(x.astype(np.float64).max()), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((3, 5), 0), ((3, 5), 1), ((2, 3, 4), 1), ((2, 3, 4), -1), ((4,), 0)])
def test_axis_sum_and_max_match_numpy(rng, dtype, shape, axis) -> None:
    x = random_array(rng, shape, dtype)
    with memory.poisoned_allocations():
        total = K.sum(x, axis=axis)
        largest = K.max(x, axis=axis)
    assert_matches(total, x.astype(np.float64).sum(axis=axis), dtype, shape[axis])
    assert_matches(largest, x.astype(np.float64).max(axis=axis), dtype)


def test_sum_of_an_empty_array_is_zero_and_max_refuses_it() -> None:
    assert K.sum(np.ones((0, 3))) == 0
    np.testing.assert_array_equal(K.sum(np.ones((0, 3)), axis=0), np.zeros(3))
    with pytest.raises(K.ShapeMismatchError, match="no identity"):
        K.max(np.ones((0, 3)))


def test_max_propagates_nan_like_numpy() -> None:
    assert np.isnan(K.max(np.array([1.0, np.nan, 3.0])))


def test_reduction_of_a_device_array_stays_on_the_device(rng) -> None:
    x = random_array(rng, (3, 4), np.float64)
    got = K.sum(memory.to_device(x), axis=1)
    assert hasattr(got, "copy_to_host")
    assert_matches(got.copy_to_host(), x.sum(axis=1), np.float64, 4)


def test_reduction_axis_must_be_an_int() -> None:
    with pytest.raises(K.TensorError, match="axis must be an int"):
        K.sum(np.ones((2, 2)), axis=(0, 1))
