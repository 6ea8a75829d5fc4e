"""The NVML backend: its logic against a small fake of the `pynvml` module, and the real library here.

`pynvml` is NVIDIA's library, not our code, so faking it is fair (like NVIDIA's own NVML mock). The
fake raises the real `pynvml.NVMLError` classes and uses the real constants, so error translation is
tested against what the library really throws.
"""

from __future__ import annotations

import ctypes.util
import re
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from tensorai.deviceplugin.backends import estimate_reserved_mib, open_backend
from tensorai.deviceplugin.gpus import (
    BackendError,
    BackendUnavailableError,
    GPUBackend,
    GPULostError,
    XidEvent,
)
from tensorai.deviceplugin.health import HealthMonitor, HealthTracker
from tensorai.deviceplugin.nvml import NvmlBackend

MIB = 1 << 20
UUID_0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID_1 = "GPU-66666666-7777-8888-9999-000000000000"


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeGPU:
    def __init__(self, uuid: str, name: str, total_mib: int, reserved_mib: int, bus_id: bytes, numa: int) -> None:
        self.uuid = uuid
        self.name = name
        self.total_mib = total_mib
        self.reserved_mib = reserved_mib
        self.used_mib = 0
        self.bus_id = bus_id
        self.numa = numa
        self.utilization_pct = 0
        self.processes: list[Any] = []
        self.lost = False
        self.register_error: int | None = None
        self.failing: dict[str, int] = {}  # call name -> NVML error code it raises


class FakeNvml:
    """Just the pynvml surface NvmlBackend uses, with knobs for the cases we test."""

    NVMLError = pynvml.NVMLError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(self, gpus: list[FakeGPU], *, memory_v2: bool = True, numa_api: bool = True) -> None:
        self.gpus = gpus
        self.memory_v2 = memory_v2
        self.init_error: int | None = None
        self.event_set_error: int | None = None
        self.events: deque[Any] = deque()
        self.wait_error: int | None = None
        self.calls: list[str] = []
        self.registered: dict[str, int] = {}
        if numa_api:
            self.nvmlDeviceGetNumaNodeId = self._numa

    def _gpu(self, handle: FakeGPU, call: str) -> FakeGPU:
        self.calls.append(call)
        if handle.lost:
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if call in handle.failing:
            raise nvml_error(handle.failing[call])
        return handle

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGPU) -> str:
        return self._gpu(handle, "uuid").uuid

    def nvmlDeviceGetName(self, handle: FakeGPU) -> str:
        return self._gpu(handle, "name").name

    def nvmlDeviceGetIndex(self, handle: FakeGPU) -> int:
        return self.gpus.index(self._gpu(handle, "index"))

    def nvmlDeviceGetMinorNumber(self, handle: FakeGPU) -> int:
        return self.gpus.index(self._gpu(handle, "minor"))

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGPU, version: int | None = None) -> SimpleNamespace:
        gpu = self._gpu(handle, "memory" if version is None else "memory_v2")
        if version is not None:
            if not self.memory_v2:
                raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            used = gpu.used_mib * MIB
            reserved = gpu.reserved_mib * MIB
            return SimpleNamespace(
                version=version,
                total=gpu.total_mib * MIB,
                reserved=reserved,
                used=used,
                free=gpu.total_mib * MIB - used - reserved,
            )
        used = (gpu.used_mib + gpu.reserved_mib) * MIB  # v1 counts the reserve as used
        return SimpleNamespace(total=gpu.total_mib * MIB, used=used, free=gpu.total_mib * MIB - used)

    def _numa(self, handle: FakeGPU) -> int:
        gpu = self._gpu(handle, "numa")
        return gpu.numa

    def nvmlDeviceGetPciInfo(self, handle: FakeGPU) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(handle, "pci").bus_id)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGPU) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle, "utilization").utilization_pct, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGPU) -> list[Any]:
        return list(self._gpu(handle, "processes").processes)

    def nvmlEventSetCreate(self) -> str:
        if self.event_set_error is not None:
            raise nvml_error(self.event_set_error)
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeGPU) -> int:
        return pynvml.nvmlEventTypeAll

    def nvmlDeviceRegisterEvents(self, handle: FakeGPU, mask: int, event_set: str) -> None:
        if handle.register_error is not None:
            raise nvml_error(handle.register_error)
        self.registered[handle.uuid] = mask

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        if self.wait_error is not None:
            raise nvml_error(self.wait_error)
        if not self.events:
            time.sleep(min(timeout_ms, 50) / 1000)
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.popleft()

    def nvmlEventSetFree(self, event_set: str) -> None:
        self.calls.append("nvmlEventSetFree")

    def push_event(self, gpu: FakeGPU, event_type: int, data: int) -> None:
        self.events.append(SimpleNamespace(device=gpu, eventType=event_type, eventData=data, gpuInstanceId=0xFFFFFFFF))


def two_gpus() -> list[FakeGPU]:
    return [
        FakeGPU(UUID_0, "NVIDIA H100 80GB HBM3", 81559, 567, b"00000000:17:00.0", 0),
        FakeGPU(UUID_1, "NVIDIA H100 80GB HBM3", 81559, 567, b"00000000:9A:00.0", 1),
    ]


# --- this machine -------------------------------------------------------------------------------
def nvml_loads_here() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(nvml_loads_here(), reason="this machine has a working NVIDIA driver")
def test_nvml_backend_without_a_driver_fails_with_one_clear_line() -> None:
    with pytest.raises(BackendUnavailableError) as raised:
        open_backend("nvml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("NVML not available on this machine: ")
    assert "use --backend sim" in message
    if ctypes.util.find_library("nvidia-ml") is None:
        assert "libnvidia-ml.so.1 not found (NVMLError_LibraryNotFound)" in message


@pytest.mark.skipif(not nvml_loads_here(), reason="no NVIDIA driver/GPU on this machine")
def test_nvml_backend_on_a_real_gpu_reports_consistent_gpus() -> None:
    backend = open_backend("nvml")
    try:
        gpus = backend.gpus()
        assert gpus, "NVML loaded but reported no GPU"
        for gpu in gpus:
            assert gpu.uuid.startswith(("GPU-", "MIG-"))
            assert 0 <= gpu.reserved_mib < gpu.memory_mib
            assert backend.probe(gpu.uuid) is True
            assert 0 <= backend.usage(gpu.uuid).utilization_pct <= 100
            backend.processes(gpu.uuid)
        assert isinstance(backend.wait_for_events(0.1), list)
    finally:
        backend.close()


# --- initialisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA kernel driver is not loaded (NVMLError_DriverNotLoaded)"),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 not found (NVMLError_LibraryNotFound)"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "Insufficient Permissions (NVMLError_NoPermission)"),
    ],
)
def test_init_failures_become_one_line_backend_unavailable(code: int, words: str) -> None:
    fake = FakeNvml(two_gpus())
    fake.init_error = code
    with pytest.raises(BackendUnavailableError, match=re.escape(words)):
        NvmlBackend(fake)


def test_failure_while_reading_gpus_shuts_nvml_down_and_reports_the_call() -> None:
    gpus = two_gpus()
    gpus[1].failing["name"] = pynvml.NVML_ERROR_UNKNOWN
    fake = FakeNvml(gpus)
    with pytest.raises(BackendUnavailableError, match=f"nvmlDeviceGetName on GPU {UUID_1} failed"):
        NvmlBackend(fake)
    assert fake.calls[-1] == "nvmlShutdown"


# --- inventory facts -------------------------------------------------------------------------------
def test_gpus_carry_uuid_name_memory_and_the_drivers_reserve_from_memory_v2() -> None:
    backend = NvmlBackend(FakeNvml(two_gpus()))
    assert isinstance(backend, GPUBackend)
    gpus = backend.gpus()
    assert [(gpu.uuid, gpu.index, gpu.minor_number, gpu.numa_node) for gpu in gpus] == [
        (UUID_0, 0, 0, 0),
        (UUID_1, 1, 1, 1),
    ]
    assert gpus[0].model == "NVIDIA H100 80GB HBM3"
    assert (gpus[0].memory_mib, gpus[0].reserved_mib) == (81559, 567)


def test_without_memory_v2_the_reserve_is_the_documented_estimate() -> None:
    backend = NvmlBackend(FakeNvml(two_gpus(), memory_v2=False))
    assert backend.gpus()[0].reserved_mib == estimate_reserved_mib(81559)


def test_implausible_memory_v2_answer_falls_back_to_v1_and_the_estimate() -> None:
    gpus = two_gpus()
    gpus[0].reserved_mib = gpus[0].total_mib  # a driver bug would otherwise leave no usable memory
    backend = NvmlBackend(FakeNvml(gpus))
    assert backend.gpus()[0].reserved_mib == estimate_reserved_mib(81559)
    assert backend.gpus()[1].reserved_mib == 567
    gpus[0].used_mib = 100
    assert backend.usage(UUID_0).memory_used_mib == 100 + gpus[0].reserved_mib  # v1 counts the reserve as used


def test_numa_node_falls_back_to_sysfs_of_the_pci_device(tmp_path: Path) -> None:
    device_dir = tmp_path / "bus" / "pci" / "devices" / "0000:9a:00.0"
    device_dir.mkdir(parents=True)
    (device_dir / "numa_node").write_text("3\n")
    backend = NvmlBackend(FakeNvml(two_gpus(), numa_api=False), sysfs_root=str(tmp_path))
    # GPU 0 has no sysfs entry here: unknown, not a failure.
    assert [gpu.numa_node for gpu in backend.gpus()] == [-1, 3]


def test_numa_api_not_supported_also_falls_back_to_sysfs(tmp_path: Path) -> None:
    device_dir = tmp_path / "bus" / "pci" / "devices" / "0000:17:00.0"
    device_dir.mkdir(parents=True)
    (device_dir / "numa_node").write_text("1")
    gpus = two_gpus()
    gpus[0].failing["numa"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    backend = NvmlBackend(FakeNvml(gpus), sysfs_root=str(tmp_path))
    assert backend.gpus()[0].numa_node == 1


# --- live queries and errors ----------------------------------------------------------------------
def test_usage_excludes_the_reserve_with_memory_v2_and_reads_utilisation() -> None:
    gpus = two_gpus()
    fake = FakeNvml(gpus)
    backend = NvmlBackend(fake)
    gpus[0].used_mib = 1024
    gpus[0].utilization_pct = 37
    sample = backend.usage(UUID_0)
    assert (sample.memory_used_mib, sample.utilization_pct) == (1024, 37)


def test_processes_report_host_pids_and_unknown_memory_as_zero() -> None:
    gpus = two_gpus()
    gpus[1].processes = [
        SimpleNamespace(pid=4242, usedGpuMemory=3 * MIB),
        SimpleNamespace(pid=4343, usedGpuMemory=None),
    ]
    backend = NvmlBackend(FakeNvml(gpus))
    assert [(process.pid, process.memory_used_mib) for process in backend.processes(UUID_1)] == [(4242, 3), (4343, 0)]


def test_lost_gpu_raises_gpu_lost_error_from_queries_and_probes() -> None:
    gpus = two_gpus()
    backend = NvmlBackend(FakeNvml(gpus))
    gpus[0].lost = True
    with pytest.raises(GPULostError, match=f"GPU {UUID_0}: GPU is lost"):
        backend.usage(UUID_0)
    with pytest.raises(GPULostError):
        backend.probe(UUID_0)
    assert backend.probe(UUID_1) is True


def test_other_nvml_errors_become_backend_errors_naming_call_and_gpu() -> None:
    gpus = two_gpus()
    backend = NvmlBackend(FakeNvml(gpus))
    gpus[1].failing["utilization"] = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(BackendError) as raised:
        backend.usage(UUID_1)
    assert not isinstance(raised.value, GPULostError)
    assert f"nvmlDeviceGetUtilizationRates on GPU {UUID_1} failed: Unknown Error (NVMLError_Unknown)" == str(
        raised.value
    )
    gpus[1].failing["memory"] = pynvml.NVML_ERROR_UNKNOWN
    assert backend.probe(UUID_1) is False


def test_queries_for_unknown_gpus_are_backend_errors() -> None:
    backend = NvmlBackend(FakeNvml(two_gpus()))
    with pytest.raises(BackendError, match="no GPU 'GPU-x'"):
        backend.usage("GPU-x")


# --- XID events ------------------------------------------------------------------------------------
def test_xid_events_are_decoded_to_gpu_uuid_and_xid_number() -> None:
    gpus = two_gpus()
    fake = FakeNvml(gpus)
    backend = NvmlBackend(fake)
    fake.push_event(gpus[1], pynvml.nvmlEventTypeXidCriticalError, 48)
    fake.push_event(gpus[0], pynvml.nvmlEventTypeSingleBitEccError, 0)  # not an XID: dropped
    fake.push_event(gpus[0], pynvml.nvmlEventTypeXidCriticalError, 13)
    assert backend.wait_for_events(1.0) == [XidEvent(gpu_uuid=UUID_1, xid=48), XidEvent(gpu_uuid=UUID_0, xid=13)]
    assert backend.wait_for_events(0.01) == []


def test_registration_asks_for_xid_and_ecc_events_on_every_gpu() -> None:
    fake = FakeNvml(two_gpus())
    NvmlBackend(fake)
    wanted = (
        pynvml.nvmlEventTypeXidCriticalError
        | pynvml.nvmlEventTypeDoubleBitEccError
        | pynvml.nvmlEventTypeSingleBitEccError
    )
    assert fake.registered == {UUID_0: wanted, UUID_1: wanted}


def test_gpu_too_old_for_events_is_only_logged_and_stays_usable() -> None:
    gpus = two_gpus()
    gpus[0].register_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    backend = NvmlBackend(FakeNvml(gpus))
    assert backend.probe(UUID_0) is True


def test_gpu_whose_event_registration_fails_otherwise_probes_unhealthy() -> None:
    gpus = two_gpus()
    gpus[1].register_error = pynvml.NVML_ERROR_UNKNOWN
    backend = NvmlBackend(FakeNvml(gpus))
    assert backend.probe(UUID_1) is False
    assert backend.probe(UUID_0) is True


def test_without_an_event_set_waits_are_idle_for_the_timeout() -> None:
    fake = FakeNvml(two_gpus())
    fake.event_set_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    backend = NvmlBackend(fake)
    started = time.monotonic()
    assert backend.wait_for_events(0.1) == []
    assert time.monotonic() - started >= 0.09


def test_event_wait_errors_other_than_timeout_are_backend_errors() -> None:
    fake = FakeNvml(two_gpus())
    backend = NvmlBackend(fake)
    fake.wait_error = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(BackendError, match="nvmlEventSetWait failed: Unknown Error"):
        backend.wait_for_events(0.1)


def test_close_frees_the_event_set_and_shuts_down_once() -> None:
    fake = FakeNvml(two_gpus())
    backend = NvmlBackend(fake)
    backend.close()
    backend.close()
    assert fake.calls.count("nvmlEventSetFree") == 1
    assert fake.calls.count("nvmlShutdown") == 1


def test_health_monitor_marks_an_nvml_xid_unhealthy_within_one_second() -> None:
    gpus = two_gpus()
    fake = FakeNvml(gpus)
    backend = NvmlBackend(fake)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    monitor = HealthMonitor(backend, tracker, probe_interval_s=60.0)
    monitor.start()
    try:
        generation = tracker.generation
        started = time.monotonic()
        fake.push_event(gpus[0], pynvml.nvmlEventTypeXidCriticalError, 79)
        assert tracker.wait_for_change(generation, timeout_s=1.0) == generation + 1
        assert time.monotonic() - started < 1.0
        assert tracker.healthy_uuids() == {UUID_1}
    finally:
        monitor.stop(timeout_s=2.0)
        backend.close()
