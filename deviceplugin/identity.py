"""Which pod is kubelet allocating for? Pod identity without a node lock.

Kubelet's GetPreferredAllocation and Allocate carry no pod, only device IDs and a size. This module
keeps, from a watch of the pods bound to this node, every container's *slot*: the share the
scheduler accounted for it (its Assignment), or, for a pod that has no Assignment, just its size.

The idea that removes the node lock: slots with the same *class* - same size, same per-GPU
(milli, memory) and same placement constraints - are interchangeable. The scheduler accounted one
container of that class on each of their GPUs; which of those pods fills which GPU changes nothing
the scheduler counted. So for one class the plugin tracks *positions* (the multiset of GPU sets its
slots were assigned) and fills free positions with whichever pod kubelet is admitting; the
pod-resources listing later tells which pod really got which position, and the
`tensor.ai/allocated` annotation is corrected. Only when pending slots of the requested size belong
to more than one class is the choice unsafe: the plugin waits (bounded) for that to resolve and
then refuses with a clear error. The protocol is specified in docs/deviceplugin.md.

`PodIdentity` is pure logic over pod dicts (the API's JSON form); `PodWatch` feeds it from the
Kubernetes API and `AllocatedAnnotationWriter` writes the annotation back.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tensorai.deviceplugin.allocations import AllocationBook
from tensorai.deviceplugin.quiet import CallClock
from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.kubeclient import RawCoreApi
from tensorai.proto.podslots import GPUPortion, GPUSet, PodState, Slot, SlotKey, parse_pod

PodName = tuple[str, str]  # (namespace, name): how kubelet's pod-resources listing names a pod

log = logging.getLogger(__name__)

class IdentityError(RuntimeError):
    """The plugin cannot tell safely which pod kubelet is admitting (maps to FAILED_PRECONDITION)."""


class ReusedDevicesMisplaced(IdentityError):
    """kubelet handed an init container's devices to a container the scheduler placed on other GPUs.

    The pod fails admission (kubelet then frees all its devices), so `pod_uid`'s records can go.
    """

    def __init__(self, message: str, pod_uid: str) -> None:
        super().__init__(message)
        self.pod_uid = pod_uid


@dataclass(frozen=True, slots=True)
class Claim:
    """The slot chosen for one Allocate and the GPU portions the container gets."""

    slot: Slot
    portions: tuple[GPUPortion, ...]


class PodIdentity:
    """Slots of the pods bound to this node, and the claim rule that matches Allocate to a slot."""

    def __init__(
        self,
        node_name: str,
        book: AllocationBook,
        *,
        catch_up_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_name = node_name
        self._book = book
        self.catch_up_s = catch_up_s
        self._clock = clock
        self._cond = threading.Condition()
        self._pods: dict[str, PodState] = {}
        # Slots of live (non-terminal) pods by size: kubelet's calls name a size, so a call looks only
        # at the slots it could be for, never at every pod of the node.
        self._by_size: dict[int, dict[SlotKey, Slot]] = {}
        self._seen_order: dict[str, int] = {}
        self._counter = 0
        self._inflight: dict[SlotKey, GPUSet] = {}
        # Init slots this plugin allocated: done for the pod's life even after kubelet hands their
        # device IDs on to the next container (whose record then replaces theirs in the book).
        self._consumed: set[SlotKey] = set()
        # Placements the plugin moved when kubelet's listing revealed a swap (see `rebalance`); they
        # replace the parsed Assignment at once, before the rewritten annotation comes back by watch.
        self._overrides: dict[SlotKey, tuple[GPUPortion, ...]] = {}
        self.synced = threading.Event()
        # Once kubelet's pod-resources listing has been read into the book, the book is the truth and
        # allocated annotations (possibly stale until rewritten) no longer count as occupancy.
        self.book_authoritative = False
        self.on_pod_gone: Callable[[str], None] | None = None

    # --- feeding ---------------------------------------------------------------------------------
    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        """Apply an ADDED/MODIFIED pod from the watch."""
        metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
        uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
        uid = uid if isinstance(uid, str) else ""
        with self._cond:
            order = self._seen_order.get(uid)
            if order is None:
                self._counter += 1
                order = self._counter
            try:
                state = parse_pod(pod, self.node_name, order)
            except (AttributeError, TypeError, ValueError) as error:  # not shaped like an API pod
                log.warning("ignoring malformed pod %r: %s", str(uid)[:80], error)
                state = None
            if state is None:
                self._forget(uid)
            else:
                self._seen_order[uid] = order
                self._unindex(self._pods.get(uid))
                self._pods[uid] = state
                if not state.terminal:
                    for slot in state.slots:
                        self._by_size.setdefault(slot.milli, {})[slot.key] = slot
                if state.terminal and self.on_pod_gone is not None:
                    self.on_pod_gone(uid)
            self._cond.notify_all()

    def remove_pod(self, uid: str) -> None:
        """Apply a DELETED pod from the watch."""
        with self._cond:
            self._forget(uid)
            self._cond.notify_all()

    def replace_all(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Apply a full relist: pods not in it are gone."""
        pods = list(pods)
        listed = {(p.get("metadata") or {}).get("uid") for p in pods}
        with self._cond:
            for uid in list(self._pods):
                if uid not in listed:
                    self._forget(uid)
        for pod in pods:
            self.upsert_pod(pod)
        self.synced.set()

    def _unindex(self, state: PodState | None) -> None:
        if state is None:
            return
        for slot in state.slots:
            same_size = self._by_size.get(slot.milli)
            if same_size is not None:
                same_size.pop(slot.key, None)
                if not same_size:
                    del self._by_size[slot.milli]

    def _forget(self, uid: str) -> None:
        known = self._pods.pop(uid, None)
        self._unindex(known)
        if known is not None:
            self._consumed.difference_update(slot.key for slot in known.slots)
        self._seen_order.pop(uid, None)
        for key in [key for key in self._overrides if key[0] == uid]:
            del self._overrides[key]
        if known is not None and self.on_pod_gone is not None:
            self.on_pod_gone(uid)

    def wait_changed(self, timeout_s: float) -> None:
        """Block until the next watch event or book change (or the timeout)."""
        with self._cond:
            self._cond.wait(timeout_s)

    def notify(self) -> None:
        """Wake waiting claims (the book changed)."""
        with self._cond:
            self._cond.notify_all()

    # --- reading ---------------------------------------------------------------------------------
    def pod(self, uid: str) -> PodState | None:
        with self._cond:
            return self._pods.get(uid)

    def pods(self) -> list[PodState]:
        with self._cond:
            return list(self._pods.values())

    def live_uids(self) -> set[str]:
        """Pods bound here that may still hold GPUs (not Succeeded/Failed)."""
        with self._cond:
            return {uid for uid, state in self._pods.items() if not state.terminal}

    def owner_index(self) -> dict[tuple[str, str, str], Slot]:
        """(namespace, pod, container) -> slot, to name the owners kubelet's listing reports."""
        with self._cond:
            return {
                (s.namespace, s.pod_name, s.container): s for state in self._pods.values() for s in state.slots
            }

    def placement(self, slot: Slot) -> tuple[GPUPortion, ...]:
        """Where the scheduler's accounting puts this container now: its Assignment, or a swap's override."""
        return self._overrides.get(slot.key, slot.portions)

    def assignment_of(self, uid: str) -> pb.Assignment | None:
        """The pod's Assignment with every override applied; None when nothing was moved."""
        with self._cond:
            state = self._pods.get(uid)
            if state is None or state.assignment is None:
                return None
            moved = {slot.container: self._overrides[slot.key] for slot in state.slots if slot.key in self._overrides}
            if all(portions == slot.portions for slot in state.slots
                   if (portions := moved.get(slot.container)) is not None):
                return None
            rewritten = pb.Assignment()
            rewritten.CopyFrom(state.assignment)
            for container in rewritten.containers:
                if container.name in moved:
                    del container.gpus[:]
                    for portion in moved[container.name]:
                        container.gpus.add(uuid=portion.uuid, milli=portion.milli, memory_mib=portion.memory_mib)
            return rewritten

    def _moved_unseen(self, slot: Slot) -> bool:
        """True while a swap's new placement for this slot is not yet in the Assignment the watch shows."""
        moved = self._overrides.get(slot.key)
        return moved is not None and moved != slot.portions

    def _occupied_set(self, slot: Slot, held: Mapping[SlotKey, GPUSet]) -> GPUSet | None:
        """The GPUs a slot already holds: the book's record, a claim in flight, else its allocated annotation."""
        taken = held.get(slot.key)
        if taken is None:
            taken = self._inflight.get(slot.key)
        if taken is None and slot.init and self._init_done(slot, held):
            taken = self.placement_set(slot)
        if taken is None and not self.book_authoritative:
            # Until kubelet's listing has been read into the book, allocated annotations count as occupancy.
            state = self._pods.get(slot.pod_uid)
            portions = state.allocated.get(slot.container) if state is not None else None
            if portions is not None:
                taken = frozenset(p.uuid for p in portions)
        return taken

    def _init_done(self, slot: Slot, held: Mapping[SlotKey, GPUSet]) -> bool:
        """An init container runs once: done when we allocated it, the pod status shows it started, or
        a later container of its pod holds devices (after a plugin restart, before the status says so)."""
        if slot.key in self._consumed:
            return True
        state = self._pods.get(slot.pod_uid)
        if state is None:
            return False
        if slot.container in state.init_started:
            return True
        return any(not other.init and ((other.key in held) or (other.key in self._inflight)
                                       or other.container in state.allocated) for other in state.slots)

    def _next_of_its_pod(self, slot: Slot, held: Mapping[SlotKey, GPUSet]) -> bool:
        """kubelet allocates a pod's containers one by one in spec order, init containers first: only the
        first of its pod's slots not yet holding devices can be the one an Allocate is for."""
        state = self._pods.get(slot.pod_uid)
        if state is None or len(state.slots) == 1:
            return True
        for other in state.slots:
            if other.key == slot.key:
                return True
            if self._occupied_set(other, held) is None:
                return False
        return True

    def placement_set(self, slot: Slot) -> GPUSet:
        """The GPUs of `placement(slot)`."""
        moved = self._overrides.get(slot.key)
        return slot.gpu_set if moved is None else frozenset(p.uuid for p in moved)

    def _classes(self, size_milli: int) -> tuple[list[Slot], dict[tuple[Any, ...], list[tuple[GPUPortion, ...]]]]:
        """Pending slots of this size and, per class, the positions not yet filled."""
        held = self._book.held_gpu_sets()
        pending: list[Slot] = []
        positions: dict[tuple[Any, ...], list[tuple[GPUPortion, ...]]] = {}
        filled: dict[tuple[Any, ...], Counter[GPUSet]] = {}
        for slot in self._by_size.get(size_milli, {}).values():
            positions.setdefault(slot.class_key, []).append(self.placement(slot))
            taken = self._occupied_set(slot, held)
            if taken is None:
                if self._next_of_its_pod(slot, held):
                    pending.append(slot)
            else:
                filled.setdefault(slot.class_key, Counter())[taken] += 1
        free: dict[tuple[Any, ...], list[tuple[GPUPortion, ...]]] = {}
        for class_key, slot_positions in positions.items():
            used = filled.get(class_key)
            if not used:
                free[class_key] = slot_positions
                continue
            remaining = []
            for portions in slot_positions:
                gpus = frozenset(p.uuid for p in portions)
                if used[gpus] > 0:
                    used[gpus] -= 1
                else:
                    remaining.append(portions)
            free[class_key] = remaining
        pending.sort(key=lambda slot: (slot.seen_order, slot.namespace, slot.pod_name, slot.container))
        return pending, free

    def target_gpu_sets(self, size_milli: int, *, wait_s: float = 0.0,
                        admitting: PodName | None = None) -> list[tuple[str, ...]]:
        """GPU sets the scheduler accounted for pending containers of this size, oldest pod first.

        GetPreferredAllocation prefers these; positions of one class are interchangeable. When no
        container of this size is pending yet, waits up to `wait_s` for the watch to catch up with
        kubelet (which learns of a bound pod from its own watch, possibly before ours). `admitting`,
        when kubelet's pod-resources listing has named the pod being admitted (`admitting_pod`), puts
        that pod's own placement first and then only its own class's other free positions.
        """
        with self._cond:
            pending, free = self._classes_after_wait(size_milli, wait_s)
            own = self._only_admitting(pending, admitting)
            if own:
                # Its own placement; then its class's other free positions, where it may go if kubelet
                # lacks free IDs on its own GPU (a swap the Allocate then writes back at once).
                first = tuple(p.uuid for p in self.placement(own[0]))
                rest = (tuple(p.uuid for p in portions) for portions in free.get(own[0].class_key, ()) if portions)
                return list(dict.fromkeys([first, *rest]))
            # Classes in the order of their oldest pending pod; each class's free positions once.
            targets: dict[tuple[str, ...], None] = {}
            for class_key in dict.fromkeys(slot.class_key for slot in pending):
                for portions in free.get(class_key, ()):
                    if portions:
                        targets.setdefault(tuple(p.uuid for p in portions))
            return list(targets)

    def pending_slots(self, size_milli: int) -> list[Slot]:
        with self._cond:
            return self._classes(size_milli)[0]

    def pending_containers(self, size_milli: int, *, wait_s: float = 0.0) -> dict[PodName, str]:
        """(namespace, pod) -> the container of that pod an Allocate of this size would be for; waits up
        to `wait_s` for the watch to show one when none is pending yet."""
        with self._cond:
            pending = self._classes_after_wait(size_milli, wait_s)[0]
            return {(slot.namespace, slot.pod_name): slot.container for slot in pending}

    def _classes_after_wait(self, size_milli: int, wait_s: float) -> tuple[list[Slot], dict[tuple[Any, ...],
                                                                                         list[tuple[GPUPortion, ...]]]]:
        """`_classes`, after waiting up to `wait_s` for a pending slot of this size (call under the lock)."""
        deadline = self._clock() + wait_s
        pending, free = self._classes(size_milli)
        while not pending and (remaining := deadline - self._clock()) > 0:
            self._cond.wait(min(remaining, 0.25))
            pending, free = self._classes(size_milli)
        return pending, free

    @staticmethod
    def _only_admitting(pending: list[Slot], admitting: PodName | None) -> list[Slot]:
        """The pending slots of the pod kubelet is known to admit ([] when unknown or not pending here)."""
        if admitting is None:
            return []
        return [slot for slot in pending if (slot.namespace, slot.pod_name) == admitting]

    # --- claiming --------------------------------------------------------------------------------
    def claim(
        self,
        gpu_set: GPUSet,
        size_milli: int,
        *,
        timeout_s: float | None = None,
        reused_from: Iterable[SlotKey] = (),
        admitting: PodName | None = None,
    ) -> Claim:
        """Match an Allocate of `size_milli` on `gpu_set` to a pending slot; release with `finish`.

        `reused_from` are the owners of records that already hold some of the Allocate's IDs. When one
        is an init container, kubelet is handing its devices on to the next container of the same pod
        (it reuses only within the pod it is admitting), so the claim is that pod's next pending
        container of this size - no guess among pods. Waits up to `timeout_s` (default `catch_up_s`)
        for the watch to show a pod that makes the choice safe; raises IdentityError with the reason
        when none does. `admitting` names the pod kubelet is admitting when its pod-resources listing
        told (`admitting_pod`): the claim is then that pod's, never an interchangeable neighbour's.
        """
        deadline = self._clock() + (self.catch_up_s if timeout_s is None else timeout_s)
        reused_from = tuple(reused_from)
        with self._cond:
            while True:
                result = self._try_claim(gpu_set, size_milli, reused_from, admitting)
                if isinstance(result, Claim):
                    self._inflight[result.slot.key] = gpu_set
                    return result
                if isinstance(result, ReusedDevicesMisplaced):
                    raise result  # no watch event can change where kubelet's reused IDs lie
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise IdentityError(result)
                self._cond.wait(min(remaining, 0.25))

    def finish(self, claim: Claim) -> None:
        """The claim was recorded in the book (or abandoned): it no longer needs the in-flight mark."""
        with self._cond:
            self._inflight.pop(claim.slot.key, None)
            if claim.slot.init and claim.slot.key in self._book.held_gpu_sets():
                self._consumed.add(claim.slot.key)
            self._cond.notify_all()

    def _reusing_pod(self, reused_from: Iterable[SlotKey]) -> PodState | None:
        """The pod whose init container's devices kubelet is handing on, if the Allocate reuses any."""
        for uid, container in reused_from:
            state = self._pods.get(uid)
            if state is not None and any(slot.init and slot.container == container for slot in state.slots):
                return state
        return None

    def _try_claim(
        self, gpu_set: GPUSet, size_milli: int, reused_from: Iterable[SlotKey] = (),
        admitting: PodName | None = None,
    ) -> Claim | str | ReusedDevicesMisplaced:
        pending, free = self._classes(size_milli)
        pending = self._only_admitting(pending, admitting) or pending
        gpus_text = ",".join(sorted(gpu_set))
        reusing = self._reusing_pod(reused_from)
        if reusing is not None:
            waiting = {slot.key for slot in pending}
            nexts = [slot for slot in reusing.slots if slot.key in waiting]  # kubelet's order: spec order
            if nexts:
                slot = nexts[0]
                positions = free.get(slot.class_key, ())
                if not any(frozenset(p.uuid for p in portions) == gpu_set for portions in positions):
                    return ReusedDevicesMisplaced(
                        f"kubelet handed the device IDs of an init container of pod {reusing.namespace}/"
                        f"{reusing.name} on GPU(s) {gpus_text} on to its container {slot.container!r} (kubelet "
                        f"reuses init containers' devices), but the scheduler accounted that container on "
                        f"{','.join(sorted(self.placement_set(slot))) or 'no GPU'}; refusing so that no container "
                        f"runs on a GPU the scheduler did not account for. A pod's GPU init containers must be "
                        f"placed on the GPU(s) of the container that follows them (docs/deviceplugin.md)",
                        reusing.uid,
                    )
                pending = [slot]
        if not pending:
            problems = [f"{s.namespace}/{s.name}: {p}" for s in self._pods.values() for p in s.problems]
            hint = f"; pods with problems: {'; '.join(problems)[:500]}" if problems else ""
            return (
                f"no pod bound to node {self.node_name!r} is waiting for {size_milli} "
                f"{contract.RESOURCE_VGPU_MILLI} (watch not caught up, or the pod was not scheduled "
                f"for this node's GPUs){hint}"
            )
        classes = {slot.class_key for slot in pending}
        if len(classes) > 1:
            names = ", ".join(f"{s.namespace}/{s.pod_name}[{s.container}]" for s in pending[:6])
            return (
                f"cannot tell which pod kubelet is admitting: pods {names} all wait for {size_milli} "
                f"{contract.RESOURCE_VGPU_MILLI} but differ in memory, GPU or constraints, so picking the "
                f"wrong one would give a container another's limits; the scheduler must not bind them to "
                f"one node at the same time (see docs/deviceplugin.md)"
            )
        (class_key,) = classes
        if class_key[0] == "unassigned":
            slot = pending[0]
            return Claim(slot, ())
        for portions in free.get(class_key, ()):
            if frozenset(p.uuid for p in portions) == gpu_set:
                own = [slot for slot in pending if frozenset(p.uuid for p in self.placement(slot)) == gpu_set]
                own.sort(key=self._moved_unseen)  # stable: oldest pod first among equals
                slot = own[0] if own else pending[0]
                if self._moved_unseen(slot):
                    # A swap moved this pod here, but its rewritten Assignment is not back from the API
                    # server yet: admitting it now would run a container the scheduler counts elsewhere.
                    return (
                        f"waiting for the rewritten {contract.ANNOTATION_ASSIGNMENT} of pod "
                        f"{slot.namespace}/{slot.pod_name} (moved to {gpus_text} by a swap) to reach the API server"
                    )
                return Claim(slot, portions)
        accounted = sorted({",".join(sorted(p.uuid for p in position)) for position in free.get(class_key, ())})
        return (
            f"device IDs on GPU(s) {gpus_text} do not match where the scheduler accounted the waiting "
            f"{size_milli}-milli container(s): {'; '.join(accounted)[:300] or 'nowhere'}; refusing so that no "
            f"container runs on a GPU the scheduler did not account for"
        )


    def rebalance(self, class_keys: Iterable[tuple[Any, ...]]) -> list[str]:
        """After kubelet's listing moved containers between interchangeable slots, move placements too.

        Within one class the multiset of placements is what the scheduler counted; it must not change.
        Admitted containers take the GPUs they really hold; pending ones keep their placement if it is
        still free, else take a leftover one. Returns the pods whose placement changed - admitted
        first, so their annotations are rewritten before the displaced ones' (the order in which a
        transient view over-counts, never under-counts, a running container).
        """
        held: dict[SlotKey, GPUSet] = {}
        for record in self._book.records():
            if record.owner.pod_uid:
                held[(record.owner.pod_uid, record.owner.container_name)] = frozenset(p.uuid for p in record.portions)
        admitted_changed: list[str] = []
        displaced_changed: list[str] = []
        with self._cond:
            for class_key in set(class_keys):
                if class_key[0] != "assigned" or class_key[-1][0] == "init":
                    continue  # init containers are never in kubelet's listing: nothing to move
                members = [slot for state in self._pods.values() if not state.terminal
                           for slot in state.slots if slot.class_key == class_key]
                portions_of: dict[GPUSet, tuple[GPUPortion, ...]] = {}
                counts: Counter[GPUSet] = Counter()
                for slot in members:
                    placed = self.placement(slot)
                    gpus = frozenset(p.uuid for p in placed)
                    portions_of.setdefault(gpus, placed)
                    counts[gpus] += 1
                moves: dict[SlotKey, tuple[GPUPortion, ...]] = {}
                consistent = True
                for slot in members:
                    want = held.get(slot.key) or self._inflight.get(slot.key)
                    if want is None:
                        continue
                    if counts[want] <= 0:
                        consistent = False
                        break
                    counts[want] -= 1
                    if frozenset(p.uuid for p in self.placement(slot)) != want:
                        moves[slot.key] = portions_of[want]
                if not consistent:
                    log.error("placements of class %s no longer match what the scheduler counted; left as they are",
                              class_key)
                    continue
                displaced: list[Slot] = []
                for slot in members:
                    if slot.key in held or slot.key in self._inflight:
                        continue
                    gpus = frozenset(p.uuid for p in self.placement(slot))
                    if counts[gpus] > 0:
                        counts[gpus] -= 1
                    else:
                        displaced.append(slot)
                for slot, gpus in zip(displaced, counts.elements(), strict=False):
                    moves[slot.key] = portions_of[gpus]
                for key, portions in moves.items():
                    self._overrides[key] = portions
                    target = admitted_changed if key in held else displaced_changed
                    if key[0] not in target:
                        target.append(key[0])
            self._cond.notify_all()
        return admitted_changed + [uid for uid in displaced_changed if uid not in admitted_changed]


def allocated_annotation(node_name: str, pod_uid: str, records: Iterable[tuple[str, tuple[GPUPortion, ...]]]) -> str:
    """The `tensor.ai/allocated` value: an Assignment-shaped JSON of what each container really got."""
    allocated = pb.Assignment(pod_uid=pod_uid, node_name=node_name, decided_at=contract.timestamp_now())
    latest = dict(records)  # a container owns one record; should two ever carry its name, the later one wins
    for container, portions in sorted(latest.items()):
        entry = allocated.containers.add(name=container)
        for portion in portions:
            entry.gpus.add(uuid=portion.uuid, milli=portion.milli, memory_mib=portion.memory_mib)
    return contract.encode_assignment(allocated)


@functools.cache
def _raw_watch_class() -> type:
    """A kubernetes Watch whose events carry only the decoded JSON (`raw_object`), no model objects.

    Built on first use so that standalone mode never imports the kubernetes client.
    """
    from kubernetes import watch

    class RawWatch(watch.Watch):
        def get_return_type(self, func: Any) -> None:
            return None  # unmarshal_event then skips deserialising every event into V1Pod models

    return RawWatch


class PodWatch:
    """Feeds PodIdentity from a watch of pods with spec.nodeName=<node>; relists on 410 Gone/expiry."""

    def __init__(self, core: RawCoreApi, identity: PodIdentity, *, watch_timeout_s: int = 60) -> None:
        self._core = core
        self._identity = identity
        self._timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None

    def start(self) -> PodWatch:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        selector = f"spec.nodeName={self._identity.node_name}"
        while not self._stop.is_set():
            try:
                # Raw JSON, not V1PodList models: PodIdentity reads dicts, and building ~100 model objects
                # per pod only to turn them back into dicts would cost the GIL that kubelet's calls need.
                listed = self._core.list_pods(selector, request_timeout_s=30)
                self._identity.replace_all(listed.get("items") or ())
                version = (listed.get("metadata") or {}).get("resourceVersion")
                while not self._stop.is_set():
                    self._watch = _raw_watch_class()()
                    for event in self._watch.stream(
                        self._core.watch_pods,
                        field_selector=selector,
                        resource_version=version,
                        timeout_seconds=self._timeout_s,
                        allow_watch_bookmarks=True,
                        _request_timeout=self._timeout_s + 10,
                    ):
                        if self._stop.is_set():
                            return
                        kind = event.get("type")
                        if kind == "ERROR":
                            raise ApiException(status=(event.get("raw_object") or {}).get("code", 500))
                        obj = event.get("raw_object") or {}
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind == "DELETED":
                            self._identity.remove_pod((obj.get("metadata") or {}).get("uid") or "")
                        elif kind in ("ADDED", "MODIFIED"):
                            self._identity.upsert_pod(obj)
            except ApiException as error:
                if error.status != 410:
                    log.warning("pod watch failed (%s); relisting in 1 s", error.status)
                    self._stop.wait(1.0)
            except Exception as error:  # network, decoding: never let the watch thread die
                if self._stop.is_set():
                    return  # stop() shut the socket down under the stream: expected, not a failure
                log.warning("pod watch failed (%s); relisting in 1 s", error)
                self._stop.wait(1.0)


class AllocatedAnnotationWriter:
    """Writes `tensor.ai/allocated` on pods in the background, so Allocate never waits on the API server."""

    def __init__(
        self,
        core: RawCoreApi,
        node_name: str,
        book: AllocationBook,
        identity: PodIdentity,
        *,
        calls: CallClock | None = None,
    ) -> None:
        self._core = core
        self._node = node_name
        self._book = book
        self._identity = identity
        # Writes wait for a pause in kubelet's calls (`CallClock.wait_for_pause`): a PATCH and the
        # watch event it causes would otherwise compete with the next admission for the GIL.
        self._calls = calls
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.written = 0

    def start(self) -> AllocatedAnnotationWriter:
        self._thread = threading.Thread(target=self._run, name="allocated-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def enqueue(self, pod_uid: str) -> None:
        if pod_uid:
            self._queue.put(pod_uid)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far has been attempted (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None and self._calls is not None:
                self._calls.wait_for_pause()
            while True:  # everything queued meanwhile, each pod once (a pod's write reads its latest state)
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            for uid in dict.fromkeys(uid for uid in batch if uid is not None):
                try:
                    self._write(uid)
                except Exception:  # one bad pod must never stop the annotations of every later one
                    log.exception("writing the annotations of pod uid %s failed", uid)
            for _ in batch:
                self._queue.task_done()
            if stopping:
                return

    def _write(self, uid: str) -> None:
        state = self._identity.pod(uid)
        records = self._book.records_of_pod(uid)
        if state is None:
            return
        # No `state.allocated` shortcut: the watch may not show our own earlier write yet, and a stale
        # annotation left behind would make the scheduler count this pod on the wrong GPU.
        text: str | None = None  # no records left (a relabel moved them): remove the stale annotation
        if records:
            text = allocated_annotation(self._node, uid, [(r.owner.container_name, r.portions) for r in records])
        annotations = {contract.ANNOTATION_ALLOCATED: text}
        moved = self._identity.assignment_of(uid)
        if moved is not None:  # a swap moved this pod's placement: keep the scheduler's accounting true
            annotations[contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(moved)
        for attempt in range(5):
            try:
                # The patched pod comes back by watch; it is drained, never decoded (that would only cost
                # the GIL kubelet's calls need).
                self._core.patch_pod_annotations(state.namespace, state.name, annotations)
                self.written += 1
                return
            except Exception as error:
                log.warning("writing %s on %s/%s failed: %s", contract.ANNOTATION_ALLOCATED, state.namespace,
                            state.name, error)
                time.sleep(0.2 * (attempt + 1))
