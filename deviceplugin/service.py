"""The DevicePlugin gRPC service: a thin servicer over `VGPUManager`, which owns the policy.

`VGPUManager` turns kubelet's requests into decisions using the slice table (IDs <-> GPUs), health,
pod identity and the allocation book; `DevicePluginServicer` only translates protobuf and maps
errors to gRPC status codes (malformed -> INVALID_ARGUMENT, cannot be honoured now ->
FAILED_PRECONDITION, each with a message that says what was wrong). `PluginServer` serves both it
and grpc.health.v1 on the plugin's unix socket.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tensorai.deviceplugin.allocations import UNKNOWN_OWNER, AllocationBook, AllocationRecord
from tensorai.deviceplugin.identity import IdentityError, PodIdentity, PodName, ReusedDevicesMisplaced
from tensorai.deviceplugin.podresources import NOT_YET_SEEN, PodResourcesError
from tensorai.deviceplugin.quiet import CallClock
from tensorai.deviceplugin.sharing import SharingPolicy
from tensorai.deviceplugin.slices import AvailableIds, SliceError, SliceTable, choose_preferred, request_shape
from tensorai.deviceplugin.wireids import WireLayout, WireRequest, container_spans
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc
from tensorai.proto.podslots import GPUPortion, Owner

log = logging.getLogger(__name__)

MAX_CONTAINER_REQUESTS = 16  # kubelet sends exactly one; more is hostile
# kubelet holds one ListAndWatch stream; room for a reconnecting kubelet's new stream while the old one
# closes, and one more. With the server's 8 workers this leaves at least 5 for the other calls.
MAX_LIST_AND_WATCH_STREAMS = 3
SERVICE_NAME = "v1beta1.DevicePlugin"


class HealthSource(Protocol):
    """The part of health.HealthTracker the service reads."""

    @property
    def generation(self) -> int: ...

    def is_healthy(self, uuid: str) -> bool: ...

    def wait_for_change(self, generation: int, timeout_s: float, *, stop: threading.Event | None = None) -> int: ...

    def wake(self) -> None: ...


class VGPUManager:
    """Preferred allocation, Allocate and reconciliation for one node's GPUs."""

    def __init__(
        self,
        table: SliceTable,
        health_source: HealthSource,
        sharing: SharingPolicy,
        book: AllocationBook,
        identity: PodIdentity | None = None,
        *,
        on_allocated: Callable[[AllocationRecord], None] | None = None,
        admitting: Callable[[Mapping[PodName, str]], PodName | None] | None = None,
        on_moved: Callable[[list[str]], None] | None = None,
        kubelet_listing: Callable[[], Mapping[tuple[str, str, str], frozenset[str]]] | None = None,
    ) -> None:
        self.table = table
        # kubelet's pod-resources listing, read when an Allocate names IDs our book holds (see _refuse_held).
        self.kubelet_listing = kubelet_listing
        # Told the pods whose placements an Allocate moved (their annotations must be rewritten).
        self.on_moved = on_moved
        # Asks kubelet which of several waiting pods it is admitting (podresources.admitting_pod).
        self.admitting = admitting
        self._listing_names_pods = False  # learned the first time kubelet's listing names a pod it admits
        self.health = health_source
        self.sharing = sharing
        self.book = book
        self.identity = identity
        self.on_allocated = on_allocated
        if identity is not None:
            identity.on_pod_gone = book.release_pod
        self._claim_lock = threading.RLock()
        self.wire_layout = WireLayout.for_table(table)  # None: GetPreferredAllocation takes the per-ID path
        # kubelet's call pattern tells a reuse of init-container devices apart: it calls
        # GetPreferredAllocation with those IDs as must_include, or not at all when they cover the
        # request. None = no GetPreferredAllocation since the last Allocate.
        self._last_must_include: frozenset[str] | None = None
        # When kubelet last called: background work waits for a pause (see quiet.py).
        self.calls = CallClock()

    def options(self) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def device_list(self) -> dp.ListAndWatchResponse:
        return self.table.device_list({uuid: self.health.is_healthy(uuid) for uuid in self.table.uuids})

    def default_memory_mib(self, uuid: str, milli: int) -> int:
        """The share of a GPU's usable memory (total - reserved) that `milli` stands for."""
        gpu = self.table.gpu(uuid)
        return (gpu.memory_mib - gpu.reserved_mib) * milli // contract.MILLI_PER_GPU

    # --- GetPreferredAllocation ------------------------------------------------------------------
    def preferred(
        self,
        request: dp.ContainerPreferredAllocationRequest,
        *,
        available: AvailableIds | None = None,
        hold: list[object] | None = None,
    ) -> list[str]:
        """The IDs to suggest for one container.

        `available` are its candidate IDs when already read from the wire bytes (wireids.py);
        otherwise they are indexed from the message (the per-ID path). `hold` receives the
        request-sized objects this builds, so the caller can free them after the reply has gone out.
        """
        self.calls.mark()
        if available is None:
            available = self.table.available(request.available_deviceIDs)
        if hold is not None:
            hold.append(available)
        must = self.table.group_by_gpu(request.must_include_deviceIDs, what="must_include_deviceIDs")
        if any(device not in available for ids in must.values() for device in ids):
            raise SliceError("must_include_deviceIDs must be a subset of available_deviceIDs")
        self._last_must_include = frozenset(device for ids in must.values() for device in ids)
        size = request.allocation_size
        request_shape(size, gpu_count=len(self.table.uuids))
        self.sharing.check_request(size)
        healthy = available.without(uuid for uuid in self.table.uuids if not self.health.is_healthy(uuid))
        targets = []
        admitting = None
        if self.identity is not None:
            admitting = self._admitting(size)
            targets = self.identity.target_gpu_sets(size, wait_s=self.identity.catch_up_s, admitting=admitting)
        if admitting is not None and len(targets) > 1:
            # The named pod's own placement if kubelet has room there; its class's other positions only if not.
            own = choose_preferred(self.table, healthy, must, size, target_gpus=targets[:1])
            if {self.table.gpu_of(device) for device in own} == set(targets[0]):
                return own
            targets = targets[1:]
        return choose_preferred(self.table, healthy, must, size, target_gpus=targets)

    def _admitting(self, size: int) -> PodName | None:
        """The pod kubelet admits now, when kubelet's listing can tell (one List call per kubelet call).

        Waits (catch_up_s) for the watch to show a waiting pod first, and again while kubelet admits a pod
        our watch has not delivered yet (seen on the real kubelet: the only waiting pod was a neighbour,
        which the class rule would have been given the call)."""
        if self.admitting is None or self.identity is None:
            return None
        deadline = time.monotonic() + self.identity.catch_up_s
        while True:
            remaining = deadline - time.monotonic()
            waiting = self.identity.pending_containers(size, wait_s=max(remaining, 0.0))
            answer = self.admitting(waiting)
            if answer != NOT_YET_SEEN:
                self._listing_names_pods = self._listing_names_pods or answer is not None
                return answer
            if remaining <= 0 or not self._listing_names_pods:
                # (a kubelet whose listing never named a pod it admits tells nothing by naming none)
                return None  # the class rule decides, and the reconciler corrects it after the fact
            # kubelet admits a pod our watch has not delivered: wait for the watch, then ask again
            self.identity.wait_changed(min(remaining, 0.25))

    # --- Allocate --------------------------------------------------------------------------------
    def allocate(self, requests: Sequence[Sequence[str]]) -> list[dp.ContainerAllocateResponse]:
        """Allocate every container request, all or nothing."""
        self.calls.mark()
        if not requests:
            raise SliceError("AllocateRequest has no container_requests")
        if len(requests) > MAX_CONTAINER_REQUESTS:
            raise SliceError(f"AllocateRequest has {len(requests)} container_requests; kubelet sends one")
        seen: set[str] = set()
        for ids in requests:
            overlap = seen.intersection(ids)
            if overlap:
                raise SliceError(f"device ID {sorted(overlap)[0]!r} is requested by two containers")
            seen.update(ids)
        self._refuse_held(seen)
        made: list[AllocationRecord] = []
        responses: list[dp.ContainerAllocateResponse] = []
        try:
            for ids in requests:
                record = self._allocate_one(list(ids))
                made.append(record)
                responses.append(self.sharing.container_response(record.portions))
        except Exception:
            for record in made:
                self.book.remove(record.record_id)
            raise
        for record in made:
            if self.on_allocated is not None:
                self.on_allocated(record)
        return responses

    def _refuse_held(self, device_ids: set[str]) -> None:
        """Refuse IDs that a running container holds: handing them out twice breaks the share of both.

        Our book alone cannot tell: kubelet reuses a deleted pod's IDs as soon as it frees them, before
        our watch or reconciler drops the record (the book then treats it as stale). So when the book
        holds any of the IDs, kubelet's own listing decides; it never lists the container being
        allocated yet (kubelet records an allocation after Allocate answers), nor regular init containers
        whose IDs it hands on to the app containers, nor a container it re-allocates after a restart
        because its checkpoint lost it. An ID it lists under a container is therefore taken."""
        if self.kubelet_listing is None or not self.book.knows_any(device_ids):
            return
        try:
            listing = self.kubelet_listing()
        except PodResourcesError as error:
            log.warning("Allocate names device IDs the plugin recorded for another container, and kubelet's "
                        "listing cannot be read to check them (%s): allowing it", error)
            return
        for (namespace, pod, container), held in listing.items():
            taken = held.intersection(device_ids)
            if taken:
                more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
                raise SliceError(
                    f"device ID {sorted(taken)[0]!r}{more} is already allocated to running "
                    f"container {namespace}/{pod}[{container}], as kubelet's pod-resources listing shows; "
                    "refusing to hand it out twice",
                    precondition=True,
                )

    def _allocate_one(self, device_ids: list[str]) -> AllocationRecord:
        available = self.table.available(device_ids, what="devices_ids")
        grouped = {uuid: available.count(uuid) for uuid in self.table.uuids if available.count(uuid)}
        size = len(device_ids)
        shape = request_shape(size, gpu_count=len(self.table.uuids))
        self.sharing.check_request(size)
        if shape.fractional and len(grouped) != 1:
            spread = ", ".join(f"{uuid} ({count})" for uuid, count in grouped.items())
            raise SliceError(
                f"a fractional request of {size} milli-GPU must lie on one GPU, but its device IDs span {spread}; "
                "kubelet filled a shortfall from other GPUs",
                precondition=True,
            )
        if not shape.fractional:
            partial = {uuid: count for uuid, count in grouped.items() if count != contract.MILLI_PER_GPU}
            if partial:
                raise SliceError(
                    f"a whole-GPU request of {size} milli-GPU must get all {contract.MILLI_PER_GPU} slices of "
                    f"{shape.whole_gpus} GPU(s), got partial GPUs {partial}",
                    precondition=True,
                )
        broken = [uuid for uuid in grouped if not self.health.is_healthy(uuid)]
        if broken:
            raise SliceError(f"device IDs lie on unhealthy GPU(s) {', '.join(broken)}", precondition=True)
        gpu_set = frozenset(grouped)
        if self.identity is None:
            portions = tuple(GPUPortion(uuid, count, self.default_memory_mib(uuid, count))
                             for uuid, count in grouped.items())
            return self.book.add(device_ids, portions, UNKNOWN_OWNER)
        must, self._last_must_include = self._last_must_include, None
        # Reused IDs are only possible when kubelet asked no preference, or named them as must_include;
        # after a plain GetPreferredAllocation the IDs are fresh even if a stale record still holds them.
        reused_from = self.book.owners_of(device_ids) if must is None or must else set()
        admitting = None if reused_from else self._admitting(size)  # asked outside the lock: a kubelet call
        with self._claim_lock:  # a reconciliation must not relabel between the choice and the record
            try:
                claim = self.identity.claim(gpu_set, size, reused_from=reused_from, admitting=admitting)
            except ReusedDevicesMisplaced as error:
                self.book.release_pod(error.pod_uid)  # kubelet fails the pod's admission and frees its devices
                raise
            try:
                portions = self._portions_for(grouped, claim.portions, claim.slot.memory_mib)
                log.debug("Allocate of %d on %s: %s/%s[%s]%s", size, ",".join(sorted(gpu_set)), claim.slot.namespace,
                          claim.slot.pod_name, claim.slot.container,
                          " (kubelet's listing named it)" if admitting else "")
                record = self.book.add(device_ids, portions, claim.slot.owner)
            finally:
                self.identity.finish(claim)
            if claim.portions and frozenset(p.uuid for p in claim.portions) != self.identity.placement_set(claim.slot):
                # kubelet put this container on another position of its class (its own GPU lacked free IDs
                # in kubelet's count, e.g. a deleted pod's not yet released): move the class's placements
                # now, so the Assignments say where it runs and the displaced pod goes to the freed GPU.
                moved = self.identity.rebalance({claim.slot.class_key})
                if moved and self.on_moved is not None:
                    self.on_moved(moved)
            return record

    def _portions_for(
        self, grouped: Mapping[str, int], assigned: Sequence[GPUPortion], memory_mib: int | None
    ) -> tuple[GPUPortion, ...]:
        by_uuid = {portion.uuid: portion for portion in assigned}
        portions = []
        for uuid, milli in grouped.items():
            memory = by_uuid[uuid].memory_mib if uuid in by_uuid else (memory_mib or 0)
            portions.append(GPUPortion(uuid, milli, memory or self.default_memory_mib(uuid, milli)))
        return tuple(portions)

    # --- reconciliation with kubelet's pod-resources listing -------------------------------------
    def reconcile(self, listing: Mapping[tuple[str, str, str], frozenset[str]]) -> list[str]:
        """Correct owners from kubelet's listing; returns, in write order, the pods whose annotations change."""
        owner_of: dict[tuple[str, str, str], Owner] = {}
        portions_of: dict[tuple[str, str, str], tuple[GPUPortion, ...]] = {}
        live: set[str] | None = None
        slots = self.identity.owner_index() if self.identity is not None else {}
        pods = {state.uid: state for state in self.identity.pods()} if self.identity is not None else {}
        for key, ids in listing.items():
            slot = slots.get(key)
            if slot is not None:
                owner_of[key] = slot.owner
            if self.book.knows_any(ids):
                continue  # portions are only needed to adopt allocations the book does not know
            try:
                grouped = self.table.group_by_gpu(ids, what="pod-resources listing")
            except SliceError as error:
                log.warning("ignoring kubelet's listing for %s: %s", "/".join(key), error)
                continue
            known = {}
            if slot is not None:
                known = {p.uuid: p for p in pods[slot.pod_uid].allocated.get(slot.container, slot.portions)}
            portions_of[key] = tuple(
                GPUPortion(
                    uuid,
                    len(gids),
                    known[uuid].memory_mib if uuid in known and known[uuid].memory_mib
                    else (slot.memory_mib if slot is not None and slot.memory_mib else 0)
                    or self.default_memory_mib(uuid, len(gids)),
                )
                for uuid, gids in grouped.items()
            )
        if self.identity is not None and self.identity.synced.is_set():
            live = self.identity.live_uids()
        with self._claim_lock:
            return self._apply_listing(listing, owner_of, portions_of, live, slots)

    def _apply_listing(
        self,
        listing: Mapping[tuple[str, str, str], frozenset[str]],
        owner_of: Mapping[tuple[str, str, str], Owner],
        portions_of: Mapping[tuple[str, str, str], tuple[GPUPortion, ...]],
        live: set[str] | None,
        slots: Mapping[tuple[str, str, str], Any],
    ) -> list[str]:
        outcome = self.book.reconcile(listing, owner_of=owner_of, portions_of=portions_of, live_pod_uids=live)
        changed: list[str] = []
        for record, before in outcome.relabelled:
            (log.info if before.pod_uid else log.debug)(
                "kubelet gave %s to %s/%s[%s], not %s/%s[%s] (interchangeable): relabelled",
                ",".join(p.uuid for p in record.portions), record.owner.namespace, record.owner.pod_name,
                record.owner.container_name, before.namespace, before.pod_name, before.container_name,
            )
        touched_classes = set()
        for record, before in outcome.relabelled:
            for owner in (record.owner, before):
                slot = slots.get(owner.listing_key)
                if slot is not None:
                    touched_classes.add(slot.class_key)
        if self.identity is not None:
            changed.extend(self.identity.rebalance(touched_classes))
        for record, before in outcome.relabelled:
            changed.extend(uid for uid in (record.owner.pod_uid, before.pod_uid) if uid)
        changed.extend(record.owner.pod_uid for record in outcome.adopted if record.owner.pod_uid)
        changed.extend(record.owner.pod_uid for record in outcome.confirmed if record.owner.pod_uid)
        if self.identity is not None:
            self.identity.book_authoritative = True
            self.identity.notify()
        return list(dict.fromkeys(changed))


class DevicePluginServicer(dp_grpc.DevicePluginServicer):
    """kubelet's DevicePlugin service: protobuf in, VGPUManager, protobuf out."""

    def __init__(self, manager: VGPUManager, *, stream_poll_s: float = 0.5,
                 max_streams: int = MAX_LIST_AND_WATCH_STREAMS) -> None:
        self.manager = manager
        self._stream_poll_s = stream_poll_s
        self._stopping = threading.Event()
        self.streams_opened = 0
        self.max_streams = max_streams
        self._streams: list[threading.Event] = []  # the open streams' end signals, oldest first
        self._streams_lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        with self._streams_lock:
            return len(self._streams)

    def _open_stream(self, ended: threading.Event) -> bool:
        """Admit a new stream unless `max_streams` are open: each open stream holds one of the server's
        workers, so without a cap a few idle streams would leave none for Allocate. The newcomer is the
        one refused, never an open stream: kubelet marks every device unhealthy when its stream ends
        (deviceplugin-api.md), so ending the oldest would let any extra client knock kubelet off."""
        with self._streams_lock:
            if len(self._streams) >= self.max_streams:
                return False
            self._streams.append(ended)
            return True

    def _close_stream(self, ended: threading.Event) -> None:
        with self._streams_lock:
            self._streams.remove(ended)

    def stop_streams(self) -> None:
        """End every ListAndWatch stream (server shutdown)."""
        self._stopping.set()
        self.manager.health.wake()

    def GetDevicePluginOptions(self, request: dp.Empty, context: grpc.ServicerContext) -> dp.DevicePluginOptions:
        return self.manager.options()

    def ListAndWatch(self, request: dp.Empty, context: grpc.ServicerContext) -> Iterator[dp.ListAndWatchResponse]:
        """Send the full list now and again after every health change (within stream_poll_s)."""
        self.streams_opened += 1
        health = self.manager.health
        ended = threading.Event()

        def on_end() -> None:  # kubelet went away: free this worker thread now, not at the next poll
            ended.set()
            health.wake()

        context.add_callback(on_end)
        if not self._open_stream(ended):
            log.warning("refused a ListAndWatch stream: %d are open already (kubelet holds one)", self.max_streams)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_streams} ListAndWatch streams are open already; kubelet needs only one")
        try:
            generation = health.generation
            yield self.manager.device_list()
            while context.is_active() and not self._stopping.is_set() and not ended.is_set():
                latest = health.wait_for_change(generation, self._stream_poll_s, stop=ended)
                if latest != generation:
                    generation = latest
                    yield self.manager.device_list()
        finally:
            self._close_stream(ended)

    def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest | WireRequest, context: grpc.ServicerContext
    ) -> dp.PreferredAllocationResponse:
        """`request` is a WireRequest when served by PluginServer: its IDs are read from the bytes."""
        # Freeing kubelet's 8,000 ID strings and their sets (per-ID path) takes ~0.15 ms; gRPC runs
        # this callback after the reply is sent, so kubelet does not wait for it.
        held: list[object] = []
        context.add_callback(held.clear)
        try:
            containers = self._containers(request)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid PreferredAllocationRequest")
        response = dp.PreferredAllocationResponse()
        if not containers or len(containers) > MAX_CONTAINER_REQUESTS:
            _abort(context, SliceError(f"expected 1..{MAX_CONTAINER_REQUESTS} container_requests, "
                                       f"got {len(containers)}"))
        for container, available in containers:
            try:
                ids = self.manager.preferred(container, available=available, hold=held)
            except Exception as error:
                _abort(context, error)
            response.container_responses.add(deviceIDs=ids)
        return response

    def _containers(
        self, request: dp.PreferredAllocationRequest | WireRequest
    ) -> list[tuple[dp.ContainerPreferredAllocationRequest, AvailableIds | None]]:
        """Each container request, with its candidate IDs already read from the wire bytes where they could
        be (the message then lacks them and is not parsed whole), else None: the per-ID path."""
        if isinstance(request, WireRequest):
            layout = self.manager.wire_layout
            spans = container_spans(request.raw) if layout is not None else None
            if layout is not None and spans is not None and len(spans) <= MAX_CONTAINER_REQUESTS:
                read = [layout.read_container(request.raw, start, end) for start, end in spans]
                if all(found is not None for found in read):
                    return [(rest, available) for available, rest in filter(None, read)]
            request = request.message
        return [(container, None) for container in request.container_requests]

    def Allocate(self, request: dp.AllocateRequest, context: grpc.ServicerContext) -> dp.AllocateResponse:
        try:
            responses = self.manager.allocate([list(c.devices_ids) for c in request.container_requests])
        except Exception as error:
            _abort(context, error)
        return dp.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()


def _abort(context: grpc.ServicerContext, error: Exception) -> None:
    if isinstance(error, SliceError):
        code = grpc.StatusCode.FAILED_PRECONDITION if error.precondition else grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(error, IdentityError):
        code = grpc.StatusCode.FAILED_PRECONDITION
    else:
        log.exception("unexpected error in a device plugin call")
        code = grpc.StatusCode.INTERNAL
        error = RuntimeError(f"internal error: {type(error).__name__}: {error}")
    context.abort(code, str(error)[:2000])


class _HandlerCapture:
    """Stands in for a server to take the generated code's method handlers (one table, not a copy)."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_device_plugin_service(servicer: DevicePluginServicer, server: Any) -> None:
    """The generated registration, except that GetPreferredAllocation's request keeps its wire bytes."""
    capture = _HandlerCapture()
    dp_grpc.add_DevicePluginServicer_to_server(servicer, capture)
    handlers = capture.handlers
    handlers["GetPreferredAllocation"] = handlers["GetPreferredAllocation"]._replace(request_deserializer=WireRequest)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class PluginServer:
    """One gRPC server on the plugin's unix socket: DevicePlugin + grpc.health.v1."""

    def __init__(self, servicer: DevicePluginServicer, socket_path: str, *, max_workers: int = 8) -> None:
        self.servicer = servicer
        self.socket_path = socket_path
        self._max_workers = max_workers
        self._server: Any = None
        self._inode: int | None = None

    def start(self) -> PluginServer:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # a stale socket of a previous run; binding would fail
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="dp"))
        add_device_plugin_service(self.servicer, self._server)
        health_servicer = health.HealthServicer()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        self._server.start()
        self._inode = os.stat(self.socket_path).st_ino
        return self

    def socket_intact(self) -> bool:
        """False once someone (a restarting kubelet) removed or replaced our socket file."""
        try:
            return os.stat(self.socket_path).st_ino == self._inode
        except FileNotFoundError:
            return False

    def stop(self, grace_s: float = 0.5) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 1.0)
            self._server = None
        if self.socket_intact():
            os.unlink(self.socket_path)
