"""The stub kubelet (demo/stub_kubelet.py) against the real kubelet, for what the unit tests rely on.

The unit tests of the device plugin run against the stub; each behaviour it imitates is checked here
on the real v1.36 kubelet: which containers pod-resources lists (app containers and sidecars, not
finished init containers), that an init container's IDs are handed on to the next container of its
pod, and that kubelet lists the pod it is admitting (the plugin's log shows the listing named pods).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tensorai.deviceplugin.podresources import PodResourcesClient
from tensorai.proto import contract

from .pods import PodClient, gpu_pod


def test_pod_resources_lists_app_containers_and_sidecars_but_not_finished_init_containers(
        e2e: Any, pods: PodClient) -> None:
    e2e.require_local("reading kubelet's pod-resources socket and checkpoint")
    pods.create(gpu_pod("stub-shape", "0.25", seconds=60, init_vgpu="0.25", sidecar_vgpu="0.1"))
    pod = pods.wait_phase(["stub-shape"], phases=("Running",), timeout_s=90)["stub-shape"]
    client = PodResourcesClient(str(e2e.cluster.pod_resources_socket))
    try:
        listing = client.list_resource()
    finally:
        client.close()
    mine = {key[2]: ids for key, ids in listing.items() if key[:2] == ("e2e", "stub-shape")}
    assert set(mine) == {"main", "sidecar"}  # what StubKubelet.allocations() returns for such a pod
    assert len(mine["main"]) == 250 and len(mine["sidecar"]) == 100
    entries = [e for e in e2e.cluster.checkpoint().get("PodDeviceEntries") or []
               if e["PodUID"] == pod["metadata"]["uid"] and e["ResourceName"] == contract.RESOURCE_VGPU_MILLI]
    held = {e["ContainerName"]: {i for group in e["DeviceIDs"].values() for i in group} for e in entries}
    # kubelet's devicesToReuse, as StubKubelet._admit_container does it: every later container takes the
    # finished init container's IDs first - the sidecar too, which then keeps its share for itself - and
    # main the rest, topped up with fresh IDs.
    assert held["main"] == set(mine["main"]) and held["sidecar"] == set(mine["sidecar"])
    assert held["sidecar"] <= held["init"]
    assert held["init"] - held["sidecar"] <= held["main"]
    assert not held["sidecar"] & held["main"]


def test_kubelet_lists_the_pod_it_is_admitting(e2e: Any, pods: PodClient) -> None:
    """Twelve same-size pods created at once: the plugin asked kubelet's listing which one it admits and got
    an answer (StubKubelet(list_admitting=True) imitates this; the fallback tests turn it off)."""
    e2e.require_local("reading the device plugin's log")
    log_path = e2e.cluster.log_of("device-plugin")
    before = log_path.read_text(errors="replace").count("(kubelet's listing named it)")
    names = [f"twin-{i}" for i in range(12)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(pods.create, [gpu_pod(name, "0.25", seconds=1) for name in names]))
    done = pods.wait_phase(names, timeout_s=120)
    assert all(p["status"]["phase"] == "Succeeded" for p in done.values())
    after = log_path.read_text(errors="replace").count("(kubelet's listing named it)")
    assert after > before
