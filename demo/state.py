"""What the demo knows while it runs: one record per pod, the GPUs, quota usage and a log of what happened.

Written by the admission step, the scheduler loop and the kubelet runners (each under `lock`), read by
the live view and, at the end, turned into summary.json. Times are seconds since the demo started.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tensorai.demo.scenario import PodSpec
from tensorai.proto import contract

# Pod phases as the demo shows them (a superset of Kubernetes' Pending/Running/Succeeded/Failed).
ARRIVING = "arriving"
DENIED = "denied"
PENDING = "pending"
WAITING_QUOTA = "waiting-quota"
UNSCHEDULABLE = "unschedulable"
BOUND = "bound"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TERMINAL = frozenset({DENIED, SUCCEEDED, FAILED})


@dataclass
class GpuShare:
    """One GPU share of a placed pod, as the Assignment says."""

    uuid: str
    milli: int
    memory_mib: int


@dataclass
class PodRun:
    """Everything the demo saw happen to one pod."""

    spec: PodSpec
    phase: str = ARRIVING
    uid: str = ""
    created_s: float | None = None
    first_wait_s: float | None = None
    bound_s: float | None = None
    started_s: float | None = None
    finished_s: float | None = None
    node: str = ""
    shares: list[GpuShare] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)
    preferred_ids: list[str] = field(default_factory=list)
    allocate_env: dict[str, str] = field(default_factory=dict)
    webhook_patch: list[dict[str, Any]] = field(default_factory=list)
    vgpu_milli: int = 0
    reason: str = ""
    waited_for_quota: bool = False
    schedule_attempts: int = 0
    worker_exit: int | None = None
    worker_report: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def wait_s(self) -> float | None:
        """Seconds from creation to bind (how long the pod was Pending)."""
        if self.created_s is None or self.bound_s is None:
            return None
        return self.bound_s - self.created_s

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        report = self.worker_report or {}
        return {
            "name": spec.name,
            "namespace": spec.namespace,
            "vgpu": spec.vgpu,
            "memory": spec.memory,
            "annotations": spec.annotations,
            "job": spec.job.name,
            "expect": spec.expect,
            "phase": self.phase,
            "uid": self.uid,
            "vgpu_milli": self.vgpu_milli,
            "webhook_patch": self.webhook_patch,
            "created_s": self.created_s,
            "bound_s": self.bound_s,
            "started_s": self.started_s,
            "finished_s": self.finished_s,
            "wait_s": self.wait_s,
            "waited_for_quota": self.waited_for_quota,
            "schedule_attempts": self.schedule_attempts,
            "node": self.node,
            "assignment": [asdict(share) for share in self.shares],
            "device_count": len(self.device_ids),  # the IDs themselves are in kubelet-allocations.json
            "device_gpus": sorted({contract.gpu_of_device_id(device) for device in self.device_ids}),
            "preferred_matched": bool(self.preferred_ids) and sorted(self.preferred_ids) == sorted(self.device_ids),
            "allocate_env": self.allocate_env,
            "reason": self.reason,
            "worker_exit": self.worker_exit,
            "worker": {
                "outcome": report.get("outcome"),
                "peak_memory_used_bytes": report.get("peak_memory_used_bytes"),
                "memory_budget_bytes": report.get("memory_budget_bytes"),
                "share_milli": report.get("share_milli"),
                "visible_devices": report.get("visible_devices"),
                "busy_seconds": report.get("busy_seconds"),
                "wall_seconds": report.get("wall_seconds"),
            } if report else None,
        }


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of the simulated cluster, from its node's Inventory annotation."""

    node: str
    uuid: str
    index: int
    model: str
    memory_mib: int
    usable_mib: int


@dataclass
class DemoState:
    """Shared, lock-protected record of the run."""

    started_monotonic: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    step: str = "starting"
    pods: dict[str, PodRun] = field(default_factory=dict)
    gpus: list[GpuInfo] = field(default_factory=list)
    quotas: dict[str, dict[str, Any]] = field(default_factory=dict)  # "ns/name" -> {"hard", "used", "waitingPods"}
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=400))
    listeners: list[Callable[[float, str, str], None]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started_monotonic

    def log(self, message: str, kind: str = "info") -> None:
        """Record one event; kind is info | ok | wait | fail."""
        stamp = self.now()
        with self.lock:
            self.events.append((stamp, kind, message))
            listeners = list(self.listeners)
        for listener in listeners:
            listener(stamp, kind, message)

    def set_step(self, step: str) -> None:
        with self.lock:
            self.step = step
        self.log(step)

    def gpu_usage(self) -> dict[str, tuple[int, int]]:
        """uuid -> (milli, memory MiB) held right now by bound or running pods."""
        usage: dict[str, tuple[int, int]] = {}
        with self.lock:
            for run in self.pods.values():
                if run.phase not in (BOUND, RUNNING):
                    continue
                for share in run.shares:
                    milli, memory = usage.get(share.uuid, (0, 0))
                    usage[share.uuid] = (milli + share.milli, memory + share.memory_mib)
        return usage

    def unfinished(self) -> list[PodRun]:
        with self.lock:
            return [run for run in self.pods.values() if run.phase not in TERMINAL]
