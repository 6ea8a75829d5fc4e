"""softmax and layernorm (row kernels, the row held in registers or streamed) on the CUDA simulator vs NumPy float64."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.rows import SIM_MAX_ROW_BLOCKS, row_cache, row_threads, row_tile
from tensorai.kernels.testing import assert_matches, fresh_rng, random_array

# The target's sizes: the simulator's small ones in CI, the GPU's on a GPU (so both paths run there too)
THREADS, CACHE = row_threads(), row_cache()


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
        ((2, 2 * THREADS + 3), -1),  # rows longer than the block: several elements per thread
        ((2, CACHE + 1), -1),  # too long for the register tile: streamed, read from global 3 times
        ((2, CACHE), -1),  # exactly fills the register tile
        ((2 * SIM_MAX_ROW_BLOCKS + 1, THREADS + 3), -1),  # a part-filled tile; blocks loop over rows
        ((5, 3, 4), 1),  # a middle axis, read with a stride; more rows than the simulator's grid
        ((3, THREADS + 3, 2), 1),  # strided, a part-filled tile of 2 elements per thread
        ((2, CACHE + 3, 3), 1),  # strided and streamed
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


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the simulator's NumPy scalars
@pytest.mark.parametrize("length", [5, CACHE, 2 * CACHE + 3])  # one element per thread, full, streamed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_special_values_match_numpy_in_resident_and_streamed_rows(rng, length, dtype) -> None:
    x = random_array(rng, (6, length), dtype)
    x[0, length - 1] = np.nan  # NaN in the last (tail) element: the whole row is NaN
    x[1, 0] = np.nan
    x[2, 1::2] = -np.inf  # -inf elements get probability 0
    x[3, :] = -np.inf  # all -inf: NumPy gives NaN (-inf - -inf)
    x[4, length // 2] = np.inf  # +inf: NumPy gives NaN (inf - inf)
    with np.errstate(invalid="ignore"):
        expected = softmax_reference(x, -1)
    got = K.softmax(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert_matches(got[finite], expected[finite], dtype, length)


def test_row_tile_holds_the_row_in_registers_up_to_the_cache_size_then_streams() -> None:
    threads, cache = THREADS, CACHE
    assert row_tile(1) == (threads, True)
    assert row_tile(threads + 1) == (2 * threads, True)
    assert row_tile(cache) == (cache, True)
    assert row_tile(cache + 1) == (cache, False)


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
@pytest.mark.parametrize(
    "shape",
    [
        (3, 5),
        (2, 3, 2 * THREADS + 1),  # streamed
        (2, CACHE + 1),  # streamed
        (2 * SIM_MAX_ROW_BLOCKS + 1, THREADS + 3),  # a part-filled tile; blocks loop over rows
        (2, CACHE),
        (1, 1),
        (4,),
    ],
)
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


@pytest.mark.parametrize("length", [17, CACHE + 5])  # resident and streamed
def test_layernorm_is_stable_with_a_large_offset(rng, length) -> None:
    # The mean first, then squared deviations from it, keeps the variance of values near 1e4 accurate
    # where a sum of squares minus the squared mean would cancel.
    x = random_array(rng, (2, length), np.float64) + 1e4
    assert_matches(K.layernorm(x), layernorm_reference(x, 1e-5), np.float64, length * 1e4)


@pytest.mark.parametrize("eps", [-1.0, float("nan"), "small"])
def test_layernorm_refuses_a_bad_eps(eps) -> None:
    with pytest.raises(ValueError, match="eps must be a finite number"):
        K.layernorm(np.ones((2, 2)), eps=eps)


def test_layernorm_refuses_a_weight_of_the_wrong_length() -> None:
    with pytest.raises(K.ShapeMismatchError, match=r"weight must have shape \(3,\)"):
        K.layernorm(np.ones((2, 3)), 1e-5, np.ones(2), np.ones(2))


LOWER_EVERY_VARIANT = textwrap.dedent(
    """
    import types as pytypes
    import numpy as np
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
    from numba import types
    from numba.cuda import compiler
    from tensorai.kernels import rows

    def lower(kernel, signature):
        result = compiler.compile_cuda(kernel.py_func, types.void, signature, cc=(9, 0))
        assert "define" in result.library.get_llvm_str()

    threads, largest = rows.GPU_ROW_THREADS, rows.GPU_ROW_CACHE
    for dtype, element in ((np.float32, types.float32), (np.float64, types.float64)):
        array = element[::1]
        for tile in (threads, largest):
            for resident in (True, False):
                for strided in (False, True):
                    kernel = rows._softmax_kernel(np.dtype(dtype), threads, tile, resident, strided)
                    lower(kernel, (array, array) + (types.int64,) * 3)
                lower(
                    rows._layernorm_kernel(np.dtype(dtype), threads, tile, resident),
                    (array,) * 4 + (types.int64, types.int64, types.float64, types.boolean),
                )
    print("lowered")
    """
)


def test_every_row_kernel_variant_compiles_for_a_real_gpu() -> None:
    # tests/test_kernels_compile.py lowers the default build (contiguous, resident); the launch also
    # picks streamed and strided builds, whose shuffles and unrolled tiles the simulator never types.
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-c", LOWER_EVERY_VARIANT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "lowered" in done.stdout, done.stderr[-4000:]
