"""The plugin's allocation bookkeeping: which device IDs went to which container, on which GPU.

Kubelet is the authority on which IDs are free (it only offers free ones), so this book never refuses
an allocation because of what it remembers: an Allocate whose IDs overlap an older record replaces
that stale record. Owners start as the plugin's best knowledge at Allocate time and are corrected
from kubelet's pod-resources listing (`reconcile`). Thread-safe; every read returns copies.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from tensorai.deviceplugin.gpus import ContainerShare
from tensorai.proto.podslots import GPUPortion, Owner

UNKNOWN_OWNER = Owner("", "", "", "")


@dataclass(frozen=True, slots=True)
class AllocationRecord:
    """One successful Allocate: the IDs, what they mean per GPU, and whose they are."""

    record_id: int
    device_ids: frozenset[str]
    portions: tuple[GPUPortion, ...]
    owner: Owner
    confirmed: bool  # kubelet's pod-resources listing showed these IDs for this owner
    allocated_at: float  # time.time()
    gpus: frozenset[str] = field(init=False, repr=False, compare=False)  # the portions' GPUs, derived once

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", frozenset(portion.uuid for portion in self.portions))

    @property
    def milli(self) -> int:
        return sum(portion.milli for portion in self.portions)

    def shares(self) -> list[ContainerShare]:
        owner = self.owner
        return [
            ContainerShare(
                owner.namespace, owner.pod_name, owner.pod_uid, owner.container_name, p.uuid, p.milli, p.memory_mib
            )
            for p in self.portions
        ]


@dataclass(frozen=True, slots=True)
class ReconcileOutcome:
    """What a comparison with kubelet's listing changed."""

    relabelled: tuple[tuple[AllocationRecord, Owner], ...]  # (record after, owner before)
    confirmed: tuple[AllocationRecord, ...]
    released: tuple[AllocationRecord, ...]
    adopted: tuple[AllocationRecord, ...]


class AllocationBook:
    """Records of live allocations, indexed by device ID and by owner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, AllocationRecord] = {}
        self._record_of_device: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._version = 0  # bumped by every change; keys the cache below
        self._held: tuple[int, dict[tuple[str, str], frozenset[str]]] = (-1, {})

    def add(self, device_ids: Iterable[str], portions: Iterable[GPUPortion], owner: Owner) -> AllocationRecord:
        """Record an allocation; records sharing any ID with it are stale and are dropped."""
        ids = frozenset(device_ids)
        record = AllocationRecord(next(self._ids), ids, tuple(portions), owner, False, time.time())
        with self._lock:
            stale = {self._record_of_device[d] for d in ids if d in self._record_of_device}
            for record_id in stale:
                self._drop(record_id)
            self._records[record.record_id] = record
            self._record_of_device.update(dict.fromkeys(ids, record.record_id))
            self._version += 1
        return record

    def _drop(self, record_id: int) -> AllocationRecord | None:
        record = self._records.pop(record_id, None)
        self._version += 1
        if record is not None:
            for device in record.device_ids:
                if self._record_of_device.get(device) == record_id:
                    del self._record_of_device[device]
        return record

    def remove(self, record_id: int) -> AllocationRecord | None:
        """Undo one record (an all-or-nothing Allocate that failed later)."""
        with self._lock:
            return self._drop(record_id)

    def records(self) -> list[AllocationRecord]:
        with self._lock:
            return list(self._records.values())

    def held_gpu_sets(self) -> dict[tuple[str, str], frozenset[str]]:
        """(pod uid, container) -> the GPUs its record lies on, for records with a known pod.

        Pod identity asks this on every kubelet call; it is rebuilt only after the book changed.
        The returned dict is shared: do not modify it.
        """
        with self._lock:
            version, held = self._held
            if version != self._version:
                held = {(r.owner.pod_uid, r.owner.container_name): r.gpus for r in self._records.values()
                        if r.owner.pod_uid}
                self._held = (self._version, held)
            return held

    def owners_of(self, device_ids: Iterable[str]) -> set[tuple[str, str]]:
        """(pod uid, container) of the known-pod records holding any of these IDs."""
        with self._lock:
            record_ids = set(map(self._record_of_device.get, device_ids))
            records = [self._records[rid] for rid in record_ids if rid is not None and rid in self._records]
        return {(r.owner.pod_uid, r.owner.container_name) for r in records if r.owner.pod_uid}

    def knows_any(self, device_ids: Iterable[str]) -> bool:
        """True if any of these IDs is in some record (stops at the first hit)."""
        with self._lock:
            return any(map(self._record_of_device.__contains__, device_ids))

    def shares(self) -> list[ContainerShare]:
        """Every container's share per GPU (what metrics and the allocated annotation report)."""
        return [share for record in self.records() for share in record.shares()]

    def allocated_milli_by_gpu(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for record in self.records():
            for portion in record.portions:
                totals[portion.uuid] = totals.get(portion.uuid, 0) + portion.milli
        return totals

    def owned_slots(self) -> set[tuple[str, str]]:
        """(pod uid, container) of every record with a known pod."""
        return {(r.owner.pod_uid, r.owner.container_name) for r in self.records() if r.owner.pod_uid}

    def records_of_pod(self, pod_uid: str) -> list[AllocationRecord]:
        return [record for record in self.records() if record.owner.pod_uid == pod_uid]

    def release_pod(self, pod_uid: str) -> list[AllocationRecord]:
        """Forget every allocation of a pod that is gone or finished."""
        with self._lock:
            doomed = [rid for rid, record in self._records.items() if record.owner.pod_uid == pod_uid]
            return [record for rid in doomed if (record := self._drop(rid)) is not None]

    def set_owner(self, record_id: int, owner: Owner, *, confirmed: bool) -> AllocationRecord | None:
        with self._lock:
            record = self._records.get(record_id)
            if record is None:
                return None
            updated = replace(record, owner=owner, confirmed=confirmed)
            self._records[record_id] = updated
            self._version += 1
            return updated

    def reconcile(
        self,
        listing: Mapping[tuple[str, str, str], frozenset[str]],
        *,
        owner_of: Mapping[tuple[str, str, str], Owner],
        portions_of: Mapping[tuple[str, str, str], tuple[GPUPortion, ...]],
        live_pod_uids: set[str] | None,
    ) -> ReconcileOutcome:
        """Align the book with kubelet's pod-resources listing of this resource.

        `listing` maps (namespace, pod, container) to the IDs kubelet holds for it. A record whose
        IDs kubelet lists under another container is relabelled to it (`owner_of` gives the full
        owner); IDs kubelet lists that no record covers are adopted with `portions_of` (after a plugin
        restart); a record kubelet does not list is released when its pod is no longer live
        (`live_pod_uids`, None = unknown, keep) - a fresh record may simply not be listed yet.
        """
        relabelled: list[tuple[AllocationRecord, Owner]] = []
        confirmed: list[AllocationRecord] = []
        released: list[AllocationRecord] = []
        adopted: list[AllocationRecord] = []
        holder_of_device: dict[str, tuple[str, str, str]] | None = None
        with self._lock:
            self._version += 1
            for record_id, record in list(self._records.items()):
                if listing.get(record.owner.listing_key) == record.device_ids:
                    holders = {record.owner.listing_key}  # the common case, without touching every ID
                else:
                    if holder_of_device is None:
                        holder_of_device = {}
                        for key, ids in listing.items():
                            holder_of_device.update(dict.fromkeys(ids, key))
                    holders = set(map(holder_of_device.get, record.device_ids))
                if holders == {None}:
                    if live_pod_uids is not None and record.owner.pod_uid and record.owner.pod_uid not in live_pod_uids:
                        released.append(record)
                        self._drop(record_id)
                    continue
                holder = next((h for h in holders if h is not None), None)
                if holder is None:
                    continue
                named = owner_of.get(holder)
                if holder == record.owner.listing_key and (record.owner.pod_uid or named is None):
                    if not record.confirmed:
                        updated = replace(record, confirmed=True)
                        self._records[record_id] = updated
                        confirmed.append(updated)
                    continue
                new_owner = named or Owner(holder[0], holder[1], "", holder[2])  # uid learnt on a later pass
                updated = replace(record, owner=new_owner, confirmed=True)
                self._records[record_id] = updated
                relabelled.append((updated, record.owner))
            self._hand_back_displaced(relabelled)
            for key, ids in listing.items():
                if not ids or any(map(self._record_of_device.__contains__, ids)):
                    continue
                portions = portions_of.get(key)
                if not portions:
                    continue
                owner = owner_of.get(key, Owner(key[0], key[1], "", key[2]))
                record = AllocationRecord(next(self._ids), frozenset(ids), portions, owner, True, time.time())
                self._records[record.record_id] = record
                self._record_of_device.update(dict.fromkeys(ids, record.record_id))
                adopted.append(record)
        return ReconcileOutcome(tuple(relabelled), tuple(confirmed), tuple(released), tuple(adopted))

    def _hand_back_displaced(self, relabelled: list[tuple[AllocationRecord, Owner]]) -> None:
        """A container owns one record. When a relabel gives a container the record kubelet lists for it,
        any other record still carrying its name (an Allocate kubelet has not listed yet) really filled
        the slot the relabelled record left: it takes the displaced owner (a swap), to be corrected
        when kubelet lists it."""
        for record, before in relabelled:  # grows while we walk it: hand-backs can chain
            key = (record.owner.pod_uid, record.owner.container_name)
            for other_id, other in list(self._records.items()):
                if other_id == record.record_id or other.confirmed or not record.owner.pod_uid:
                    continue
                if (other.owner.pod_uid, other.owner.container_name) == key:
                    self._records[other_id] = replace(other, owner=before)
                    relabelled.append((self._records[other_id], other.owner))

    def check_invariants(self) -> None:
        """Raise AssertionError if the indexes disagree (used by the fuzz tests)."""
        with self._lock:
            indexed = {device: rid for rid, r in self._records.items() for device in r.device_ids}
            if indexed != self._record_of_device:
                raise AssertionError("device index does not match the records")
            owners = [(r.owner.pod_uid, r.owner.container_name) for r in self._records.values() if r.owner.pod_uid]
            if len(owners) != len(set(owners)):
                raise AssertionError("a container owns more than one record")
