"""The memory budget: accounting shared by the simulator path and the Numba EMM plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.budget import MIB, MemoryBudget, OutOfBudget, budget_from_env
from tensorai.proto import contract


def test_allocation_over_budget_raises_out_of_budget_naming_the_budget(budget_bytes) -> None:
    budget_bytes(1000)
    with pytest.raises(OutOfBudget) as caught:
        memory.device_empty((200,), np.float64, what="a test buffer")
    message = str(caught.value)
    assert "1000-byte budget" in message and contract.ENV_VGPU_MEMORY_MIB in message
    assert caught.value.requested_bytes == 1600 and caught.value.limit_bytes == 1000


def test_refused_allocation_charges_nothing(budget_bytes) -> None:
    budget = budget_bytes(1000)
    kept = memory.device_empty((100,), np.float64)
    with pytest.raises(OutOfBudget):
        memory.device_empty((100,), np.float32)
    snapshot = budget.snapshot()
    assert snapshot.used_bytes == 800 and snapshot.refused == 1
    del kept


def test_device_memory_is_released_when_the_array_is_dropped(budget_bytes) -> None:
    budget = budget_bytes(10_000)
    array = memory.to_device(np.ones(100, np.float64))
    view = array.reshape(10, 10)
    assert budget.used_bytes == 800
    del array
    assert budget.used_bytes == 800, "a live view keeps the buffer charged"
    del view
    assert budget.used_bytes == 0


def test_kernel_that_does_not_fit_raises_out_of_budget_and_leaves_nothing_charged(budget_bytes) -> None:
    budget = budget_bytes(2 * 10 * 10 * 8 + 100)  # both inputs fit, the output does not
    with pytest.raises(K.OutOfBudget, match="contraction output"):
        K.matmul(np.ones((10, 10)), np.ones((10, 10)))
    assert budget.used_bytes == 0


def test_peak_counts_inputs_and_outputs_that_were_alive_together(budget_bytes) -> None:
    budget = budget_bytes(None)
    K.matmul(np.ones((4, 3), np.float32), np.ones((3, 5), np.float32))
    snapshot = budget.snapshot()
    assert snapshot.used_bytes == 0
    assert snapshot.peak_bytes >= (4 * 3 + 3 * 5 + 4 * 5) * 4


@pytest.mark.parametrize(("raw", "limit"), [("", None), ("0", 0), ("256", 256 * MIB), (" 3 ", 3 * MIB)])
def test_budget_comes_from_the_device_plugins_variable(raw, limit) -> None:
    assert budget_from_env({contract.ENV_VGPU_MEMORY_MIB: raw}).limit_bytes == limit


@pytest.mark.parametrize("raw", ["-1", "1.5", "10Gi", "lots"])
def test_malformed_budget_variable_is_a_clear_error(raw) -> None:
    with pytest.raises(ValueError, match=f"{contract.ENV_VGPU_MEMORY_MIB}=.*whole number of MiB"):
        budget_from_env({contract.ENV_VGPU_MEMORY_MIB: raw})


def test_negative_reservations_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        MemoryBudget(10).reserve(-1)


def test_emm_plugin_is_accepted_by_numba_on_the_real_cuda_target() -> None:
    """Outside the simulator the budget is an EMM plugin Numba accepts (no GPU needed to install it)."""
    script = textwrap.dedent(
        """
        from numba import cuda
        from tensorai.kernels import budget
        assert issubclass(budget.BudgetedMemoryManager, cuda.HostOnlyCUDAMemoryManager)
        assert budget._numba_memory_manager is budget.BudgetedMemoryManager
        how = budget.install_budget(budget.MemoryBudget(64 << 20))
        assert how.startswith("numba-emm"), how
        assert budget.emm_enforced()
        from numba.cuda.cudadrv import driver
        assert driver._memory_manager is budget.BudgetedMemoryManager
        print("ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_budget_release_hangs_on_the_allocation_behind_numbas_weak_proxy() -> None:
    """Numba's OwnedPointer holds its allocation through weakref.proxy, which cannot itself be weakly
    referenced: the release must hang on the referent and run when that object goes."""
    import gc
    import weakref

    from tensorai.kernels.budget import allocation_of

    class Allocation:  # stands for Numba's AutoFreePointer (what memalloc's allocations dict holds)
        def free(self) -> None:
            pass

    class Owned:  # stands for Numba's OwnedPointer
        def __init__(self, allocation: Allocation) -> None:
            self._mem = weakref.proxy(allocation)

    allocation = Allocation()
    pointer = Owned(allocation)
    assert allocation_of(pointer) is allocation
    assert allocation_of(allocation) is allocation  # a plain pointer is its own allocation
    released: list[int] = []
    weakref.finalize(allocation_of(pointer), released.append, 4096)
    del pointer
    gc.collect()
    assert released == []  # the pointer went, the allocation did not
    del allocation
    gc.collect()
    assert released == [4096]
