"""A stub kubelet that speaks the real v1beta1 device-plugin API and pod-resources v1 over unix sockets.

It does what kubelet's device manager does (reference/deviceplugin-api.md), no more:
- serves `v1beta1.Registration` on `<dir>/kubelet.sock`; on Register it checks version and resource
  name, dials the plugin back, calls GetDevicePluginOptions, then reads ListAndWatch in the
  background (each message replaces the device set; a broken stream makes every device unhealthy);
- `admit(...)` admits a pod container by container: free = healthy - allocated; GetPreferredAllocation
  with all free IDs when the plugin offers it; intersects the answer with the free set and fills any
  shortfall from other free IDs (in random order, as kubelet's unsorted set does); then Allocate.
  Any error fails the whole pod and rolls its devices back;
- init containers as kubelet's device manager treats them (`devicesToReuse`): init containers are
  allocated first, in order; the devices of a finished (non-restartable) init container are reused by
  the pod's next containers before any free device - with no GetPreferredAllocation call when they
  cover the request, else with them as `must_include_deviceIDs` - and stay held by the pod until it
  ends (leftovers included, kubernetes#71312). A restartable init container (sidecar,
  `restartPolicy: Always`) keeps its devices like an app container. Non-restartable init containers
  are not in the pod-resources listing;
- serves `v1.PodResourcesLister` (List, GetAllocatableResources, Get) from the same bookkeeping;
- `restart()` deletes every socket file in the directory and recreates `kubelet.sock`, like a
  restarting kubelet; allocations survive (kubelet's checkpoint), devices are empty until the plugin
  registers again.

Used by the device plugin's tests, its benchmark and the local demo.
"""

from __future__ import annotations

import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc
from tensorai.proto import podresources_v1_pb2 as pr
from tensorai.proto import podresources_v1_pb2_grpc as pr_grpc
from tensorai.proto.quantity import quantity_to_int

API_VERSION = "v1beta1"
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class AdmissionError(RuntimeError):
    """The pod failed admission (kubelet's UnexpectedAdmissionError); `code` is the gRPC code name or
    "Insufficient" when kubelet itself had too few devices."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_extended_resource_name(name: str) -> bool:
    """kubelet's check at Register: a domain-prefixed, non-kubernetes.io qualified name."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    prefix, _, short = ("requests." + name).rpartition("/")
    return (
        len(prefix) <= 253
        and bool(_DNS_SUBDOMAIN.match(prefix))
        and len(short) <= 63
        and bool(_QUALIFIED_NAME.match(short))
    )


@dataclass
class _Endpoint:
    resource_name: str
    socket_path: str
    options: dp.DevicePluginOptions
    channel: grpc.Channel
    stub: dp_grpc.DevicePluginStub
    stream: Any = None


@dataclass(frozen=True)
class AdmittedContainer:
    """What one container got: its device IDs and the plugin's Allocate answer."""

    name: str
    device_ids: tuple[str, ...]
    response: dp.ContainerAllocateResponse
    preferred: tuple[str, ...] = ()


@dataclass
class _State:
    devices: dict[str, str] = field(default_factory=dict)  # ID -> "Healthy"/"Unhealthy"
    allocated: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)  # every container
    init_keys: set[tuple[str, str, str]] = field(default_factory=set)  # non-restartable init containers
    # kubelet's pod manager: a pod enters just before its admission starts and leaves when it ends or is
    # rejected. Its app containers and sidecars are listed by pod-resources, with or without devices.
    pod_manager: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    updates: int = 0
    first_list_bytes: int = 0


class StubKubelet:
    """kubelet's device manager and pod-resources server, for one resource, in-process."""

    def __init__(
        self,
        plugin_dir: str,
        *,
        pod_resources_socket: str | None = None,
        resource_name: str = contract.RESOURCE_VGPU_MILLI,
        honor_preferred: bool = True,
        rng: random.Random | None = None,
        dial_timeout_s: float = 10.0,
        observe: Callable[[str, float], None] | None = None,
        list_admitting: bool = True,
    ) -> None:
        self.plugin_dir = plugin_dir
        # Real kubelet lists a pod from the moment its admission starts (pod manager first, then the
        # device manager); False lists only containers holding devices, as a listing read too late would.
        self.list_admitting = list_admitting
        self.dial_timeout_s = dial_timeout_s  # kubelet's blocking dial-back timeout
        self.observe = observe  # called with (rpc name, seconds) after each admission RPC: benchmarks
        self.pod_resources_socket = pod_resources_socket
        self.resource_name = resource_name
        self.honor_preferred = honor_preferred
        self.rng = rng or random.Random(0)
        self.registrations: list[dp.RegisterRequest] = []
        self.register_errors: list[str] = []
        self._state = _State()
        self._cond = threading.Condition()
        self._admit_lock = threading.Lock()
        self._endpoint: _Endpoint | None = None
        self._server: Any = None
        self._pr_server: Any = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.plugin_dir, "kubelet.sock")

    def start(self) -> StubKubelet:
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._start_registration_server()
        if self.pod_resources_socket:
            self._pr_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), self._pr_server)
            self._pr_server.add_insecure_port(f"unix://{self.pod_resources_socket}")
            self._pr_server.start()
        return self

    def __enter__(self) -> StubKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_registration_server(self) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        dp_grpc.add_RegistrationServicer_to_server(_Registration(self), self._server)
        self._server.add_insecure_port(f"unix://{self.kubelet_socket}")
        self._server.start()

    def stop(self) -> None:
        self._disconnect()
        for server in (self._server, self._pr_server):
            if server is not None:
                server.stop(0.2).wait(2.0)
        self._server = self._pr_server = None

    def restart(self) -> None:
        """Simulate a kubelet restart: every socket file in the directory is deleted, kubelet.sock is
        recreated, devices are unknown until the plugin registers again; allocations are kept."""
        self._disconnect()
        if self._server is not None:
            self._server.stop(0).wait(2.0)
        for name in os.listdir(self.plugin_dir):
            path = os.path.join(self.plugin_dir, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        with self._cond:
            self._state.devices = {}
            self._cond.notify_all()
        self._start_registration_server()

    def _disconnect(self) -> None:
        with self._cond:
            endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            if endpoint.stream is not None:
                endpoint.stream.cancel()
            endpoint.channel.close()

    # --- registration (called by the gRPC handler) -------------------------------------------------
    def _register(self, request: dp.RegisterRequest) -> str | None:
        """Kubelet's Register: returns an error message or None."""
        if request.version != API_VERSION:
            return (
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is "[{API_VERSION}]"'
            )
        if not is_extended_resource_name(request.resource_name):
            return f'the ResourceName "{request.resource_name}" is invalid'
        socket_path = os.path.join(self.plugin_dir, request.endpoint)
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        try:
            grpc.channel_ready_future(channel).result(timeout=self.dial_timeout_s)
            stub = dp_grpc.DevicePluginStub(channel)
            options = stub.GetDevicePluginOptions(dp.Empty(), timeout=self.dial_timeout_s)
        except (grpc.FutureTimeoutError, grpc.RpcError) as error:
            channel.close()
            return f"failed to dial device plugin at {socket_path}: {error}"
        self._disconnect()
        endpoint = _Endpoint(request.resource_name, socket_path, options, channel, stub)
        with self._cond:
            self._endpoint = endpoint
            self.registrations.append(request)
            self._cond.notify_all()
        threading.Thread(target=self._list_and_watch, args=(endpoint,), name="kubelet-law", daemon=True).start()
        return None

    def _list_and_watch(self, endpoint: _Endpoint) -> None:
        try:
            endpoint.stream = endpoint.stub.ListAndWatch(dp.Empty())
            for response in endpoint.stream:
                with self._cond:
                    if self._endpoint is not endpoint:
                        return
                    self._state.devices = {d.ID: d.health for d in response.devices}
                    if self._state.updates == 0:
                        self._state.first_list_bytes = response.ByteSize()
                    self._state.updates += 1
                    self._cond.notify_all()
        except (grpc.RpcError, ValueError):  # ValueError: the channel was closed by a newer registration
            pass
        with self._cond:  # stream gone: kubelet marks every device of the resource unhealthy
            if self._endpoint is endpoint:
                self._state.devices = dict.fromkeys(self._state.devices, "Unhealthy")
                self._cond.notify_all()

    # --- observation -----------------------------------------------------------------------------
    @property
    def options(self) -> dp.DevicePluginOptions | None:
        with self._cond:
            return self._endpoint.options if self._endpoint else None

    @property
    def updates(self) -> int:
        """How many ListAndWatch messages arrived (over all registrations)."""
        with self._cond:
            return self._state.updates

    @property
    def first_list_bytes(self) -> int:
        with self._cond:
            return self._state.first_list_bytes

    def devices(self) -> dict[str, str]:
        with self._cond:
            return dict(self._state.devices)

    def healthy_ids(self) -> list[str]:
        with self._cond:
            return sorted(d for d, health in self._state.devices.items() if health == "Healthy")

    def wait_for_registration(self, count: int = 1, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.registrations) >= count, timeout=timeout_s)

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout_s: float = 5.0) -> bool:
        """Wait until `predicate(devices)` holds for the latest device set."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._state.devices), timeout=timeout_s)

    def wait_for_updates(self, count: int, timeout_s: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._state.updates >= count, timeout=timeout_s)

    def allocations(self) -> dict[tuple[str, str, str], tuple[str, ...]]:
        """(namespace, pod, container) -> device IDs, like pod-resources List (no non-restartable init containers)."""
        with self._cond:
            return {key: ids for key, ids in self._state.allocated.items() if key not in self._state.init_keys}

    def pod_manager(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(namespace, pod) -> listed container names of every pod admitted or being admitted."""
        with self._cond:
            return dict(self._state.pod_manager)

    def held_ids(self) -> set[str]:
        """Every device ID a live pod holds, init containers' included (what is not free)."""
        with self._cond:
            return {device for ids in self._state.allocated.values() for device in ids}

    # --- admission -------------------------------------------------------------------------------
    def admit_pod(self, pod: Mapping[str, Any]) -> dict[str, AdmittedContainer]:
        """Admit a pod given as API JSON, reading each container's and init container's limit of the resource."""
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}

        def requests(field_name: str) -> list[tuple[str, int, bool]]:
            found = []
            for container in spec.get(field_name) or ():
                limit = ((container.get("resources") or {}).get("limits") or {}).get(self.resource_name)
                restartable = field_name == "initContainers" and container.get("restartPolicy") == "Always"
                found.append((container["name"], quantity_to_int(limit) if limit is not None else 0, restartable))
            return found

        init = requests("initContainers")
        return self.admit(
            metadata.get("namespace") or "default",
            metadata["name"],
            [(name, size) for name, size, _ in requests("containers") if size > 0],
            init_containers=[(name, size) for name, size, _ in init if size > 0],
            sidecars=frozenset(name for name, _, restartable in init if restartable),
        )

    def admit(
        self,
        namespace: str,
        pod_name: str,
        containers: Sequence[tuple[str, int]],
        *,
        init_containers: Sequence[tuple[str, int]] = (),
        sidecars: frozenset[str] = frozenset(),
    ) -> dict[str, AdmittedContainer]:
        """Allocate every container of a pod as kubelet does (init containers first, reusing their devices);
        AdmissionError on any failure. `sidecars` names restartable init containers."""
        with self._admit_lock:
            admitted: dict[str, AdmittedContainer] = {}
            reusable: set[str] = set()  # kubelet's devicesToReuse for this pod
            listed = tuple(name for name, _ in init_containers if name in sidecars) + tuple(n for n, _ in containers)
            with self._cond:
                self._state.pod_manager[(namespace, pod_name)] = listed  # HandlePodAdditions: AddPod, then admit
            try:
                for name, size in init_containers:
                    got = admitted[name] = self._admit_container(namespace, pod_name, name, size, reusable)
                    if name in sidecars:
                        reusable.difference_update(got.device_ids)
                    else:
                        reusable.update(got.device_ids)
                        with self._cond:
                            self._state.init_keys.add((namespace, pod_name, name))
                for name, size in containers:
                    got = admitted[name] = self._admit_container(namespace, pod_name, name, size, reusable)
                    reusable.difference_update(got.device_ids)
            except AdmissionError:
                with self._cond:
                    self._state.pod_manager.pop((namespace, pod_name), None)  # rejected: Failed, not active
                    for name in admitted:
                        self._state.allocated.pop((namespace, pod_name, name), None)
                        self._state.init_keys.discard((namespace, pod_name, name))
                raise
            return admitted

    def _admit_container(
        self, namespace: str, pod_name: str, container: str, size: int, reusable: set[str]
    ) -> AdmittedContainer:
        # kubelet's devicesToAllocate: reusable devices first (in its unordered set's order), then free ones
        reused = list(reusable)
        self.rng.shuffle(reused)
        chosen: list[str] = reused[:size]
        with self._cond:
            endpoint = self._endpoint
            taken = {d for ids in self._state.allocated.values() for d in ids}
            free = [d for d, health in self._state.devices.items() if health == "Healthy" and d not in taken]
        if endpoint is None:
            raise AdmissionError("Unavailable", f"no device plugin registered for {self.resource_name}")
        needed = size - len(chosen)
        preferred: tuple[str, ...] = ()
        if needed > 0:
            if len(free) < needed:
                raise AdmissionError(
                    "Insufficient",
                    f"requested number of devices unavailable for {self.resource_name}. "
                    f"Requested: {needed}, Available: {len(free)}",
                )
            self.rng.shuffle(free)  # kubelet's candidate set is unordered
            if endpoint.options.get_preferred_allocation_available:
                request = dp.PreferredAllocationRequest(
                    container_requests=[
                        dp.ContainerPreferredAllocationRequest(
                            available_deviceIDs=free + chosen, must_include_deviceIDs=chosen, allocation_size=size
                        )
                    ]
                )
                started = time.perf_counter()
                try:
                    answer = endpoint.stub.GetPreferredAllocation(request, timeout=30)
                except grpc.RpcError as error:
                    raise AdmissionError(error.code().name, error.details() or "") from error
                if self.observe is not None:
                    self.observe("GetPreferredAllocation", time.perf_counter() - started)
                if answer.container_responses:
                    preferred = tuple(answer.container_responses[0].deviceIDs)
                if self.honor_preferred:
                    free_set = set(free)
                    chosen += list(dict.fromkeys(d for d in preferred if d in free_set))[:needed]
            chosen_set = set(chosen)
            chosen += [d for d in free if d not in chosen_set][: size - len(chosen)]
        started = time.perf_counter()
        try:
            response = endpoint.stub.Allocate(
                dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=chosen)]), timeout=30
            )
        except grpc.RpcError as error:
            raise AdmissionError(error.code().name, error.details() or "") from error
        if self.observe is not None:
            self.observe("Allocate", time.perf_counter() - started)
        if not response.container_responses:
            raise AdmissionError("Unknown", "no containers return in allocation response")
        with self._cond:
            self._state.allocated[(namespace, pod_name, container)] = tuple(chosen)
        return AdmittedContainer(container, tuple(chosen), response.container_responses[0], preferred)

    def hold_devices(self, namespace: str, pod_name: str, container: str, device_ids: Sequence[str]) -> None:
        """Mark IDs held without an Allocate: real kubelet keeps a finished or deleted pod's IDs until its
        next admission's cleanup finds the pod inactive, while the scheduler already counts them free."""
        with self._cond:
            self._state.allocated[(namespace, pod_name, container)] = tuple(device_ids)

    def remove_pod(self, namespace: str, pod_name: str) -> None:
        """The pod finished or was deleted: its devices are free again."""
        with self._cond:
            self._state.pod_manager.pop((namespace, pod_name), None)
            for key in [k for k in self._state.allocated if k[:2] == (namespace, pod_name)]:
                del self._state.allocated[key]
                self._state.init_keys.discard(key)


class _Registration(dp_grpc.RegistrationServicer):
    def __init__(self, kubelet: StubKubelet) -> None:
        self._kubelet = kubelet

    def Register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
        error = self._kubelet._register(request)
        if error is not None:
            self._kubelet.register_errors.append(error)
            context.abort(grpc.StatusCode.UNKNOWN, error)
        return dp.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: StubKubelet) -> None:
        self._kubelet = kubelet

    def _pods(self, allocated: Mapping[tuple[str, str, str], Iterable[str]]) -> dict[tuple[str, str], pr.PodResources]:
        pods: dict[tuple[str, str], pr.PodResources] = {}
        for (namespace, pod, container), ids in sorted(allocated.items()):
            entry = pods.setdefault((namespace, pod), pr.PodResources(name=pod, namespace=namespace))
            entry.containers.add(
                name=container,
                devices=[pr.ContainerDevices(resource_name=self._kubelet.resource_name, device_ids=list(ids))],
            )
        return pods

    def List(self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext) -> pr.ListPodResourcesResponse:
        pods = self._pods(self._kubelet.allocations())
        if self._kubelet.list_admitting:
            for (namespace, pod), containers in self._kubelet.pod_manager().items():
                entry = pods.setdefault((namespace, pod), pr.PodResources(name=pod, namespace=namespace))
                have = {c.name for c in entry.containers}
                for name in containers:
                    if name not in have:
                        entry.containers.add(name=name)
        return pr.ListPodResourcesResponse(pod_resources=list(pods.values()))

    def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> pr.AllocatableResourcesResponse:
        ids = self._kubelet.healthy_ids()
        return pr.AllocatableResourcesResponse(
            devices=[pr.ContainerDevices(resource_name=self._kubelet.resource_name, device_ids=ids)] if ids else []
        )

    def Get(self, request: pr.GetPodResourcesRequest, context: grpc.ServicerContext) -> pr.GetPodResourcesResponse:
        pods = self._pods(self._kubelet.allocations())
        pod = pods.get((request.pod_namespace, request.pod_name))
        if pod is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_namespace}/{request.pod_name} not found")
        return pr.GetPodResourcesResponse(pod_resources=pod)


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (for callers without a condition to wait on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
