"""Real GPUs through NVIDIA's NVML binding (`nvidia-ml-py`, imported as `pynvml`).

Facts we rely on (shared/reference/nvml-facts.md): `nvmlInit` raises NVMLError_LibraryNotFound /
DriverNotLoaded on machines without a driver; memory info v2 adds the driver's `reserved` bytes;
NUMA comes from `nvmlDeviceGetNumaNodeId` on newer drivers, else from sysfs under the PCI bus id;
XID events arrive through an event set (`nvmlEventSetWait` raises NVMLError_Timeout when idle).
Every NVMLError leaves this module as a BackendError naming the call and the GPU, GpuIsLost as
GPULostError, so nothing above the interface needs to know NVML.

MIG is not handled: a MIG-enabled GPU is advertised as one whole GPU.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from tensorai.deviceplugin.backends import estimate_reserved_mib
from tensorai.deviceplugin.gpus import (
    BackendError,
    BackendUnavailableError,
    GPUInfo,
    GPULostError,
    GPUUsage,
    ProcessUsage,
    XidEvent,
)

log = logging.getLogger(__name__)

MIB = 1 << 20
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
EVENT_XID_CRITICAL = 0x8
EVENT_SINGLE_BIT_ECC = 0x1
EVENT_DOUBLE_BIT_ECC = 0x2
# Plain words for the errors nvmlInit gives on machines without a working driver.
_INIT_FAILURES = {
    9: "the NVIDIA kernel driver is not loaded",
    12: "libnvidia-ml.so.1 not found",
    18: "the NVML library and the kernel driver versions differ",
}
MAX_EVENTS_PER_WAIT = 64  # drain bursts without letting an event storm starve the caller

T = TypeVar("T")


def _nvml_error_name(error: BaseException) -> str:
    name = type(error).__name__
    return name if name != "NVMLError" else f"NVMLError code {getattr(error, 'value', '?')}"


def _pci_sysfs_name(bus_id: bytes | str) -> str:
    """NVML's "00000000:17:00.0" (8-digit domain) as sysfs names it: "0000:17:00.0"."""
    text = bus_id.decode("ascii", "replace") if isinstance(bus_id, bytes) else str(bus_id)
    text = text.strip("\x00").strip().lower()
    domain, _, rest = text.partition(":")
    if len(domain) == 8 and domain.startswith("0000"):
        domain = domain[4:]
    return f"{domain}:{rest}"


class NvmlBackend:
    """gpus.GPUBackend over NVML. `nvml` may be any pynvml-shaped module (tests pass a fake)."""

    name = "nvml"

    def __init__(self, nvml: ModuleType | Any | None = None, *, sysfs_root: str = "/sys") -> None:
        """Initialise NVML and read every GPU once; BackendUnavailableError (one line) if NVML cannot start."""
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py: the import works without a driver
            except ImportError as error:  # pragma: no cover - it is a declared dependency
                raise BackendUnavailableError(
                    f"NVML binding not installed ({error}); install nvidia-ml-py or use --backend sim"
                ) from error
        self._nvml = nvml
        self._sysfs_root = sysfs_root
        self._lock = threading.Lock()
        self._closed = False
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            what = _INIT_FAILURES.get(getattr(error, "value", None), str(error))
            raise BackendUnavailableError(
                f"NVML not available on this machine: {what} ({_nvml_error_name(error)}); "
                "use --backend sim to simulate GPUs"
            ) from error
        self._handles: dict[str, Any] = {}
        self._memory_v2: set[str] = set()  # GPUs whose driver answers memory info v2
        self._unwatched: dict[str, str] = {}  # GPUs whose XID registration failed -> why
        try:
            self._gpus = self._read_gpus()
            self._event_set = self._register_events()
        except BackendError as error:
            self._shutdown_quietly()
            raise BackendUnavailableError(f"NVML started but reading the GPUs failed: {error}") from error

    # --- start-up -----------------------------------------------------------------------------------
    def _call(self, call: str, gpu: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one NVML call, translating its errors into BackendError / GPULostError."""
        try:
            return function(*args, **kwargs)
        except self._nvml.NVMLError as error:
            if getattr(error, "value", None) == NVML_ERROR_GPU_IS_LOST:
                raise GPULostError(f"{call} on GPU {gpu}: GPU is lost") from error
            raise BackendError(f"{call} on GPU {gpu} failed: {error} ({_nvml_error_name(error)})") from error

    def _read_gpus(self) -> list[GPUInfo]:
        nvml = self._nvml
        count = self._call("nvmlDeviceGetCount", "-", nvml.nvmlDeviceGetCount)
        gpus: list[GPUInfo] = []
        for position in range(count):
            where = f"#{position}"
            handle = self._call("nvmlDeviceGetHandleByIndex", where, nvml.nvmlDeviceGetHandleByIndex, position)
            uuid = self._call("nvmlDeviceGetUUID", where, nvml.nvmlDeviceGetUUID, handle)
            if isinstance(uuid, bytes):
                uuid = uuid.decode("ascii", "replace")
            name = self._call("nvmlDeviceGetName", uuid, nvml.nvmlDeviceGetName, handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            index = self._optional("nvmlDeviceGetIndex", uuid, nvml.nvmlDeviceGetIndex, handle, default=position)
            minor = self._optional("nvmlDeviceGetMinorNumber", uuid, nvml.nvmlDeviceGetMinorNumber, handle, default=-1)
            memory_mib, reserved_mib = self._read_memory(uuid, handle)
            self._handles[uuid] = handle
            gpus.append(
                GPUInfo(
                    uuid=uuid,
                    index=int(index),
                    model=str(name),
                    memory_mib=memory_mib,
                    reserved_mib=reserved_mib,
                    numa_node=self._read_numa_node(uuid, handle),
                    minor_number=int(minor),
                )
            )
        gpus.sort(key=lambda gpu: gpu.index)
        return gpus

    def _optional(self, call: str, gpu: str, function: Callable[..., T], *args: Any, default: T) -> T:
        """A call whose failure only loses a detail (logged), never the GPU."""
        try:
            return self._call(call, gpu, function, *args)
        except GPULostError:
            raise
        except BackendError as error:
            log.info("%s; using %r", error, default)
            return default

    def _read_memory(self, uuid: str, handle: Any) -> tuple[int, int]:
        """(total MiB, reserved MiB): the driver's own reserve from memory v2, else an estimate."""
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = self._call(
                    "nvmlDeviceGetMemoryInfo(v2)", uuid, nvml.nvmlDeviceGetMemoryInfo, handle, version=version
                )
                total_mib = int(info.total) // MIB
                reserved_mib = -(-int(info.reserved) // MIB)  # round up: never promise memory we lack
                if total_mib > 0 and 0 <= reserved_mib < total_mib:
                    self._memory_v2.add(uuid)
                    return total_mib, reserved_mib
                log.warning("GPU %s: implausible memory v2 figures %s; falling back to v1", uuid, info)
            except GPULostError:
                raise
            except BackendError as error:
                log.info("%s; using memory v1 and an estimated reserve", error)
            except (AttributeError, TypeError, ValueError) as error:  # an older binding's struct
                log.info("GPU %s: unreadable memory v2 answer (%s); using memory v1", uuid, error)
        info = self._call("nvmlDeviceGetMemoryInfo", uuid, nvml.nvmlDeviceGetMemoryInfo, handle)
        total_mib = int(info.total) // MIB
        if total_mib <= 0:
            raise BackendError(f"nvmlDeviceGetMemoryInfo on GPU {uuid} reported {info.total} bytes total")
        return total_mib, estimate_reserved_mib(total_mib)

    def _read_numa_node(self, uuid: str, handle: Any) -> int:
        """NUMA node from NVML if the driver has it, else sysfs; -1 when unknown."""
        nvml = self._nvml
        function = getattr(nvml, "nvmlDeviceGetNumaNodeId", None)
        if function is not None:
            try:
                return int(self._call("nvmlDeviceGetNumaNodeId", uuid, function, handle))
            except GPULostError:
                raise
            except BackendError as error:
                log.info("%s; reading NUMA node from sysfs", error)
        try:
            pci = self._call("nvmlDeviceGetPciInfo", uuid, nvml.nvmlDeviceGetPciInfo, handle)
        except GPULostError:
            raise
        except BackendError as error:
            log.info("%s; NUMA node unknown", error)
            return -1
        path = os.path.join(self._sysfs_root, "bus", "pci", "devices", _pci_sysfs_name(pci.busId), "numa_node")
        try:
            with open(path, encoding="ascii") as handle_file:
                return int(handle_file.read().strip())
        except (OSError, ValueError) as error:
            log.info("GPU %s: cannot read %s (%s); NUMA node unknown", uuid, path, error)
            return -1

    def _register_events(self) -> Any | None:
        """One event set for XIDs of every GPU; GPUs that cannot be watched are remembered.

        Like NVIDIA's plugin: NotSupported (old GPUs) is only logged; any other registration error
        means we cannot watch the GPU, so `probe` reports it unhealthy.
        """
        nvml = self._nvml
        try:
            event_set = self._call("nvmlEventSetCreate", "-", nvml.nvmlEventSetCreate)
        except BackendError as error:
            log.warning("%s; XID health events disabled, probes only", error)
            return None
        wanted = EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC | EVENT_SINGLE_BIT_ECC
        for uuid, handle in self._handles.items():
            try:
                supported = self._call(
                    "nvmlDeviceGetSupportedEventTypes", uuid, nvml.nvmlDeviceGetSupportedEventTypes, handle
                )
                self._call(
                    "nvmlDeviceRegisterEvents",
                    uuid,
                    nvml.nvmlDeviceRegisterEvents,
                    handle,
                    wanted & supported,
                    event_set,
                )
            except BackendError as error:
                cause = error.__cause__
                if getattr(cause, "value", None) == NVML_ERROR_NOT_SUPPORTED:
                    log.warning("GPU %s is too old for XID health events (%s); probes only", uuid, error)
                else:
                    log.error("GPU %s cannot be watched for XIDs: %s", uuid, error)
                    self._unwatched[uuid] = str(error)
        return event_set

    # --- GPUBackend -------------------------------------------------------------------------------
    def gpus(self) -> list[GPUInfo]:
        return list(self._gpus)

    def _handle(self, call: str, gpu_uuid: str) -> Any:
        handle = self._handles.get(gpu_uuid)
        if handle is None:
            raise BackendError(f"{call}: no GPU {gpu_uuid!r} on this node")
        return handle

    def usage(self, gpu_uuid: str) -> GPUUsage:
        """Memory used (excluding the driver reserve when memory v2 is available) and utilisation."""
        nvml = self._nvml
        handle = self._handle("usage", gpu_uuid)
        if gpu_uuid in self._memory_v2:
            memory = self._call(
                "nvmlDeviceGetMemoryInfo(v2)",
                gpu_uuid,
                nvml.nvmlDeviceGetMemoryInfo,
                handle,
                version=nvml.nvmlMemory_v2,
            )
        else:
            memory = self._call("nvmlDeviceGetMemoryInfo", gpu_uuid, nvml.nvmlDeviceGetMemoryInfo, handle)
        rates = self._call("nvmlDeviceGetUtilizationRates", gpu_uuid, nvml.nvmlDeviceGetUtilizationRates, handle)
        return GPUUsage(
            memory_used_mib=-(-int(memory.used) // MIB),
            utilization_pct=max(0, min(100, int(rates.gpu))),
        )

    def processes(self, gpu_uuid: str) -> list[ProcessUsage]:
        """Compute processes (host PIDs); memory 0 when the driver does not say (usedGpuMemory None)."""
        nvml = self._nvml
        handle = self._handle("processes", gpu_uuid)
        running = self._call(
            "nvmlDeviceGetComputeRunningProcesses", gpu_uuid, nvml.nvmlDeviceGetComputeRunningProcesses, handle
        )
        result: list[ProcessUsage] = []
        for process in running:
            used_bytes = getattr(process, "usedGpuMemory", None)
            result.append(
                ProcessUsage(
                    pid=int(process.pid),
                    gpu_uuid=gpu_uuid,
                    memory_used_mib=-(-int(used_bytes) // MIB) if used_bytes else 0,
                )
            )
        return result

    def wait_for_events(self, timeout_s: float) -> list[XidEvent]:
        """XID events within `timeout_s` (others - ECC counters, clocks - are dropped, like NVIDIA's plugin)."""
        nvml = self._nvml
        if self._event_set is None or self._closed:
            # Nothing to watch: behave like an idle wait so callers keep their cadence.
            threading.Event().wait(max(0.0, timeout_s))
            return []
        events: list[XidEvent] = []
        wait_ms = max(0, int(timeout_s * 1000))
        while len(events) < MAX_EVENTS_PER_WAIT:
            try:
                data = nvml.nvmlEventSetWait(self._event_set, wait_ms)
            except nvml.NVMLError as error:
                if getattr(error, "value", None) == NVML_ERROR_TIMEOUT:
                    break
                raise BackendError(f"nvmlEventSetWait failed: {error} ({_nvml_error_name(error)})") from error
            wait_ms = 0  # got one: collect whatever else is already queued, without blocking
            if int(data.eventType) != EVENT_XID_CRITICAL:
                continue
            uuid = self._call("nvmlDeviceGetUUID(event device)", "?", nvml.nvmlDeviceGetUUID, data.device)
            if isinstance(uuid, bytes):
                uuid = uuid.decode("ascii", "replace")
            events.append(XidEvent(gpu_uuid=str(uuid), xid=int(data.eventData)))
        return events

    def probe(self, gpu_uuid: str) -> bool:
        """True when the GPU answers a memory query; GPULostError when NVML says it is lost.

        A GPU whose XID events could not be registered always probes False: we cannot watch it, so
        we do not hand it out (NVIDIA's plugin marks such GPUs unhealthy too).
        """
        if gpu_uuid in self._unwatched:
            return False
        handle = self._handle("probe", gpu_uuid)
        try:
            self._call("nvmlDeviceGetMemoryInfo", gpu_uuid, self._nvml.nvmlDeviceGetMemoryInfo, handle)
        except GPULostError:
            raise
        except BackendError as error:
            log.warning("probe of GPU %s failed: %s", gpu_uuid, error)
            return False
        return True

    def close(self) -> None:
        """Free the event set and shut NVML down; call after the health monitor stopped waiting."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except self._nvml.NVMLError as error:
                log.warning("nvmlEventSetFree failed: %s", error)
        self._shutdown_quietly()

    def _shutdown_quietly(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as error:
            log.warning("nvmlShutdown failed: %s", error)
