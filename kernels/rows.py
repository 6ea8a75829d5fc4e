"""Row-wise fused kernels: softmax (online max/sum) and layernorm (Welford), one block per row.

Each thread streams its strided share of the row once, keeping a running (max, sum of exp) pair or
a running (count, mean, M2) triple; the block merges the per-thread partials in shared memory
with the associative merge rules, then writes the row. Rows are addressed as (outer, length,
inner) so `softmax` along any axis needs no transposed copy: element j of row r lives at
outer * length * inner + j * inner + within.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels import memory
from tensorai.kernels.budget import is_simulator
from tensorai.kernels.errors import ShapeMismatchError
from tensorai.kernels.validate import check_array, check_same_dtype, check_same_side, normalise_axis

GPU_ROW_THREADS = 256
SIM_ROW_THREADS = 8
# Rows up to this many elements are kept in shared memory between the statistics pass and the
# write pass, so each element is read from global memory once (16 KiB float32 / 32 KiB float64
# per block). The simulator uses a tiny cache so tests cover both the cached and uncached paths.
GPU_ROW_CACHE = 4096
SIM_ROW_CACHE = 16
GPU_MAX_ROW_BLOCKS = 65535
SIM_MAX_ROW_BLOCKS = 4


def row_threads() -> int:
    return SIM_ROW_THREADS if is_simulator() else GPU_ROW_THREADS


def row_cache() -> int:
    return SIM_ROW_CACHE if is_simulator() else GPU_ROW_CACHE


def _numba_type(dtype: np.dtype) -> Any:
    return cuda.float32 if np.dtype(dtype) == np.float32 else cuda.float64


@functools.cache
def _softmax_kernel(dtype: np.dtype, threads: int, cache_size: int) -> Any:
    numba_type = _numba_type(dtype)

    @cuda.jit
    def softmax(x, y, rows, length, inner):  # type: ignore[no-untyped-def]
        maxes = cuda.shared.array(threads, numba_type)
        sums = cuda.shared.array(threads, numba_type)
        row_values = cuda.shared.array(cache_size, numba_type)
        thread = cuda.threadIdx.x
        negative_infinity = numba_type(-math.inf)
        cached = length <= cache_size
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            base = (row // inner) * length * inner + row % inner
            running_max = negative_infinity
            running_sum = numba_type(0)
            for j in range(thread, length, threads):
                value = x[base + j * inner]
                if cached:
                    row_values[j] = value
                if value > running_max:
                    running_sum = running_sum * math.exp(running_max - value) + numba_type(1)
                    running_max = value
                elif value != negative_infinity:
                    running_sum += math.exp(value - running_max)
            maxes[thread] = running_max
            sums[thread] = running_sum
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if thread < step:
                    max_a = maxes[thread]
                    max_b = maxes[thread + step]
                    merged_max = max_a if max_a > max_b else max_b
                    if merged_max != negative_infinity:
                        sums[thread] = sums[thread] * math.exp(max_a - merged_max) + sums[
                            thread + step
                        ] * math.exp(max_b - merged_max)
                    if max_b != max_b:
                        merged_max = max_b  # NaN anywhere in the row makes the row NaN, as in NumPy
                    maxes[thread] = merged_max
                cuda.syncthreads()
                step //= 2
            row_max = maxes[0]
            row_sum = sums[0]
            cuda.syncthreads()
            for j in range(thread, length, threads):
                value = row_values[j] if cached else x[base + j * inner]
                y[base + j * inner] = math.exp(value - row_max) / row_sum

    return softmax


@functools.cache
def _layernorm_kernel(dtype: np.dtype, threads: int, cache_size: int) -> Any:
    numba_type = _numba_type(dtype)

    @cuda.jit
    def layernorm(x, y, weight, bias, rows, length, epsilon, affine):  # type: ignore[no-untyped-def]
        counts = cuda.shared.array(threads, numba_type)
        means = cuda.shared.array(threads, numba_type)
        squares = cuda.shared.array(threads, numba_type)
        row_values = cuda.shared.array(cache_size, numba_type)
        thread = cuda.threadIdx.x
        cached = length <= cache_size
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            base = row * length
            count = numba_type(0)
            mean = numba_type(0)
            m2 = numba_type(0)
            for j in range(thread, length, threads):
                value = x[base + j]
                if cached:
                    row_values[j] = value
                count += numba_type(1)
                delta = value - mean
                mean += delta / count
                m2 += delta * (value - mean)
            counts[thread] = count
            means[thread] = mean
            squares[thread] = m2
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if thread < step:
                    count_a = counts[thread]
                    count_b = counts[thread + step]
                    total = count_a + count_b
                    if total > 0:
                        delta = means[thread + step] - means[thread]
                        means[thread] = means[thread] + delta * (count_b / total)
                        squares[thread] = squares[thread] + squares[thread + step] + delta * delta * (
                            count_a * count_b / total
                        )
                        counts[thread] = total
                cuda.syncthreads()
                step //= 2
            row_mean = means[0]
            inverse_std = numba_type(1.0 / math.sqrt(squares[0] / counts[0] + epsilon))
            cuda.syncthreads()
            for j in range(thread, length, threads):
                value = row_values[j] if cached else x[base + j]
                normalised = (value - row_mean) * inverse_std
                if affine:
                    normalised = normalised * weight[j] + bias[j]
                y[base + j] = normalised

    return layernorm


def _launch_rows(kernel: Any, rows: int, *args: Any) -> None:
    blocks = min(rows, SIM_MAX_ROW_BLOCKS if is_simulator() else GPU_MAX_ROW_BLOCKS)
    kernel[blocks, row_threads()](*args)


def _prepare(x: Any, what: str) -> tuple[Any, bool]:
    on_device = check_same_side(("x", x))
    return (x if on_device else memory.to_device(x, what=what)), on_device


def launch_softmax(source: Any, out: Any, axis: int) -> None:
    """Softmax of device array `source` along `axis` into the preallocated device array `out`.

    No validation or allocation: `softmax()` does both; benchmarks call this to time the kernel.
    """
    shape = tuple(int(extent) for extent in source.shape)
    length = shape[axis]
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    rows = int(np.prod(shape, dtype=np.int64)) // length if length else 0
    if rows and length:
        kernel = _softmax_kernel(np.dtype(source.dtype), row_threads(), row_cache())
        _launch_rows(kernel, rows, source.reshape(-1), out.reshape(-1), rows, length, inner)


def softmax(x: Any, axis: int = -1) -> Any:
    """`exp(x - max) / sum(exp(x - max))` along `axis`, one pass for the statistics per row."""
    check_array(x, "x")
    if x.ndim == 0:
        raise ShapeMismatchError("softmax needs at least one dimension, got a 0-d array")
    axis = normalise_axis(axis, x.ndim)
    source, on_device = _prepare(x, "softmax input")
    out = memory.device_empty(tuple(x.shape), x.dtype, what="softmax output")
    launch_softmax(source, out, axis)
    return out if on_device else out.copy_to_host()


def layernorm(x: Any, eps: float = 1e-5, weight: Any = None, bias: Any = None) -> Any:
    """`(x - mean) / sqrt(var + eps)` over the last axis (Welford, one pass), then `* weight + bias`."""
    check_array(x, "x")
    if x.ndim == 0:
        raise ShapeMismatchError("layernorm needs at least one dimension, got a 0-d array")
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps >= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if (weight is None) != (bias is None):
        raise ValueError("pass both weight and bias (the affine transform), or neither")
    shape = tuple(int(extent) for extent in x.shape)
    length = shape[-1]
    source, on_device = _prepare(x, "layernorm input")
    affine = weight is not None
    if affine:
        check_array(weight, "weight")
        check_array(bias, "bias")
        check_same_dtype(("x", x), ("weight", weight), ("bias", bias))
        check_same_side(("x", x), ("weight", weight), ("bias", bias))
        for name, param in (("weight", weight), ("bias", bias)):
            if tuple(param.shape) != (length,):
                raise ShapeMismatchError(f"layernorm {name} must have shape ({length},), got {tuple(param.shape)}")
        weight_device = weight if on_device else memory.to_device(weight, what="layernorm weight")
        bias_device = bias if on_device else memory.to_device(bias, what="layernorm bias")
    else:
        weight_device = bias_device = None
    out = memory.device_empty(shape, x.dtype, what="layernorm output")
    launch_layernorm(source, out, float(eps), weight_device, bias_device, affine)
    return out if on_device else out.copy_to_host()


def launch_layernorm(
    source: Any, out: Any, eps: float, weight: Any = None, bias: Any = None, affine: bool = False
) -> None:
    """Layernorm of device array `source` over its last axis into preallocated `out` (no checks)."""
    shape = tuple(int(extent) for extent in source.shape)
    length = shape[-1] if shape else 0
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if not (rows and length):
        return
    if weight is None or bias is None:
        weight = bias = memory.placeholder(source.dtype)
    _launch_rows(
        _layernorm_kernel(np.dtype(source.dtype), row_threads(), row_cache()),
        rows,
        source.reshape(-1),
        out.reshape(-1),
        weight.reshape(-1),
        bias.reshape(-1),
        rows,
        length,
        float(eps),
        affine,
    )
