"""The simulated backend and `--sim-gpus`: determinism, validation and fault injection."""

from __future__ import annotations

import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.deviceplugin.backends import (
    DEFAULT_SIM_GPUS,
    MAX_SIM_GPUS,
    SimGPUSpec,
    estimate_reserved_mib,
    open_backend,
    parse_sim_gpus,
)
from tensorai.deviceplugin.gpus import BackendError, GPUBackend, GPULostError, XidEvent
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.inventory import build_inventory
from tensorai.deviceplugin.simulated import SimulatedBackend
from tensorai.proto import contract

UUID_SHAPE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def make_backend(spec: str = "2xH100:81559,1xA100:40960", node_name: str = "node-a") -> SimulatedBackend:
    return SimulatedBackend(parse_sim_gpus(spec), node_name=node_name)


# --- --sim-gpus -----------------------------------------------------------------------------------
def test_sim_gpus_spec_lists_count_model_and_memory_in_order() -> None:
    assert parse_sim_gpus("2xH100:81559,1xA100:40960") == [
        SimGPUSpec(count=2, model="H100", memory_mib=81559),
        SimGPUSpec(count=1, model="A100", memory_mib=40960),
    ]


def test_sim_gpus_spec_tolerates_spaces_and_model_punctuation() -> None:
    assert parse_sim_gpus(" 1xA100-SXM4_80GB.v2:81920 , 3xT4:15360") == [
        SimGPUSpec(count=1, model="A100-SXM4_80GB.v2", memory_mib=81920),
        SimGPUSpec(count=3, model="T4", memory_mib=15360),
    ]


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "empty"),
        ("H100:81559", "entry 1"),
        ("2xH100", "entry 1"),
        ("2xH100:81559,,1xA100:40960", "entry 2"),
        ("0xH100:81559", "COUNT must be at least 1"),
        ("1xH100:0", "MEMORY_MIB must be at least 1"),
        ("1xH100:-5", "entry 1"),
        ("1x H100:80", "entry 1"),
        ("1xH100:80GiB", "entry 1"),
        (f"{MAX_SIM_GPUS + 1}xH100:80", f"at most {MAX_SIM_GPUS}"),
        ("1x" + "M" * 49 + ":80", "longer than 48"),
    ],
)
def test_malformed_sim_gpus_spec_is_rejected_with_the_reason(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_sim_gpus(spec)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_sim_gpus_text_parses_or_raises_value_error(text: str) -> None:
    try:
        specs = parse_sim_gpus(text)
    except ValueError:
        return
    assert specs and all(spec.count >= 1 and spec.memory_mib >= 1 for spec in specs)


# --- determinism ----------------------------------------------------------------------------------
def test_simulated_gpus_are_indexed_in_spec_order_with_nvml_shaped_uuids() -> None:
    gpus = make_backend().gpus()
    assert [(gpu.index, gpu.model, gpu.memory_mib) for gpu in gpus] == [
        (0, "H100", 81559),
        (1, "H100", 81559),
        (2, "A100", 40960),
    ]
    assert all(UUID_SHAPE.match(gpu.uuid) for gpu in gpus)
    assert len({gpu.uuid for gpu in gpus}) == 3


def test_same_node_and_index_give_the_same_uuid_across_restarts() -> None:
    first = [gpu.uuid for gpu in make_backend(node_name="node-a").gpus()]
    again = [gpu.uuid for gpu in make_backend(node_name="node-a").gpus()]
    assert first == again


def test_two_simulated_nodes_never_share_a_gpu_uuid() -> None:
    node_a = {gpu.uuid for gpu in make_backend(node_name="node-a").gpus()}
    node_b = {gpu.uuid for gpu in make_backend(node_name="node-b").gpus()}
    assert not node_a & node_b


def test_default_reserve_is_a_realistic_driver_share_and_overridable() -> None:
    h100 = make_backend().gpus()[0]
    assert 256 <= h100.reserved_mib <= 1024
    assert h100.reserved_mib == estimate_reserved_mib(81559)
    custom = SimulatedBackend(parse_sim_gpus("1xT4:15360"), reserved_mib=300).gpus()[0]
    assert custom.reserved_mib == 300
    with pytest.raises(ValueError, match="reserved_mib"):
        SimulatedBackend(parse_sim_gpus("1xT4:100"), reserved_mib=100)


def test_simulated_gpus_satisfy_the_inventory_contract_even_when_tiny() -> None:
    backend = make_backend("1xTiny:1,1xSmall:2,1xH100:81559")
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    inventory = build_inventory(backend, tracker, node_name="n", sharing_mode="timeslice", plugin_version="test")
    contract.validate_inventory(inventory)
    assert [gpu.memory_mib for gpu in inventory.gpus] == [1, 2, 81559]


def test_simulated_backend_implements_the_backend_interface() -> None:
    assert isinstance(make_backend(), GPUBackend)


def test_open_backend_sim_uses_the_spec_and_node_name() -> None:
    backend = open_backend("sim", sim_gpus="4xL4:23034", node_name="worker-7")
    assert [gpu.model for gpu in backend.gpus()] == ["L4"] * 4
    assert backend.gpus()[0].uuid == make_backend("1xL4:23034", node_name="worker-7").gpus()[0].uuid


def test_open_backend_sim_without_spec_simulates_the_documented_default() -> None:
    backend = open_backend("sim")
    assert len(backend.gpus()) == sum(spec.count for spec in parse_sim_gpus(DEFAULT_SIM_GPUS))


def test_open_backend_rejects_unknown_names_and_misplaced_sim_gpus() -> None:
    with pytest.raises(ValueError, match="choose one of nvml, sim"):
        open_backend("cuda")
    with pytest.raises(ValueError, match="only applies to --backend sim"):
        open_backend("nvml", sim_gpus="1xH100:80")


# --- usage and processes --------------------------------------------------------------------------
def test_usage_is_the_sum_of_process_memory_until_set_explicitly() -> None:
    backend = make_backend()
    uuid = backend.gpus()[0].uuid
    backend.add_process(uuid, pid=100, memory_used_mib=1000)
    backend.add_process(uuid, pid=101, memory_used_mib=500)
    assert backend.usage(uuid).memory_used_mib == 1500
    assert [process.pid for process in backend.processes(uuid)] == [100, 101]
    backend.remove_process(uuid, 100)
    assert backend.usage(uuid).memory_used_mib == 500
    backend.set_usage(uuid, memory_used_mib=2048, utilization_pct=75)
    assert (backend.usage(uuid).memory_used_mib, backend.usage(uuid).utilization_pct) == (2048, 75)


def test_usage_outside_the_gpu_is_refused() -> None:
    backend = make_backend()
    uuid = backend.gpus()[2].uuid
    with pytest.raises(ValueError, match=re.escape("outside 0..40960")):
        backend.set_usage(uuid, memory_used_mib=40961, utilization_pct=0)
    with pytest.raises(ValueError, match=re.escape("outside 0..100")):
        backend.set_usage(uuid, memory_used_mib=0, utilization_pct=101)


def test_queries_for_a_gpu_the_node_does_not_have_raise_backend_error() -> None:
    backend = make_backend()
    with pytest.raises(BackendError, match="no GPU 'GPU-nope'"):
        backend.usage("GPU-nope")
    with pytest.raises(ValueError, match="no simulated GPU"):
        backend.inject_xid("GPU-nope", 48)


# --- fault injection ------------------------------------------------------------------------------
def test_injected_xid_wakes_a_blocked_wait_promptly() -> None:
    backend = make_backend()
    uuid = backend.gpus()[1].uuid
    received: list[list[XidEvent]] = []
    waiter = threading.Thread(target=lambda: received.append(backend.wait_for_events(10.0)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    backend.inject_xid(uuid, 48)
    waiter.join(timeout=5.0)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 1.0
    assert received == [[XidEvent(gpu_uuid=uuid, xid=48)]]


def test_events_are_delivered_once_in_order() -> None:
    backend = make_backend()
    uuid = backend.gpus()[0].uuid
    backend.inject_xid(uuid, 13)
    backend.inject_xid(uuid, 79)
    assert [event.xid for event in backend.wait_for_events(0.0)] == [13, 79]
    assert backend.wait_for_events(0.01) == []


def test_idle_wait_returns_empty_after_the_timeout() -> None:
    started = time.monotonic()
    assert make_backend().wait_for_events(0.1) == []
    assert 0.09 <= time.monotonic() - started < 2.0


def test_lost_gpu_fails_queries_and_probes_until_restored() -> None:
    backend = make_backend()
    lost, other = backend.gpus()[0].uuid, backend.gpus()[1].uuid
    backend.lose_gpu(lost)
    with pytest.raises(GPULostError, match=lost):
        backend.usage(lost)
    with pytest.raises(GPULostError):
        backend.processes(lost)
    assert backend.probe(lost) is False
    assert backend.probe(other) is True
    assert XidEvent(gpu_uuid=lost, xid=79) in backend.wait_for_events(0.0)
    backend.restore_gpu(lost)
    assert backend.probe(lost) is True
    assert backend.usage(lost).memory_used_mib == 0


def test_fail_next_raises_exactly_once_per_injection() -> None:
    backend = make_backend()
    uuid = backend.gpus()[0].uuid
    backend.fail_next("usage", BackendError("nvmlDeviceGetMemoryInfo failed: Unknown Error"))
    backend.fail_next("usage", GPULostError("second"))
    with pytest.raises(BackendError, match="Unknown Error"):
        backend.usage(uuid)
    with pytest.raises(GPULostError, match="second"):
        backend.usage(uuid)
    assert backend.usage(uuid).memory_used_mib == 0


def test_fail_next_wait_for_events_raises_even_when_events_are_queued() -> None:
    backend = make_backend()
    backend.inject_xid(backend.gpus()[0].uuid, 48)
    backend.fail_next("wait_for_events", BackendError("nvmlEventSetWait failed"))
    with pytest.raises(BackendError, match="nvmlEventSetWait"):
        backend.wait_for_events(0.0)
    assert len(backend.wait_for_events(0.0)) == 1


def test_fail_next_refuses_unknown_methods_and_non_backend_errors() -> None:
    backend = make_backend()
    with pytest.raises(ValueError, match="cannot inject"):
        backend.fail_next("allocate", BackendError("x"))
    with pytest.raises(TypeError, match="BackendError"):
        backend.fail_next("usage", RuntimeError("x"))  # type: ignore[arg-type]


def test_close_releases_a_blocked_waiter() -> None:
    backend = make_backend()
    waiter = threading.Thread(target=backend.wait_for_events, args=(30.0,))
    waiter.start()
    time.sleep(0.05)
    backend.close()
    waiter.join(timeout=5.0)
    assert not waiter.is_alive()


def test_concurrent_injection_loses_no_event() -> None:
    backend = make_backend()
    uuids = [gpu.uuid for gpu in backend.gpus()]
    per_thread = 200

    def inject(uuid: str) -> None:
        for xid in range(per_thread):
            backend.inject_xid(uuid, xid)

    threads = [threading.Thread(target=inject, args=(uuid,)) for uuid in uuids]
    for thread in threads:
        thread.start()
    received: list[XidEvent] = []
    deadline = time.monotonic() + 10.0
    while len(received) < per_thread * len(uuids) and time.monotonic() < deadline:
        received.extend(backend.wait_for_events(0.05))
    for thread in threads:
        thread.join(timeout=5.0)
    assert len(received) == per_thread * len(uuids)
    for uuid in uuids:
        assert [event.xid for event in received if event.gpu_uuid == uuid] == list(range(per_thread))
