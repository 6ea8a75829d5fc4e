"""Hostile GetPreferredAllocation / Allocate requests over the real socket: a clear error, never a crash.

Every answer must be OK, INVALID_ARGUMENT or FAILED_PRECONDITION with a message; the allocation
book's indexes must stay consistent; and afterwards the plugin must still admit a real pod.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorai.demo.kube_standin import KubeStandin
from tensorai.demo.stub_kubelet import StubKubelet, wait_until
from tensorai.deviceplugin.cli import Plugin, PluginConfig
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
SIM_GPUS = "2xH100:81559,1xT4:15360"


class Target:
    def __init__(self, plugin: Plugin, kubelet: StubKubelet, api: KubeStandin | None) -> None:
        self.plugin, self.kubelet, self.api = plugin, kubelet, api
        self.channel = grpc.insecure_channel(f"unix://{plugin.runner.socket_path}")
        self.stub = dp_grpc.DevicePluginStub(self.channel)
        self.uuids = plugin.table.uuids


def start(workdir: str, **extra: Any) -> tuple[Plugin, StubKubelet]:
    kubelet = StubKubelet(f"{workdir}/dp", pod_resources_socket=f"{workdir}/pr.sock", rng=random.Random(1)).start()
    plugin = Plugin(PluginConfig(
        backend="sim", sim_gpus=SIM_GPUS, node_name="node-f", device_plugin_dir=f"{workdir}/dp",
        pod_resources_socket=f"{workdir}/pr.sock", metrics_port=0, registration_poll_s=0.1, **extra,
    )).start()
    assert kubelet.wait_for_registration(1, 10) and kubelet.wait_for(lambda d: len(d) == 3000, 10)
    return plugin, kubelet


@pytest.fixture(scope="module", params=["standalone", "kube"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    workdir = tempfile.mkdtemp(prefix="dpfz", dir="/tmp")  # unix socket paths max 107 chars
    api = KubeStandin().start() if request.param == "kube" else None
    try:
        if api is not None:
            api.add_node("node-f")
            plugin, kubelet = start(workdir, kubeconfig=api.kubeconfig_path, catch_up_s=0.0)
        else:
            plugin, kubelet = start(workdir, no_kube=True)
        target = Target(plugin, kubelet, api)
        try:
            yield target
        finally:
            target.channel.close()
            plugin.stop()
            kubelet.stop()
    finally:
        if api is not None:
            api.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def device_ids(uuids: list[str]) -> st.SearchStrategy[str]:
    valid = st.builds(contract.device_id, st.sampled_from(uuids), st.integers(0, 999))
    nearly = st.builds(lambda u, i: f"{u}::{i}", st.sampled_from(uuids), st.integers(-5, 100000))
    junk = st.text(max_size=80)
    return st.one_of(valid, valid, nearly, junk, st.just(""), st.just("::"), st.just("GPU-x::0001"))


def id_lists(uuids: list[str]) -> st.SearchStrategy[list[str]]:
    whole_gpu = st.sampled_from(uuids).map(lambda u: [contract.device_id(u, i) for i in range(1000)])
    return st.one_of(st.lists(device_ids(uuids), max_size=40), whole_gpu,
                     st.lists(device_ids(uuids), max_size=3).map(lambda ids: ids * 3))


def check_answer(call: Any) -> None:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in ALLOWED, f"{error.code()}: {error.details()}"
        assert error.details(), "an error must say what was wrong"




@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_preferred_allocation_requests_get_clear_errors(target: Target, data: st.DataObject) -> None:
    requests = data.draw(st.lists(st.builds(
        lambda available, must, size: dp.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size),
        id_lists(target.uuids), st.lists(device_ids(target.uuids), max_size=5),
        st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 3001)),
    ), max_size=3))
    check_answer(lambda: target.stub.GetPreferredAllocation(
        dp.PreferredAllocationRequest(container_requests=requests), timeout=10))
    target.plugin.book.check_invariants()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_allocate_requests_get_clear_errors_and_keep_the_book_consistent(
    target: Target, data: st.DataObject
) -> None:
    requests = data.draw(st.lists(id_lists(target.uuids).map(lambda ids: dp.ContainerAllocateRequest(devices_ids=ids)),
                                  max_size=3))
    check_answer(lambda: target.stub.Allocate(dp.AllocateRequest(container_requests=requests), timeout=10))
    target.plugin.book.check_invariants()
    for record in target.plugin.book.records():
        gpus = {portion.uuid for portion in record.portions}
        assert record.milli == len(record.device_ids)
        assert len(gpus) == 1 or all(portion.milli == 1000 for portion in record.portions)


def test_after_the_fuzzing_a_real_pod_is_still_admitted(target: Target) -> None:
    for record in target.plugin.book.records():  # the fuzzer's Allocates were never admitted by kubelet
        target.plugin.book.remove(record.record_id)
    pod = {"metadata": {"name": "after-fuzz", "namespace": "ml"},
           "spec": {"containers": [{"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "250"}}}]}}
    if target.api is not None:  # kube mode: the pod must exist, bound, with the scheduler's Assignment
        gpu = target.uuids[0]
        pod["spec"]["nodeName"] = "node-f"
        pod["metadata"]["annotations"] = {contract.ANNOTATION_ASSIGNMENT: json.dumps(
            {"nodeName": "node-f", "containers": [{"name": "main", "gpus": [{"uuid": gpu, "milli": 250}]}]})}
        target.api.add_pod(pod)
        assert wait_until(lambda: bool(target.plugin.identity.pending_slots(250)), 5.0)
    admitted = target.kubelet.admit_pod(pod)["main"]
    assert admitted.response.envs[contract.ENV_VGPU_MILLI] == "250"
