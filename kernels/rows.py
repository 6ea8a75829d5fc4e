"""Row-wise fused kernels: softmax and layernorm, one block per row, the row held in registers.

A row is read from global memory once and written once. Each thread fetches its `items` elements
(element `thread + k * threads` of the row, so a warp's fetches are adjacent) into a register array
before using any of them, so every thread has `items` loads in flight instead of one: a
one-element-at-a-time loop that stores each value before fetching the next leaves the memory
system idle between loads (the previous kernel's SASS showed exactly that). The statistics are then
computed from the registers: softmax takes the row max, then one exp per element (kept in place)
and their sum, then multiplies by 1 / sum; layernorm takes the mean, then the squared deviations
from it (two passes over registers, no Welford division per element).

Block reductions: on a GPU, a warp shuffle tree (5 shuffles, no barrier) and one barrier to
combine the warps' results; the simulator has no shuffles, so there each thread is its own
"warp" and the same code combines the threads' partials through shared memory.

Rows longer than `threads * items` (the register tile) are streamed in tiles of that size and
read from global memory again for each statistic (3 reads for softmax, 3 for layernorm). Rows are
addressed as (outer, length, inner) so `softmax` along any axis needs no transposed copy: element
j of row r lives at outer * length * inner + j * inner + within.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels import memory
from tensorai.kernels.budget import inlined_device_function, is_simulator
from tensorai.kernels.errors import ShapeMismatchError
from tensorai.kernels.validate import check_array, check_same_dtype, check_same_side, normalise_axis

GPU_ROW_THREADS = 256
SIM_ROW_THREADS = 8
# The register tile: rows up to this many elements are held in registers (items = tile / threads
# per thread, 16 on a GPU) between reading and writing, so each element is read from global memory
# once. The simulator uses a tiny tile so tests cover both the resident and the streamed paths.
GPU_ROW_CACHE = 4096
SIM_ROW_CACHE = 16
GPU_MAX_ROW_BLOCKS = 65535
SIM_MAX_ROW_BLOCKS = 4
_FULL_MASK = 0xFFFFFFFF
# Global indexes are cast to unsigned: Numba wraps negative signed indexes, a compare and a select
# per access; these are never negative.
u = np.uint64


def row_threads() -> int:
    return SIM_ROW_THREADS if is_simulator() else GPU_ROW_THREADS


def row_cache() -> int:
    return SIM_ROW_CACHE if is_simulator() else GPU_ROW_CACHE


def _numba_type(dtype: np.dtype) -> Any:
    return cuda.float32 if np.dtype(dtype) == np.float32 else cuda.float64


def _warp_width() -> int:
    """Lanes that reduce through shuffles: 32 on a GPU, 1 on the simulator (which has no shuffles)."""
    return 1 if is_simulator() else 32


def row_tile(length: int) -> tuple[int, bool]:
    """(tile, resident) for a row of `length`: the smallest power-of-two register tile that holds the
    row (at least one element per thread), or the largest tile with the row streamed through it."""
    threads, largest = row_threads(), row_cache()
    if length > largest:
        return largest, False
    tile = threads
    while tile < length:
        tile *= 2
    return tile, True


@functools.cache
def _row_helpers(items: int, threads: int, warp: int) -> tuple[Any, Any]:
    """The row kernels' inlined device functions, with the block shape as compile-time constants:

    - `fetch(x, values, first, start, limit, stride, fill)`: a thread's `items` elements of a tile
      (every load issued before any value is used; `fill` past the row's end);
    - `warp_sum(value)`: the sum over a warp by butterfly shuffles.
    """

    @inlined_device_function
    def fetch(x, values, first, start, limit, stride, fill):  # type: ignore[no-untyped-def]
        for k in range(items):
            o = start + k * threads
            values[k] = x[u(first + o * stride)] if o < limit else fill

    @inlined_device_function
    def warp_sum(value):  # type: ignore[no-untyped-def]
        offset = warp // 2
        while offset > 0:
            value += cuda.shfl_xor_sync(_FULL_MASK, value, offset)
            offset //= 2
        return value

    return fetch, warp_sum


@functools.cache
def _softmax_kernel(dtype: np.dtype, threads: int, tile: int, resident: bool = True, strided: bool = False) -> Any:
    """Softmax kernel for `threads` per block holding `tile` row elements in registers.

    `resident`: the whole row fits the tile (length <= tile), so it is read once; otherwise the row
    is streamed through the tile three times (max, sum of exp, write). `strided`: rows along a
    non-last axis (`inner` > 1); the contiguous build makes each fetch's offset a constant, so
    no per-element address is computed or kept in a register.
    """
    numba_type = _numba_type(dtype)
    items = tile // threads
    warp = _warp_width()
    warps = threads // warp

    fetch, warp_sum = _row_helpers(items, threads, warp)

    @cuda.jit
    def softmax(x, y, rows, length, inner):  # type: ignore[no-untyped-def]
        maxes = cuda.shared.array(warps, numba_type)
        sums = cuda.shared.array(warps, numba_type)
        values = cuda.local.array(items, numba_type)
        thread = cuda.threadIdx.x
        lane = thread % warp
        negative_infinity = numba_type(-math.inf)
        stop = 1 if resident else length  # a resident row is one tile: the tile loops run once, unrolled
        stride = inner if strided else 1
        limit = length - thread  # element offset o (from this thread's first) is in the row if o < limit
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            base = (row // inner) * length * inner + row % inner if strided else row * length
            first = base + thread * stride
            # Row max. A NaN is skipped here but still makes the row NaN, as in NumPy: its exp is NaN,
            # so the sum and every output are.
            running_max = negative_infinity
            for start in range(0, stop, tile):
                fetch(x, values, first, start, limit, stride, negative_infinity)
                for k in range(items):
                    value = values[k]
                    if value > running_max:
                        running_max = value
            offset = warp // 2
            while offset > 0:
                other = cuda.shfl_xor_sync(_FULL_MASK, running_max, offset)
                if other > running_max:
                    running_max = other
                offset //= 2
            if lane == 0:
                maxes[thread // warp] = running_max
            cuda.syncthreads()
            row_max = maxes[0]
            for w in range(1, warps):
                other = maxes[w]
                if other > row_max:
                    row_max = other
            # One exp per element, kept in the registers when the row is resident.
            running_sum = numba_type(0)
            for start in range(0, stop, tile):
                if not resident:
                    fetch(x, values, first, start, limit, stride, negative_infinity)
                for k in range(items):
                    exponential = math.exp(values[k] - row_max)
                    if resident:
                        values[k] = exponential
                    running_sum += exponential
            running_sum = warp_sum(running_sum)
            if lane == 0:
                sums[thread // warp] = running_sum
            cuda.syncthreads()
            row_sum = sums[0]
            for w in range(1, warps):
                row_sum += sums[w]
            # The next row's partials go to `maxes` only after this barrier pair: every thread has
            # read `maxes` before the second barrier, and `sums` before the next row's first one.
            inverse = numba_type(1) / row_sum
            for start in range(0, stop, tile):
                if not resident:
                    fetch(x, values, first, start, limit, stride, negative_infinity)
                for k in range(items):
                    o = start + k * threads
                    if o < limit:
                        value = values[k] if resident else math.exp(values[k] - row_max)
                        y[u(first + o * stride)] = value * inverse

    return softmax


@functools.cache
def _layernorm_kernel(dtype: np.dtype, threads: int, tile: int, resident: bool = True) -> Any:
    """Layernorm kernel for `threads` per block holding `tile` row elements in registers.

    Mean first, then the mean of squared deviations from it (two passes over the registers when
    the row is resident; over global memory when it is streamed, then a third pass writes).
    """
    numba_type = _numba_type(dtype)
    items = tile // threads
    warp = _warp_width()
    warps = threads // warp

    fetch, warp_sum = _row_helpers(items, threads, warp)

    @cuda.jit
    def layernorm(x, y, weight, bias, rows, length, epsilon, affine):  # type: ignore[no-untyped-def]
        totals = cuda.shared.array(warps, numba_type)
        squares = cuda.shared.array(warps, numba_type)
        values = cuda.local.array(items, numba_type)
        thread = cuda.threadIdx.x
        lane = thread % warp
        zero = numba_type(0)
        count = numba_type(length)
        stop = 1 if resident else length  # a resident row is one tile: the tile loops run once, unrolled
        limit = length - thread  # element offset o (from this thread's first) is in the row if o < limit
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            first = row * length + thread
            running = zero
            for start in range(0, stop, tile):
                fetch(x, values, first, start, limit, 1, zero)
                for k in range(items):
                    running += values[k]
            running = warp_sum(running)
            if lane == 0:
                totals[thread // warp] = running
            cuda.syncthreads()
            row_total = totals[0]
            for w in range(1, warps):
                row_total += totals[w]
            row_mean = row_total / count
            running = zero
            for start in range(0, stop, tile):
                if not resident:
                    fetch(x, values, first, start, limit, 1, zero)
                for k in range(items):
                    if start + k * threads < limit:
                        deviation = values[k] - row_mean
                        running += deviation * deviation
            running = warp_sum(running)
            if lane == 0:
                squares[thread // warp] = running
            cuda.syncthreads()
            row_square = squares[0]
            for w in range(1, warps):
                row_square += squares[w]
            inverse_std = numba_type(1.0 / math.sqrt(row_square / count + epsilon))
            for start in range(0, stop, tile):
                if not resident:
                    fetch(x, values, first, start, limit, 1, zero)
                for k in range(items):
                    o = start + k * threads
                    if o < limit:
                        normalised = (values[k] - row_mean) * inverse_std
                        if affine:
                            normalised = normalised * weight[u(thread + o)] + bias[u(thread + o)]
                        y[u(first + o)] = normalised

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
        kernel = _softmax_kernel(np.dtype(source.dtype), row_threads(), *row_tile(length), inner > 1)
        _launch_rows(kernel, rows, source.reshape(-1), out.reshape(-1), rows, length, inner)


def softmax(x: Any, axis: int = -1) -> Any:
    """`exp(x - max) / sum(exp(x - max))` along `axis`; a row that fits the register tile is read once."""
    check_array(x, "x")
    if x.ndim == 0:
        raise ShapeMismatchError("softmax needs at least one dimension, got a 0-d array")
    axis = normalise_axis(axis, x.ndim)
    source, on_device = _prepare(x, "softmax input")
    out = memory.device_empty(tuple(x.shape), x.dtype, what="softmax output")
    launch_softmax(source, out, axis)
    return out if on_device else out.copy_to_host()


def layernorm(x: Any, eps: float = 1e-5, weight: Any = None, bias: Any = None) -> Any:
    """`(x - mean) / sqrt(var + eps)` over the last axis (mean, then squared deviations), then `* weight + bias`."""
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
        _layernorm_kernel(np.dtype(source.dtype), row_threads(), *row_tile(length)),
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
