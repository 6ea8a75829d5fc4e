"""The DevicePlugin gRPC service over its real unix socket, driven by the stub kubelet (standalone mode)."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorai.demo.stub_kubelet import AdmissionError, StubKubelet, wait_until
from tensorai.deviceplugin.cli import Plugin, PluginConfig
from tensorai.deviceplugin.sharing import (
    ENV_MPS_ACTIVE_THREAD_PERCENTAGE,
    ENV_MPS_PINNED_DEVICE_MEM_LIMIT,
    ENV_MPS_PIPE_DIRECTORY,
    MPS_CONTAINER_PIPE_DIR,
    SharingPolicy,
)
from tensorai.deviceplugin.slices import SliceError
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc
from tensorai.proto.podslots import GPUPortion


class Standalone:
    """A stub kubelet and the real plugin (--no-kube) on simulated GPUs, plus a direct client."""

    def __init__(self, sharing: str = "timeslice", sim_gpus: str = "3xH100:81559", honor_preferred: bool = True):
        self.workdir = tempfile.mkdtemp(prefix="dpsvc", dir="/tmp")  # unix socket paths max 107 chars
        self.kubelet = StubKubelet(f"{self.workdir}/dp", pod_resources_socket=f"{self.workdir}/pr.sock",
                                   honor_preferred=honor_preferred, rng=random.Random(3)).start()
        self.plugin = Plugin(PluginConfig(
            backend="sim", sim_gpus=sim_gpus, node_name="node-s", no_kube=True, sharing=sharing,
            device_plugin_dir=f"{self.workdir}/dp", pod_resources_socket=f"{self.workdir}/pr.sock", metrics_port=0,
            registration_poll_s=0.1, probe_interval_s=60.0,
        )).start()
        assert self.kubelet.wait_for_registration(1, 10) and self.kubelet.wait_for_updates(1, 10)
        self.channel = grpc.insecure_channel(f"unix://{self.plugin.runner.socket_path}")
        self.stub = dp_grpc.DevicePluginStub(self.channel)

    @property
    def uuids(self) -> list[str]:
        return self.plugin.table.uuids

    def ids(self, gpu: int, start: int, count: int) -> list[str]:
        return [contract.device_id(self.uuids[gpu], index) for index in range(start, start + count)]

    def close(self) -> None:
        self.channel.close()
        self.plugin.stop()
        self.kubelet.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[Standalone]:
    standalone = Standalone()
    try:
        yield standalone
    finally:
        standalone.close()


def gpu_of(ids: tuple[str, ...] | list[str]) -> set[str]:
    return {contract.gpu_of_device_id(d) for d in ids}


def test_options_offer_preferred_allocation_and_need_no_prestart(node: Standalone) -> None:
    options = node.kubelet.options
    assert options is not None and options.get_preferred_allocation_available and not options.pre_start_required
    request = node.kubelet.registrations[0]
    assert (request.version, request.resource_name) == ("v1beta1", contract.RESOURCE_VGPU_MILLI)


def test_kubelet_sees_1000_healthy_devices_per_gpu(node: Standalone) -> None:
    devices = node.kubelet.devices()
    assert len(devices) == 3000 and set(devices.values()) == {"Healthy"}


def test_a_critical_xid_streams_a_new_list_within_one_second(node: Standalone) -> None:
    broken = node.uuids[1]
    node.plugin.backend.inject_xid(broken, 79)
    assert node.kubelet.wait_for(lambda d: d[contract.device_id(broken, 0)] == "Unhealthy", timeout_s=1.0)
    devices = node.kubelet.devices()
    assert sum(health == "Healthy" for health in devices.values()) == 2000 and len(devices) == 3000


def test_an_application_xid_changes_nothing(node: Standalone) -> None:
    updates = node.kubelet.updates
    node.plugin.backend.inject_xid(node.uuids[0], 13)
    assert not node.kubelet.wait_for_updates(updates + 1, timeout_s=1.0)
    assert set(node.kubelet.devices().values()) == {"Healthy"}


def test_fractional_pods_binpack_onto_one_gpu_and_whole_pods_take_free_gpus(node: Standalone) -> None:
    first = node.kubelet.admit("ml", "a", [("main", 250)])["main"]
    second = node.kubelet.admit("ml", "b", [("main", 500)])["main"]
    whole = node.kubelet.admit("ml", "c", [("main", 2000)])["main"]
    assert gpu_of(first.device_ids) == gpu_of(second.device_ids) and len(gpu_of(first.device_ids)) == 1
    assert len(gpu_of(whole.device_ids)) == 2 and not gpu_of(whole.device_ids) & gpu_of(first.device_ids)
    envs = whole.response.envs
    assert set(envs[contract.ENV_VISIBLE_DEVICES].split(",")) == gpu_of(whole.device_ids)
    assert envs[contract.ENV_VGPU_MILLI] == "2000" and envs[contract.ENV_SHARING_MODE] == "timeslice"
    gpu = node.plugin.table.gpu(gpu_of(first.device_ids).pop())
    assert int(first.response.envs[contract.ENV_VGPU_MEMORY_MIB]) == (gpu.memory_mib - gpu.reserved_mib) * 250 // 1000


def test_kubelet_filling_a_shortfall_across_gpus_is_refused_with_the_reason() -> None:
    node = Standalone(honor_preferred=False)  # kubelet ignores the hint and picks random free IDs
    try:
        with pytest.raises(AdmissionError) as caught:
            node.kubelet.admit("ml", "spread", [("main", 300)])
        assert caught.value.code == "FAILED_PRECONDITION"
        assert "must lie on one GPU" in caught.value.message and "span" in caught.value.message
        assert node.plugin.book.records() == [] and node.kubelet.allocations() == {}
    finally:
        node.close()


@pytest.mark.parametrize(
    ("ids", "code", "text"),
    [
        (lambda n: n.ids(0, 0, 100) + n.ids(1, 0, 100), grpc.StatusCode.FAILED_PRECONDITION, "must lie on one GPU"),
        (lambda n: n.ids(0, 0, 500) + n.ids(1, 0, 500), grpc.StatusCode.FAILED_PRECONDITION, "partial GPUs"),
        (lambda n: ["GPU-nope::0001"], grpc.StatusCode.INVALID_ARGUMENT, "does not have"),
        (lambda n: n.ids(0, 0, 1) * 2, grpc.StatusCode.INVALID_ARGUMENT, "appears twice"),
        (lambda n: n.ids(0, 0, 1000) + n.ids(1, 0, 500), grpc.StatusCode.INVALID_ARGUMENT, "not a whole number"),
        (lambda n: [], grpc.StatusCode.INVALID_ARGUMENT, "at least 1"),
    ],
)
def test_allocate_refuses_bad_requests_with_a_clear_status(node: Standalone, ids, code, text) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.Allocate(dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=ids(node))]),
                           timeout=10)
    assert caught.value.code() == code and text in caught.value.details()
    assert node.plugin.book.records() == []


def test_allocate_on_an_unhealthy_gpu_is_refused(node: Standalone) -> None:
    node.plugin.backend.lose_gpu(node.uuids[2])
    node.plugin.tracker.record_lost(node.uuids[2])
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.Allocate(dp.AllocateRequest(container_requests=[
            dp.ContainerAllocateRequest(devices_ids=node.ids(2, 0, 10))]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unhealthy" in caught.value.details()


def test_a_multi_container_allocate_is_all_or_nothing(node: Standalone) -> None:
    good = dp.ContainerAllocateRequest(devices_ids=node.ids(0, 0, 100))
    bad = dp.ContainerAllocateRequest(devices_ids=node.ids(1, 0, 100) + node.ids(2, 0, 100))
    with pytest.raises(grpc.RpcError):
        node.stub.Allocate(dp.AllocateRequest(container_requests=[good, bad]), timeout=10)
    assert node.plugin.book.records() == []


def test_preferred_allocation_refuses_a_fractional_size_no_gpu_can_hold(node: Standalone) -> None:
    available = node.ids(0, 0, 200) + node.ids(1, 0, 200)
    request = dp.PreferredAllocationRequest(container_requests=[
        dp.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=300)])
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.GetPreferredAllocation(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot span" in caught.value.details()


def test_standalone_mode_learns_owners_from_kubelets_listing(node: Standalone) -> None:
    node.kubelet.admit("ml", "trainer", [("main", 400)])
    node.plugin.reconciler.run_once()
    (share,) = node.plugin.book.shares()
    assert (share.namespace, share.pod_name, share.container_name, share.milli) == ("ml", "trainer", "main", 400)
    node.kubelet.remove_pod("ml", "trainer")
    node.kubelet.admit("ml", "next", [("main", 1000)])  # reuses freed IDs: the stale record is replaced
    node.plugin.reconciler.run_once()
    assert [s.pod_name for s in node.plugin.book.shares()] == ["next"]


def test_grpc_health_reports_serving_on_the_plugin_socket(node: Standalone) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "v1beta1.DevicePlugin"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_mps_mode_mounts_the_pipe_directory_and_sets_client_limits() -> None:
    node = Standalone(sharing="mps")
    try:
        admitted = node.kubelet.admit("ml", "mps", [("main", 250)])["main"].response
        envs = admitted.envs
        assert envs[ENV_MPS_PIPE_DIRECTORY] == MPS_CONTAINER_PIPE_DIR
        assert envs[ENV_MPS_ACTIVE_THREAD_PERCENTAGE] == "25"
        assert envs[ENV_MPS_PINNED_DEVICE_MEM_LIMIT] == f"0={envs[contract.ENV_VGPU_MEMORY_MIB]}M"
        assert [(m.container_path, m.host_path) for m in admitted.mounts] == [
            (MPS_CONTAINER_PIPE_DIR, node.plugin.config.mps_pipe_dir)]
    finally:
        node.close()


def test_exclusive_mode_refuses_fractional_requests_and_serves_whole_gpus() -> None:
    node = Standalone(sharing="exclusive")
    try:
        with pytest.raises(AdmissionError) as caught:
            node.kubelet.admit("ml", "frac", [("main", 500)])
        assert caught.value.code == "FAILED_PRECONDITION" and "exclusive" in caught.value.message
        whole = node.kubelet.admit("ml", "whole", [("main", 1000)])["main"].response.envs
        assert whole[contract.ENV_SHARING_MODE] == "exclusive" and ENV_MPS_PIPE_DIRECTORY not in whole
    finally:
        node.close()


def test_sharing_policy_spells_per_gpu_mps_limits_for_multi_gpu_containers() -> None:
    policy = SharingPolicy("mps", "/run/mps")
    envs = policy.container_response([GPUPortion("GPU-a", 1000, 80000), GPUPortion("GPU-b", 1000, 40000)]).envs
    assert envs[ENV_MPS_PINNED_DEVICE_MEM_LIMIT] == "0=80000M,1=40000M"
    assert envs[contract.ENV_VISIBLE_DEVICES] == "GPU-a,GPU-b" and envs[contract.ENV_VGPU_MEMORY_MIB] == "120000"
    with pytest.raises(ValueError, match="not one of"):
        SharingPolicy("magic")
    with pytest.raises(SliceError):
        SharingPolicy("exclusive").check_request(250)


def test_timeslice_mode_sets_only_visibility_and_advisory_limits() -> None:
    envs = SharingPolicy("timeslice").container_response([GPUPortion("GPU-a", 250, 20000)])
    assert set(envs.envs) == {contract.ENV_VISIBLE_DEVICES, contract.ENV_VGPU_MILLI, contract.ENV_VGPU_MEMORY_MIB,
                              contract.ENV_SHARING_MODE}
    assert not envs.mounts


def test_released_pods_free_their_slices_for_the_next_admission(node: Standalone) -> None:
    for round_ in range(3):
        node.kubelet.admit("ml", f"whole-{round_}", [("main", 3000)])
        node.kubelet.remove_pod("ml", f"whole-{round_}")
    assert wait_until(lambda: len(node.plugin.book.records()) == 1, 2.0)


def test_stub_kubelets_pod_resources_api_lists_allocations_and_allocatable_devices(node: Standalone) -> None:
    from tensorai.deviceplugin.podresources import PodResourcesClient

    admitted = node.kubelet.admit("ml", "lister", [("main", 250)])["main"]
    node.plugin.backend.inject_xid(node.uuids[2], 79)
    assert node.kubelet.wait_for(lambda d: d[contract.device_id(node.uuids[2], 0)] == "Unhealthy", 5.0)
    client = PodResourcesClient(node.kubelet.pod_resources_socket)
    try:
        assert client.list_resource() == {("ml", "lister", "main"): frozenset(admitted.device_ids)}
        allocatable = client.allocatable()
        assert len(allocatable) == 2000 and not gpu_of(list(allocatable)) & {node.uuids[2]}
    finally:
        client.close()


def test_a_cancelled_list_and_watch_stream_frees_its_worker_at_once() -> None:
    """A kubelet that reconnects again and again (restarts) must not exhaust the server's workers:
    each ended stream releases its thread at once, not at the next health poll (30 s here)."""
    from tensorai.deviceplugin.allocations import AllocationBook
    from tensorai.deviceplugin.backends import open_backend
    from tensorai.deviceplugin.health import HealthTracker
    from tensorai.deviceplugin.service import DevicePluginServicer, PluginServer, VGPUManager
    from tensorai.deviceplugin.slices import SliceTable

    workdir = tempfile.mkdtemp(prefix="dplaw", dir="/tmp")
    table = SliceTable(open_backend("sim", sim_gpus="1xH100:81559", node_name="node-l").gpus())
    manager = VGPUManager(table, HealthTracker(table.uuids), SharingPolicy(), AllocationBook())
    server = PluginServer(DevicePluginServicer(manager, stream_poll_s=30.0), f"{workdir}/p.sock", max_workers=2).start()
    channel = grpc.insecure_channel(f"unix://{workdir}/p.sock")
    try:
        stub = dp_grpc.DevicePluginStub(channel)
        for _ in range(6):  # three times the worker count
            stream = stub.ListAndWatch(dp.Empty(), timeout=5.0)
            assert len(next(stream).devices) == 1000
            stream.cancel()
    finally:
        channel.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_stub_kubelet_hands_init_container_devices_on_like_kubelet(node: Standalone) -> None:
    """kubelet's devicesToReuse: the app container takes the finished init container's IDs first, with
    no GetPreferredAllocation when they cover it; leftovers stay held until the pod ends; the
    pod-resources listing shows no non-restartable init container."""
    pod = {
        "metadata": {"name": "staged", "namespace": "ml"},
        "spec": {
            "initContainers": [{"name": "warmup", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "1000"}}}],
            "containers": [{"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "400"}}}],
        },
    }
    admitted = node.kubelet.admit_pod(pod)
    init_ids, main_ids = set(admitted["warmup"].device_ids), set(admitted["main"].device_ids)
    assert len(init_ids) == 1000 and len(main_ids) == 400 and main_ids < init_ids
    assert admitted["main"].preferred == ()
    assert set(node.kubelet.allocations()) == {("ml", "staged", "main")}
    assert node.kubelet.held_ids() == init_ids, "the init container's leftover 600 IDs stay held"
    node.kubelet.remove_pod("ml", "staged")
    assert node.kubelet.held_ids() == set()


def test_stub_kubelet_never_reuses_a_sidecars_devices(node: Standalone) -> None:
    pod = {
        "metadata": {"name": "meshed", "namespace": "ml"},
        "spec": {
            "initContainers": [{"name": "proxy", "restartPolicy": "Always",
                                "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "100"}}}],
            "containers": [{"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "100"}}}],
        },
    }
    admitted = node.kubelet.admit_pod(pod)
    assert set(admitted["proxy"].device_ids).isdisjoint(admitted["main"].device_ids)
    assert set(node.kubelet.allocations()) == {("ml", "meshed", "proxy"), ("ml", "meshed", "main")}


def _allocate(node: Standalone, ids: list[str]) -> dp.AllocateResponse:
    return node.stub.Allocate(dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=ids)]),
                              timeout=10)


def test_allocate_of_ids_a_running_container_holds_is_refused(node: Standalone) -> None:
    held = list(node.kubelet.admit("ml", "holder", [("main", 250)])["main"].device_ids)
    before = node.plugin.book.records()
    with pytest.raises(grpc.RpcError) as caught:
        _allocate(node, held[:100])  # a caller on the plugin socket asking for the holder's slices again
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already allocated to running container ml/holder[main]" in caught.value.details()
    assert node.plugin.book.records() == before  # the holder's record is untouched


def test_ids_kubelet_freed_before_our_book_noticed_are_allocated_again(node: Standalone) -> None:
    # kubelet reuses a deleted pod's IDs at once; the plugin's record of them is stale, not a conflict.
    held = list(node.kubelet.admit("ml", "gone", [("main", 250)])["main"].device_ids)
    node.kubelet.remove_pod("ml", "gone")
    assert node.plugin.book.knows_any(held)
    response = _allocate(node, held)
    assert response.container_responses[0].envs[contract.ENV_VGPU_MILLI] == "250"


def test_allocate_still_answers_with_more_list_and_watch_streams_than_workers(node: Standalone) -> None:
    # Each open stream holds one of the server's 8 workers; extra streams must not take them all, and
    # must not end kubelet's (it marks every device unhealthy when its stream ends).
    kubelet_updates = node.kubelet.updates
    extra = [node.stub.ListAndWatch(dp.Empty(), timeout=30.0) for _ in range(10)]
    try:
        admitted, refused = [], []
        for stream in extra:
            try:
                assert len(next(stream).devices) == 3000
                admitted.append(stream)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "kubelet needs only one" in error.details()
                refused.append(stream)
        assert len(admitted) == node.plugin.servicer.max_streams - 1 == 2 and len(refused) == 8  # kubelet holds one
        response = _allocate(node, node.ids(1, 0, 1000))  # within the call's 10 s timeout
        assert response.container_responses[0].envs[contract.ENV_VGPU_MILLI] == "1000"
        node.plugin.backend.inject_xid(node.uuids[2], 79)  # kubelet's own stream still delivers
        assert node.kubelet.wait_for_updates(kubelet_updates + 1, 5.0)
    finally:
        for stream in extra:
            stream.cancel()
    assert wait_until(lambda: node.plugin.servicer.open_streams == 1, 2.0)  # closed streams free their slot
