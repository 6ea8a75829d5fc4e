"""The worker's device-memory budget: one accounting object, two ways allocations reach it.

Why two paths: on a real GPU every Numba device allocation in the process goes through the
External Memory Management (EMM) plugin `BudgetedMemoryManager` below (installed with
`install_budget()` or `NUMBA_CUDA_MEMORY_MANAGER=tensorai.kernels.budget`), so nothing Numba
allocates can silently pass the share. The CUDA simulator never calls an EMM plugin, so there the
kernels' own allocation helpers (`tensorai.kernels.memory`) charge the same `MemoryBudget`. Both
paths raise the same `OutOfBudget`, and the tests exercise the accounting on the simulator.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from tensorai.proto import contract

MIB = 1 << 20


class OutOfBudget(MemoryError):
    """A device allocation that would take the process past its memory budget."""

    def __init__(self, requested_bytes: int, used_bytes: int, limit_bytes: int, what: str) -> None:
        self.requested_bytes = requested_bytes
        self.used_bytes = used_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"out of GPU memory budget: {what} needs {requested_bytes} bytes but {used_bytes} of the "
            f"{limit_bytes}-byte budget ({limit_bytes / MIB:.1f} MiB, from {contract.ENV_VGPU_MEMORY_MIB}) "
            f"are in use; request a larger {contract.RESOURCE_VGPU_MEMORY} or use smaller tensors"
        )


@dataclass(frozen=True)
class BudgetSnapshot:
    """What the budget holds at one moment (for metrics and the worker's report)."""

    limit_bytes: int | None
    used_bytes: int
    peak_bytes: int
    allocations: int
    refused: int


class MemoryBudget:
    """Thread-safe byte accounting with an optional limit; `None` means unlimited (still counted)."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"memory budget must be >= 0 bytes, got {limit_bytes}")
        self._limit_bytes = limit_bytes
        self._used_bytes = 0
        self._peak_bytes = 0
        self._allocations = 0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def limit_bytes(self) -> int | None:
        return self._limit_bytes

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    def reserve(self, nbytes: int, what: str = "a device allocation") -> None:
        """Count `nbytes` as in use, or raise OutOfBudget and count nothing."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative size ({nbytes} bytes)")
        with self._lock:
            if self._limit_bytes is not None and self._used_bytes + nbytes > self._limit_bytes:
                self._refused += 1
                raise OutOfBudget(nbytes, self._used_bytes, self._limit_bytes, what)
            self._used_bytes += nbytes
            self._allocations += 1
            self._peak_bytes = max(self._peak_bytes, self._used_bytes)

    def release(self, nbytes: int) -> None:
        """Return `nbytes` reserved earlier (called from finalizers when device memory is freed)."""
        with self._lock:
            self._used_bytes = max(0, self._used_bytes - nbytes)

    def reset_peak(self) -> None:
        """Start measuring the peak again from the current use."""
        with self._lock:
            self._peak_bytes = self._used_bytes

    def snapshot(self) -> BudgetSnapshot:
        with self._lock:
            return BudgetSnapshot(
                self._limit_bytes, self._used_bytes, self._peak_bytes, self._allocations, self._refused
            )


def budget_from_env(environ: dict[str, str] | None = None) -> MemoryBudget:
    """The budget the device plugin granted (`TENSORAI_VGPU_MEMORY_MIB`); unlimited when unset.

    Raises ValueError for a value that is not a non-negative whole number of MiB.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(contract.ENV_VGPU_MEMORY_MIB, "").strip()
    if not raw:
        return MemoryBudget(None)
    if not raw.isdigit():
        raise ValueError(f"{contract.ENV_VGPU_MEMORY_MIB}={raw!r} is not a whole number of MiB (e.g. '4096')")
    return MemoryBudget(int(raw) * MIB)


_budget_lock = threading.Lock()
_current: MemoryBudget | None = None
_emm_installed = False


def current_budget() -> MemoryBudget:
    """The process-wide budget; created from the environment on first use."""
    global _current
    with _budget_lock:
        if _current is None:
            _current = budget_from_env()
        return _current


def set_budget(budget: MemoryBudget) -> MemoryBudget:
    """Replace the process-wide budget (the worker at start-up; tests); returns the previous one."""
    global _current
    with _budget_lock:
        previous, _current = _current, budget
    return previous if previous is not None else MemoryBudget(None)


def is_simulator() -> bool:
    """True when Numba runs kernels on its CUDA simulator (no device, no EMM plugins)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def inlined_device_function(function: Any) -> Any:
    """`cuda.jit(device=True)` that is always compiled into its caller on a GPU (`forceinline`).

    The row and GEMM kernels pass their per-thread `cuda.local` arrays to such helpers; inlined, those
    stay in registers and the PTX is the hand-written loop's (checked for every variant at sm_90).
    Numba does not inline device functions by default, and the simulator has no such option.
    """
    from numba import cuda  # here: this module stays importable before the simulator is chosen

    if is_simulator():
        return cuda.jit(device=True)(function)
    return cuda.jit(device=True, forceinline=True)(function)


def emm_enforced() -> bool:
    """True when the EMM plugin sees every Numba allocation (so helpers must not count them twice)."""
    if is_simulator():
        return False
    if _emm_installed:
        return True
    return os.environ.get("NUMBA_CUDA_MEMORY_MANAGER", "") == __name__


def install_budget(budget: MemoryBudget) -> str:
    """Make `budget` the process budget and, on a real GPU, install the EMM plugin that enforces it.

    Must run before the first CUDA allocation (Numba fixes its memory manager when the context is
    created). Returns which path enforces the budget, for logs and the worker's report.
    """
    global _emm_installed
    set_budget(budget)
    if is_simulator():
        return "kernel-allocations (simulator: Numba EMM plugins are not used)"
    from numba import cuda

    cuda.set_memory_manager(BudgetedMemoryManager)
    _emm_installed = True
    return "numba-emm (every Numba device allocation)"


def allocation_of(pointer: object) -> object:
    """The object whose lifetime is one Numba device allocation, to hang the budget release on.

    Numba's memalloc returns an OwnedPointer whose `_mem` is a `weakref.proxy` to the allocation
    (an AutoFreePointer); a proxy cannot be weakly referenced itself (TypeError, seen on an H100 with
    numba-cuda 0.30.4), so reach its referent through a bound method, whose `__self__` is the object.
    """
    owner = getattr(pointer, "_mem", pointer)
    if isinstance(owner, weakref.ProxyTypes):
        owner = owner.free.__self__
    return owner


def _make_memory_manager() -> type | None:
    """Build the EMM plugin class on the real CUDA target; None on the simulator (no such base class)."""
    if is_simulator():
        return None
    from numba.cuda import MemoryInfo
    from numba.cuda.cudadrv.driver import NumbaCUDAMemoryManager

    class BudgetedMemoryManager(NumbaCUDAMemoryManager):
        """Numba's own device allocator, refusing allocations past `current_budget()`.

        Subclasses Numba's default (a HostOnlyCUDAMemoryManager) so allocation, deferred frees and
        IPC keep Numba's behaviour; only the budget check and `get_memory_info` (which reports the
        share, not the whole GPU) change.
        """

        def memalloc(self, size: int):  # type: ignore[no-untyped-def]
            budget = current_budget()
            budget.reserve(size, what=f"a Numba device allocation of {size} bytes")
            try:
                pointer = super().memalloc(size)
            except BaseException:
                budget.release(size)
                raise
            # Views of a device array get their own OwnedPointer over the same memory object;
            # that object dies only when the last view is gone and Numba has freed it.
            weakref.finalize(allocation_of(pointer), budget.release, size)
            return pointer

        def get_memory_info(self):  # type: ignore[no-untyped-def]
            info = super().get_memory_info()
            limit = current_budget().limit_bytes
            if limit is None:
                return info
            free_in_share = max(0, limit - current_budget().used_bytes)
            return MemoryInfo(free=min(info.free, free_in_share), total=min(info.total, limit))

    return BudgetedMemoryManager


BudgetedMemoryManager = _make_memory_manager()
# The name Numba looks up when NUMBA_CUDA_MEMORY_MANAGER=tensorai.kernels.budget.
_numba_memory_manager = BudgetedMemoryManager
