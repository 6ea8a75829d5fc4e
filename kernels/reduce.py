"""Sum and max reductions: over the whole array (two stages) or along one axis (one block per output).

Each block tree-reduces in shared memory (no warp shuffles, so the same kernel runs on the
simulator); whole-array reductions write one partial per block, then reduce the partials with a
single block — deterministic, no float atomics. `max` propagates NaN like NumPy.
"""

from __future__ import annotations

import builtins
import functools
import math
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels import memory
from tensorai.kernels.budget import is_simulator
from tensorai.kernels.errors import ShapeMismatchError
from tensorai.kernels.rows import row_threads
from tensorai.kernels.validate import check_array, check_same_side, normalise_axis

OP_SUM = 0
OP_MAX = 1
GPU_MAX_PARTIALS = 1024
SIM_MAX_PARTIALS = 3


@functools.cache
def _reduce_kernel(dtype: np.dtype, threads: int) -> Any:
    numba_type = cuda.float32 if np.dtype(dtype) == np.float32 else cuda.float64

    @cuda.jit
    def reduce_rows(x, y, rows, length, inner, total, op):  # type: ignore[no-untyped-def]
        partials = cuda.shared.array(threads, numba_type)
        thread = cuda.threadIdx.x
        identity = numba_type(0) if op == 0 else numba_type(-math.inf)
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            base = (row // inner) * length * inner + row % inner
            accumulator = identity
            for j in range(thread, length, threads):
                index = base + j * inner
                if index < total:
                    value = x[index]
                    if op == 0:
                        accumulator += value
                    elif value > accumulator or value != value:
                        accumulator = value
            partials[thread] = accumulator
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if thread < step:
                    other = partials[thread + step]
                    if op == 0:
                        partials[thread] += other
                    elif other > partials[thread] or other != other:
                        partials[thread] = other
                cuda.syncthreads()
                step //= 2
            if thread == 0:
                y[row] = partials[0]
            cuda.syncthreads()

    return reduce_rows


def _launch(source_flat: Any, target: Any, rows: int, length: int, inner: int, total: int, op: int) -> None:
    threads = row_threads()
    blocks = builtins.min(rows, 4 if is_simulator() else 65535)
    _reduce_kernel(np.dtype(source_flat.dtype), threads)[blocks, threads](
        source_flat, target, rows, length, inner, total, op
    )


def _reduce(x: Any, axis: int | None, op: int, name: str) -> Any:
    check_array(x, "x")
    on_device = check_same_side(("x", x))
    shape = tuple(int(extent) for extent in x.shape)
    total = int(np.prod(shape, dtype=np.int64))
    if axis is None:
        if total == 0 and op == OP_MAX:
            raise ShapeMismatchError(f"{name} of an empty array has no identity; pass a non-empty array")
        out_shape: tuple[int, ...] = ()
    else:
        axis = normalise_axis(axis, len(shape)) if shape else normalise_axis(axis, 0)
        if shape[axis] == 0 and op == OP_MAX:
            raise ShapeMismatchError(f"{name} along axis {axis} of length 0 has no identity")
        out_shape = shape[:axis] + shape[axis + 1 :]
    source = x if on_device else memory.to_device(np.ascontiguousarray(x), what=f"{name} input")
    out = memory.device_empty(out_shape, x.dtype, what=f"{name} output")
    out_flat = out.reshape(-1) if out.ndim else out.reshape(1)
    if axis is None:
        if total == 0:
            out_flat.copy_to_device(np.zeros(1, dtype=x.dtype))
        else:
            limit = SIM_MAX_PARTIALS if is_simulator() else GPU_MAX_PARTIALS
            parts = builtins.max(1, builtins.min(limit, -(-total // (row_threads() * 4))))
            chunk = -(-total // parts)
            partials = memory.device_empty((parts,), x.dtype, what=f"{name} partials")
            source_flat = source.reshape(-1) if source.ndim else source.reshape(1)
            _launch(source_flat, partials, parts, chunk, 1, total, op)
            _launch(partials, out_flat, 1, parts, 1, parts, op)
    else:
        rows = int(np.prod(out_shape, dtype=np.int64))
        if rows:
            inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
            _launch(source.reshape(-1), out_flat, rows, shape[axis], inner, total, op)
    return out if on_device else out.copy_to_host()


def sum(x: Any, axis: int | None = None) -> Any:
    """Sum of all elements (axis=None, a 0-d result) or along one axis, in the input's precision."""
    return _reduce(x, axis, OP_SUM, "sum")


def max(x: Any, axis: int | None = None) -> Any:
    """Maximum of all elements or along one axis; NaN propagates; empty input raises ShapeMismatchError."""
    return _reduce(x, axis, OP_MAX, "max")
