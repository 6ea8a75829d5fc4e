"""The extender's cluster view: Nodes, Pods and GPUQuotas kept as ClusterArrays, updated per event.

One `ClusterView` holds everything the verbs read, behind one lock that is held only for short,
in-memory work (never across an API call):
- Nodes: the `tensor.ai/inventory` annotation becomes one row of the arrays. A bad annotation makes
  the node unusable with a logged reason; a heartbeat older than `stale_seconds` keeps new pods off
  (checked against an injectable clock on every verb, vectorised).
- Pods: a bound pod holds the GPU shares of its `tensor.ai/assignment` annotation until it ends
  (Succeeded/Failed) or is deleted. A pod the extender is binding is *assumed* between bind and the
  watch event that shows it bound; a failed bind forgets it, so no capacity leaks. After a restart
  the same annotations rebuild the same arrays, so nothing is allocated twice.
- GPUQuotas: hard limits per namespace and the usage of every holding pod, for `core.quota`.
Everything is indexed (node name -> row, pod uid -> record, node -> pods); no verb scans all pods.

Sources feed it: `KubeSource` (list + watch with the real kubernetes client, relist on 410/expiry)
or `load_cluster_file` (a static `kubectl get nodes,pods -o yaml` List).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from tensorai.proto import contract
from tensorai.proto.podslots import TERMINAL_PHASES
from tensorai.proto.quantity import QuantityError, bytes_to_mib, quantity_to_milli
from tensorai.scheduler.core.cluster import empty_cluster
from tensorai.scheduler.core.initchain import held_per_gpu
from tensorai.scheduler.core.placement import apply_placement, release_placement
from tensorai.scheduler.core.quota import QuotaError, QuotaLimits, Usage, parse_gpu_quota, usage_of_placement
from tensorai.scheduler.core.requests import DemandError, pod_demand
from tensorai.scheduler.core.types import ClusterArrays, ContainerDemand, GPUChoice, Placement, PodDemand

log = logging.getLogger(__name__)

# Plenty for CPU/memory when a node object carries no allocatable (static cluster files).
UNLIMITED = 1 << 50


@dataclass(frozen=True, slots=True)
class Share:
    """One container's share of one GPU, as the Assignment annotation records it."""

    container: str
    uuid: str
    milli: int
    memory_mib: int


@dataclass(slots=True)
class NodeRecord:
    """What the view knows about one Node besides its array row."""

    name: str
    index: int
    model: str | None = None
    uuid_slot: dict[str, int] = field(default_factory=dict)
    usable_memory_mib: int | None = None
    problem: str | None = None  # why the node takes no GPU pods (bad inventory, cordoned, ...)
    cpu_allocatable_milli: int = UNLIMITED
    memory_allocatable_mib: int = UNLIMITED
    fingerprint: tuple | None = None  # everything but the heartbeat, to skip rebuilds on heartbeats
    # the Inventory last decoded and its JSON object without the heartbeat: a heartbeat-only update
    # (every 30 s per node) reuses it instead of decoding again (contract.inventory_heartbeat)
    inventory_body: dict | None = None
    inventory: object | None = None


@dataclass(slots=True)
class PodRecord:
    """One pod: its demand and, while it holds capacity, the node and GPU shares it holds."""

    uid: str
    namespace: str
    name: str
    demand: PodDemand | None = None
    demand_error: str | None = None
    spec_containers: tuple[tuple[str, bool, bool], ...] = ()  # (name, init, sidecar), kept when demand is None
    pod: dict | None = None  # kept while pending, so bind can re-check without an API call
    node_name: str | None = None  # where it holds capacity (bound or assumed); None = holds nothing
    shares: tuple[Share, ...] = ()  # what the view counts: `written`, never below what the pod asks for
    assumed: bool = False  # bound by us, watch has not confirmed yet
    assignment_text: str | None = None
    applied: tuple[int, Placement] | None = None  # what is subtracted from the arrays now
    usage: Usage = field(default_factory=Usage)  # counted in its namespace's usage now
    awaiting: tuple[dict, frozenset[int]] | None = None  # bound, not yet allocated: (pod, its container sizes)
    written: tuple[Share, ...] = ()  # the accepted Assignment's shares as written (`shares` may count more)
    refused_text: str | None = None  # an Assignment rewrite not accepted (see `_rewrite_problem`)
    flagged_text: str | None = None  # the Assignment last logged and counted as distrusted ("" = none; log once)


# Why the view did not take an Assignment as written (tensorai_extender_assignments_distrusted_total{reason})
DISTRUST_CONTRADICTS_POD = "contradicts_pod"  # counted as the pod asks instead: never less
DISTRUST_REWRITE_REFUSED = "rewrite_refused"  # a bound pod's accepted Assignment changed shape: kept as accepted


# How many pod bodies filter/prioritize remember, and for how long without a new filter call: kube-scheduler
# filters a pod again at least every few minutes while it waits, and every entry outside these bounds is
# one a forged body (anyone who reaches the extender's port can post one) could otherwise keep forever.
PENDING_LIMIT = 10_000
PENDING_TTL_S = 300.0


@dataclass(slots=True)
class PendingPod:
    """What a filter/prioritize body said about a pod: its parsed demand, for scoring that request only.

    Deliberately not a PodRecord: the body comes from whoever reached the extender's port, so bind never
    trusts it in API mode (it takes the pod from the API: the watch's copy or a GET, uid-checked). Only
    the parsed demand and the identity are kept, not the body, and the view keeps at most
    `PENDING_LIMIT` of them for at most `PENDING_TTL_S` after their last filter call.
    """

    uid: str
    namespace: str
    name: str
    resource_version: str
    demand: PodDemand | None
    demand_error: str | None  # a pod whose demand is unreadable keeps only why: bind refuses it anyway, and
    # its container list (up to the API server's object size, ~240 KiB for 2,000 containers) is not kept
    seen_at: float  # time.monotonic() of the last filter/prioritize call that named it


def _empty_arrays(node_capacity: int, gpu_capacity: int) -> ClusterArrays:
    """The core's empty cluster with free rows: unnamed and unschedulable until a node takes them."""
    arrays = empty_cluster(node_capacity, gpu_capacity)
    arrays.node_names = [""] * node_capacity
    arrays.node_schedulable[:] = False
    return arrays


def _grown(old: ClusterArrays, node_capacity: int, gpu_capacity: int) -> ClusterArrays:
    """A larger copy of `old` (more rows and/or GPU slots); padding as in `_empty_arrays`."""
    new = _empty_arrays(node_capacity, gpu_capacity)
    rows, slots = old.gpu_free_milli.shape
    new.node_names[:rows] = old.node_names
    new.models = old.models
    new.gpu_uuids[:rows] = old.gpu_uuids
    new.gpu_groups = old.gpu_groups
    for name in ("node_model", "node_cpu_free_milli", "node_memory_free_mib", "node_schedulable", "gpu_count"):
        getattr(new, name)[:rows] = getattr(old, name)
    for name in (
        "gpu_free_milli",
        "gpu_free_memory_mib",
        "gpu_usable_memory_mib",
        "gpu_healthy",
        "gpu_numa",
        "gpu_exclusive",
    ):
        getattr(new, name)[:rows, :slots] = getattr(old, name)
    return new


_ROW_LOG_LIMIT = 4096  # placement-only changes remembered; older tokens fall back to a full compare


def _force_apply(cluster: ClusterArrays, demand: PodDemand, placement: Placement) -> None:
    """apply_placement without its fit checks, for pods the API already bound (exact inverse of release).

    Per GPU it subtracts what the pod holds there (`held_per_gpu`: kubelet's reuse of init containers'
    devices), the same amounts `release_placement` gives back.
    """
    node = placement.node_index
    cluster.node_cpu_free_milli[node] -= demand.cpu_milli
    cluster.node_memory_free_mib[node] -= demand.memory_mib
    for slot, (milli, memory_mib) in held_per_gpu(demand, placement).items():
        cluster.gpu_free_milli[node, slot] -= milli
        cluster.gpu_free_memory_mib[node, slot] -= memory_mib
        if demand.exclusive:
            cluster.gpu_exclusive[node, slot] = True
        if demand.anti_affinity_group is not None:
            key = (node, slot)
            cluster.gpu_groups[key] = cluster.gpu_groups.get(key, frozenset()) | {demand.anti_affinity_group}


def _spec_containers(pod: dict) -> tuple[tuple[str, bool, bool], ...]:
    """(name, regular init, sidecar) per container in spec order, read leniently from a pod that failed to parse.

    The view keeps it so a pod whose demand is unreadable is still counted the way kubelet holds its
    GPUs (init 500 then app 250 holds 500, not 750); anything malformed is skipped, never raised.
    """
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    result: list[tuple[str, bool, bool]] = []
    for field_name, init in (("initContainers", True), ("containers", False)):
        containers = spec.get(field_name)
        if not isinstance(containers, list):
            continue
        for container in containers:
            if not isinstance(container, dict) or not isinstance(container.get("name"), str):
                continue
            sidecar = init and container.get("restartPolicy") == "Always"
            result.append((container["name"], init and not sidecar, sidecar))
    return tuple(result)


def _resource_version(obj: dict) -> str:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else ""


def _pod_key(pod: dict) -> tuple[str, str, str]:
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("pod has no metadata object")
    uid, namespace, name = metadata.get("uid"), metadata.get("namespace") or "default", metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("pod has no metadata.name")
    if not isinstance(namespace, str):
        raise ValueError("pod metadata.namespace is not a string")
    if not isinstance(uid, str) or not uid:
        uid = f"{namespace}/{name}"  # static files may lack uids; the name is unique enough there
    return uid, namespace, name


def shares_from_placement(placement: Placement) -> tuple[Share, ...]:
    """The shares a placement gives, in the form the view stores."""
    return tuple(Share(c.container, c.uuid, c.milli, c.memory_mib) for c in placement.choices)


def _shares_of(assignment: contract.pb.Assignment) -> tuple[Share, ...]:
    """The shares an Assignment message gives, in the form the view stores."""
    return tuple(Share(container.name, gpu.uuid, gpu.milli, gpu.memory_mib)
                 for container in assignment.containers for gpu in container.gpus)


def _shape(shares: tuple[Share, ...]) -> dict[str, list[tuple[int, int]]]:
    """Per container its per-GPU (milli, memory MiB), GPUs left out: what a GPU swap must keep."""
    shape: dict[str, list[tuple[int, int]]] = {}
    for share in shares:
        shape.setdefault(share.container, []).append((share.milli, share.memory_mib))
    return {name: sorted(held) for name, held in shape.items()}


def _describe(shares: tuple[Share, ...]) -> str:
    return ", ".join(f"{name}: {' + '.join(f'{milli} milli/{mib} MiB' for milli, mib in held)}"
                     for name, held in _shape(shares).items()) or "nothing"


def _shares_placement(shares: tuple[Share, ...]) -> Placement:
    """The shares as a Placement with one slot per GPU UUID, for counting what they hold (no node needed)."""
    slots: dict[str, int] = {}
    choices = tuple(
        GPUChoice(s.container, 0, slots.setdefault(s.uuid, len(slots)), s.uuid, s.milli, s.memory_mib) for s in shares
    )
    return Placement(0, "", choices, 0.0)


def assignment_from_placement(placement: Placement, pod_uid: str) -> contract.pb.Assignment:
    """The Assignment message for a placement (containers in first-seen order)."""
    assignment = contract.pb.Assignment(pod_uid=pod_uid, node_name=placement.node_name)
    assignment.decided_at.CopyFrom(contract.timestamp_now())
    by_container: dict[str, contract.pb.ContainerAssignment] = {}
    for choice in placement.choices:
        entry = by_container.get(choice.container)
        if entry is None:
            entry = assignment.containers.add(name=choice.container)
            by_container[choice.container] = entry
        entry.gpus.add(uuid=choice.uuid, milli=choice.milli, memory_mib=choice.memory_mib)
    return assignment


class ClusterView:
    """Thread-safe, incrementally maintained cluster state for the extender's verbs."""

    def __init__(
        self,
        *,
        stale_seconds: float = contract.INVENTORY_HEARTBEAT_STALE_SECONDS,
        clock: Callable[[], float] = time.time,
        initial_nodes: int = 64,
        initial_gpus: int = 8,
    ) -> None:
        self.lock = threading.RLock()
        self.stale_seconds = stale_seconds  # <= 0 disables the heartbeat check
        self.clock = clock
        self.cluster = _empty_arrays(initial_nodes, initial_gpus)
        self._nodes: dict[str, NodeRecord] = {}
        self._free_rows: list[int] = list(range(initial_nodes - 1, -1, -1))
        self._heartbeat_s = np.full(initial_nodes, np.nan)
        self._usable = np.zeros(initial_nodes, dtype=bool)  # valid inventory and not cordoned
        self._pods: dict[str, PodRecord] = {}
        self._pods_by_node: dict[str, set[str]] = {}
        self._quotas: dict[str, dict[str, QuotaLimits]] = {}  # namespace -> name -> limits (parsed GPUQuotas)
        self._quota_objects: dict[tuple[str, str], dict] = {}
        self._quota_errors: dict[tuple[str, str], str] = {}
        self._used: dict[str, Usage] = {}
        self._waiting: dict[str, dict[str, tuple[str, str, float]]] = {}  # ns -> uid -> (name, reason, since)
        self._synced: set[str] = set()
        self.required_syncs: frozenset[str] = frozenset({"nodes", "pods", "gpuquotas"})
        self._changed = threading.Condition(self.lock)
        self._dirty_namespaces: set[str] = set()
        self._freed_at: dict[str, float] = {}  # namespace -> time.monotonic() of the last quota release
        self._model_ids: dict[str, int] = {}
        self.node_generation = 0  # bumped whenever a node gets or loses a row (name -> row caches)
        self.row_of: dict[str, int] = {}  # node name -> row, for vectorised lookups by the verbs
        self.version = 0  # bumped on every change of the arrays: equal versions = identical arrays
        # rows whose placement fields alone changed, one per version after _row_log_base (see placement_rows_since)
        self._row_log: list[int] = []
        self._row_log_base = 0
        self._assumed_at: dict[str, float] = {}  # uid -> time.monotonic() when a bind assumed it
        # node -> uid -> (pod, GPU sizes) of bound pods the device plugin has not allocated yet: the
        # bind rule (proto.podslots.ambiguous_with) reads only these, never all pods
        self._awaiting: dict[str, dict[str, tuple[dict, frozenset[int]]]] = {}
        # uid -> what filter/prioritize bodies said, oldest call first (bounded, expiring; see PendingPod)
        self._pending: collections.OrderedDict[str, PendingPod] = collections.OrderedDict()
        # Assignments not taken as written, per reason (DISTRUST_*), for the metric
        self.distrusted_assignments: dict[str, int] = dict.fromkeys(
            (DISTRUST_CONTRADICTS_POD, DISTRUST_REWRITE_REFUSED), 0)

    # ------------------------------------------------------------------ readiness
    def mark_synced(self, kind: str) -> None:
        """A source finished its first full list of `kind`."""
        with self.lock:
            self._synced.add(kind)

    @property
    def ready(self) -> bool:
        """True once every required kind has been listed at least once."""
        with self.lock:
            return self.required_syncs <= self._synced

    # ------------------------------------------------------------------ nodes
    def node_index(self, name: str) -> int | None:
        """Row of a node in the arrays, or None if the view does not know it."""
        record = self._nodes.get(name)
        return None if record is None else record.index

    def node_record(self, name: str) -> NodeRecord | None:
        """The node's record (model, problem, ...), or None."""
        return self._nodes.get(name)

    def node_names(self) -> list[str]:
        """Every known node."""
        with self.lock:
            return list(self._nodes)

    def _model_id(self, model: str) -> int:
        model_id = self._model_ids.get(model)
        if model_id is None:
            model_id = len(self.cluster.models)
            self.cluster.models.append(model)
            self._model_ids[model] = model_id
        return model_id

    def _bump(self, placement_row: int | None = None) -> None:
        """A change of the arrays: a new version. `placement_row`: only a pod's placement on that row
        changed (core.placement's apply/release fields); None: anything may have changed."""
        self.version += 1
        if placement_row is None or len(self._row_log) >= _ROW_LOG_LIMIT:
            self._row_log.clear()
            self._row_log_base = self.version
        else:
            self._row_log.append(placement_row)

    def placement_rows_since(self, version: object) -> list[int] | None:
        """Rows changed since `version` when only pod placements changed them, else None (call under the lock).

        The score cache re-checks just these rows instead of comparing every array with its snapshot.
        """
        if not isinstance(version, int) or not self._row_log_base <= version <= self.version:
            return None
        changes = self.version - version
        return self._row_log[len(self._row_log) - changes :] if changes else []

    def _ensure_capacity(self, gpu_count: int) -> None:
        rows, slots = self.cluster.gpu_free_milli.shape
        if not self._free_rows or gpu_count > slots:
            new_rows = rows * 2 if not self._free_rows else rows
            new_slots = max(slots, gpu_count)
            self.cluster = _grown(self.cluster, new_rows, new_slots)
            self._bump()
            self._heartbeat_s = np.concatenate([self._heartbeat_s, np.full(new_rows - rows, np.nan)])
            self._usable = np.concatenate([self._usable, np.zeros(new_rows - rows, dtype=bool)])
            self._free_rows.extend(range(new_rows - 1, rows - 1, -1))

    def upsert_node(self, node: dict) -> None:
        """Add or update a Node from its API object; a bad inventory makes it unusable, never raises."""
        metadata = node.get("metadata") if isinstance(node, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or not name:
            log.warning("ignoring a Node without metadata.name")
            return
        annotations = metadata.get("annotations") or {}
        inventory = None
        heartbeat_only = None
        problem = None
        text = annotations.get(contract.ANNOTATION_INVENTORY) if isinstance(annotations, dict) else None
        if text is None:
            problem = f"node has no {contract.ANNOTATION_INVENTORY} annotation (no tensor.ai device plugin)"
        else:
            inventory, heartbeat_only = self._decode_inventory(name, text)
            if isinstance(inventory, str):
                problem, inventory = inventory, None
                log.warning("node %s unusable: %s", name, problem)
        spec = node.get("spec") or {}
        if problem is None and isinstance(spec, dict) and spec.get("unschedulable"):
            problem = "node is cordoned (spec.unschedulable)"
        status = node.get("status") or {}
        allocatable = status.get("allocatable") if isinstance(status, dict) else None
        cpu_milli, memory_mib = UNLIMITED, UNLIMITED
        if isinstance(allocatable, dict):
            try:
                if "cpu" in allocatable:
                    cpu_milli = quantity_to_milli(allocatable["cpu"])
                if "memory" in allocatable:
                    memory_mib = bytes_to_mib(allocatable["memory"])
            except QuantityError as error:
                log.warning("node %s: bad allocatable (%s); CPU/memory treated as unlimited", name, error)
        with self.lock:
            gpus = sorted(inventory.gpus, key=lambda gpu: gpu.index) if inventory is not None else []
            self._ensure_capacity(len(gpus))
            record = self._nodes.get(name)
            if record is None:
                record = NodeRecord(name=name, index=self._free_rows.pop())
                self._nodes[name] = record
                self.row_of[name] = record.index
                self.node_generation += 1
            heartbeat = np.nan
            if heartbeat_only is not None:
                heartbeat = heartbeat_only[1]
            elif inventory is not None and inventory.HasField("heartbeat_time"):
                heartbeat = inventory.heartbeat_time.seconds + inventory.heartbeat_time.nanos / 1e9
            record.inventory_body, record.inventory = (heartbeat_only[0], inventory) if heartbeat_only else (None, None)
            fingerprint = (
                tuple((g.uuid, g.index, g.model, g.memory_mib, g.reserved_mib, g.numa_node, g.healthy) for g in gpus),
                problem,
                cpu_milli,
                memory_mib,
            )
            if record.fingerprint == fingerprint:  # only the heartbeat moved (every 30 s per node): no rebuild
                self._heartbeat_s[record.index] = heartbeat
                self._refresh_row(record.index)
                return
            record.fingerprint = fingerprint
            record.problem = problem
            record.cpu_allocatable_milli, record.memory_allocatable_mib = cpu_milli, memory_mib
            self._rebuild_node(record, gpus, heartbeat)

    def _decode_inventory(self, name: str, text: str) -> tuple[object, tuple[dict, float] | None]:
        """(the node's Inventory, or why its annotation is invalid as a str; its heartbeat split off).

        Runs on the watch thread only (the one writer of `inventory_body`): a heartbeat-only update
        reuses the Inventory decoded for an equal object; anything else is decoded and validated."""
        split = contract.inventory_heartbeat(text)
        record = self._nodes.get(name)
        known = (record.inventory_body, record.inventory) if record is not None else (None, None)
        if split is not None and known[1] is not None and known[0] == split[0]:
            return known[1], split
        try:
            return contract.decode_inventory(text), split
        except contract.ContractError as error:
            return f"node's {contract.ANNOTATION_INVENTORY} annotation is invalid: {error}", None

    def _rebuild_node(self, record: NodeRecord, gpus: list, heartbeat_s: float) -> None:
        """Reset the node's row from its GPUs, then re-apply every pod that holds shares there."""
        cluster, row = self.cluster, record.index
        self._bump()
        for uid in self._pods_by_node.get(record.name, ()):
            self._pods[uid].applied = None  # the row is rebuilt below; nothing to release
        for slot in range(cluster.gpu_free_milli.shape[1]):
            cluster.gpu_groups.pop((row, slot), None)
        cluster.node_names[row] = record.name
        models = [gpu.model for gpu in gpus]
        record.model = max(set(models), key=models.count) if models else None
        cluster.node_model[row] = self._model_id(record.model) if record.model is not None else -1
        cluster.gpu_count[row] = len(gpus)
        cluster.gpu_free_milli[row] = -1
        cluster.gpu_free_memory_mib[row] = 0
        cluster.gpu_usable_memory_mib[row] = 0
        cluster.gpu_healthy[row] = False
        cluster.gpu_numa[row] = -1
        cluster.gpu_exclusive[row] = False
        cluster.gpu_uuids[row] = [gpu.uuid for gpu in gpus]
        record.uuid_slot = {gpu.uuid: slot for slot, gpu in enumerate(gpus)}
        for slot, gpu in enumerate(gpus):
            usable = gpu.memory_mib - gpu.reserved_mib
            cluster.gpu_free_milli[row, slot] = contract.MILLI_PER_GPU
            cluster.gpu_usable_memory_mib[row, slot] = usable
            cluster.gpu_free_memory_mib[row, slot] = usable
            cluster.gpu_healthy[row, slot] = gpu.healthy
            cluster.gpu_numa[row, slot] = gpu.numa_node
        record.usable_memory_mib = int(min(g.memory_mib - g.reserved_mib for g in gpus)) if gpus else None
        cluster.node_cpu_free_milli[row] = record.cpu_allocatable_milli
        cluster.node_memory_free_mib[row] = record.memory_allocatable_mib
        self._usable[row] = record.problem is None
        self._heartbeat_s[row] = heartbeat_s
        for uid in self._pods_by_node.get(record.name, ()):
            pod = self._pods[uid]
            self._account(pod, -1)
            pod.shares = self._counted_shares(pod, record.name, pod.written, pod.assignment_text)  # GPUs known now
            self._apply_arrays(pod)
            self._account(pod, +1)
        self._refresh_row(row)

    def delete_node(self, name: str) -> None:
        """Forget a Node; its pods keep their quota usage until they go, but hold no row."""
        with self.lock:
            record = self._nodes.pop(name, None)
            if record is None:
                return
            self.node_generation += 1
            del self.row_of[name]
            row = record.index
            for uid in self._pods_by_node.get(name, ()):
                self._pods[uid].applied = None
            for slot in range(self.cluster.gpu_free_milli.shape[1]):
                self.cluster.gpu_groups.pop((row, slot), None)
            self.cluster.node_names[row] = ""
            self.cluster.node_model[row] = -1
            self.cluster.gpu_count[row] = 0
            self.cluster.gpu_free_milli[row] = -1
            self.cluster.gpu_healthy[row] = False
            self.cluster.gpu_uuids[row] = []
            self.cluster.node_schedulable[row] = False
            self._usable[row] = False
            self._heartbeat_s[row] = np.nan
            self._free_rows.append(row)
            self._bump()

    def _refresh_row(self, row: int) -> None:
        fresh = True
        if self.stale_seconds > 0:
            heartbeat = self._heartbeat_s[row]
            fresh = bool(not math.isnan(heartbeat) and heartbeat >= self.clock() - self.stale_seconds)
        schedulable = bool(self._usable[row]) and fresh
        if bool(self.cluster.node_schedulable[row]) != schedulable:
            self.cluster.node_schedulable[row] = schedulable
            self._bump()

    def refresh_schedulable(self) -> None:
        """Recompute node_schedulable for the heartbeat clock (vectorised; call under the lock per verb)."""
        if self.stale_seconds > 0:
            with np.errstate(invalid="ignore"):
                fresh = self._heartbeat_s >= self.clock() - self.stale_seconds
            schedulable = np.logical_and(self._usable, fresh)
        else:
            schedulable = self._usable
        if not np.array_equal(schedulable, self.cluster.node_schedulable):
            self.cluster.node_schedulable[:] = schedulable
            self._bump()

    def node_problem(self, name: str) -> str | None:
        """Why a known node takes no new GPU pods (bad inventory, cordoned, stale heartbeat), or None."""
        with self.lock:
            record = self._nodes.get(name)
            if record is None:
                return f"node {name!r} is unknown to the tensor.ai extender"
            if record.problem is not None:
                return record.problem
            heartbeat = self._heartbeat_s[record.index]
            if self.stale_seconds > 0:
                if math.isnan(heartbeat):
                    return "node's inventory has no heartbeat time"
                age = self.clock() - heartbeat
                if age > self.stale_seconds:
                    return f"node's inventory heartbeat is {age:.0f}s old (stale after {self.stale_seconds:g}s)"
            return None

    # ------------------------------------------------------------------ pods
    def _demand_of(self, pod: dict) -> tuple[PodDemand | None, str | None]:
        try:
            return pod_demand(pod), None
        except DemandError as error:
            return None, str(error)

    def _read_demand(self, record: PodRecord, pod: dict) -> None:
        """Parse the pod's demand into the record; keep its container order when the demand is unreadable."""
        record.demand, record.demand_error = self._demand_of(pod)
        record.spec_containers = _spec_containers(pod) if record.demand is None else ()

    def _placement_for(self, record: PodRecord, node: NodeRecord) -> Placement:
        choices = []
        for share in record.shares:
            slot = node.uuid_slot.get(share.uuid)
            if slot is None:
                log.warning(
                    "pod %s/%s holds GPU %s that node %s does not report; not counted on the node",
                    record.namespace,
                    record.name,
                    share.uuid,
                    node.name,
                )
                continue
            choices.append(GPUChoice(share.container, node.index, slot, share.uuid, share.milli, share.memory_mib))
        return Placement(node.index, node.name, tuple(choices), 0.0)

    def demand_for_arrays(self, record: PodRecord) -> PodDemand:
        """The demand to hand apply/release_placement: parsed from the pod, or rebuilt from its shares.

        The rebuilt one lists the containers in spec order with their init/sidecar roles (when the pod
        was seen), so an unreadable pod is still counted as kubelet holds it: `max(init, app)` per GPU.
        """
        if record.demand is not None:
            return record.demand
        containers: dict[str, ContainerDemand] = {}
        for name, init, sidecar in record.spec_containers:
            share = next((s for s in record.shares if s.container == name), None)
            if share is not None:
                containers.setdefault(name, ContainerDemand(name, share.milli, 1, share.memory_mib, init, sidecar))
        for share in record.shares:  # containers the spec does not list count like app containers, after the others
            containers.setdefault(share.container, ContainerDemand(share.container, share.milli, 1, share.memory_mib))
        return PodDemand(record.namespace, record.name, record.uid, tuple(containers.values()))

    def _apply_arrays(self, record: PodRecord) -> None:
        """Subtract the pod's GPU shares and CPU/memory from its node's row (when the node is known).

        What the API says is bound is counted even if it over-commits (another scheduler, a node
        that shrank): the view must mirror reality, and an over-committed GPU simply takes no more.
        """
        node = self._nodes.get(record.node_name) if record.node_name else None
        if node is None or record.applied is not None:
            return
        placement = self._placement_for(record, node)
        demand = self.demand_for_arrays(record)
        try:
            apply_placement(self.cluster, demand, placement)
        except ValueError as error:
            log.warning("pod %s/%s over-commits its node (%s); counted anyway", record.namespace, record.name, error)
            _force_apply(self.cluster, demand, placement)
        record.applied = (node.index, placement)
        self._bump(node.index)

    def _release_arrays(self, record: PodRecord) -> None:
        if record.applied is None:
            return
        _, placement = record.applied
        release_placement(self.cluster, self.demand_for_arrays(record), placement)
        record.applied = None
        self._bump(placement.node_index)

    def _account(self, record: PodRecord, sign: int) -> None:
        """Add (+1) or remove (-1) the pod's quota usage; on +1 recompute it from its shares first."""
        if sign > 0:
            if record.node_name is None or not record.shares:
                record.usage = Usage()
                return
            node = self._nodes.get(record.node_name)
            record.usage = usage_of_placement(
                self.demand_for_arrays(record), _shares_placement(record.shares), node.model if node else None
            )
            if not record.usage.is_zero():
                self._used[record.namespace] = self._used.get(record.namespace, Usage()).plus(record.usage)
                if record.namespace in self._quotas:
                    # growing usage only changes its quotas' status.used (written for parsed GPUQuotas
                    # only); without one there is nothing to write, and waking the controller on every
                    # bind held the view's lock against the next filter (a quarter of the server's busy
                    # time in the benchmark)
                    self._mark_dirty(record.namespace)
        elif not record.usage.is_zero():
            self._used[record.namespace] = self._used.get(record.namespace, Usage()).minus(record.usage)
            self._freed_at[record.namespace] = time.monotonic()
            self._mark_dirty(record.namespace)
            record.usage = Usage()

    def _hold(self, record: PodRecord, node_name: str, shares: tuple[Share, ...], text: str | None) -> None:
        """Hold `shares` (the Assignment `text` as written) on the node: counted as `_counted_shares` says."""
        self._unhold(record)
        record.node_name, record.written = node_name, shares
        record.shares = self._counted_shares(record, node_name, shares, text)
        self._pods_by_node.setdefault(node_name, set()).add(record.uid)
        self._apply_arrays(record)
        self._account(record, +1)
        self._forget_waiting(record)

    def _unhold(self, record: PodRecord) -> None:
        if record.node_name is None:
            return
        self._release_arrays(record)
        self._account(record, -1)
        on_node = self._pods_by_node.get(record.node_name)
        if on_node is not None:
            on_node.discard(record.uid)
            if not on_node:
                del self._pods_by_node[record.node_name]
        self._clear_awaiting(record)
        record.node_name, record.shares, record.assumed, record.assignment_text = None, (), False, None
        record.written, record.refused_text = (), None
        self._assumed_at.pop(record.uid, None)

    # ------------------------------------------------------------------ pods awaiting Allocate
    def _track_allocation(self, record: PodRecord, pod: dict) -> None:
        """Index a holding pod while kubelet has not allocated all its GPU containers (see `awaiting`).

        Allocated = every app container with GPUs appears in `tensor.ai/allocated`, or the pod is
        Running (kubelet calls Allocate for every container at admission, before any starts).
        """
        self._clear_awaiting(record)
        if record.node_name is None:
            return
        sizes: dict[str, int] = {}
        init: frozenset[str] = frozenset()
        if record.demand is not None:
            sizes = {c.name: c.milli * c.gpu_count for c in record.demand.containers}
            init = frozenset(c.name for c in record.demand.containers if c.init)
        else:
            for share in record.shares:
                sizes[share.container] = sizes.get(share.container, 0) + share.milli
        if not sizes or (pod.get("status") or {}).get("phase") == "Running":
            return
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        text = annotations.get(contract.ANNOTATION_ALLOCATED) if isinstance(annotations, dict) else None
        if text is not None:
            try:
                allocated = {c.name for c in contract.decode_assignment(text).containers}
            except contract.ContractError:
                allocated = set()  # unreadable: keep treating it as waiting (the safe side)
            if all(name in allocated for name in sizes if name not in init):
                return
        record.awaiting = (pod, frozenset(sizes.values()))
        self._awaiting.setdefault(record.node_name, {})[record.uid] = record.awaiting

    def _clear_awaiting(self, record: PodRecord) -> None:
        if record.awaiting is None:
            return
        record.awaiting = None
        on_node = self._awaiting.get(record.node_name or "")
        if on_node is not None:
            on_node.pop(record.uid, None)
            if not on_node:
                del self._awaiting[record.node_name]

    def awaiting_allocate(self, node_name: str) -> list[tuple[dict, frozenset[int]]]:
        """(pod object, its containers' GPU sizes in milli) of every pod bound to the node and not yet
        allocated by its device plugin, including pods our binds have assumed (call under the lock)."""
        return list(self._awaiting.get(node_name, {}).values())

    def nodes_awaiting_allocate(self) -> frozenset[str]:
        """Nodes with at least one bound pod the device plugin has not allocated yet."""
        with self.lock:
            return frozenset(self._awaiting)

    def upsert_pod(self, pod: dict) -> None:
        """Add or update a Pod from its API object (watch event or list item); never raises on bad input."""
        try:
            uid, namespace, name = _pod_key(pod)
        except ValueError as error:
            log.warning("ignoring a malformed Pod: %s", error)
            return
        spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
        status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        node_name = spec.get("nodeName") or None
        phase = status.get("phase")
        text = annotations.get(contract.ANNOTATION_ASSIGNMENT) if isinstance(annotations, dict) else None
        holding = isinstance(node_name, str) and phase not in TERMINAL_PHASES
        with self.lock:
            record = self._pods.get(uid)
            fresh = record is None
            if record is None:
                record = PodRecord(uid, namespace, name)
                self._read_demand(record, pod)
                self._pods[uid] = record
            if holding or phase in TERMINAL_PHASES:
                self._pending.pop(uid, None)  # filter will not ask about it again
            if phase in TERMINAL_PHASES:
                self._forget_waiting(record)
                self._unhold(record)
                record.pod = None
                return
            if record.assumed:
                if node_name is None:
                    return  # our bind is in flight (the annotation patch shows up first)
                if node_name == record.node_name and text == record.assignment_text:
                    record.assumed = False  # the watch confirms what we bound
                    self._assumed_at.pop(uid, None)
                    record.pod = None
                    self._track_allocation(record, pod)
                    return
                record.assumed = False  # something else happened to the pod: trust the API
                self._assumed_at.pop(uid, None)
            if not holding:
                if record.node_name is not None:
                    self._unhold(record)
                if not fresh and (record.pod is None or _resource_version(record.pod) != _resource_version(pod)):
                    self._read_demand(record, pod)  # annotations may change while pending
                record.pod = pod
                return
            record.pod = None
            if record.node_name == node_name and record.assignment_text == text:
                self._track_allocation(record, pod)  # e.g. the device plugin wrote tensor.ai/allocated
                return
            if record.node_name == node_name and record.assignment_text is not None:
                # A rewrite of the Assignment this view accepted for the bound pod. Only the device plugin
                # rewrites one, and only to move containers between GPUs of the node (a swap of two
                # interchangeable pods, a relabel): anything else - less milli, no Assignment, another
                # node - is refused and the accepted one stays counted.
                if text == record.refused_text:
                    self._track_allocation(record, pod)
                    return
                problem = self._rewrite_problem(record, text, node_name)
                if problem is not None:
                    record.refused_text = text
                    self._distrust(record, text, DISTRUST_REWRITE_REFUSED, [problem],
                                   "keeping the Assignment accepted before")
                    self._track_allocation(record, pod)
                    return
            shares: tuple[Share, ...] = ()
            if text is not None:
                shares = self._shares_from_annotation(record, text, node_name)
            # a changed Assignment (the device plugin swapping two interchangeable pending pods) is
            # released in full and held again: no double counting, nothing left behind
            self._hold(record, node_name, shares, text)
            record.assignment_text = text
            self._track_allocation(record, pod)

    def _shares_from_annotation(self, record: PodRecord, text: str, node_name: str) -> tuple[Share, ...]:
        try:
            assignment = contract.decode_assignment(text)
        except contract.ContractError as error:
            log.warning("pod %s/%s: ignoring its assignment: %s", record.namespace, record.name, error)
            return ()
        shares = _shares_of(assignment)
        if assignment.node_name != node_name:
            # its GPUs are still counted where they are on the bound node: a forged node name frees nothing
            self._distrust(record, text, DISTRUST_CONTRADICTS_POD,
                           [f"names node {assignment.node_name} but the pod is bound to {node_name}"],
                           "its GPUs that the bound node has are counted there")
        return shares

    def _counted_shares(self, record: PodRecord, node_name: str, written: tuple[Share, ...],
                        text: str | None) -> tuple[Share, ...]:
        """What the view counts for an Assignment: as written when it matches the pod's own requests, else
        never less than the pod asks for (call under the lock).

        The extender writes exactly the demand (per container `gpu_count` GPUs of its milli, its explicit
        memory or its share of the GPU's usable memory), so a mismatch is a forged or stale Assignment:
        each share is counted with the larger of what it says and what its container asks, and the
        mismatch is logged once and counted (`distrusted_assignments`). A share of a container that asks
        for no GPU is not counted (kubelet allocates it no device; counting it would let a forged
        Assignment take capacity instead). GPUs the node does not have cannot be counted anywhere (the
        device plugin refuses to allocate them); they are reported too.
        """
        demand = record.demand
        if demand is None or not (written or demand.containers):
            return written  # an unreadable pod: its Assignment is all there is
        node = self._nodes.get(node_name)
        wanted = {container.name: container for container in demand.containers}
        problems: list[str] = []
        counted: list[Share] = []
        for share in written:
            container = wanted.get(share.container)
            if container is None:  # kubelet allocates no device to it, so the share holds nothing: not counted
                problems.append(f"gives container {share.container!r} a GPU share it does not ask for")
                continue
            if share.milli != container.milli:
                problems.append(f"gives container {share.container!r} {share.milli} milli on {share.uuid}, "
                                f"it asks for {container.milli}")
            memory_mib = container.memory_mib
            slot = node.uuid_slot.get(share.uuid) if node is not None else None
            if node is not None and slot is None:
                problems.append(f"names GPU {share.uuid}, which node {node_name} does not have")
            elif memory_mib is None and slot is not None:  # the default: its share of this GPU's usable memory
                usable_mib = int(self.cluster.gpu_usable_memory_mib[node.index, slot])
                memory_mib = usable_mib if container.milli >= contract.MILLI_PER_GPU else (
                    usable_mib * container.milli // contract.MILLI_PER_GPU)
            if memory_mib is not None and share.memory_mib < memory_mib:
                problems.append(f"gives container {share.container!r} {share.memory_mib} MiB on {share.uuid}, "
                                f"it asks for {memory_mib}")
            counted.append(Share(share.container, share.uuid, max(share.milli, container.milli),
                                 max(share.memory_mib, memory_mib or 0)))
        for container in demand.containers:
            given = sum(1 for share in written if share.container == container.name)
            if given != container.gpu_count:
                problems.append(f"gives container {container.name!r} {given} GPU(s), it asks for {container.gpu_count}")
        if problems:
            self._distrust(record, text, DISTRUST_CONTRADICTS_POD, problems,
                           "counted as the pod asks, never less than it asks for")
        return tuple(counted)

    def _rewrite_problem(self, record: PodRecord, text: str | None, node_name: str) -> str | None:
        """Why a new Assignment text of a bound pod must not replace the accepted one, or None.

        The device plugin may move containers between GPUs of the node (docs/deviceplugin.md: it swaps
        only interchangeable pods - same size, same per-GPU milli and memory), so the containers and their
        per-GPU (milli, memory) must stay exactly as accepted and every GPU must be on the node.
        """
        if text is None:
            return "was removed"
        try:
            assignment = contract.decode_assignment(text)
        except contract.ContractError as error:
            return f"was rewritten unreadably ({error})"
        if assignment.node_name != node_name:
            return f"was rewritten to name node {assignment.node_name}, but the pod is bound to {node_name}"
        shares = _shares_of(assignment)
        if _shape(shares) != _shape(record.written):
            return (f"was rewritten from {_describe(record.written)} to {_describe(shares)}: a rewrite may move "
                    "containers to other GPUs of the node, never change what they hold")
        node = self._nodes.get(node_name)
        unknown = sorted({share.uuid for share in shares} - set(node.uuid_slot)) if node is not None else []
        if unknown:
            return f"was rewritten to GPU(s) {', '.join(unknown)}, which node {node_name} does not have"
        return None

    def _distrust(self, record: PodRecord, text: str | None, reason: str, problems: list[str], outcome: str) -> None:
        """Log (once per Assignment text) and count an Assignment the view does not take as written."""
        if record.flagged_text == (text or ""):
            return
        record.flagged_text = text or ""  # "" = the pod had no Assignment
        self.distrusted_assignments[reason] = self.distrusted_assignments.get(reason, 0) + 1
        log.warning("pod %s/%s: its %s %s; %s", record.namespace, record.name, contract.ANNOTATION_ASSIGNMENT,
                    "; ".join(problems), outcome)

    def delete_pod(self, pod: dict) -> None:
        """A Pod is gone: release whatever it held."""
        try:
            uid, _, _ = _pod_key(pod)
        except ValueError:
            return
        self.forget_pod_uid(uid)

    def forget_pod_uid(self, uid: str) -> None:
        """Drop a pod record entirely, releasing its capacity and quota usage."""
        with self.lock:
            self._pending.pop(uid, None)
            record = self._pods.pop(uid, None)
            if record is not None:
                self._forget_waiting(record)
                self._unhold(record)

    def pod(self, uid: str) -> PodRecord | None:
        """The record of a pod by uid (or by "namespace/name" for pods without uid)."""
        return self._pods.get(uid)

    def remember_pending(self, pod: dict) -> PodRecord | PendingPod | None:
        """The demand of a pod in a filter/prioritize body, parsed once per resourceVersion; None if unnamed.

        When the watch holds this very version of the pending pod, its record is returned (the API's
        copy, nothing to parse). Otherwise the body's demand is kept as a `PendingPod`, which only
        scoring reads: it never creates or changes a PodRecord, so a forged body cannot change what
        bind reserves or what the view accounts.
        """
        try:
            uid, namespace, name = _pod_key(pod)
        except ValueError:
            return None
        version = _resource_version(pod)
        now = time.monotonic()
        with self.lock:
            record = self._pods.get(uid)
            if (
                version
                and record is not None
                and record.pod is not None
                and (record.namespace, record.name) == (namespace, name)
                and _resource_version(record.pod) == version
            ):
                return record
            entry = self._pending.get(uid)
            if (
                version
                and entry is not None
                and entry.resource_version == version
                and (entry.namespace, entry.name) == (namespace, name)
            ):
                entry.seen_at = now
                self._pending.move_to_end(uid)
                return entry
        demand, error = self._demand_of(pod)  # outside the lock: a big pod body takes a while to read
        entry = PendingPod(uid, namespace, name, version, demand, error, now)
        with self.lock:
            self._pending[uid] = entry
            self._pending.move_to_end(uid)
            self._trim_pending(now)
        return entry

    def _trim_pending(self, now: float) -> None:
        """Drop filter-body entries beyond PENDING_LIMIT or older than PENDING_TTL_S (oldest first; under the lock).

        A quota wait noted for a pod known only from a body goes with its entry: forged bodies must not
        fill the waiting list (and the GPUQuota status) for ever.
        """
        pending = self._pending
        while pending and (len(pending) > PENDING_LIMIT or next(iter(pending.values())).seen_at < now - PENDING_TTL_S):
            _, entry = pending.popitem(last=False)
            if entry.uid not in self._pods:
                self._forget_waiting(entry)

    def waiting_demand(self, uid: str) -> PodDemand | None:
        """The demand of a pod waiting for quota, if it still waits (holds nothing): the watch's record, else
        what its last filter body said (the quota controller only nudges such a pod, it binds nothing)."""
        with self.lock:
            record = self._pods.get(uid)
            if record is not None:
                return record.demand if record.node_name is None else None
            entry = self._pending.get(uid)
            return None if entry is None else entry.demand

    def pending_count(self) -> int:
        """How many filter-body entries the view holds (bounded by PENDING_LIMIT)."""
        return len(self._pending)

    def adopt_pending(self, uid: str) -> PodRecord | None:
        """Cluster-file mode only: turn the filter body's entry into the pod's record, so bind can hold it.

        There is no API to read the pod from (a static file, demos, benchmarks); in API mode bind uses
        `adopt_api_pod` instead and never this.
        """
        with self.lock:
            record = self._pods.get(uid)
            if record is not None:
                return record
            entry = self._pending.pop(uid, None)
            if entry is None:
                return None
            record = PodRecord(uid, entry.namespace, entry.name, entry.demand, entry.demand_error)
            self._pods[uid] = record
            return record

    def adopt_api_pod(self, pod: dict) -> PodRecord | None:
        """A pod bind read from the API (GET): recorded as a watch event would, unless the watch got there
        first (the watch's copy is as new or newer). Returns the pod's record."""
        try:
            uid, _, _ = _pod_key(pod)
        except ValueError:
            return None
        with self.lock:
            record = self._pods.get(uid)
            if record is None or (record.pod is None and record.node_name is None):
                self.upsert_pod(pod)
            return self._pods.get(uid)

    def assume(self, uid: str, placement: Placement, assignment_text: str) -> None:
        """Hold the placement for a pod being bound (call under the lock, after the fit and quota checks)."""
        record = self._pods[uid]
        pending = record.pod
        self._hold(record, placement.node_name, shares_from_placement(placement), assignment_text)
        record.assumed = True
        self._assumed_at[uid] = time.monotonic()
        record.assignment_text = assignment_text
        if pending is not None:  # the pod as the device plugin will see it: bound, with this Assignment
            metadata = dict(pending.get("metadata") or {})
            metadata["annotations"] = {**(metadata.get("annotations") or {}),
                                       contract.ANNOTATION_ASSIGNMENT: assignment_text}
            bound = {**pending, "metadata": metadata, "spec": {**(pending.get("spec") or {}),
                                                               "nodeName": placement.node_name}}
            self._track_allocation(record, bound)

    def forget_assumed(self, uid: str) -> None:
        """A bind failed: give back everything `assume` took, so no capacity leaks."""
        with self.lock:
            record = self._pods.get(uid)
            if record is not None and record.assumed:
                self._unhold(record)

    def confirm_bound(self, uid: str) -> None:
        """Cluster-file mode: there is no watch, the bind is final once done."""
        with self.lock:
            record = self._pods.get(uid)
            if record is not None and record.assumed:
                record.assumed = False
                record.pod = None
                self._assumed_at.pop(uid, None)
                self._clear_awaiting(record)  # no device plugin behind a static file: nothing to wait for

    def assumed_older_than(self, age_s: float) -> list[PodRecord]:
        """Pods assumed by a bind more than `age_s` ago and still not confirmed by the watch."""
        limit = time.monotonic() - age_s
        with self.lock:
            return [self._pods[uid] for uid, since in self._assumed_at.items() if since <= limit and uid in self._pods]

    def pods_on_node(self, node_name: str) -> list[PodRecord]:
        """Records of the pods holding capacity on a node (indexed, no scan)."""
        with self.lock:
            return [self._pods[uid] for uid in self._pods_by_node.get(node_name, ())]

    def pod_count(self) -> int:
        """Number of pod records."""
        return len(self._pods)

    # ------------------------------------------------------------------ quotas
    def upsert_quota(self, obj: dict) -> None:
        """Add or update a GPUQuota; a malformed one is logged and kept out (never enforced half-read)."""
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(metadata, dict):
            log.warning("ignoring a %s without metadata", contract.QUOTA_KIND)
            return
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        with self.lock:
            self._quota_objects[key] = obj
            try:
                self._quotas.setdefault(key[0], {})[key[1]] = parse_gpu_quota(obj)
                self._quota_errors.pop(key, None)
            except QuotaError as error:
                log.warning("%s", error)
                self._quota_errors[key] = str(error)
                self._drop_limits(key)
            self._mark_dirty(key[0])

    def delete_quota(self, obj: dict) -> None:
        """A GPUQuota is gone."""
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(metadata, dict):
            return
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        with self.lock:
            self._drop_limits(key)
            self._quota_objects.pop(key, None)
            self._quota_errors.pop(key, None)
            self._mark_dirty(key[0])

    def _drop_limits(self, key: tuple[str, str]) -> None:
        """Forget a GPUQuota's parsed limits; a namespace left without any leaves the index."""
        limits = self._quotas.get(key[0])
        if limits is not None:
            limits.pop(key[1], None)
            if not limits:
                del self._quotas[key[0]]

    def quotas(self, namespace: str) -> list[QuotaLimits]:
        """Every GPUQuota of a namespace (filter asks on every pod: one lookup, not a scan of all quotas)."""
        with self.lock:
            return list(self._quotas.get(namespace, {}).values())

    def all_quotas(self) -> list[QuotaLimits]:
        """Every GPUQuota."""
        with self.lock:
            return [limits for by_name in self._quotas.values() for limits in by_name.values()]

    def quota_object(self, namespace: str, name: str) -> dict | None:
        """The last seen API object of a GPUQuota."""
        return self._quota_objects.get((namespace, name))

    def used(self, namespace: str) -> Usage:
        """GPU usage of every holding pod (bound or assumed) of a namespace."""
        with self.lock:
            return self._used.get(namespace, Usage())

    def note_waiting(self, record: PodRecord | PendingPod, reason: str) -> bool:
        """Remember that a pod waits for quota; True if it was not waiting (or for another reason) before."""
        with self.lock:
            waiting = self._waiting.setdefault(record.namespace, {})
            previous = waiting.get(record.uid)
            waiting[record.uid] = (record.name, reason, previous[2] if previous else self.clock())
            if previous is None:
                self._mark_dirty(record.namespace)  # status.waitingPods changes
            return previous is None or previous[1] != reason

    def _forget_waiting(self, record: PodRecord | PendingPod) -> None:
        waiting = self._waiting.get(record.namespace)
        if waiting and waiting.pop(record.uid, None) is not None:
            self._mark_dirty(record.namespace)
            if not waiting:
                del self._waiting[record.namespace]

    def waiting(self, namespace: str) -> dict[str, tuple[str, str, float]]:
        """Pods of a namespace the filter turned away for quota: uid -> (name, reason, since)."""
        with self.lock:
            return dict(self._waiting.get(namespace, {}))

    def waiting_namespaces(self) -> list[str]:
        """Namespaces with pods waiting for quota."""
        with self.lock:
            return [ns for ns, pods in self._waiting.items() if pods]

    def freed_at(self, namespace: str) -> float | None:
        """time.monotonic() when quota usage of the namespace last fell (to measure requeue delay)."""
        with self.lock:
            return self._freed_at.get(namespace)

    def _mark_dirty(self, namespace: str) -> None:
        self._dirty_namespaces.add(namespace)
        self._changed.notify_all()

    def wake(self) -> None:
        """Wake every `wait_dirty` caller (used when stopping)."""
        with self._changed:
            self._changed.notify_all()

    def wait_dirty(self, timeout_s: float) -> set[str]:
        """Block until quota usage fell or a quota changed somewhere (or timeout); return those namespaces."""
        with self._changed:
            if not self._dirty_namespaces:
                self._changed.wait(timeout_s)
            dirty, self._dirty_namespaces = self._dirty_namespaces, set()
            return dirty

    # ------------------------------------------------------------------ relist
    def replace(self, kind: str, objects: Iterable[dict]) -> None:
        """A fresh full list of `kind`: apply every object and forget the ones that disappeared."""
        objects = list(objects)
        with self.lock:
            if kind == "nodes":
                names = set()
                for node in objects:
                    self.upsert_node(node)
                    names.add((node.get("metadata") or {}).get("name"))
                for name in [n for n in self._nodes if n not in names]:
                    self.delete_node(name)
            elif kind == "pods":
                uids = set()
                for pod in objects:
                    self.upsert_pod(pod)
                    try:
                        uids.add(_pod_key(pod)[0])
                    except ValueError:
                        continue
                for uid in [u for u in self._pods if u not in uids]:  # deleted while we were not watching
                    self.forget_pod_uid(uid)
            elif kind == "gpuquotas":
                keys = set()
                for obj in objects:
                    self.upsert_quota(obj)
                    metadata = obj.get("metadata") or {}
                    keys.add((str(metadata.get("namespace") or ""), str(metadata.get("name") or "")))
                for key in [k for k in self._quota_objects if k not in keys]:
                    self.delete_quota(self._quota_objects[key])
            else:
                raise ValueError(f"unknown kind {kind!r}")
            self._synced.add(kind)

    # ------------------------------------------------------------------ snapshots for metrics and tests
    def gpu_allocations(self) -> list[tuple[str, str, str, int, int]]:
        """(node, gpu uuid, model, allocated milli, allocated MiB) for every GPU, for metrics.

        Copies the arrays under the lock (microseconds) and builds the 40,000 rows outside it, so a
        Prometheus scrape never stalls the verbs.
        """
        with self.lock:
            cluster = self.cluster
            nodes = [
                (record.name, record.index, record.model or "", cluster.gpu_uuids[record.index])
                for record in self._nodes.values()
            ]
            allocated_milli = contract.MILLI_PER_GPU - cluster.gpu_free_milli.astype(np.int64)
            allocated_mib = cluster.gpu_usable_memory_mib - cluster.gpu_free_memory_mib
        milli_rows, mib_rows = allocated_milli.tolist(), allocated_mib.tolist()
        return [
            (name, uuid, model, milli_rows[row][slot], mib_rows[row][slot])
            for name, row, model, uuids in nodes
            for slot, uuid in enumerate(uuids)
        ]

    def inventory_heartbeats(self) -> list[tuple[str, float]]:
        """(node, Unix seconds of its last Inventory heartbeat) for nodes that published one, for metrics."""
        with self.lock:
            rows = [(record.name, record.index) for record in self._nodes.values()]
            heartbeat_s = self._heartbeat_s.copy()
        return [(name, float(heartbeat_s[row])) for name, row in rows if not np.isnan(heartbeat_s[row])]

    def snapshot(self) -> dict[str, tuple]:
        """Per node: (free milli per GPU, free MiB per GPU, exclusive per GPU) - to compare two views."""
        with self.lock:
            cluster = self.cluster
            out = {}
            for name, record in self._nodes.items():
                row, count = record.index, int(cluster.gpu_count[record.index])
                out[name] = (
                    tuple(int(v) for v in cluster.gpu_free_milli[row, :count]),
                    tuple(int(v) for v in cluster.gpu_free_memory_mib[row, :count]),
                    tuple(bool(v) for v in cluster.gpu_exclusive[row, :count]),
                )
            return out

    def usage_snapshot(self) -> dict[str, Usage]:
        """Quota usage per namespace (non-empty only)."""
        with self.lock:
            return {ns: usage for ns, usage in self._used.items() if not usage.is_zero()}


# ---------------------------------------------------------------------- sources
_WATCH_KINDS = ("nodes", "pods", "gpuquotas")


class KubeSource:
    """Keeps a ClusterView current from the API server: list, then watch; relist on 410 Gone or errors.

    Uses the real kubernetes client with raw JSON (`_preload_content=False`), which avoids building
    client model objects for every pod. A cluster without the GPUQuota CRD (404) has no quotas; the
    source keeps retrying so quotas start working once the CRD is installed.
    """

    def __init__(
        self,
        view: ClusterView,
        api_client: object,
        *,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        from kubernetes import client

        self.view = view
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str, object] = {}
        self.relists: dict[str, int] = dict.fromkeys(_WATCH_KINDS, 0)

    def _call(self, kind: str, **kwargs: object) -> object:
        kwargs["_preload_content"] = False
        if kind == "nodes":
            return self.core.list_node(**kwargs)
        if kind == "pods":
            return self.core.list_pod_for_all_namespaces(**kwargs)
        return self.custom.list_cluster_custom_object(
            contract.QUOTA_GROUP, contract.QUOTA_VERSION, contract.QUOTA_PLURAL, **kwargs
        )

    def start(self) -> KubeSource:
        """Start one list+watch thread per kind."""
        for kind in _WATCH_KINDS:
            thread = threading.Thread(target=self._run, args=(kind,), name=f"watch-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching (closes the open watch connections)."""
        self._stop.set()
        for response in list(self._responses.values()):
            # closing a dead socket may fail in many ways; we are stopping anyway
            with contextlib.suppress(Exception):
                response.close()  # type: ignore[attr-defined]
        for thread in self._threads:
            thread.join(timeout_s)

    def _list(self, kind: str) -> str:
        import json

        response = self._call(kind, _request_timeout=(10, 120))
        document = json.loads(response.data)  # type: ignore[attr-defined]
        self.view.replace(kind, document.get("items") or [])
        self.relists[kind] += 1
        return str((document.get("metadata") or {}).get("resourceVersion") or "")

    def _run(self, kind: str) -> None:
        import json

        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list(kind)
                response = self._call(
                    kind,
                    watch=True,
                    resource_version=resource_version,
                    timeout_seconds=self.watch_timeout_s,
                    allow_watch_bookmarks=True,
                    # a half-open connection would block forever; the server ends the watch first
                    _request_timeout=(10, self.watch_timeout_s + 30),
                )
                self._responses[kind] = response
                for line in iter_resp_lines(response):
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    kind_of_event, obj = event.get("type"), event.get("object") or {}
                    if kind_of_event == "ERROR":
                        code = obj.get("code")
                        log.info("watch of %s ended with %s (%s); relisting", kind, code, obj.get("message"))
                        resource_version = None
                        break
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    if kind_of_event == "BOOKMARK":
                        continue
                    self._apply(kind, kind_of_event, obj)
            except ApiException as error:
                if error.status == 410:
                    log.info("watch of %s: resourceVersion too old (410); relisting", kind)
                    resource_version = None
                    continue
                if kind == "gpuquotas" and error.status == 404:
                    self.view.replace("gpuquotas", [])  # CRD not installed: no quotas, keep retrying
                    resource_version = None
                    self._stop.wait(max(self.retry_s, 30.0))
                    continue
                log.warning("list/watch of %s failed: %s; retrying in %.1fs", kind, error.status, self.retry_s)
                resource_version = None
                self._stop.wait(self.retry_s)
            except Exception as error:  # the watch must survive any transport failure
                if self._stop.is_set():
                    return
                log.warning("list/watch of %s failed: %s; relisting in %.1fs", kind, error, self.retry_s)
                resource_version = None
                self._stop.wait(self.retry_s)
            finally:
                self._responses.pop(kind, None)

    def _apply(self, kind: str, event_type: str | None, obj: dict) -> None:
        if kind == "nodes":
            (
                self.view.delete_node((obj.get("metadata") or {}).get("name", ""))
                if event_type == "DELETED"
                else self.view.upsert_node(obj)
            )
        elif kind == "pods":
            self.view.delete_pod(obj) if event_type == "DELETED" else self.view.upsert_pod(obj)
        else:
            self.view.delete_quota(obj) if event_type == "DELETED" else self.view.upsert_quota(obj)


class ClusterFileError(ValueError):
    """A --cluster-file that cannot be read as Nodes, Pods and GPUQuotas."""


def load_cluster_file(view: ClusterView, path: str) -> dict[str, int]:
    """Fill the view from a `kubectl get nodes,pods -o yaml` style List (or multi-document YAML/JSON).

    Returns how many objects of each kind were loaded. Unknown kinds are skipped with a log line.
    """
    import json

    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".json"):  # JSON parses ~50x faster than YAML for 20,000-pod files
                documents = [json.load(handle)]
            else:
                documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ClusterFileError(f"cannot read cluster file {path}: {error}") from error
    items: list[dict] = []
    for document in documents:
        if not isinstance(document, dict):
            raise ClusterFileError(f"{path}: every document must be a Kubernetes object or List")
        if document.get("kind", "").endswith("List") or "items" in document:
            items.extend(item for item in document.get("items") or [] if isinstance(item, dict))
        else:
            items.append(document)
    by_kind: dict[str, list[dict]] = {"nodes": [], "pods": [], "gpuquotas": []}
    for item in items:
        kind = item.get("kind")
        if kind == "Node":
            by_kind["nodes"].append(item)
        elif kind == "Pod":
            by_kind["pods"].append(item)
        elif kind == contract.QUOTA_KIND:
            by_kind["gpuquotas"].append(item)
        else:
            log.info("cluster file %s: skipping a %s", path, kind)
    for kind in _WATCH_KINDS:
        view.replace(kind, by_kind[kind])
    return {kind: len(objects) for kind, objects in by_kind.items()}
