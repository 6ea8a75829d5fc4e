"""Simulated GPUs with the NVML backend's interface, plus fault injection.

Used by `--backend sim`, the local demo and every test above the backend: the same health,
slice, Allocate and metrics code runs against these GPUs as against real ones. UUIDs are derived
from (node name, index), so a restarted plugin - or two tests - see the same GPUs, and two
simulated nodes never share a UUID.

Fault injection mirrors what real GPUs do: `inject_xid` queues an XID event (delivered by the next
`wait_for_events`, which wakes at once), `lose_gpu` makes queries fail with GPULostError and, as the
real driver does when a GPU falls off the bus, reports XID 79; `fail_next` makes the next call of
one method raise the given BackendError (an NVML hiccup). All methods are thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque

from tensorai.deviceplugin.backends import SimGPUSpec, estimate_reserved_mib
from tensorai.deviceplugin.gpus import (
    BackendError,
    GPUInfo,
    GPULostError,
    GPUUsage,
    ProcessUsage,
    XidEvent,
)

XID_FALLEN_OFF_BUS = 79  # what the driver logs when a GPU disappears from PCIe
INJECTABLE_METHODS = frozenset({"gpus", "usage", "processes", "wait_for_events", "probe"})


def simulated_uuid(node_name: str, index: int) -> str:
    """A stable NVML-shaped UUID for GPU `index` of simulated node `node_name`."""
    digest = hashlib.sha256(f"tensorai-sim/{node_name}/{index}".encode()).hexdigest()
    return f"GPU-{digest[0:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class SimulatedBackend:
    """GPUs described by `--sim-gpus`; implements gpus.GPUBackend."""

    name = "sim"

    def __init__(self, specs: list[SimGPUSpec], node_name: str = "local", reserved_mib: int | None = None) -> None:
        """Create the GPUs of `specs` in order; `reserved_mib` overrides the per-GPU driver reserve.

        The default reserve is `backends.estimate_reserved_mib(memory)` - the same estimate the
        NVML backend uses on drivers without the memory v2 API (~600 MiB on an 80 GiB card).
        """
        if not specs:
            raise ValueError("a simulated node needs at least one GPU")
        gpus: list[GPUInfo] = []
        for spec in specs:
            for _ in range(spec.count):
                index = len(gpus)
                reserve = estimate_reserved_mib(spec.memory_mib) if reserved_mib is None else reserved_mib
                if not 0 <= reserve < spec.memory_mib:
                    raise ValueError(
                        f"reserved_mib {reserve} must be >= 0 and below the GPU memory {spec.memory_mib} MiB"
                    )
                gpus.append(
                    GPUInfo(
                        uuid=simulated_uuid(node_name, index),
                        index=index,
                        model=spec.model,
                        memory_mib=spec.memory_mib,
                        reserved_mib=reserve,
                        numa_node=-1,
                        minor_number=index,
                    )
                )
        self.node_name = node_name
        self._gpus = gpus
        self._by_uuid = {gpu.uuid: gpu for gpu in gpus}
        self._changed = threading.Condition()
        self._events: deque[XidEvent] = deque()
        self._lost: set[str] = set()
        self._failures: dict[str, deque[BackendError]] = {}
        self._usage: dict[str, GPUUsage] = {}
        self._processes: dict[str, dict[int, ProcessUsage]] = {gpu.uuid: {} for gpu in gpus}
        self._closed = False

    # --- GPUBackend -------------------------------------------------------------------------------
    def gpus(self) -> list[GPUInfo]:
        """All simulated GPUs, ordered by index."""
        with self._changed:
            self._raise_injected("gpus")
            return list(self._gpus)

    def usage(self, gpu_uuid: str) -> GPUUsage:
        """The usage set by `set_usage`, else the sum of the added processes' memory at 0 % load."""
        with self._changed:
            self._raise_injected("usage")
            self._check_reachable("usage", gpu_uuid)
            if gpu_uuid in self._usage:
                return self._usage[gpu_uuid]
            used_mib = sum(process.memory_used_mib for process in self._processes[gpu_uuid].values())
            return GPUUsage(memory_used_mib=used_mib, utilization_pct=0)

    def processes(self, gpu_uuid: str) -> list[ProcessUsage]:
        """Processes added with `add_process`, ordered by PID."""
        with self._changed:
            self._raise_injected("processes")
            self._check_reachable("processes", gpu_uuid)
            return [self._processes[gpu_uuid][pid] for pid in sorted(self._processes[gpu_uuid])]

    def wait_for_events(self, timeout_s: float) -> list[XidEvent]:
        """Return queued XID events at once, or wait up to `timeout_s` for one to be injected."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            self._raise_injected("wait_for_events")
            while not self._events and not self._closed:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                self._changed.wait(remaining_s)
            events = list(self._events)
            self._events.clear()
            return events

    def probe(self, gpu_uuid: str) -> bool:
        """False while the GPU is lost."""
        with self._changed:
            self._raise_injected("probe")
            self._known("probe", gpu_uuid)
            return gpu_uuid not in self._lost

    def close(self) -> None:
        """Wake any waiter; later waits return at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # --- fault injection and load (tests, demo) ---------------------------------------------------
    def inject_xid(self, gpu_uuid: str, xid: int) -> None:
        """Queue XID `xid` on a GPU; the next (or a blocked) `wait_for_events` returns it promptly."""
        self._require_gpu(gpu_uuid)
        if not isinstance(xid, int) or xid < 0:
            raise ValueError(f"XID must be a non-negative integer, got {xid!r}")
        with self._changed:
            self._events.append(XidEvent(gpu_uuid=gpu_uuid, xid=xid))
            self._changed.notify_all()

    def lose_gpu(self, gpu_uuid: str) -> None:
        """The GPU falls off the bus: queries raise GPULostError, probes fail, XID 79 is reported."""
        self._require_gpu(gpu_uuid)
        with self._changed:
            self._lost.add(gpu_uuid)
            self._events.append(XidEvent(gpu_uuid=gpu_uuid, xid=XID_FALLEN_OFF_BUS))
            self._changed.notify_all()

    def restore_gpu(self, gpu_uuid: str) -> None:
        """The GPU answers again (e.g. after a reset); health recovery is the tracker's decision."""
        self._require_gpu(gpu_uuid)
        with self._changed:
            self._lost.discard(gpu_uuid)

    def fail_next(self, method: str, error: BackendError) -> None:
        """Make the next call of `method` raise `error` (calls queue up in order)."""
        if method not in INJECTABLE_METHODS:
            raise ValueError(f"cannot inject a failure into {method!r}: choose one of {sorted(INJECTABLE_METHODS)}")
        if not isinstance(error, BackendError):
            raise TypeError(f"injected errors must be BackendError instances, got {type(error).__name__}")
        with self._changed:
            self._failures.setdefault(method, deque()).append(error)
            self._changed.notify_all()

    def set_usage(self, gpu_uuid: str, memory_used_mib: int, utilization_pct: int) -> None:
        """Fix what `usage` reports for a GPU (overrides the sum of process memory)."""
        gpu = self._require_gpu(gpu_uuid)
        if not 0 <= memory_used_mib <= gpu.memory_mib:
            raise ValueError(f"memory_used_mib {memory_used_mib} is outside 0..{gpu.memory_mib}")
        if not 0 <= utilization_pct <= 100:
            raise ValueError(f"utilization_pct {utilization_pct} is outside 0..100")
        with self._changed:
            self._usage[gpu_uuid] = GPUUsage(memory_used_mib=memory_used_mib, utilization_pct=utilization_pct)

    def add_process(self, gpu_uuid: str, pid: int, memory_used_mib: int) -> None:
        """Report a compute process (host PID) using `memory_used_mib` on a GPU; replaces the same PID."""
        self._require_gpu(gpu_uuid)
        if pid <= 0 or memory_used_mib < 0:
            raise ValueError(f"need pid > 0 and memory_used_mib >= 0, got {pid} and {memory_used_mib}")
        with self._changed:
            self._processes[gpu_uuid][pid] = ProcessUsage(pid=pid, gpu_uuid=gpu_uuid, memory_used_mib=memory_used_mib)

    def remove_process(self, gpu_uuid: str, pid: int) -> None:
        """The process exited."""
        self._require_gpu(gpu_uuid)
        with self._changed:
            self._processes[gpu_uuid].pop(pid, None)

    # --- helpers ------------------------------------------------------------------------------------
    def _require_gpu(self, gpu_uuid: str) -> GPUInfo:
        gpu = self._by_uuid.get(gpu_uuid)
        if gpu is None:
            raise ValueError(f"no simulated GPU {gpu_uuid!r} on node {self.node_name!r}")
        return gpu

    def _known(self, call: str, gpu_uuid: str) -> None:
        if gpu_uuid not in self._by_uuid:
            raise BackendError(f"{call}: no GPU {gpu_uuid!r} on simulated node {self.node_name!r}")

    def _check_reachable(self, call: str, gpu_uuid: str) -> None:
        self._known(call, gpu_uuid)
        if gpu_uuid in self._lost:
            raise GPULostError(f"{call} on GPU {gpu_uuid}: GPU is lost (simulated)")

    def _raise_injected(self, method: str) -> None:
        queue = self._failures.get(method)
        if queue:
            raise queue.popleft()
