"""Turn a v1.Pod JSON dict (as kube-scheduler sends it to the extender) into a `PodDemand`.

This is the edge where untrusted pod specs enter the scheduling core: every malformed value raises
`DemandError` saying what was wrong, where, and what would be right; nothing else escapes.
Quantities go through `tensorai.proto.quantity` because the API server canonicalises them
(`2000` comes back as `2k`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tensorai.proto import contract
from tensorai.proto.gpumodels import ModelNameError, check_model_name
from tensorai.proto.quantity import QuantityError, bytes_to_mib, quantity_to_int, quantity_to_milli
from tensorai.scheduler.core.initchain import held_sequence
from tensorai.scheduler.core.policies import POLICY_NAMES
from tensorai.scheduler.core.types import ContainerDemand, PodDemand

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0", ""}
_MAX_GPUS_PER_CONTAINER = 64
# GPU containers per pod (init containers and sidecars included): no node has more GPUs than this, and
# the demand is kept per pending pod, so a pod of thousands of tiny GPU containers is refused, not kept.
_MAX_GPU_CONTAINERS = 64
# CPU milli and memory MiB (per pod, per GPU) above this are refused: far beyond any node (2^50 MiB is
# 1 ZiB), and it keeps every sum the core and its compiled scorers form inside int64 (a "1e30" would not).
MAX_AMOUNT = 1 << 50


class DemandError(ValueError):
    """A pod whose GPU request or scheduling annotations cannot be understood."""


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DemandError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DemandError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise DemandError(f"{where} must be a string, got {type(value).__name__}")
    return value


def _gpu_milli(resources: Mapping[str, Any], where: str) -> int:
    """Milli-GPU of one container: limits first (extended resources need limits), then requests."""
    limits = _mapping(resources.get("limits"), f"{where}.resources.limits")
    requests = _mapping(resources.get("requests"), f"{where}.resources.requests")
    for source, table in (("limits", limits), ("requests", requests)):
        if contract.RESOURCE_VGPU_MILLI in table:
            raw = table[contract.RESOURCE_VGPU_MILLI]
            try:
                milli = quantity_to_int(raw, what=f"{where}.resources.{source}[{contract.RESOURCE_VGPU_MILLI}]")
            except QuantityError as error:
                raise DemandError(
                    f"{where}.resources.{source}[{contract.RESOURCE_VGPU_MILLI}]={raw!r}: {error}; "
                    f"expected a whole number of milli-GPUs such as '250' or '2k'"
                ) from error
            return milli
    for source, table in (("limits", limits), ("requests", requests)):
        if contract.RESOURCE_VGPU in table:  # pod created without the webhook: GPUs, not milli
            raw = table[contract.RESOURCE_VGPU]
            try:
                return quantity_to_milli(raw)
            except QuantityError as error:
                raise DemandError(
                    f"{where}.resources.{source}[{contract.RESOURCE_VGPU}]={raw!r}: {error}; "
                    f"expected GPUs such as '0.25' or '2'"
                ) from error
    return 0


def _container_demand(container: Any, where: str, *, init: bool) -> tuple[ContainerDemand | None, int, int]:
    """(GPU demand or None, cpu request milli, memory request MiB) of one container."""
    container = _mapping(container, where)
    name = _text(container.get("name"), f"{where}.name")
    if not name:
        raise DemandError(f"{where}.name is empty; every container needs a name")
    where = f"{where} ({name!r})"
    restart_policy = _text(container.get("restartPolicy"), f"{where}.restartPolicy")
    sidecar = init and restart_policy == "Always"  # keeps running (and its GPU) beside the app containers
    resources = _mapping(container.get("resources"), f"{where}.resources")
    limits = _mapping(resources.get("limits"), f"{where}.resources.limits")
    requests = _mapping(resources.get("requests"), f"{where}.resources.requests")
    cpu_milli = memory_mib = 0
    try:
        cpu_raw = requests.get("cpu", limits.get("cpu"))  # k8s defaults a missing request to the limit
        if cpu_raw is not None:
            cpu_milli = quantity_to_milli(cpu_raw)
        memory_raw = requests.get("memory", limits.get("memory"))
        if memory_raw is not None:
            memory_mib = bytes_to_mib(memory_raw)
    except QuantityError as error:
        raise DemandError(f"{where}: cpu/memory request: {error}") from error
    if cpu_milli < 0 or memory_mib < 0:
        raise DemandError(f"{where}: cpu and memory requests must not be negative")

    milli = _gpu_milli(resources, where)
    memory_given: int | None = None
    if contract.RESOURCE_VGPU_MEMORY in limits or contract.RESOURCE_VGPU_MEMORY in requests:
        raw = limits.get(contract.RESOURCE_VGPU_MEMORY, requests.get(contract.RESOURCE_VGPU_MEMORY))
        try:
            memory_given = bytes_to_mib(raw)
        except QuantityError as error:
            raise DemandError(
                f"{where}: {contract.RESOURCE_VGPU_MEMORY}={raw!r}: {error}; expected bytes such as '10Gi'"
            ) from error
        if memory_given <= 0:
            raise DemandError(f"{where}: {contract.RESOURCE_VGPU_MEMORY} must be positive, got {raw!r}")
        if memory_given > MAX_AMOUNT:
            raise DemandError(
                f"{where}: {contract.RESOURCE_VGPU_MEMORY}={raw!r} is more memory than any GPU has "
                f"(at most {MAX_AMOUNT} MiB)"
            )
    if milli < 0:
        raise DemandError(f"{where}: {contract.RESOURCE_VGPU_MILLI} must not be negative, got {milli}")
    if milli == 0:
        if memory_given is not None:
            raise DemandError(
                f"{where}: {contract.RESOURCE_VGPU_MEMORY} is set but the container asks for no GPU; "
                f"add {contract.RESOURCE_VGPU_MILLI} or remove the memory request"
            )
        return None, cpu_milli, memory_mib
    per_gpu = contract.MILLI_PER_GPU
    if milli > per_gpu and milli % per_gpu:
        raise DemandError(
            f"{where}: {contract.RESOURCE_VGPU_MILLI}={milli} is more than one GPU but not whole GPUs; "
            f"use 1..{per_gpu - 1} for a share of one GPU or a multiple of {per_gpu}"
        )
    gpu_count = max(1, milli // per_gpu)
    if gpu_count > _MAX_GPUS_PER_CONTAINER:
        raise DemandError(f"{where}: {gpu_count} GPUs is more than any node has (at most {_MAX_GPUS_PER_CONTAINER})")
    share = min(milli, per_gpu)
    return ContainerDemand(name, share, gpu_count, memory_given, init and not sidecar, sidecar), cpu_milli, memory_mib


# A GPU model or UUID list names at most this many entries of at most this many characters (a UUID is
# 40, a model name ~30): the demand is kept per pending pod and per learned shape, so its size is bounded.
_MAX_LIST_ITEMS = 64
_MAX_ITEM_CHARS = 128


def _comma_list(annotations: Mapping[str, Any], key: str) -> frozenset[str] | None:
    if key not in annotations:
        return None
    text = _text(annotations[key], f"metadata.annotations[{key}]")
    too_long = len(text) > _MAX_LIST_ITEMS * (_MAX_ITEM_CHARS + 2)  # before splitting a megabyte of commas
    items = frozenset() if too_long else frozenset(item.strip() for item in text.split(",") if item.strip())
    if too_long or len(items) > _MAX_LIST_ITEMS or any(len(item) > _MAX_ITEM_CHARS for item in items):
        raise DemandError(
            f"metadata.annotations[{key}] lists more than {_MAX_LIST_ITEMS} entries or an entry longer than "
            f"{_MAX_ITEM_CHARS} characters; expected a short comma list such as 'H100,A100'"
        )
    return items


def _model_list(annotations: Mapping[str, Any], key: str) -> frozenset[str] | None:
    """A comma list of GPU model names as users write them (proto/gpumodels.py matches them).

    Kept as written: fit and quota match them against the reported names. A name that can match no
    GPU (only brand words or punctuation) is refused here rather than leaving the pod Pending forever.
    """
    items = _comma_list(annotations, key)
    for item in sorted(items or ()):
        try:
            check_model_name(item)
        except ModelNameError as error:
            raise DemandError(f"metadata.annotations[{key}]: {error}") from error
    return items


def _annotations(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations")
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DemandError(f"metadata.annotations[{key!r}] must map strings to strings")
    return annotations


def pod_demand(pod: Any) -> PodDemand:
    """The `PodDemand` of a v1.Pod dict; DemandError for anything malformed.

    GPU: per container `tensor.ai/vgpu-milli` from limits (fallback requests): 1..999 is a share of
    one GPU, a multiple of 1000 is that many whole GPUs. `tensor.ai/vgpu-memory` is per GPU.
    CPU/memory: the Kubernetes effective-request rule: the larger of (app containers + sidecars) and
    the largest (init container + the sidecars declared before it), plus `spec.overhead`. Sidecars
    (init containers with `restartPolicy: Always`) get `sidecar=True, init=False`: they keep their GPU.
    """
    if not isinstance(pod, Mapping):
        raise DemandError(f"pod must be a JSON object, got {type(pod).__name__}")
    metadata = _mapping(pod.get("metadata"), "metadata")
    spec = _mapping(pod.get("spec"), "spec")
    namespace = _text(metadata.get("namespace"), "metadata.namespace", "default")
    name = _text(metadata.get("name"), "metadata.name")
    uid = _text(metadata.get("uid"), "metadata.uid")
    annotations = _annotations(metadata)

    containers: list[ContainerDemand] = []
    names: set[str] = set()
    app_cpu = app_memory = init_cpu = init_memory = sidecar_cpu = sidecar_memory = 0
    for field, init in (("initContainers", True), ("containers", False)):
        for position, container in enumerate(_sequence(spec.get(field), f"spec.{field}")):
            demand, cpu_milli, memory_mib = _container_demand(container, f"spec.{field}[{position}]", init=init)
            container_name = container["name"]
            if container_name in names:
                raise DemandError(f"spec.{field}[{position}]: container name {container_name!r} is used twice")
            names.add(container_name)
            if init and container.get("restartPolicy") == "Always":  # sidecar: runs beside everything after it
                sidecar_cpu, sidecar_memory = sidecar_cpu + cpu_milli, sidecar_memory + memory_mib
                init_cpu, init_memory = max(init_cpu, sidecar_cpu), max(init_memory, sidecar_memory)
            elif init:
                init_cpu = max(init_cpu, sidecar_cpu + cpu_milli)
                init_memory = max(init_memory, sidecar_memory + memory_mib)
            else:
                app_cpu, app_memory = app_cpu + cpu_milli, app_memory + memory_mib
            if demand is not None:
                containers.append(demand)
                if len(containers) > _MAX_GPU_CONTAINERS:
                    raise DemandError(
                        f"spec.{field}[{position}]: more than {_MAX_GPU_CONTAINERS} containers of the pod ask for a "
                        f"GPU; no node has GPUs for that many (init containers and sidecars count)"
                    )
    overhead = _mapping(spec.get("overhead"), "spec.overhead")
    try:
        overhead_cpu = quantity_to_milli(overhead["cpu"]) if "cpu" in overhead else 0
        overhead_memory = bytes_to_mib(overhead["memory"]) if "memory" in overhead else 0
    except QuantityError as error:
        raise DemandError(f"spec.overhead: {error}") from error

    exclusive_text = _text(annotations.get(contract.ANNOTATION_EXCLUSIVE), contract.ANNOTATION_EXCLUSIVE).strip()
    if exclusive_text.lower() not in _TRUE | _FALSE:
        raise DemandError(
            f"metadata.annotations[{contract.ANNOTATION_EXCLUSIVE}]={exclusive_text!r}: expected 'true' or 'false'"
        )
    group = _text(annotations.get(contract.ANNOTATION_ANTI_AFFINITY_GROUP), "anti-affinity group").strip() or None
    policy = _text(annotations.get(contract.ANNOTATION_POLICY), "policy").strip() or None
    if policy is not None and policy not in POLICY_NAMES:
        raise DemandError(
            f"metadata.annotations[{contract.ANNOTATION_POLICY}]={policy!r} is not a policy; "
            f"expected one of {', '.join(POLICY_NAMES)}"
        )
    cpu_milli = max(app_cpu + sidecar_cpu, init_cpu) + overhead_cpu
    memory_mib = max(app_memory + sidecar_memory, init_memory) + overhead_memory
    for what, amount, unit in (("cpu", cpu_milli, "milli-CPU"), ("memory", memory_mib, "MiB")):
        if amount > MAX_AMOUNT:
            raise DemandError(
                f"the pod's {what} request ({amount} {unit}, spec.overhead included) is more than any node has "
                f"(at most {MAX_AMOUNT} {unit})"
            )
    return PodDemand(
        namespace=namespace,
        name=name,
        uid=uid,
        containers=tuple(containers),
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        allowed_models=_model_list(annotations, contract.ANNOTATION_GPU_MODEL) or None,
        excluded_models=_model_list(annotations, contract.ANNOTATION_GPU_MODEL_EXCLUDE) or frozenset(),
        allowed_uuids=_comma_list(annotations, contract.ANNOTATION_GPU_UUID) or None,
        excluded_uuids=_comma_list(annotations, contract.ANNOTATION_GPU_UUID_EXCLUDE) or frozenset(),
        exclusive=exclusive_text.lower() in _TRUE,
        anti_affinity_group=group,
        policy=policy,
    )


def total_gpu_milli(demand: PodDemand) -> int:
    """GPU milli the pod holds while running: kubelet's reuse of init containers' devices (core/initchain.py)."""
    return held_sequence([(c.init, c.milli * c.gpu_count) for c in demand.containers])


def simple_demand(
    cpu_milli: int,
    memory_mib: int,
    gpu_milli: int,
    gpu_count: int,
    *,
    allowed_models: frozenset[str] | None = None,
    name: str = "pod",
) -> PodDemand:
    """A one-container demand as the openb trace describes pods (gpu_milli is per GPU)."""
    containers: tuple[ContainerDemand, ...] = ()
    if gpu_count > 0 and gpu_milli > 0:
        containers = (ContainerDemand("main", gpu_milli, gpu_count),)
    return PodDemand("default", name, name, containers, cpu_milli, memory_mib, allowed_models=allowed_models)
