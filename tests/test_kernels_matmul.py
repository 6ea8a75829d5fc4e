"""matmul on the CUDA simulator: tiled GEMM correctness against NumPy float64, edges and validation."""

from __future__ import annotations

import numpy as np
import pytest

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.activations import reference_activation
from tensorai.kernels.gemm import SIM_CONFIG
from tensorai.kernels.testing import assert_matches, fresh_rng, random_array

DTYPES = [np.float32, np.float64]
TILE = SIM_CONFIG.block_rows


@pytest.fixture
def rng() -> np.random.Generator:
    return fresh_rng()[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (TILE, TILE, TILE),  # exactly one tile
        (TILE + 3, 2 * SIM_CONFIG.k_tile + 1, TILE + 5),  # ragged in every dimension, several K tiles
        (1, 1, 1),
        (1, 7, 2 * TILE + 1),  # a row vector across several column blocks
        (9, 3, 1),
    ],
)
def test_matmul_matches_numpy_for_sizes_not_divisible_by_the_tile(rng, dtype, m, k, n) -> None:
    a = random_array(rng, (m, k), dtype)
    b = random_array(rng, (k, n), dtype)
    with memory.poisoned_allocations():
        got = K.matmul(a, b)
    assert isinstance(got, np.ndarray)
    assert_matches(got, a.astype(np.float64) @ b.astype(np.float64), dtype, terms=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_matmul_multiplies_each_batch_separately(rng, dtype) -> None:
    a = random_array(rng, (3, 5, 4), dtype)
    b = random_array(rng, (3, 4, 6), dtype)
    with memory.poisoned_allocations():
        got = K.matmul(a, b)
    assert_matches(got, np.matmul(a.astype(np.float64), b.astype(np.float64)), dtype, terms=4)


def test_device_arrays_in_give_a_device_array_out(rng) -> None:
    a = random_array(rng, (6, 5), np.float32)
    b = random_array(rng, (5, 7), np.float32)
    with memory.poisoned_allocations():
        got = K.matmul(memory.to_device(a), memory.to_device(b))
    assert not isinstance(got, np.ndarray) and hasattr(got, "copy_to_host")
    assert_matches(got.copy_to_host(), a.astype(np.float64) @ b.astype(np.float64), np.float32, terms=5)


@pytest.mark.parametrize(("m", "k", "n"), [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0)])
def test_empty_dimensions_give_numpys_shape_and_zeros_for_empty_k(m, k, n) -> None:
    a = np.ones((m, k), np.float64)
    b = np.ones((k, n), np.float64)
    with memory.poisoned_allocations():
        got = K.matmul(a, b)
    assert got.shape == (m, n)
    np.testing.assert_array_equal(got, np.zeros((m, n)))


@pytest.mark.parametrize("on_device", [False, True])
def test_empty_k_with_bias_gives_the_activation_of_the_bias(rng, on_device) -> None:
    # K = 0 still runs the epilogue: every output is act(0 + bias). The empty operands reach the
    # GEMM with their own rank, which the real CUDA target cannot type; the launch must not pass them.
    a = np.ones((3, 0), np.float64)
    b = np.ones((0, 4), np.float64)
    bias = random_array(rng, (4,), np.float64)
    operands = [memory.to_device(x) for x in (a, b, bias)] if on_device else [a, b, bias]
    with memory.poisoned_allocations():
        got = K.tensor_dot_fusion(*operands, activation="silu")
    got = got.copy_to_host() if on_device else got
    expected = np.broadcast_to(reference_activation(bias, "silu"), (3, 4))
    assert_matches(got, expected, np.float64, terms=1)


def test_inner_dimension_mismatch_is_a_clear_shape_error() -> None:
    with pytest.raises(K.ShapeMismatchError, match=r"inner dimensions differ.*K=3.*K=4"):
        K.matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


def test_batch_dimension_mismatch_is_refused_not_broadcast() -> None:
    with pytest.raises(K.ShapeMismatchError, match="batch dimensions differ"):
        K.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 5)))


def test_one_dimensional_operands_are_refused() -> None:
    with pytest.raises(K.ShapeMismatchError, match="at least 2 dimensions"):
        K.matmul(np.ones(3), np.ones((3, 2)))


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.complex64])
def test_unsupported_dtypes_are_refused_by_name(dtype) -> None:
    with pytest.raises(K.DTypeError, match="float32 and float64 only"):
        K.matmul(np.ones((2, 2), dtype), np.ones((2, 2), dtype))


def test_mixed_dtypes_are_refused_instead_of_silently_cast() -> None:
    with pytest.raises(K.DTypeError, match="float32 but b is float64"):
        K.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))


def test_non_contiguous_input_is_refused_with_the_fix_named() -> None:
    transposed = np.ones((3, 2), np.float32).T
    with pytest.raises(K.LayoutError, match="ascontiguousarray"):
        K.matmul(transposed, np.ones((3, 2), np.float32))


def test_host_and_device_operands_cannot_be_mixed() -> None:
    a = np.ones((2, 2), np.float32)
    with pytest.raises(K.TensorError, match="all NumPy arrays or all device arrays"):
        K.matmul(a, memory.to_device(a))


def test_non_arrays_are_refused() -> None:
    with pytest.raises(K.TensorError, match="NumPy array or a Numba device array"):
        K.matmul([[1.0]], np.ones((1, 1)))
