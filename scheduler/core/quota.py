"""GPUQuota arithmetic: parse a quota's hard limits, measure what a pod uses, decide if it still fits.

Pure: dictionaries and dataclasses in, decisions out. The extender's view keeps one `Usage` per
namespace and asks `quota_violations` twice: at filter time with an estimate (so a pod over quota
stays Pending with the reason, on every node) and at bind time with the exact placement, under the
view's lock, so that concurrent binds can never push a namespace past its quota.

GPUQuota (`tensor.ai/v1alpha1`, namespaced) `spec.hard`, every key optional:
  gpus           quantity in GPUs, fractional allowed ("2.5" = 2500 milli-GPU)
  memory         GPU memory quantity ("80Gi")
  models         {model name: quantity in GPUs} - names as users write them (`H100`, `A100-80GB`):
                 a limit counts every GPU whose reported name it matches (proto/gpumodels.py), so
                 `H100` holds `NVIDIA H100 80GB HBM3` and `NVIDIA H100 PCIe` together
  maxGpusPerPod  quantity in GPUs: the most one pod may ask for
Several GPUQuotas in one namespace all apply (like ResourceQuota).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tensorai.proto import contract
from tensorai.proto.gpumodels import ModelNameError, check_model_name, model_matches
from tensorai.proto.quantity import QuantityError, bytes_to_mib, quantity_to_milli
from tensorai.scheduler.core.initchain import held_per_gpu, held_sequence
from tensorai.scheduler.core.requests import total_gpu_milli
from tensorai.scheduler.core.types import Placement, PodDemand

HARD_GPUS = "gpus"
HARD_MEMORY = "memory"
HARD_MODELS = "models"
HARD_MAX_GPUS_PER_POD = "maxGpusPerPod"
_HARD_KEYS = (HARD_GPUS, HARD_MEMORY, HARD_MODELS, HARD_MAX_GPUS_PER_POD)


class QuotaError(ValueError):
    """A GPUQuota object whose spec cannot be understood; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """The hard limits of one GPUQuota; None = that dimension is not limited."""

    namespace: str
    name: str
    gpus_milli: int | None = None
    memory_mib: int | None = None
    models_milli: Mapping[str, int] = field(default_factory=dict)
    max_gpus_per_pod_milli: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """GPU capacity held by a pod or a namespace: milli-GPU, MiB, and milli-GPU per GPU model."""

    gpus_milli: int = 0
    memory_mib: int = 0
    models_milli: Mapping[str, int] = field(default_factory=dict)  # keyed by the reported model name

    def model_milli(self, wanted: str) -> int:
        """Milli-GPU held on GPUs whose reported model the user's name `wanted` matches (a quota key)."""
        return sum(milli for model, milli in self.models_milli.items() if model_matches(wanted, model))

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages."""
        models = dict(self.models_milli)
        for model, milli in other.models_milli.items():
            models[model] = models.get(model, 0) + milli
        return Usage(self.gpus_milli + other.gpus_milli, self.memory_mib + other.memory_mib, models)

    def minus(self, other: Usage) -> Usage:
        """The difference; models that drop to zero disappear so equal usages compare equal."""
        models = dict(self.models_milli)
        for model, milli in other.models_milli.items():
            left = models.get(model, 0) - milli
            if left:
                models[model] = left
            else:
                models.pop(model, None)
        return Usage(self.gpus_milli - other.gpus_milli, self.memory_mib - other.memory_mib, models)

    def is_zero(self) -> bool:
        """True when nothing is held."""
        return self.gpus_milli == 0 and self.memory_mib == 0 and not any(self.models_milli.values())


def _gpus_milli(value: object, where: str) -> int:
    try:
        milli = quantity_to_milli(value)
    except QuantityError as error:
        raise QuotaError(f"{where}: {error}") from error
    if milli < 0:
        raise QuotaError(f"{where}: must not be negative, got {value!r}")
    return milli


def parse_gpu_quota(obj: object) -> QuotaLimits:
    """Read a GPUQuota object (as the API returns it) into QuotaLimits; QuotaError if malformed."""
    if not isinstance(obj, dict):
        raise QuotaError(f"{contract.QUOTA_KIND} must be an object, got {type(obj).__name__}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise QuotaError(f"{contract.QUOTA_KIND} needs metadata.name")
    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise QuotaError(f"{contract.QUOTA_KIND} {metadata['name']!r} needs metadata.namespace (it is namespaced)")
    where = f"{contract.QUOTA_KIND} {namespace}/{metadata['name']}"
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise QuotaError(f"{where}: spec must be an object")
    hard = spec.get("hard") or {}
    if not isinstance(hard, dict):
        raise QuotaError(f"{where}: spec.hard must be an object")
    unknown = sorted(set(hard) - set(_HARD_KEYS))
    if unknown:
        raise QuotaError(f"{where}: spec.hard has unknown keys {unknown}; known: {list(_HARD_KEYS)}")
    gpus = _gpus_milli(hard[HARD_GPUS], f"{where} spec.hard.gpus") if HARD_GPUS in hard else None
    memory = None
    if HARD_MEMORY in hard:
        try:
            memory = bytes_to_mib(hard[HARD_MEMORY])
        except QuantityError as error:
            raise QuotaError(f"{where} spec.hard.memory: {error}") from error
        if memory < 0:
            raise QuotaError(f"{where} spec.hard.memory: must not be negative")
    models_raw = hard.get(HARD_MODELS) or {}
    if not isinstance(models_raw, dict):
        raise QuotaError(f"{where}: spec.hard.models must map model names to GPU quantities")
    models = {
        str(model): _gpus_milli(value, f"{where} spec.hard.models[{model!r}]") for model, value in models_raw.items()
    }
    for model in models:
        try:
            check_model_name(model)
        except ModelNameError as error:
            raise QuotaError(f"{where} spec.hard.models: {error}") from error
    per_pod = None
    if HARD_MAX_GPUS_PER_POD in hard:
        per_pod = _gpus_milli(hard[HARD_MAX_GPUS_PER_POD], f"{where} spec.hard.maxGpusPerPod")
    return QuotaLimits(namespace, metadata["name"], gpus, memory, models, per_pod)


def demand_gpus_milli(demand: PodDemand) -> int:
    """Milli-GPU a pod holds while running: what kubelet's reuse of init containers' devices leaves held.

    The same count the GPUs are charged (`requests.total_gpu_milli`, core/initchain.py): init 500
    then app 250 holds 500; a sidecar (restartPolicy Always) keeps its own share beside the apps.
    """
    return total_gpu_milli(demand)


def estimate_usage(demand: PodDemand, model: str | None, usable_memory_mib: int | None) -> Usage:
    """What the pod would hold on a node of `model` whose GPUs have `usable_memory_mib` each.

    Used at filter time, before a GPU is chosen; memory without an explicit request is the share
    of the usable memory, the same default the fit rules apply. Unknown memory counts as 0. Memory
    follows the same kubelet reuse replay as milli (`held_sequence`, containers in spec order).
    """

    def memory_of(container_milli: int, count: int, memory_mib: int | None) -> int:
        if memory_mib is not None:
            return memory_mib * count
        if usable_memory_mib is None:
            return 0
        return (usable_memory_mib * container_milli // contract.MILLI_PER_GPU) * count

    memory = held_sequence([(c.init, memory_of(c.milli, c.gpu_count, c.memory_mib)) for c in demand.containers])
    gpus = demand_gpus_milli(demand)
    models = {model: gpus} if model and gpus else {}
    return Usage(gpus, memory, models)


def usage_of_placement(demand: PodDemand, placement: Placement, model: str | None) -> Usage:
    """Exact usage of a placed pod: the sum over its GPUs of what it holds there (`held_per_gpu`).

    This is exactly what `apply_placement` subtracts from the GPUs, so quota charges what the GPUs hold.
    """
    held = held_per_gpu(demand, placement).values()
    gpus = sum(milli for milli, _ in held)
    memory = sum(memory_mib for _, memory_mib in held)
    return Usage(gpus, memory, {model: gpus} if model and gpus else {})


def usage_of_shares(
    shares: Iterable[tuple[str, int, int]], init_containers: frozenset[str], model: str | None
) -> Usage:
    """Usage of a pod from its (container, milli, memory_mib) shares, taken in spec order on one pool.

    kubelet's reuse replay (`held_sequence`) over the pod's total: for init containers placed on the
    GPU of what follows them this equals `usage_of_placement`; prefer that one when the GPUs are known.
    """
    milli: list[tuple[bool, int]] = []
    memory: list[tuple[bool, int]] = []
    for container, share_milli, memory_mib in shares:
        milli.append((container in init_containers, share_milli))
        memory.append((container in init_containers, memory_mib))
    gpus = held_sequence(milli)
    return Usage(gpus, held_sequence(memory), {model: gpus} if model and gpus else {})


def _gpus_text(milli: int) -> str:
    return f"{milli / contract.MILLI_PER_GPU:g}"


def quota_violations(limits: Iterable[QuotaLimits], used: Usage, pod: Usage) -> list[str]:
    """Reasons the pod's usage does not fit next to `used` under every quota; empty = it fits.

    A pod over `maxGpusPerPod` can never run in the namespace; every other reason clears when
    other pods of the namespace finish.
    """
    reasons: list[str] = []
    for quota in limits:
        name = f"{contract.QUOTA_KIND} {quota.namespace}/{quota.name}"
        if quota.max_gpus_per_pod_milli is not None and pod.gpus_milli > quota.max_gpus_per_pod_milli:
            reasons.append(
                f"{name}: pod asks {_gpus_text(pod.gpus_milli)} GPUs, over maxGpusPerPod "
                f"{_gpus_text(quota.max_gpus_per_pod_milli)}"
            )
        if quota.gpus_milli is not None and used.gpus_milli + pod.gpus_milli > quota.gpus_milli:
            reasons.append(
                f"{name}: gpus used {_gpus_text(used.gpus_milli)} + {_gpus_text(pod.gpus_milli)} "
                f"> hard {_gpus_text(quota.gpus_milli)}"
            )
        if quota.memory_mib is not None and used.memory_mib + pod.memory_mib > quota.memory_mib:
            reasons.append(f"{name}: memory used {used.memory_mib}Mi + {pod.memory_mib}Mi > hard {quota.memory_mib}Mi")
        for model, hard in quota.models_milli.items():  # user's names: each counts every GPU it matches
            milli = pod.model_milli(model)
            if milli and used.model_milli(model) + milli > hard:
                reasons.append(
                    f"{name}: {model} GPUs used {_gpus_text(used.model_milli(model))} + "
                    f"{_gpus_text(milli)} > hard {_gpus_text(hard)}"
                )
    return reasons


def never_fits(limits: Iterable[QuotaLimits], pod: Usage) -> bool:
    """True when the pod exceeds a per-pod maximum or a hard limit even in an empty namespace."""
    return bool(quota_violations(limits, Usage(), pod))


def status_used(used: Usage, limits: QuotaLimits | None = None) -> dict[str, object]:
    """`status.used` of a GPUQuota: the same keys and units as spec.hard.

    With the quota's `limits`, `models` has exactly its spec.hard.models keys, each with what it
    counts (`H100: "0.75"` for shares of `NVIDIA H100 80GB HBM3`); without, the reported model names
    that hold something.
    """
    if limits is not None:
        models = {model: _gpus_text(used.model_milli(model)) for model in sorted(limits.models_milli)}
    else:
        models = {model: _gpus_text(milli) for model, milli in sorted(used.models_milli.items()) if milli}
    return {HARD_GPUS: _gpus_text(used.gpus_milli), HARD_MEMORY: f"{used.memory_mib}Mi", HARD_MODELS: models}
