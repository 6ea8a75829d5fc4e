"""Restarts under churn on the real cluster: kubelet, the device plugin, the extender.

Each test runs the churn of test_e2e_churn.py with one long-running GPU pod beside it and restarts one
program in the middle; afterwards every container must still run where its Assignment says, no pod may
fail admission, and the long pod must keep its GPU (same device IDs in kubelet's checkpoint, never
restarted).
"""

from __future__ import annotations

import time
from typing import Any

from .cluster import wait_until
from .pods import PodClient, assignment_of, gpu_pod
from .test_e2e_churn import assert_churn_clean, misplaced_containers, run_churn

RESTART_CHURN_PODS = 60
REREGISTER_LIMIT_S = 5.0


def _registrations(cluster: Any) -> int:
    """How often the device plugin has registered with kubelet (its log says so each time)."""
    text = cluster.log_of("device-plugin").read_text(errors="replace")
    return text.count("registered tensor.ai/vgpu-milli with kubelet")


def _ready_since(cluster: Any) -> float:
    """When kubelet last reported the node Ready (epoch seconds), 0 if not Ready."""
    import json
    from datetime import datetime

    node = json.loads(cluster.kubectl("get", "node", cluster.node_name, "-o", "json"))
    for condition in node["status"].get("conditions") or []:
        if condition["type"] == "Ready" and condition["status"] == "True":
            return datetime.fromisoformat(condition["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
    return 0.0


def _held_ids(cluster: Any, uid: str) -> set[str]:
    entries = cluster.checkpoint().get("PodDeviceEntries") or []
    return {i for e in entries if e["PodUID"] == uid for group in e["DeviceIDs"].values() for i in group}


def _long_pod(pods: PodClient) -> dict[str, Any]:
    pods.create(gpu_pod("long-runner", "0.5", seconds=600))
    pod = pods.wait_phase(["long-runner"], phases=("Running",), timeout_s=90)["long-runner"]
    assert assignment_of(pod)
    return pod


def _still_running_on_its_gpu(e2e: Any, pods: PodClient, long_pod: dict[str, Any], ids_before: set[str]) -> None:
    pod = pods.get("long-runner")
    assert pod is not None and pod["status"]["phase"] == "Running"
    statuses = pod["status"].get("containerStatuses") or []
    assert statuses and statuses[0]["restartCount"] == 0, statuses
    assert _held_ids(e2e.cluster, pod["metadata"]["uid"]) == ids_before
    assert not misplaced_containers(e2e, [pod])


def test_a_kubelet_restart_mid_churn_keeps_running_pods_and_the_plugin_re_registers(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("restarting kubelet")
    cluster = e2e.cluster
    long_pod = _long_pod(pods)
    ids_before = _held_ids(cluster, long_pod["metadata"]["uid"])
    assert len(ids_before) == 500
    timing: dict[str, float] = {}

    def restart_kubelet(round_index: int) -> None:
        if round_index != 1:
            return
        before = _registrations(cluster)
        cluster.stop_kubelet()
        cluster.start_kubelet()  # returns once kubelet's healthz answers
        started = time.monotonic()
        wait_until("the device plugin to re-register", lambda: _registrations(cluster) > before, 30, 0.05)
        timing["reregister_s"] = time.monotonic() - started
        # What an operator waits for: the node reported Ready by the new kubelet. Until kubelet has synced
        # its pod sources it keeps counting deleted pods' device IDs as held (docs/deviceplugin.md).
        restarted = time.time()
        wait_until("kubelet to report the node Ready again", lambda: _ready_since(cluster) >= restarted - 1, 60, 0.2)

    finished, sampler = run_churn(e2e, pods, RESTART_CHURN_PODS, seed=31, before_round=restart_kubelet)
    print(f"plugin re-registered {timing['reregister_s']:.2f} s after kubelet came back")
    assert timing["reregister_s"] < REREGISTER_LIMIT_S
    assert_churn_clean(finished, sampler)
    _still_running_on_its_gpu(e2e, pods, long_pod, ids_before)


def test_a_device_plugin_restart_mid_churn_adopts_kubelets_allocations(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("restarting the device plugin")
    cluster = e2e.cluster
    long_pod = _long_pod(pods)
    ids_before = _held_ids(cluster, long_pod["metadata"]["uid"])

    def restart_plugin(round_index: int) -> None:
        if round_index == 1:
            cluster.named["device-plugin"].stop()
            cluster.start_device_plugin()  # returns once kubelet advertises the resource again

    finished, sampler = run_churn(e2e, pods, RESTART_CHURN_PODS, seed=32, before_round=restart_plugin)
    assert_churn_clean(finished, sampler)
    _still_running_on_its_gpu(e2e, pods, long_pod, ids_before)
    log = cluster.log_of("device-plugin").read_text(errors="replace")
    assert "Traceback" not in log


def test_an_extender_killed_mid_stream_loses_and_doubles_nothing(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("killing the extender")
    cluster = e2e.cluster
    long_pod = _long_pod(pods)
    ids_before = _held_ids(cluster, long_pod["metadata"]["uid"])

    def kill_extender(round_index: int) -> None:
        if round_index == 1:
            cluster.named["extender"].popen.kill()  # SIGKILL while the round's pods are being scheduled
            cluster.named["extender"].popen.wait(10)
            cluster.start_extender()

    finished, sampler = run_churn(e2e, pods, RESTART_CHURN_PODS, seed=33, during=kill_extender)
    assert_churn_clean(finished, sampler)
    _still_running_on_its_gpu(e2e, pods, long_pod, ids_before)
