"""Serving and registering with kubelet, and doing both again after a kubelet restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

from tensorai.demo.stub_kubelet import StubKubelet, is_extended_resource_name, wait_until
from tensorai.deviceplugin.cli import Plugin, PluginConfig
from tensorai.deviceplugin.registration import RegistrationError, register
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc


def make_plugin(workdir: str) -> Plugin:
    return Plugin(PluginConfig(
        backend="sim", sim_gpus="2xA100:40960", node_name="node-r", no_kube=True, device_plugin_dir=f"{workdir}/dp",
        pod_resources_socket=f"{workdir}/pr.sock", metrics_port=0, registration_poll_s=0.2,
    ))


def test_plugin_registers_its_socket_and_resource_and_kubelet_gets_the_full_list(workdir: str) -> None:
    with StubKubelet(f"{workdir}/dp") as kubelet, make_plugin(workdir) as plugin:
        assert kubelet.wait_for_registration(1, 10)
        (request,) = kubelet.registrations
        assert request.version == "v1beta1" and request.resource_name == contract.RESOURCE_VGPU_MILLI
        assert request.endpoint == os.path.basename(plugin.runner.socket_path)
        assert request.options.get_preferred_allocation_available
        assert kubelet.wait_for(lambda devices: len(devices) == 2000, 5.0)


def test_plugin_reregisters_within_5_seconds_of_a_kubelet_restart(workdir: str) -> None:
    with StubKubelet(f"{workdir}/dp") as kubelet, make_plugin(workdir) as plugin:
        assert kubelet.wait_for_registration(1, 10) and kubelet.wait_for(lambda d: len(d) == 2000, 5.0)
        admitted = kubelet.admit("ml", "before", [("main", 500)])
        kubelet.restart()
        assert not os.path.exists(plugin.runner.socket_path) or kubelet.devices() == {}
        assert kubelet.wait_for_registration(2, 5.0), "no re-registration within 5 s"
        assert kubelet.wait_for(lambda devices: len(devices) == 2000, 5.0)
        assert os.path.exists(plugin.runner.socket_path)
        # the running container keeps its slices (kubelet's checkpoint); new pods still fit
        assert kubelet.allocations()[("ml", "before", "main")] == admitted["main"].device_ids
        kubelet.admit("ml", "after", [("main", 1000)])


def test_plugin_started_before_kubelet_registers_once_kubelet_appears(workdir: str) -> None:
    with make_plugin(workdir) as plugin:
        assert wait_until(lambda: plugin.runner.last_error is None and os.path.exists(plugin.runner.socket_path), 2)
        with StubKubelet(f"{workdir}/dp") as kubelet:
            assert kubelet.wait_for_registration(1, 5.0)


def test_stop_removes_the_socket_and_kubelet_marks_the_devices_unhealthy(workdir: str) -> None:
    with StubKubelet(f"{workdir}/dp") as kubelet:
        plugin = make_plugin(workdir).start()
        assert kubelet.wait_for_registration(1, 10) and kubelet.wait_for(lambda d: len(d) == 2000, 5.0)
        plugin.stop()
        assert not os.path.exists(plugin.runner.socket_path)
        assert kubelet.wait_for(lambda devices: set(devices.values()) == {"Unhealthy"}, 5.0)


@pytest.mark.parametrize(
    ("version", "resource", "reason"),
    [
        ("v1alpha", contract.RESOURCE_VGPU_MILLI, 'requested API version "v1alpha" is not supported'),
        ("v1beta1", "vgpu", 'the ResourceName "vgpu" is invalid'),
        ("v1beta1", "kubernetes.io/vgpu", "is invalid"),
    ],
)
def test_kubelet_refusals_reach_the_plugin_with_kubelets_reason(
    workdir: str, version: str, resource: str, reason: str
) -> None:
    with StubKubelet(f"{workdir}/dp") as kubelet:
        if version == "v1beta1":
            with pytest.raises(RegistrationError, match=reason):
                register(kubelet.kubelet_socket, "x.sock", dp.DevicePluginOptions(), resource_name=resource)
        else:
            channel = grpc.insecure_channel(f"unix://{kubelet.kubelet_socket}")
            with channel, pytest.raises(grpc.RpcError) as caught:
                dp_grpc.RegistrationStub(channel).Register(
                    dp.RegisterRequest(version=version, endpoint="x.sock", resource_name=resource), timeout=5)
            assert reason in caught.value.details()
        assert kubelet.registrations == []


def test_registration_fails_clearly_when_the_plugin_socket_does_not_answer(workdir: str) -> None:
    with StubKubelet(f"{workdir}/dp", dial_timeout_s=0.5) as kubelet, pytest.raises(
        RegistrationError, match="failed to dial device plugin"
    ):
        register(kubelet.kubelet_socket, "missing.sock", dp.DevicePluginOptions(), timeout_s=15)


def test_extended_resource_name_rule_matches_kubelets() -> None:
    assert is_extended_resource_name(contract.RESOURCE_VGPU_MILLI)
    for name in ("vgpu", "kubernetes.io/vgpu", "requests.tensor.ai/x", "tensor.ai/vgpu milli", "Tensor.AI/x"):
        assert not is_extended_resource_name(name), name


def test_a_second_plugin_on_the_same_directory_is_refused_and_the_first_keeps_its_socket(workdir: str) -> None:
    from tensorai.deviceplugin.registration import PluginDirLocked

    with StubKubelet(f"{workdir}/dp") as kubelet, make_plugin(workdir) as first:
        assert kubelet.wait_for_registration(1, 10)
        inode = os.stat(first.runner.socket_path).st_ino
        second = make_plugin(workdir)
        with pytest.raises(PluginDirLocked, match=r"another device plugin \(pid \d+\) already serves"):
            second.start()
        second.backend.close()
        time.sleep(0.5)  # two registration polls: nothing replaced the first plugin's socket
        assert os.stat(first.runner.socket_path).st_ino == inode
        assert len(kubelet.registrations) == 1
    with make_plugin(workdir):  # stop released the lock: a successor starts
        pass


def test_a_second_plugin_process_exits_2_with_one_line_and_a_killed_ones_lock_is_free(workdir: str) -> None:
    plugin_dir = f"{workdir}/dp"
    command = [sys.executable, "-m", "tensorai.deviceplugin.cli", "--backend", "sim", "--sim-gpus", "1xT4:15360",
               "--node-name", "n", "--no-kube", "--device-plugin-dir", plugin_dir, "--metrics-port", "0",
               "--pod-resources-socket", f"{workdir}/pr.sock"]
    with StubKubelet(plugin_dir) as kubelet:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert kubelet.wait_for_registration(1, 30)
            second = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2
            (line,) = second.stderr.strip().splitlines()
            assert f"pid {first.pid}" in line and plugin_dir in line
            first.kill()  # no clean shutdown: the kernel drops the flock with the process
            first.wait(timeout=10)
            with make_plugin(workdir):
                pass
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=10)


def test_repeated_kubelet_restarts_never_fill_the_list_and_watch_cap(workdir: str) -> None:
    # Each restart ends kubelet's stream; an ended stream must give its slot back, or after a few
    # restarts the new kubelet's stream would be refused (RESOURCE_EXHAUSTED) and its devices lost.
    with StubKubelet(f"{workdir}/dp") as kubelet, make_plugin(workdir) as plugin:
        assert kubelet.wait_for_registration(1, 10)
        for restart in range(2, 2 + 2 * plugin.servicer.max_streams):
            kubelet.restart()
            assert kubelet.wait_for_registration(restart, 5.0), f"no re-registration after restart {restart - 1}"
            assert kubelet.wait_for(lambda devices: len(devices) == 2000, 5.0)
        assert wait_until(lambda: plugin.servicer.open_streams == 1, 2.0), plugin.servicer.open_streams
