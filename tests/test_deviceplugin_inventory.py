"""The node Inventory: its JSON round trip, and publishing it (plus admin recovery) through the real
`kubernetes` client against the local API stand-in."""

from __future__ import annotations

import datetime as dt
import re
import time

import kubernetes
import pytest

from tensorai.deviceplugin.backends import SimGPUSpec, parse_sim_gpus
from tensorai.deviceplugin.gpus import BackendError
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.inventory import InventoryPublisher, build_inventory, node_labels, parse_recover_list
from tensorai.deviceplugin.simulated import SimulatedBackend
from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.kubeclient import RawCoreApi

NODE = "gpu-node-1"
FIXED_TIME = dt.datetime(2026, 11, 23, 2, 0, 0, tzinfo=dt.UTC)


def make_node_parts(spec: str = "2xH100:81559,1xA100:40960"):
    backend = SimulatedBackend(parse_sim_gpus(spec), node_name=NODE)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    return backend, tracker


# --- build_inventory ---------------------------------------------------------------------------------
def test_inventory_lists_every_gpu_with_memory_reserve_numa_and_health() -> None:
    backend, tracker = make_node_parts()
    uuids = [gpu.uuid for gpu in backend.gpus()]
    tracker.record_xid(uuids[1], 48)
    inventory = build_inventory(
        backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="0.1.0", clock=lambda: FIXED_TIME
    )
    assert inventory.node_name == NODE
    assert inventory.sharing_mode == pb.SHARING_MODE_MPS
    assert inventory.plugin_version == "0.1.0"
    assert inventory.heartbeat_time.ToDatetime(tzinfo=dt.UTC) == FIXED_TIME
    assert [(gpu.uuid, gpu.index, gpu.model, gpu.memory_mib, gpu.healthy) for gpu in inventory.gpus] == [
        (uuids[0], 0, "H100", 81559, True),
        (uuids[1], 1, "H100", 81559, False),
        (uuids[2], 2, "A100", 40960, True),
    ]
    assert all(gpu.numa_node == -1 and 0 < gpu.reserved_mib < gpu.memory_mib for gpu in inventory.gpus)


@pytest.mark.parametrize("mode", sorted(contract.SHARING_MODE_NAMES))
def test_inventory_json_round_trips_through_the_contract(mode: str) -> None:
    backend, tracker = make_node_parts()
    tracker.record_lost(backend.gpus()[0].uuid)
    inventory = build_inventory(backend, tracker, node_name=NODE, sharing_mode=mode, plugin_version="v")
    text = contract.encode_inventory(inventory)
    assert '"memoryMib"' in text and '"nodeName"' in text  # protobuf JSON: camelCase keys
    assert contract.decode_inventory(text) == inventory


def test_unknown_sharing_mode_is_refused_with_the_choices() -> None:
    backend, tracker = make_node_parts()
    with pytest.raises(ValueError, match="exclusive"):
        build_inventory(backend, tracker, node_name=NODE, sharing_mode="mig", plugin_version="v")


def test_recover_list_parsing_drops_blanks_and_spaces() -> None:
    assert parse_recover_list(" GPU-a, ,GPU-b,") == ["GPU-a", "GPU-b"]
    assert parse_recover_list(None) == []


# --- publishing to the API stand-in ---------------------------------------------------------------------
@pytest.fixture
def cluster():
    from tensorai.demo.kube_standin import KubeStandin

    with KubeStandin() as api:
        api.add_node(NODE, labels={contract.LABEL_GPU_NODE: "true"}, annotations={"keep.me/please": "yes"})
        client = api.api_client()
        try:
            yield api, RawCoreApi(client)
        finally:
            client.close()


def published(api, node: str = NODE) -> pb.Inventory | None:
    annotations = (api.get_object("nodes", node) or {}).get("metadata", {}).get("annotations", {})
    text = annotations.get(contract.ANNOTATION_INVENTORY)
    return contract.decode_inventory(text) if text else None


def wait_until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def test_publish_once_writes_the_annotation_and_keeps_other_annotations(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts()
    publisher = InventoryPublisher(core, backend, tracker, node_name=NODE, sharing_mode="timeslice", plugin_version="1")
    publisher.publish_once()
    inventory = published(api)
    assert inventory is not None
    assert [gpu.uuid for gpu in inventory.gpus] == [gpu.uuid for gpu in backend.gpus()]
    assert inventory.sharing_mode == pb.SHARING_MODE_TIMESLICE
    assert api.get_object("nodes", NODE)["metadata"]["annotations"]["keep.me/please"] == "yes"
    assert ("PATCH", f"/api/v1/nodes/{NODE}") in [(method, path.split("?")[0]) for method, path in api.request_log]


def test_publisher_publishes_at_start_and_at_once_on_a_health_change(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts()
    publisher = InventoryPublisher(
        core, backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1", interval_s=60.0
    )
    publisher.start()
    try:
        wait_until(lambda: published(api) is not None, 5.0)
        sick = backend.gpus()[2].uuid
        started = time.monotonic()
        tracker.record_xid(sick, 62)
        wait_until(lambda: not published(api).gpus[2].healthy, 5.0)
        assert time.monotonic() - started < 2.0  # far sooner than the 60 s heartbeat
    finally:
        publisher.stop()


def test_heartbeat_is_refreshed_every_interval(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts("1xT4:15360")
    publisher = InventoryPublisher(
        core, backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1", interval_s=0.2
    )
    publisher.start()
    try:
        wait_until(lambda: publisher.publish_count >= 3, 5.0)
    finally:
        publisher.stop()
    assert published(api) is not None


def test_admin_recover_annotation_returns_a_sticky_gpu_to_service_and_is_cleared(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts()
    broken = backend.gpus()[0].uuid
    tracker.record_xid(broken, 79)  # fallen off the bus: probes alone never bring it back
    publisher = InventoryPublisher(core, backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1")
    publisher.publish_once()
    assert not published(api).gpus[0].healthy
    core.patch_node(
        NODE,
        {"metadata": {"annotations": {contract.ANNOTATION_GPU_RECOVER: f"{broken}, GPU-not-on-this-node"}}},
    )
    publisher.publish_once()
    assert tracker.is_healthy(broken)
    assert published(api).gpus[0].healthy
    annotations = api.get_object("nodes", NODE)["metadata"]["annotations"]
    assert contract.ANNOTATION_GPU_RECOVER not in annotations
    assert annotations["keep.me/please"] == "yes"


def test_recover_request_is_not_lost_when_an_admin_edits_the_node_concurrently(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts()
    first, second = backend.gpus()[0].uuid, backend.gpus()[1].uuid
    tracker.record_xid(first, 48)
    tracker.record_xid(second, 48)
    core.patch_node(
        NODE,
        {"metadata": {"annotations": {contract.ANNOTATION_GPU_RECOVER: first}}},
    )

    class AdminEditsBetweenReadAndPatch:
        """The real client, with an admin's write landing right after our read."""

        def __init__(self) -> None:
            self.edited = False

        def read_node(self, name: str):
            node = core.read_node(name)
            if not self.edited:
                self.edited = True
                core.patch_node(
                    name,
                    {"metadata": {"annotations": {contract.ANNOTATION_GPU_RECOVER: f"{first},{second}"}}},
                )
            return node

        def patch_node(self, *args, **kwargs):
            return core.patch_node(*args, **kwargs)

    publisher = InventoryPublisher(
        AdminEditsBetweenReadAndPatch(), backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1"
    )
    with pytest.raises(kubernetes.client.ApiException) as raised:
        publisher.publish_once()
    assert raised.value.status == 409
    annotations = api.get_object("nodes", NODE)["metadata"]["annotations"]
    assert annotations[contract.ANNOTATION_GPU_RECOVER] == f"{first},{second}"  # the admin's edit survived
    publisher.publish_once()  # the retry sees both
    assert tracker.healthy_uuids() >= {first, second}
    assert contract.ANNOTATION_GPU_RECOVER not in api.get_object("nodes", NODE)["metadata"]["annotations"]


def test_api_errors_are_retried_without_killing_the_publisher(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts("1xT4:15360")
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE}$", status=500, times=2)
    publisher = InventoryPublisher(
        core, backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1", interval_s=60.0, retry_s=0.1
    )
    publisher.start()
    try:
        wait_until(lambda: published(api) is not None, 5.0)
    finally:
        publisher.stop()
    assert publisher.last_error is None


def test_missing_node_and_backend_failures_are_logged_and_retried(cluster) -> None:
    api, core = cluster
    backend, tracker = make_node_parts("1xT4:15360")
    backend.fail_next("gpus", BackendError("nvmlDeviceGetCount failed"))
    publisher = InventoryPublisher(
        core, backend, tracker, node_name="not-yet-registered", sharing_mode="mps", plugin_version="1", retry_s=0.1
    )
    publisher.start()
    try:
        wait_until(lambda: publisher.last_error is not None and "404" in publisher.last_error, 5.0)
        api.add_node("not-yet-registered")
        wait_until(lambda: published(api, "not-yet-registered") is not None, 5.0)
    finally:
        publisher.stop()


def test_publisher_validates_its_settings() -> None:
    backend, tracker = make_node_parts()
    with pytest.raises(ValueError, match="interval_s"):
        InventoryPublisher(None, backend, tracker, node_name=NODE, sharing_mode="mps", plugin_version="1", interval_s=0)
    with pytest.raises(ValueError, match="sharing mode"):
        InventoryPublisher(None, backend, tracker, node_name=NODE, sharing_mode="vgpu", plugin_version="1")


# --- node labels ----------------------------------------------------------------------------------------
def _inventory(*gpus: tuple[int, str, int], mode: str = "timeslice") -> pb.Inventory:
    """An Inventory of `count x (model, memory_mib)` GPUs, as the NVML backend would report them."""
    backend = SimulatedBackend([SimGPUSpec(count, model, memory_mib) for count, model, memory_mib in gpus],
                               node_name=NODE)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    return build_inventory(backend, tracker, node_name=NODE, sharing_mode=mode, plugin_version="v")


def test_node_labels_say_what_gpu_feature_discovery_says_under_our_prefix() -> None:
    labels = node_labels(_inventory((8, "NVIDIA H100 80GB HBM3", 81559), mode="mps"), "mps")
    assert labels == {
        contract.LABEL_GPU_PRODUCT: "NVIDIA-H100-80GB-HBM3",
        contract.LABEL_GPU_MODEL: "H100",
        contract.LABEL_GPU_MEMORY: "81559",
        contract.LABEL_GPU_COUNT: "8",
        contract.LABEL_GPU_SHARING_MODE: "mps",
    }
    assert set(labels) == set(contract.PLUGIN_NODE_LABELS)


def test_on_a_mixed_node_the_most_common_model_labels_it_and_the_first_gpu_breaks_ties() -> None:
    mixed = node_labels(_inventory((1, "NVIDIA A100-PCIE-40GB", 40960), (2, "NVIDIA A100 80GB PCIe", 81920)), "mps")
    assert (mixed[contract.LABEL_GPU_PRODUCT], mixed[contract.LABEL_GPU_MEMORY]) == ("NVIDIA-A100-80GB-PCIe", "81920")
    assert mixed[contract.LABEL_GPU_COUNT] == "3"
    tie = node_labels(_inventory((1, "NVIDIA L4", 23034), (1, "NVIDIA L40S", 46068)), "mps")
    assert tie[contract.LABEL_GPU_MODEL] == "L4"


_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


@pytest.mark.parametrize("reported", [
    "  NVIDIA (rev. 2) / Prototype ", "NVIDIA Graphics Device", "GPU 名前 ++", "NVIDIA " + "VeryLongName-" * 9,
    "ü", "NVIDIA",
])
def test_node_labels_are_valid_label_values_whatever_name_the_gpu_reports(reported: str) -> None:
    labels = node_labels(_inventory((2, reported, 16384)), "timeslice")
    for key, value in labels.items():
        assert value is None or _LABEL_VALUE.fullmatch(value), (key, value)
    product = labels[contract.LABEL_GPU_PRODUCT]
    assert (product is None) == (reported in ("ü",))  # nothing valid left: no label rather than a bad one
    assert labels[contract.LABEL_GPU_MODEL] is None or reported not in ("NVIDIA", "ü")


def test_a_node_without_gpus_has_count_zero_and_no_model_labels() -> None:
    labels = node_labels(pb.Inventory(node_name=NODE), "timeslice")
    assert labels[contract.LABEL_GPU_COUNT] == "0"
    assert labels[contract.LABEL_GPU_PRODUCT] is labels[contract.LABEL_GPU_MODEL] is labels[
        contract.LABEL_GPU_MEMORY] is None


def test_publish_sets_the_labels_keeps_the_admins_and_restores_a_changed_one(cluster) -> None:
    api, core = cluster
    backend = SimulatedBackend([SimGPUSpec(2, "NVIDIA H100 80GB HBM3", 81559)], node_name=NODE)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    publisher = InventoryPublisher(core, backend, tracker, node_name=NODE, sharing_mode="timeslice", plugin_version="1")
    publisher.publish_once()
    labels = api.get_object("nodes", NODE)["metadata"]["labels"]
    assert labels[contract.LABEL_GPU_NODE] == "true"  # the admin's label stays
    assert (labels[contract.LABEL_GPU_MODEL], labels[contract.LABEL_GPU_COUNT]) == ("H100", "2")
    core.patch_node(NODE, {"metadata": {"labels": {contract.LABEL_GPU_MODEL: "A100"}}})  # someone else's edit
    publisher.publish_once()
    assert api.get_object("nodes", NODE)["metadata"]["labels"][contract.LABEL_GPU_MODEL] == "H100"
