"""Input checks shared by every kernel entry point: one place that turns bad arrays into clear errors.

Kernels address memory by C-contiguous strides and compute in the operands' own precision, so
anything else (float16, ints, mixed dtypes, transposed views) is refused here rather than silently
copied or converted: a surprising copy on a 78 GiB GPU is a memory-budget bug waiting to happen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorai.kernels.errors import DTypeError, LayoutError, TensorError

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(value: Any) -> bool:
    """True for Numba device arrays (real or simulated) and other CUDA-array-interface objects."""
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "copy_to_host") or hasattr(value, "__cuda_array_interface__")


def check_array(value: Any, name: str) -> None:
    """Raise a TensorError unless `value` is a C-contiguous float32/float64 host or device array."""
    if not (isinstance(value, np.ndarray) or is_device_array(value)):
        raise TensorError(
            f"{name} must be a NumPy array or a Numba device array, got {type(value).__name__}"
        )
    dtype = np.dtype(value.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise DTypeError(f"{name} has dtype {dtype}; the kernels support float32 and float64 only")
    if not _is_c_contiguous(value):
        raise LayoutError(
            f"{name} (shape {tuple(value.shape)}, strides {tuple(value.strides)}) is not C-contiguous; "
            "pass np.ascontiguousarray(...) or a contiguous device array"
        )


def check_same_dtype(*named: tuple[str, Any]) -> np.dtype:
    """The common dtype of the named arrays; DTypeError naming both when they differ."""
    first_name, first = named[0]
    dtype = np.dtype(first.dtype)
    for name, value in named[1:]:
        if np.dtype(value.dtype) != dtype:
            raise DTypeError(
                f"{first_name} is {dtype} but {name} is {np.dtype(value.dtype)}; cast both to the same dtype"
            )
    return dtype


def check_same_side(*named: tuple[str, Any]) -> bool:
    """True when all arrays live on the device, False when all on the host; TensorError when mixed."""
    on_device = [is_device_array(value) for _, value in named]
    if all(on_device):
        return True
    if not any(on_device):
        return False
    where = ", ".join(f"{name} on {'device' if d else 'host'}" for (name, _), d in zip(named, on_device, strict=True))
    raise TensorError(f"operands must be all NumPy arrays or all device arrays, got {where}")


def normalise_axis(axis: int, ndim: int, name: str = "axis") -> int:
    """`axis` as a non-negative index into `ndim` dimensions (negative counts from the end)."""
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TensorError(f"{name} must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise TensorError(f"{name} {axis} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def _is_c_contiguous(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return bool(value.flags.c_contiguous)
    checker = getattr(value, "is_c_contiguous", None)
    if checker is not None:
        return bool(checker())
    expected = np.dtype(value.dtype).itemsize
    for extent, stride in zip(reversed(value.shape), reversed(value.strides), strict=True):
        if extent > 1 and stride != expected:
            return False
        expected *= extent
    return True
