"""Typed inputs and outputs of the pure scheduling core.

The extender's cluster view and the trace simulator both build a `ClusterArrays` and a
`PodDemand`, and call the same functions in `tensorai.scheduler.core` on them. Nothing here does
I/O, reads a clock or draws random numbers it was not handed.

(Skeleton written by the lead to fix the shape both drivers code against; the scheduling-core
owner may add fields and helpers, but must not rename or remove these.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class ClusterArrays:
    """Struct-of-arrays view of every schedulable node and GPU; N nodes, G = max GPUs per node.

    Per-GPU arrays are (N, G); slots beyond a node's `gpu_count` hold free_milli = -1 and
    healthy = False so vectorised masks never pick them.
    """

    node_names: list[str]
    models: list[str]  # model id -> model name
    node_model: np.ndarray  # (N,) int32, index into models (-1 = no GPUs)
    node_cpu_free_milli: np.ndarray  # (N,) int64
    node_memory_free_mib: np.ndarray  # (N,) int64
    node_schedulable: np.ndarray  # (N,) bool: False for stale inventory, cordoned, ...
    gpu_count: np.ndarray  # (N,) int32
    gpu_free_milli: np.ndarray  # (N, G) int32, 0..1000, -1 for padding
    gpu_free_memory_mib: np.ndarray  # (N, G) int64: usable (total - reserved) minus assigned
    gpu_usable_memory_mib: np.ndarray  # (N, G) int64: total - reserved
    gpu_healthy: np.ndarray  # (N, G) bool
    gpu_numa: np.ndarray  # (N, G) int32, -1 unknown
    gpu_uuids: list[list[str]]  # per node, per GPU index
    gpu_exclusive: np.ndarray  # (N, G) bool: holds a pod that asked for exclusive use
    # anti-affinity groups present on each GPU: (node index, gpu slot) -> group names
    gpu_groups: dict[tuple[int, int], frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerDemand:
    """One container's GPU request: `gpu_count` GPUs with `milli` and `memory_mib` on each.

    Fractional: gpu_count == 1 and milli < 1000. Whole: milli == 1000, gpu_count >= 1.
    memory_mib None = the share of the chosen GPU's usable memory (milli/1000 of it).
    """

    name: str
    milli: int
    gpu_count: int
    memory_mib: int | None = None
    # A regular init container: runs before the others; kubelet hands its device IDs on to the next
    # container and the pod keeps max(init, next) on that GPU (core/initchain.py).
    init: bool = False
    # An init container with restartPolicy Always: keeps running beside the app containers and keeps
    # its own GPU share, so it counts like an app container (init stays False for it).
    sidecar: bool = False


@dataclass(frozen=True, slots=True)
class PodDemand:
    """Everything the core needs to know about a pod."""

    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerDemand, ...]
    cpu_milli: int = 0
    memory_mib: int = 0
    allowed_models: frozenset[str] | None = None  # None = any model
    excluded_models: frozenset[str] = frozenset()
    allowed_uuids: frozenset[str] | None = None
    excluded_uuids: frozenset[str] = frozenset()
    exclusive: bool = False
    anti_affinity_group: str | None = None
    policy: str | None = None  # per-pod override of the cluster policy

    @property
    def one_gpu(self) -> bool:
        """One container (not an init container) on one GPU: its placement is a single GPU choice."""
        return len(self.containers) == 1 and not self.containers[0].init and self.containers[0].gpu_count == 1

    @property
    def has_gpu_rules(self) -> bool:
        """Rules on individual GPUs (UUID lists, an anti-affinity group): not part of a node's arrays."""
        return self.allowed_uuids is not None or bool(self.excluded_uuids) or self.anti_affinity_group is not None


@dataclass(frozen=True, slots=True)
class GPUChoice:
    """The share of one GPU given to one container."""

    container: str
    node_index: int
    gpu_slot: int
    uuid: str
    milli: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a pod goes: the node and, per container, the GPUs; score is the policy's raw node score.

    Higher is better; `placement.to_extender_scores` maps a set of node scores to kube-scheduler's 0..10.
    """

    node_index: int
    node_name: str
    choices: tuple[GPUChoice, ...]
    score: float


# --- additions by the scheduling-core owner --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node as a builder input: what `cluster_from_nodes` turns into a row of `ClusterArrays`.

    `gpu_memory_mib` is the total memory of each GPU and `reserved_mib` the per-GPU reserve the
    driver and CUDA contexts take, so usable memory = gpu_memory_mib - reserved_mib.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    model: str = ""
    gpu_memory_mib: int = 16384
    reserved_mib: int = 0
    gpu_numa: tuple[int, ...] | None = None  # per GPU; None = unknown
    gpu_uuids: tuple[str, ...] | None = None  # per GPU; None = "<name>-gpu<index>"
