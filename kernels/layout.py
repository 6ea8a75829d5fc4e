"""Strides of logical axis groups, and a device kernel that materialises an axis permutation.

A contraction maps each operand onto (batch, rows, columns); that works without a copy when each
group's axes are adjacent and in order in memory (then the group is one strided axis). When they
are not, the operand is permuted into that order once, on the device for device inputs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels import memory
from tensorai.kernels.budget import is_simulator


def element_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-contiguous strides of `shape`, in elements."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * max(int(shape[axis + 1]), 1)
    return tuple(strides)


def merged_stride(shape: Sequence[int], strides: Sequence[int], axes: Sequence[int]) -> tuple[int, int] | None:
    """(size, stride) of `axes` (outer to inner) viewed as one axis, or None when they cannot merge.

    Size-1 axes never break a merge; an empty group is one element with stride 0.
    """
    present = [axis for axis in axes if shape[axis] != 1]
    size = int(np.prod([shape[axis] for axis in axes], dtype=np.int64)) if axes else 1
    if not present:
        return size, 0
    for outer, inner in itertools.pairwise(present):
        if strides[outer] != strides[inner] * shape[inner]:
            return None
    return size, int(strides[present[-1]])


@functools.cache
def _permute_kernel(dtype: np.dtype) -> Any:
    @cuda.jit
    def permute(source, target, target_shape, source_strides, total):  # type: ignore[no-untyped-def]
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        dims = target_shape.shape[0]
        for linear in range(start, total, step):
            remainder = linear
            offset = 0
            for axis in range(dims - 1, -1, -1):
                extent = target_shape[axis]
                offset += (remainder % extent) * source_strides[axis]
                remainder //= extent
            target[linear] = source[offset]

    return permute


def permute_on_device(source: Any, axes: Sequence[int], what: str = "a permuted operand") -> Any:
    """A new C-contiguous device array equal to `np.transpose(source, axes)` (source contiguous)."""
    shape = tuple(int(source.shape[axis]) for axis in axes)
    target = memory.device_empty(shape, source.dtype, what=what)
    total = int(np.prod(shape, dtype=np.int64))
    if total == 0:
        return target
    strides = element_strides(source.shape)
    target_shape = memory.to_device(np.array(shape, dtype=np.int64), what="permutation shape")
    source_strides = memory.to_device(np.array([strides[axis] for axis in axes], dtype=np.int64), what="strides")
    threads = 32 if is_simulator() else 256
    blocks = min(-(-total // threads), 4 if is_simulator() else 4096)
    _permute_kernel(np.dtype(source.dtype))[blocks, threads](
        source.reshape(-1), target.reshape(-1), target_shape, source_strides, total
    )
    return target
