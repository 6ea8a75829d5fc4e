"""The kernels' one way to allocate device memory and move arrays between host and device.

Every buffer a kernel entry point creates comes from here, so on the simulator (where Numba's EMM
plugin is never called) the process `MemoryBudget` still sees it; on a real GPU with the EMM plugin
installed the plugin counts it instead and these helpers only allocate.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels.budget import allocation_of, current_budget, emm_enforced

_poison = threading.local()


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Within this block every buffer from `device_empty` starts NaN-filled (tests prove kernels write it all)."""
    previous = getattr(_poison, "enabled", False)
    _poison.enabled = True
    try:
        yield
    finally:
        _poison.enabled = previous


def _charge(device_array: Any, nbytes: int, what: str) -> Any:
    budget = current_budget()
    # Hang the release on what holds the bytes, not on the wrapper: views share it, so the bytes are
    # released only when the last view is gone. On the simulator that is the backing NumPy buffer; on a
    # real GPU it is Numba's allocation object behind the array's (proxy-holding) OwnedPointer.
    storage = getattr(device_array, "_ary", None)
    if isinstance(storage, np.ndarray):
        storage = storage.base if storage.base is not None else storage
    elif getattr(device_array, "gpu_data", None) is not None:
        storage = allocation_of(device_array.gpu_data)
    else:
        storage = device_array  # an empty array owns no device memory
    weakref.finalize(storage, budget.release, nbytes)
    return device_array


def device_empty(shape: tuple[int, ...], dtype: np.dtype, what: str = "a kernel output") -> Any:
    """An uninitialised device array, charged to the budget before it exists."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if emm_enforced():
        return _maybe_poison(cuda.device_array(shape, dtype=dtype))
    current_budget().reserve(nbytes, what=f"{what} {tuple(shape)} {np.dtype(dtype)}")
    try:
        array = cuda.device_array(shape, dtype=dtype)
    except BaseException:
        current_budget().release(nbytes)
        raise
    return _maybe_poison(_charge(array, nbytes, what))


def _maybe_poison(device_array: Any) -> Any:
    return poison(device_array) if getattr(_poison, "enabled", False) else device_array


def to_device(host_array: np.ndarray, what: str = "an input copied to the device") -> Any:
    """A device copy of a host array, charged to the budget before it exists."""
    if emm_enforced():
        return cuda.to_device(host_array)
    nbytes = int(host_array.nbytes)
    current_budget().reserve(nbytes, what=f"{what} {tuple(host_array.shape)} {host_array.dtype}")
    try:
        array = cuda.to_device(host_array)
    except BaseException:
        current_budget().release(nbytes)
        raise
    return _charge(array, nbytes, what)


_placeholders: dict[np.dtype, Any] = {}


def placeholder(dtype: np.dtype) -> Any:
    """A cached one-element device array for unused kernel arguments (e.g. "no bias").

    Allocated once per dtype and never freed, so a kernel launch does not pay a device allocation
    for an argument it ignores. Its few bytes are not charged on the simulator (a cached buffer
    would otherwise stay charged to whichever budget was current when it was made).
    """
    key = np.dtype(dtype)
    if key not in _placeholders:
        _placeholders[key] = cuda.device_array((1,), dtype=key)
    return _placeholders[key]


def poison(device_array: Any) -> Any:
    """Fill a device array with NaN (tests use it to prove every output element is written)."""
    if device_array.size:
        device_array.copy_to_device(np.full(device_array.shape, np.nan, dtype=device_array.dtype))
    return device_array
