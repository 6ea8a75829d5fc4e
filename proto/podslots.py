"""The pod-identity protocol's shared half: how a pod bound to a node becomes GPU *slots*, and the bind rule.

Both sides of the protocol read pods the same way (docs/deviceplugin.md, "Pod identity"): the device
plugin (`tensorai.deviceplugin.identity`) matches kubelet's Allocate calls to slots, and the extender
(`tensorai.scheduler.bind`) delays a bind while `ambiguous_with` says the plugin could not tell the new
pod from a waiting one of the same size but another class. Keeping this here, beside the contract,
means the scheduler never imports the device plugin. Pure functions over the API's JSON form of pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.quantity import QuantityError, bytes_to_mib, quantity_to_int


@dataclass(frozen=True, slots=True)
class Owner:
    """The container an allocation belongs to; pod_uid is "" when unknown (standalone mode)."""

    namespace: str
    pod_name: str
    pod_uid: str
    container_name: str

    @property
    def listing_key(self) -> tuple[str, str, str]:
        """How kubelet's pod-resources API names a container: (namespace, pod, container)."""
        return (self.namespace, self.pod_name, self.container_name)


@dataclass(frozen=True, slots=True)
class GPUPortion:
    """The milli and memory one container got on one GPU."""

    uuid: str
    milli: int
    memory_mib: int


CONSTRAINT_ANNOTATIONS = (
    contract.ANNOTATION_GPU_MODEL,
    contract.ANNOTATION_GPU_MODEL_EXCLUDE,
    contract.ANNOTATION_GPU_UUID,
    contract.ANNOTATION_GPU_UUID_EXCLUDE,
    contract.ANNOTATION_EXCLUSIVE,
    contract.ANNOTATION_ANTI_AFFINITY_GROUP,
)
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

SlotKey = tuple[str, str]  # (pod uid, container name)
GPUSet = frozenset[str]


@dataclass(frozen=True, slots=True)
class Slot:
    """One container's GPU request as the scheduler accounted it."""

    pod_uid: str
    namespace: str
    pod_name: str
    container: str
    milli: int  # total over all its GPUs: what kubelet asks for
    portions: tuple[GPUPortion, ...]  # the Assignment's shares; () = no Assignment
    memory_mib: int | None  # for unassigned slots: the pod's tensor.ai/vgpu-memory, if any
    class_key: tuple[Any, ...]
    seen_order: int  # when this plugin first saw the pod bound here: kubelet admits roughly in this order
    gpu_set: GPUSet = frozenset()  # the Assignment's GPUs, computed once at parse time
    init: bool = False  # a non-restartable init container: allocated once, before the app containers

    @property
    def key(self) -> SlotKey:
        return (self.pod_uid, self.container)

    @property
    def assigned(self) -> bool:
        return bool(self.portions)

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.pod_name, self.pod_uid, self.container)


@dataclass(frozen=True, slots=True)
class PodState:
    """What the plugin knows about one pod bound to this node."""

    uid: str
    namespace: str
    name: str
    slots: tuple[Slot, ...]
    allocated: Mapping[str, tuple[GPUPortion, ...]]  # container -> what the allocated annotation says
    terminal: bool
    problems: tuple[str, ...]  # why some container has no usable slot
    assignment: pb.Assignment | None = None
    init_started: frozenset[str] = frozenset()  # init containers the pod status shows running or finished


def _container_requests(
    pod: Mapping[str, Any],
) -> tuple[dict[str, int], dict[str, int | None], list[str], set[str]]:
    """vgpu-milli (limits, else requests) and vgpu-memory of every container that asks for a GPU, in
    kubelet's allocation order (init containers first), and which of them are non-restartable init containers."""
    milli: dict[str, int] = {}
    memory: dict[str, int | None] = {}
    problems: list[str] = []
    init: set[str] = set()
    spec = pod.get("spec") or {}
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or ():
            name = container.get("name") or ""
            if field == "initContainers" and container.get("restartPolicy") != "Always":
                init.add(name)  # a sidecar (restartPolicy Always) keeps its devices like an app container
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            requests = resources.get("requests") or {}
            raw = limits.get(contract.RESOURCE_VGPU_MILLI, requests.get(contract.RESOURCE_VGPU_MILLI))
            if raw is None:
                continue
            try:
                value = quantity_to_int(raw, what=contract.RESOURCE_VGPU_MILLI)
            except QuantityError as error:
                problems.append(f"container {name!r}: {error}")
                continue
            if value <= 0:
                continue
            milli[name] = value
            raw_memory = limits.get(contract.RESOURCE_VGPU_MEMORY, requests.get(contract.RESOURCE_VGPU_MEMORY))
            try:
                memory[name] = bytes_to_mib(raw_memory) if raw_memory is not None else None
            except QuantityError as error:
                problems.append(f"container {name!r}: {error}")
                memory[name] = None
    return milli, memory, problems, init & set(milli)


def _started_init_containers(pod: Mapping[str, Any]) -> frozenset[str]:
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or ()
    started = set()
    for status in statuses:
        state = status.get("state") if isinstance(status, Mapping) else None
        if isinstance(state, Mapping) and (state.get("running") or state.get("terminated")):
            started.add(str(status.get("name") or ""))
    return frozenset(started)


def _portions(container: pb.ContainerAssignment) -> tuple[GPUPortion, ...]:
    return tuple(GPUPortion(share.uuid, share.milli, share.memory_mib) for share in container.gpus)


def parse_pod(pod: Mapping[str, Any], node_name: str, seen_order: int) -> PodState | None:
    """The pod's slots on this node; None when it is not bound here or asks for no vGPU."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if spec.get("nodeName") != node_name:
        return None
    uid = metadata.get("uid") or ""
    namespace = metadata.get("namespace") or "default"
    name = metadata.get("name") or ""
    annotations = metadata.get("annotations") or {}
    requests, memory, problems, init = _container_requests(pod)
    if not uid or not requests:
        return None
    terminal = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
    constraints = tuple((key, str(annotations[key])) for key in CONSTRAINT_ANNOTATIONS if key in annotations)

    assigned: dict[str, tuple[GPUPortion, ...]] = {}
    text = annotations.get(contract.ANNOTATION_ASSIGNMENT)
    assignment_valid = True
    assignment: pb.Assignment | None = None
    if text is not None:
        try:
            assignment = contract.decode_assignment(text)
            if assignment.node_name != node_name:
                raise contract.ContractError(f"Assignment names node {assignment.node_name!r}, pod is bound here")
            if assignment.pod_uid and assignment.pod_uid != uid:
                raise contract.ContractError(f"Assignment is for pod uid {assignment.pod_uid!r}, not {uid!r}")
            assigned = {c.name: _portions(c) for c in assignment.containers}
        except contract.ContractError as error:
            problems.append(f"unusable {contract.ANNOTATION_ASSIGNMENT}: {error}")
            assignment_valid = False
            assignment = None

    allocated: dict[str, tuple[GPUPortion, ...]] = {}
    text = annotations.get(contract.ANNOTATION_ALLOCATED)
    if text is not None:
        try:
            allocated = {c.name: _portions(c) for c in contract.decode_assignment(text).containers}
        except contract.ContractError as error:
            problems.append(f"unusable {contract.ANNOTATION_ALLOCATED}: {error}")

    if not assignment_valid:
        requests = {}  # the scheduler's accounting for this pod is unreadable: never guess it
    shapes: dict[str, tuple[Any, ...]] = {}
    for container, milli in requests.items():
        portions = assigned.get(container, ())
        if portions and sum(p.milli for p in portions) != milli:
            problems.append(
                f"container {container!r} asks for {milli} milli but its Assignment totals "
                f"{sum(p.milli for p in portions)}"
            )
            continue
        if portions:
            shapes[container] = ("assigned", milli, tuple(sorted((p.milli, p.memory_mib) for p in portions)))
        else:
            shapes[container] = ("unassigned", milli, memory[container])
    # kubelet hands an init container's devices on to the pod's next container, so the init and app
    # placements of such a pod must stay together: its slots are never interchangeable with another
    # pod's (a swap would move one without the other). The scheduler's rule then serialises such pods.
    own_class = uid if any(container in init for container in shapes) else None
    slots: list[Slot] = []
    for container, shape in shapes.items():
        role: tuple[Any, ...] = ("init" if container in init else "app", own_class)
        portions = assigned.get(container, ())
        slots.append(
            Slot(uid, namespace, name, container, shape[1], portions, memory[container], (*shape, constraints, role),
                 seen_order, frozenset(p.uuid for p in portions), container in init)
        )
    return PodState(uid, namespace, name, tuple(slots), allocated, terminal, tuple(problems), assignment,
                    _started_init_containers(pod))


def ambiguous_with(candidate: Mapping[str, Any], bound: Iterable[Mapping[str, Any]], node_name: str,
                   parse: Callable[[Mapping[str, Any], str], PodState | None] | None = None) -> list[str]:
    """The scheduler's side of the protocol: pods that make binding `candidate` to `node_name` unsafe now.

    `candidate` carries the Assignment about to be written; `bound` are the pods already bound to the
    node. Returns "namespace/name" of every bound pod with a container still waiting for Allocate (no
    `tensor.ai/allocated` entry) of the same size as one of the candidate's but of a different class.
    The extender delays the bind while this is non-empty (see docs/deviceplugin.md). `parse` reads a
    bound pod as `parse_pod(pod, node_name, 0)` does (a caller may remember the answers).
    """
    pending = dict(candidate)
    pending["spec"] = {**(candidate.get("spec") or {}), "nodeName": node_name}
    meta = dict(candidate.get("metadata") or {})
    meta.setdefault("uid", "candidate")
    pending["metadata"] = meta
    mine = parse_pod(pending, node_name, 0)
    if mine is None:
        return []
    classes_by_size: dict[int, set[tuple[Any, ...]]] = {}
    for slot in mine.slots:
        classes_by_size.setdefault(slot.milli, set()).add(slot.class_key)
    conflicts: list[str] = []
    for pod in bound:
        try:
            state = parse(pod, node_name) if parse is not None else parse_pod(pod, node_name, 0)
        except (AttributeError, TypeError, ValueError):
            continue
        if state is None or state.terminal or state.uid == meta["uid"]:
            continue
        app_running = any(not slot.init and slot.container in state.allocated for slot in state.slots)
        for slot in state.slots:
            if slot.container in state.allocated:
                continue
            if slot.init and (app_running or slot.container in state.init_started):
                continue  # an init container runs once, before its pod's app containers
            if slot.class_key not in classes_by_size.get(slot.milli, {slot.class_key}):
                conflicts.append(f"{state.namespace}/{state.name}")
                break
    return conflicts


