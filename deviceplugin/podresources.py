"""Client of kubelet's pod-resources v1 API: who kubelet is admitting, and the loop that reconciles.

The listing is the only kubelet-side truth about which container holds which device IDs. It is
read in two places:
- after the fact, by the Reconciler: it corrects choices (pod identity swaps, allocations from before
  a plugin restart, pods that are gone);
- inside GetPreferredAllocation/Allocate, by `admitting_pod`, when more than one pod waits for the
  call's size. kubelet (HandlePodAdditions) adds a pod to its pod manager just before admitting it and
  admits pods one at a time, so the listing holds the pods already admitted plus the one being
  admitted now - never a pod kubelet has not reached yet. Of the pods waiting for this size, the one
  the listing shows without devices is the one the call is for (docs/deviceplugin.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import grpc

from tensorai.deviceplugin.quiet import CallClock
from tensorai.proto import contract
from tensorai.proto import podresources_v1_pb2 as pr
from tensorai.proto import podresources_v1_pb2_grpc as pr_grpc

log = logging.getLogger(__name__)

DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
MAX_RECEIVE_BYTES = 16 * 1024 * 1024  # what kubernetes' own consumers use

Listing = dict[tuple[str, str, str], frozenset[str]]


class PodResourcesError(RuntimeError):
    """kubelet's pod-resources socket is missing or failed."""


class PodResourcesClient:
    """List / GetAllocatableResources over kubelet's pod-resources unix socket."""

    def __init__(self, socket_path: str = DEFAULT_POD_RESOURCES_SOCKET, *, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path}", options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        )
        self._stub = pr_grpc.PodResourcesListerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _list(self, timeout_s: float | None = None) -> pr.ListPodResourcesResponse:
        try:
            return self._stub.List(pr.ListPodResourcesRequest(), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as error:
            raise PodResourcesError(f"pod-resources List at {self.socket_path} failed: {error.code().name}: "
                                    f"{error.details()}") from error

    def pods_and_holders(self, resource_name: str = contract.RESOURCE_VGPU_MILLI,
                         timeout_s: float | None = None) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
        """(namespace, pod) of every pod kubelet lists, and (namespace, pod, container) of each container
        holding devices of `resource_name`."""
        pods: set[tuple[str, str]] = set()
        holders: set[tuple[str, str, str]] = set()
        for pod in self._list(timeout_s).pod_resources:
            pods.add((pod.namespace, pod.name))
            for container in pod.containers:
                if any(d.resource_name == resource_name and d.device_ids for d in container.devices):
                    holders.add((pod.namespace, pod.name, container.name))
        return pods, holders

    def list_resource(self, resource_name: str = contract.RESOURCE_VGPU_MILLI) -> Listing:
        """(namespace, pod, container) -> the device IDs of `resource_name` kubelet assigned it."""
        response = self._list()
        listing: Listing = {}
        for pod in response.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    if devices.resource_name != resource_name or not devices.device_ids:
                        continue
                    key = (pod.namespace, pod.name, container.name)
                    ids = frozenset(devices.device_ids)  # one C-level pass; no per-ID Python loop
                    listing[key] = listing[key] | ids if key in listing else ids
        return listing

    def allocatable(self, resource_name: str = contract.RESOURCE_VGPU_MILLI) -> set[str]:
        """The healthy device IDs kubelet knows for `resource_name`."""
        try:
            response = self._stub.GetAllocatableResources(pr.AllocatableResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise PodResourcesError(f"pod-resources GetAllocatableResources failed: {error.code().name}") from error
        return {d for devices in response.devices if devices.resource_name == resource_name for d in devices.device_ids}


ADMITTING_TIMEOUT_S = 1.0  # a kubelet too slow to list within this is not asked: the call goes on without


NOT_YET_SEEN = ("", "")  # kubelet admits none of the waiting pods: our watch has not shown its pod yet


def admitting_pod(client: PodResourcesClient, waiting: Mapping[tuple[str, str], str]) -> tuple[str, str] | None:
    """Of the pods `waiting` (namespace, pod -> its container next in line for the call's size), the one
    kubelet is admitting now; NOT_YET_SEEN when kubelet lists none of them (it admits a pod our watch
    has not delivered yet: wait for it rather than give its call to a waiting neighbour); None when
    the listing cannot tell (then the identity protocol's class rule applies, as without pod-resources).

    kubelet lists a pod from the moment it starts admitting it; a waiting pod it lists whose next
    container holds no devices is therefore being admitted. Exactly one such pod is an answer.
    """
    if not waiting:
        return None
    try:
        listed, holders = client.pods_and_holders(timeout_s=ADMITTING_TIMEOUT_S)
    except PodResourcesError as error:
        log.debug("cannot ask kubelet which pod it admits: %s", error)
        return None
    here = [pod for pod, container in waiting.items() if pod in listed and (*pod, container) not in holders]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("waiting for this size: %s; kubelet lists without devices: %s", sorted(waiting), here)
    if not here:
        return NOT_YET_SEEN
    return here[0] if len(here) == 1 else None


class Reconciler:
    """Runs `reconcile(listing)` shortly after each Allocate (kick) and every `interval_s`."""

    def __init__(
        self,
        client: PodResourcesClient,
        reconcile: Callable[[Mapping[tuple[str, str, str], frozenset[str]]], list[str]],
        on_changed: Callable[[list[str]], None],
        *,
        interval_s: float = 10.0,
        settle_s: float = 0.2,
        calls: CallClock | None = None,
    ) -> None:
        self._client = client
        self._reconcile = reconcile
        self._on_changed = on_changed
        self.interval_s = interval_s
        self.settle_s = settle_s
        # After a kick, also wait for a pause in kubelet's calls (`CallClock.wait_for_pause`):
        # listing and reconciling mid-burst competes with the next admission for the GIL.
        self._calls = calls
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_error: str | None = None
        self._done = threading.Condition()

    def start(self) -> Reconciler:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()
        return self

    @property
    def working(self) -> bool:
        """True once a listing was read and the last attempt succeeded."""
        return self.runs > 0 and self.last_error is None

    def kick(self) -> None:
        """An Allocate just returned: kubelet will list it momentarily."""
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def run_once(self) -> list[str]:
        changed = self._reconcile(self._client.list_resource())
        if changed:
            self._on_changed(changed)
        with self._done:
            self.runs += 1
            self._done.notify_all()
        return changed

    def wait_runs(self, count: int, timeout_s: float) -> bool:
        with self._done:
            return self._done.wait_for(lambda: self.runs >= count, timeout=timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except PodResourcesError as error:
                if self.last_error != str(error):
                    log.warning("%s; the book is corrected when it answers again", error)
                self.last_error = str(error)
            except Exception:
                log.exception("reconciliation failed")
            kicked = self._kick.wait(self.interval_s)
            self._kick.clear()
            if kicked:
                self._stop.wait(self.settle_s)
                if self._calls is not None:
                    self._calls.wait_for_pause(stop=self._stop)
