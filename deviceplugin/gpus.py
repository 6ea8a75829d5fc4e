"""The GPU record and the backend interface every GPU source implements.

Two backends implement `GPUBackend`: `nvml.NvmlBackend` (real GPUs through nvidia-ml-py) and
`simulated.SimulatedBackend` (GPUs described by `--sim-gpus`, with fault injection for tests and
the demo). Everything above this interface - health, slices, the gRPC service, metrics, inventory -
is backend-agnostic, so every policy is tested without hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class GPUInfo:
    """Static facts about one physical GPU, read once at start."""

    uuid: str  # "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    index: int  # NVML index
    model: str  # product name, e.g. "NVIDIA H100 80GB HBM3", or the short model of --sim-gpus
    memory_mib: int  # total device memory
    reserved_mib: int  # driver + CUDA context memory no pod can use
    numa_node: int  # -1 when unknown
    minor_number: int = -1  # N of /dev/nvidiaN, -1 when unknown


@dataclass(frozen=True, slots=True)
class GPUUsage:
    """A sample of one GPU's live state."""

    memory_used_mib: int
    utilization_pct: int  # 0..100 over the driver's last sample period


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """One compute process on a GPU (PID in the host PID namespace)."""

    pid: int
    gpu_uuid: str
    memory_used_mib: int


@dataclass(frozen=True, slots=True)
class XidEvent:
    """A critical-error event (XID) reported for a GPU."""

    gpu_uuid: str
    xid: int


class BackendError(RuntimeError):
    """The GPU source failed (NVML error, library missing). Messages name the call and the GPU."""


class GPULostError(BackendError):
    """The GPU fell off the bus or NVML can no longer reach it."""


class BackendUnavailableError(BackendError):
    """The backend cannot start on this machine (e.g. no libnvidia-ml). Printed as one line."""


@runtime_checkable
class GPUBackend(Protocol):
    """What the device plugin needs from a GPU source.

    Every method may raise BackendError (or GPULostError for one GPU); callers turn that into
    health state, never into a crash.
    """

    name: str

    def gpus(self) -> list[GPUInfo]:
        """All GPUs found at start, ordered by index."""
        ...

    def usage(self, gpu_uuid: str) -> GPUUsage:
        """Current memory use and utilisation of one GPU."""
        ...

    def processes(self, gpu_uuid: str) -> list[ProcessUsage]:
        """Compute processes on one GPU with their memory."""
        ...

    def wait_for_events(self, timeout_s: float) -> list[XidEvent]:
        """Block up to timeout_s for XID events; [] when none came."""
        ...

    def probe(self, gpu_uuid: str) -> bool:
        """True when the GPU answers a cheap query now (used by the recovery path)."""
        ...

    def close(self) -> None:
        """Release the library / event set."""
        ...


@dataclass(frozen=True, slots=True)
class ContainerShare:
    """What one container was allocated on one GPU (the plugin's allocation record).

    Produced by the allocation bookkeeping of the gRPC service, consumed by metrics and the
    `tensor.ai/allocated` annotation.
    """

    namespace: str
    pod_name: str
    pod_uid: str
    container_name: str
    gpu_uuid: str
    milli: int
    memory_mib: int
