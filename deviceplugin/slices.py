"""Device IDs <-> GPUs: the 1000 milli-slices each GPU is advertised as, and the preferred-slice policy.

Kubelet counts `tensor.ai/vgpu-milli` in device IDs, so every GPU is advertised as 1000 IDs
(`contract.device_id(uuid, 0..999)`). Everything here is pure: a `SliceTable` is built once from the
backend's GPU list and answers, in O(number of IDs asked about), which GPU an ID belongs to, what the
ListAndWatch message for a health state is, and which IDs to prefer for a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass

from tensorai.deviceplugin.gpus import GPUInfo
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp

HEALTHY = "Healthy"  # kubelet's constants (v1beta1 constants.go)
UNHEALTHY = "Unhealthy"
MAX_DEVICE_ID_CHARS = 63  # kubelet's documented limit for Device.ID


class SliceError(ValueError):
    """A request names device IDs or sizes the plugin cannot honour.

    `precondition` is True when the request is well-formed but cannot be satisfied now (maps to
    gRPC FAILED_PRECONDITION); False when the request itself is malformed (INVALID_ARGUMENT).
    """

    def __init__(self, message: str, *, precondition: bool = False) -> None:
        super().__init__(message)
        self.precondition = precondition


@dataclass(frozen=True, slots=True)
class RequestShape:
    """A validated request size: fractional (one GPU, 1..999 milli) or whole (n GPUs x 1000)."""

    size_milli: int

    @property
    def fractional(self) -> bool:
        return self.size_milli < contract.MILLI_PER_GPU

    @property
    def whole_gpus(self) -> int:
        return self.size_milli // contract.MILLI_PER_GPU


def request_shape(size_milli: int, *, gpu_count: int) -> RequestShape:
    """Validate a request size against the contract (1..999, or a whole multiple of 1000)."""
    if size_milli <= 0:
        raise SliceError(f"allocation size must be at least 1 milli-GPU, got {size_milli}")
    if size_milli > contract.MILLI_PER_GPU and size_milli % contract.MILLI_PER_GPU:
        raise SliceError(
            f"allocation size {size_milli} milli-GPU is above one GPU but not a whole number of GPUs; "
            f"use 1..{contract.MILLI_PER_GPU - 1} or a multiple of {contract.MILLI_PER_GPU}"
        )
    if size_milli > gpu_count * contract.MILLI_PER_GPU:
        raise SliceError(
            f"allocation size {size_milli} milli-GPU exceeds this node's {gpu_count} GPU(s)", precondition=True
        )
    return RequestShape(size_milli)


class SliceTable:
    """The fixed mapping between a node's GPUs and their device IDs."""

    def __init__(self, gpus: Sequence[GPUInfo]) -> None:
        self._gpus: dict[str, GPUInfo] = {}
        self._ids_by_gpu: dict[str, tuple[str, ...]] = {}
        self._id_set_by_gpu: dict[str, frozenset[str]] = {}
        self._gpu_by_id: dict[str, str] = {}
        self._devices_by_gpu: dict[str, tuple[dp.Device, dp.Device]] = {}
        self._list_cache: dict[tuple[bool, ...], dp.ListAndWatchResponse] = {}
        for gpu in sorted(gpus, key=lambda info: info.index):
            if gpu.uuid in self._gpus:
                raise ValueError(f"GPU {gpu.uuid} is listed twice by the backend")
            ids = tuple(contract.device_id(gpu.uuid, index) for index in range(contract.MILLI_PER_GPU))
            if len(ids[-1]) > MAX_DEVICE_ID_CHARS or contract.DEVICE_ID_SEPARATOR in gpu.uuid:
                raise ValueError(
                    f"GPU uuid {gpu.uuid!r} cannot form device IDs of at most {MAX_DEVICE_ID_CHARS} characters "
                    f"without {contract.DEVICE_ID_SEPARATOR!r}"
                )
            self._gpus[gpu.uuid] = gpu
            self._ids_by_gpu[gpu.uuid] = ids
            self._id_set_by_gpu[gpu.uuid] = frozenset(ids)
            self._gpu_by_id.update(dict.fromkeys(ids, gpu.uuid))

    @property
    def gpus(self) -> list[GPUInfo]:
        """GPUs ordered by index."""
        return list(self._gpus.values())

    @property
    def uuids(self) -> list[str]:
        return list(self._gpus)

    def gpu(self, uuid: str) -> GPUInfo:
        return self._gpus[uuid]

    def device_ids(self, uuid: str) -> tuple[str, ...]:
        """The 1000 device IDs of one GPU, slice 0 first."""
        return self._ids_by_gpu[uuid]

    def gpu_of(self, device: str) -> str | None:
        """The GPU of an ID we advertise, None for anything else."""
        return self._gpu_by_id.get(device)

    def group_by_gpu(self, device_ids: Iterable[object], *, what: str = "device IDs") -> dict[str, list[str]]:
        """Split IDs by GPU, in GPU index order; SliceError for duplicates or IDs we never advertised."""
        grouped: dict[str, list[str]] = {}
        seen: set[str] = set()
        for device in device_ids:
            uuid = self._gpu_by_id.get(device) if isinstance(device, str) else None
            if uuid is None:
                raise SliceError(f"{what}: {self._explain_unknown(device)}")
            if device in seen:
                raise SliceError(f"{what}: device ID {device!r} appears twice")
            seen.add(device)
            grouped.setdefault(uuid, []).append(device)
        return {uuid: grouped[uuid] for uuid in self._gpus if uuid in grouped}

    def available(self, device_ids: Iterable[object], *, what: str = "available_deviceIDs") -> AvailableIds:
        """Index kubelet's candidate IDs (up to every slice of the node) without a per-ID Python loop.

        One set build (which hashes each ID once) and one C-level intersection per GPU: the per-GPU
        sets both count the free slices and answer `ids_on` later, and their sizes adding up to the
        set's size proves every ID is one we advertise. A sized, re-iterable input (kubelet's protobuf
        repeated field) goes into the set directly: a list copy of 8,000 IDs first cost ~5% more.
        """
        ids = device_ids if isinstance(device_ids, Sized) else list(device_ids)
        try:
            members = set(ids)
        except TypeError:  # an unhashable non-string ID
            self.group_by_gpu(ids, what=what)  # raises with the reason
            raise
        if len(members) != len(ids):
            self.group_by_gpu(ids, what=what)  # raises naming the duplicate
        by_gpu = {uuid: gpu_ids.intersection(members) for uuid, gpu_ids in self._id_set_by_gpu.items()}
        if sum(map(len, by_gpu.values())) != len(members):
            self.group_by_gpu(ids, what=what)  # raises with the reason for the first ID we never advertised
        return AvailableIds(self, {uuid: len(gpu_ids) for uuid, gpu_ids in by_gpu.items()},
                            lambda uuid: [device for device in self._ids_by_gpu[uuid] if device in by_gpu[uuid]])

    def _explain_unknown(self, device: object) -> str:
        shown = repr(device)[:100]
        if not isinstance(device, str):
            return f"device ID {shown} is not a string"
        try:
            uuid = contract.gpu_of_device_id(device)
        except contract.ContractError as error:
            return str(error)[:200]
        if uuid not in self._gpus:
            return f"device ID {shown} names GPU {uuid[:60]!r}, which this node does not have"
        return f"device ID {shown} is not one of the slices 0000..{contract.MILLI_PER_GPU - 1:04d} of GPU {uuid}"

    def device_list(self, healthy: Mapping[str, bool]) -> dp.ListAndWatchResponse:
        """The complete ListAndWatch message for a health state (cached: health changes are rare).

        Unhealthy GPUs stay in the list as Unhealthy devices, so kubelet keeps capacity and drops
        allocatable - the documented way to report a broken device.
        """
        state = tuple(bool(healthy.get(uuid, False)) for uuid in self._gpus)
        cached = self._list_cache.get(state)
        if cached is not None:
            return cached
        response = dp.ListAndWatchResponse()
        for uuid, is_healthy in zip(self._gpus, state, strict=True):
            gpu = self._gpus[uuid]
            health = HEALTHY if is_healthy else UNHEALTHY
            topology = dp.TopologyInfo(nodes=[dp.NUMANode(ID=gpu.numa_node)]) if gpu.numa_node >= 0 else None
            for device in self._ids_by_gpu[uuid]:
                entry = response.devices.add(ID=device, health=health)
                if topology is not None:
                    entry.topology.CopyFrom(topology)
        if len(self._list_cache) > 64:  # bounded: 2^GPUs states are possible in principle
            self._list_cache.clear()
        self._list_cache[state] = response
        return response


class AvailableIds:
    """A validated set of free device IDs: how many lie on each GPU, and which (per GPU, on demand).

    `free_on(uuid)` gives one GPU's free IDs in slice order; it is called at most once per GPU and only
    for GPUs with a free ID, so a source that counts cheaply but must work to list (wireids.py) lists
    only the GPUs an answer is taken from. It may raise SliceError for what it finds on that GPU.
    """

    def __init__(self, table: SliceTable, counts: Mapping[str, int], free_on: Callable[[str], list[str]]) -> None:
        self._table = table
        self.counts = {uuid: count for uuid, count in counts.items() if count}
        self._free_on = free_on
        self._listed: dict[str, list[str]] = {}
        self._sets: dict[str, frozenset[str]] = {}

    def count(self, uuid: str) -> int:
        return self.counts.get(uuid, 0)

    def ids_on(self, uuid: str) -> list[str]:
        """This GPU's free IDs in slice order (shared: do not modify)."""
        if uuid not in self.counts:
            return []
        listed = self._listed.get(uuid)
        if listed is None:
            listed = self._listed[uuid] = self._free_on(uuid)
        return listed

    def on(self, uuid: str) -> frozenset[str]:
        """This GPU's free IDs (unordered)."""
        free = self._sets.get(uuid)
        if free is None:
            free = self._sets[uuid] = frozenset(self.ids_on(uuid))
        return free

    def __contains__(self, device: object) -> bool:
        uuid = self._table.gpu_of(device) if isinstance(device, str) else None
        return uuid is not None and device in self.on(uuid)

    def without(self, uuids: Iterable[str]) -> AvailableIds:
        """The same set minus every ID of `uuids` (e.g. unhealthy GPUs)."""
        dropped = set(uuids) & set(self.counts)
        if not dropped:
            return self
        kept = {uuid: count for uuid, count in self.counts.items() if uuid not in dropped}
        return AvailableIds(self._table, kept, self.ids_on)


def choose_preferred(
    table: SliceTable,
    available: AvailableIds,
    must_include: Mapping[str, Sequence[str]],
    size_milli: int,
    *,
    target_gpus: Sequence[Sequence[str]] = (),
) -> list[str]:
    """Pick the device IDs to suggest to kubelet for one container.

    `available` are kubelet's candidate IDs, `must_include` the ones already chosen, by GPU (a subset).
    `target_gpus` are GPU sets the scheduler assigned to containers of this size (from pod Assignments): the
    answer lies on one of them when one fits (the fullest such for a fractional request); when none fits,
    fractional requests go to the fullest GPU that fits (binpack) and whole requests
    to wholly free GPUs, NUMA-local first. A fractional answer always lies on ONE GPU.
    """
    shape = request_shape(size_milli, gpu_count=len(table.uuids))
    must_count = sum(len(ids) for ids in must_include.values())
    if must_count > size_milli:
        raise SliceError(f"must_include names {must_count} devices but the allocation size is {size_milli}")
    if shape.fractional:
        return _choose_fractional(table, available, must_include, size_milli, target_gpus)
    return _choose_whole(table, available, must_include, shape.whole_gpus, target_gpus)


def _take(available: AvailableIds, uuid: str, must: Sequence[str], count: int) -> list[str]:
    chosen = list(must)
    must_set = set(must)
    for device in available.ids_on(uuid):
        if len(chosen) >= count:
            break
        if device not in must_set:
            chosen.append(device)
    return chosen


def _choose_fractional(
    table: SliceTable,
    available: AvailableIds,
    must_include: Mapping[str, Sequence[str]],
    size_milli: int,
    target_gpus: Sequence[Sequence[str]],
) -> list[str]:
    if len(must_include) > 1:
        raise SliceError("must_include spans several GPUs, but a fractional request must stay on one GPU")
    free_on = available.count

    fitting = [uuid for uuid in table.uuids if free_on(uuid) >= size_milli]
    if must_include:
        fitting = [uuid for uuid in fitting if uuid in must_include]
    if not fitting:
        raise SliceError(
            f"no single GPU has {size_milli} free slices among the candidates (most free: "
            f"{max((free_on(uuid) for uuid in table.uuids), default=0)}); a fractional request cannot span GPUs",
            precondition=True,
        )
    fitting_set = set(fitting)
    targets = [group[0] for group in target_gpus if len(group) == 1 and group[0] in fitting_set]
    pool = targets or fitting
    uuid = min(pool, key=lambda candidate: (free_on(candidate), table.gpu(candidate).index))
    return _take(available, uuid, must_include.get(uuid, ()), size_milli)


def _choose_whole(
    table: SliceTable,
    available: AvailableIds,
    must_include: Mapping[str, Sequence[str]],
    gpu_count: int,
    target_gpus: Sequence[Sequence[str]],
) -> list[str]:
    whole_free = [uuid for uuid in table.uuids if available.count(uuid) >= contract.MILLI_PER_GPU]
    required = [uuid for uuid in table.uuids if uuid in must_include]
    if any(uuid not in whole_free for uuid in required) or len(required) > gpu_count:
        raise SliceError("must_include names GPUs that are not wholly free or more GPUs than requested")
    chosen: list[str] | None = None
    whole_set = set(whole_free)
    for group in target_gpus:
        if len(group) == gpu_count and set(group) <= whole_set and set(required) <= set(group):
            chosen = list(group)
            break
    if chosen is None:
        if len(whole_free) < gpu_count:
            raise SliceError(
                f"{gpu_count} wholly free GPU(s) needed, {len(whole_free)} available among the candidates",
                precondition=True,
            )
        by_numa: dict[int, list[str]] = {}
        for uuid in whole_free:
            by_numa.setdefault(table.gpu(uuid).numa_node, []).append(uuid)
        chosen = list(required)
        local = [group for group in by_numa.values() if len(group) >= gpu_count]
        ordered = (local[0] if local else []) + whole_free
        for uuid in ordered:
            if len(chosen) == gpu_count:
                break
            if uuid not in chosen:
                chosen.append(uuid)
    result: list[str] = []
    for uuid in chosen:
        result.extend(_take(available, uuid, must_include.get(uuid, ()), contract.MILLI_PER_GPU))
    return result
