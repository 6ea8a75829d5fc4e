"""What a pod holds on each GPU while it runs, given kubelet's hand-on of init containers' devices.

kubelet (`devicesToReuse` in its device manager, kubernetes#71312) allocates a pod's containers in
spec order, init containers first. A finished, non-restartable init container's device IDs join a
per-pod reuse pool; every later container takes IDs from that pool before any free ID. A regular
init container adds its fresh IDs to the pool; an app container or a sidecar (an init container
with `restartPolicy: Always`, which keeps running) removes what it took. IDs left in the pool stay
held by the pod until it ends. With the device plugin's one-ID-per-milli slices, the pod therefore
holds on a GPU the sum of the fresh IDs each container drew there: `max(init, app)` for one init
container and one app container, and exactly that sum in general (`held_sequence`).

The scheduler places every init container on the GPU(s) of the next container that keeps its GPUs,
and any later container that still draws on the pool there too (`anchors`), so the reuse kubelet
does lands on the GPU the Assignment names; it counts what `held_sequence` says on each GPU
(`held_per_gpu`), not only the app containers' shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tensorai.scheduler.core.types import ContainerDemand, Placement, PodDemand


def anchors(containers: Sequence[ContainerDemand]) -> list[int | None]:
    """Per container (spec order): the index of the container whose GPUs it shares, or None if placed on its own.

    kubelet's reuse pool ties containers into groups: a regular init container starts one, and every
    later container joins it while the pool still holds IDs (it takes them before any free ID). The
    group's leader is its first container that keeps its GPUs (app or sidecar); a group of init
    containers only (nothing with a GPU follows) is led by its largest. Every other member is placed
    on the leader's GPU(s), so the IDs kubelet hands on lie where the Assignment says.
    """
    result: list[int | None] = [None] * len(containers)
    members: list[int] = []
    leader: int | None = None

    def close() -> None:
        if not members:
            return
        lead = leader
        if lead is None:
            lead = max(members, key=lambda i: (containers[i].gpu_count, containers[i].milli, -i))
        for index in members:
            result[index] = None if index == lead else lead

    pool = 0
    for index, container in enumerate(containers):
        if pool == 0:
            close()
            members, leader = [], None
        if container.init or pool > 0:
            members.append(index)
            if not container.init and leader is None:
                leader = index
        amount = container.milli * container.gpu_count
        reused = min(pool, amount)
        pool = pool + amount - reused if container.init else pool - reused
    close()
    return result


def placed_on_their_own(containers: Sequence[ContainerDemand]) -> list[int]:
    """Indexes of the containers the fit code places itself (everything not anchored to another)."""
    return [index for index, anchor in enumerate(anchors(containers)) if anchor is None]


def held_sequence(amounts: Sequence[tuple[bool, int]]) -> int:
    """Units one GPU holds for a pod: kubelet's reuse pool run over (is regular init, amount) in spec order."""
    pool = held = 0
    for regular_init, amount in amounts:
        reused = min(pool, amount)
        fresh = amount - reused
        held += fresh
        pool = pool + fresh if regular_init else pool - reused
    return held


def held_arrays(amounts: Sequence[tuple[bool, np.ndarray]]) -> np.ndarray:
    """`held_sequence` elementwise over arrays of equal shape (per node and GPU slot)."""
    pool: np.ndarray | int = 0
    held: np.ndarray | int = 0
    for regular_init, amount in amounts:
        reused = np.minimum(pool, amount)
        fresh = amount - reused
        held = held + fresh
        pool = pool + fresh if regular_init else pool - reused
    return np.asarray(held)


def held_per_gpu(demand: PodDemand, placement: Placement) -> dict[int, tuple[int, int]]:
    """{GPU slot: (milli, memory MiB)} the pod holds on its node while it runs, from its Placement.

    Choices are taken in the demand's container (spec) order; a choice naming a container the demand
    does not list counts like an app container, after the others.
    """
    position = {container.name: index for index, container in enumerate(demand.containers)}
    regular_init = {container.name for container in demand.containers if container.init}
    ordered = sorted(placement.choices, key=lambda c: position.get(c.container, len(position)))
    per_slot: dict[int, tuple[list[tuple[bool, int]], list[tuple[bool, int]]]] = {}
    for choice in ordered:
        milli, memory = per_slot.setdefault(choice.gpu_slot, ([], []))
        is_init = choice.container in regular_init
        milli.append((is_init, choice.milli))
        memory.append((is_init, choice.memory_mib))
    return {slot: (held_sequence(milli), held_sequence(memory)) for slot, (milli, memory) in per_slot.items()}
