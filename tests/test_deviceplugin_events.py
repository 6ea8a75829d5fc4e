"""The device plugin's Node Events on GPU health flips: what they say, where they go, the rate limit, and
that the inventory publisher writes them through the real client to the API stand-in."""

from __future__ import annotations

import time

import pytest

from tensorai.deviceplugin.backends import parse_sim_gpus
from tensorai.deviceplugin.events import (
    NODE_EVENT_NAMESPACE,
    REASON_HEALTHY,
    REASON_UNHEALTHY,
    GPUHealthEvents,
)
from tensorai.deviceplugin.gpus import GPUInfo
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.inventory import InventoryPublisher
from tensorai.deviceplugin.simulated import SimulatedBackend
from tensorai.proto import contract
from tensorai.proto.kubeclient import RawCoreApi

NODE = "gpu-node-1"
H100 = "NVIDIA H100 80GB HBM3"
GPUS = [GPUInfo(uuid=f"GPU-{index}0000000-aaaa-bbbb-cccc-dddddddddddd", index=index, model=H100,
                memory_mib=81559, reserved_mib=600, numa_node=0) for index in range(3)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _parts(recovery_quiet_s: float = 0.0) -> tuple[HealthTracker, GPUHealthEvents, FakeClock]:
    clock = FakeClock()
    tracker = HealthTracker([gpu.uuid for gpu in GPUS], clock=clock, recovery_quiet_s=recovery_quiet_s,
                            recovery_probes=1)
    return tracker, GPUHealthEvents(None, tracker, GPUS, node_name=NODE, clock=clock), clock


def test_an_unhealthy_gpu_is_named_by_index_model_and_uuid_with_its_xid_in_words() -> None:
    tracker, events, _ = _parts()
    assert events.check() == [], "healthy GPUs at start need no Event"
    tracker.record_xid(GPUS[1].uuid, 79)
    (event,) = events.check()
    assert (event.reason, event.warning) == (REASON_UNHEALTHY, True)
    assert event.message == (
        f"GPU 1 ({H100}, {GPUS[1].uuid}) is unhealthy: XID 79 (GPU has fallen off the bus; sticky: needs admin "
        "recover); kubelet gives its slices to no new pod and the extender places no pod on it"
    )
    assert events.check() == [], "one Event per flip, not one per check"


def test_recovery_is_reported_with_what_the_gpu_recovered_from() -> None:
    tracker, events, clock = _parts()
    tracker.record_xid(GPUS[0].uuid, 62)
    events.check()
    clock.now += 5
    tracker.record_probe(GPUS[0].uuid, True)
    (event,) = events.check()
    assert (event.reason, event.warning) == (REASON_HEALTHY, False)
    assert event.message == (f"GPU 0 ({H100}, {GPUS[0].uuid}) is healthy again: recovered from XID 62; "
                             "its slices are offered to pods again")


def test_lost_and_failed_probes_are_said_in_words() -> None:
    tracker, events, _ = _parts()
    tracker.record_lost(GPUS[0].uuid)
    tracker.record_probe(GPUS[2].uuid, False)
    messages = {event.message.split(" is ")[0]: event.message for event in events.check()}
    assert "unhealthy: lost: the GPU no longer answers the driver;" in messages[f"GPU 0 ({H100}, {GPUS[0].uuid})"]
    assert "unhealthy: probe failed: a health query to the driver failed;" in messages[
        f"GPU 2 ({H100}, {GPUS[2].uuid})"]


def test_a_gpu_already_sick_at_start_gets_its_event() -> None:
    clock = FakeClock()
    tracker = HealthTracker([gpu.uuid for gpu in GPUS], clock=clock)
    tracker.record_lost(GPUS[2].uuid)
    events = GPUHealthEvents(None, tracker, GPUS, node_name=NODE, clock=clock)
    assert [(event.reason, event.message.split(" (")[0]) for event in events.check()] == [(REASON_UNHEALTHY, "GPU 2")]


def test_a_flapping_gpu_gets_at_most_one_event_per_state_per_minute_and_the_last_tells_its_state() -> None:
    tracker, events, clock = _parts()
    uuid = GPUS[0].uuid
    reasons = []
    for _ in range(10):  # ten flips down and up within 20 s
        tracker.record_xid(uuid, 62)
        reasons += [event.reason for event in events.check()]
        clock.now += 1
        tracker.record_probe(uuid, True)
        reasons += [event.reason for event in events.check()]
        clock.now += 1
    assert reasons == [REASON_UNHEALTHY, REASON_HEALTHY], "the rest of the flapping is held back"
    tracker.record_xid(uuid, 62)  # it ends sick
    assert events.check() == []
    clock.now += 60
    (event,) = events.check()
    assert event.reason == REASON_UNHEALTHY, "once the window opens the current state is reported"
    assert event.message.endswith("it changed state 19 times since the last event"), event.message
    assert events.check() == []


def test_the_limit_is_per_gpu_so_one_flapping_gpu_never_hides_another() -> None:
    tracker, events, clock = _parts()
    tracker.record_xid(GPUS[0].uuid, 62)
    events.check()
    clock.now += 1
    tracker.record_xid(GPUS[1].uuid, 48)
    assert [event.message.split(" (")[0] for event in events.check()] == ["GPU 1"]


def test_the_event_is_a_node_event_in_the_default_namespace_as_kubelet_writes_them() -> None:
    tracker, events, _ = _parts()
    tracker.record_xid(GPUS[0].uuid, 48)
    (event,) = events.check()
    body = events.body(event)
    assert body["metadata"]["namespace"] == NODE_EVENT_NAMESPACE == "default"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}
    assert (body["reason"], body["type"], body["source"]["component"]) == (REASON_UNHEALTHY, "Warning",
                                                                           "tensorai-device-plugin")


def test_the_settings_are_checked() -> None:
    tracker, _, _ = _parts()
    with pytest.raises(ValueError, match="min_interval_s"):
        GPUHealthEvents(None, tracker, GPUS, node_name=NODE, min_interval_s=-1)


def test_the_publisher_writes_health_events_on_the_node_through_the_api() -> None:
    from tensorai.demo.kube_standin import KubeStandin

    backend = SimulatedBackend(parse_sim_gpus("2xH100:81559"), node_name=NODE)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    with KubeStandin() as api:
        api.add_node(NODE, labels={contract.LABEL_GPU_NODE: "true"})
        client = api.api_client()
        publisher = InventoryPublisher(RawCoreApi(client), backend, tracker, node_name=NODE, sharing_mode="mps",
                                       plugin_version="1", interval_s=60.0)
        publisher.start()
        try:
            sick = backend.gpus()[1]
            tracker.record_xid(sick.uuid, 48)
            deadline = time.monotonic() + 5.0
            while not api.list_objects("events", "default") and time.monotonic() < deadline:
                time.sleep(0.02)
            (event,) = api.list_objects("events", "default")
            assert event["involvedObject"]["kind"] == "Node" and event["involvedObject"]["name"] == NODE
            assert event["reason"] == REASON_UNHEALTHY and event["type"] == "Warning"
            assert event["message"].startswith(f"GPU 1 (H100, {sick.uuid}) is unhealthy: XID 48 (double-bit ECC")
        finally:
            publisher.stop()
            client.close()
