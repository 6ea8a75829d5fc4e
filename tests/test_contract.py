"""Inventory / Assignment annotations and quantities: round trips, golden JSON, hostile input."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.quantity import QuantityError, bytes_to_mib, parse_quantity, quantity_to_milli

FIXED_TIME = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


def make_inventory() -> pb.Inventory:
    return pb.Inventory(
        node_name="gpu-a",
        gpus=[
            pb.GPU(uuid="GPU-00000000-0000-0000-0000-000000000001", index=0, model="H100",
                   memory_mib=81559, reserved_mib=600, numa_node=0, healthy=True),
            pb.GPU(uuid="GPU-00000000-0000-0000-0000-000000000002", index=1, model="H100",
                   memory_mib=81559, reserved_mib=600, numa_node=1, healthy=False),
        ],
        sharing_mode=pb.SHARING_MODE_MPS,
        plugin_version="0.1.0",
        heartbeat_time=contract.timestamp_now(FIXED_TIME),
    )


def test_inventory_json_is_camel_case_golden() -> None:
    encoded = json.loads(contract.encode_inventory(make_inventory()))
    assert encoded == {
        "nodeName": "gpu-a",
        "gpus": [
            {"uuid": "GPU-00000000-0000-0000-0000-000000000001", "model": "H100", "memoryMib": "81559",
             "reservedMib": "600", "healthy": True},
            {"uuid": "GPU-00000000-0000-0000-0000-000000000002", "index": 1, "model": "H100",
             "memoryMib": "81559", "reservedMib": "600", "numaNode": 1},
        ],
        "sharingMode": "SHARING_MODE_MPS",
        "pluginVersion": "0.1.0",
        "heartbeatTime": "2026-11-23T12:00:00Z",
    }


def test_inventory_round_trips() -> None:
    inventory = make_inventory()
    assert contract.decode_inventory(contract.encode_inventory(inventory)) == inventory


def test_assignment_round_trips_and_is_readable() -> None:
    assignment = pb.Assignment(
        pod_uid="uid-1", node_name="gpu-a", decided_at=contract.timestamp_now(FIXED_TIME),
        containers=[pb.ContainerAssignment(name="w", gpus=[pb.GPUShare(uuid="GPU-1", milli=250, memory_mib=20000)])],
    )
    text = contract.encode_assignment(assignment)
    assert '"podUid": "uid-1"' in text and '"memoryMib": "20000"' in text
    assert contract.decode_assignment(text) == assignment


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"nodeName": 5}', '{"gpus": [{"uuid": ""}]}',
     '{"gpus": [{"uuid": "GPU-1", "memoryMib": "10", "reservedMib": "10"}]}',
     '{"gpus": [{"uuid": "GPU-1", "memoryMib": "10"}, {"uuid": "GPU-1", "index": 1, "memoryMib": "10"}]}'],
)
def test_bad_inventory_annotation_raises_contract_error(text: str) -> None:
    with pytest.raises(contract.ContractError):
        contract.decode_inventory(text)


@pytest.mark.parametrize(
    "text",
    ['{"nodeName": "n", "containers": [{"name": "w", "gpus": [{"uuid": "G", "milli": 1001}]}]}',
     '{"nodeName": "n", "containers": [{"name": "w", "gpus": [{"uuid": "G", "milli": 0}]}]}',
     '{"containers": []}',
     '{"nodeName": "n", "containers": [{"name": "w"}, {"name": "w"}]}'],
)
def test_bad_assignment_annotation_raises_contract_error(text: str) -> None:
    with pytest.raises(contract.ContractError):
        contract.decode_assignment(text)


@given(st.text(max_size=200))
def test_decoders_never_raise_anything_but_contract_error(text: str) -> None:
    for decode in (contract.decode_inventory, contract.decode_assignment):
        with contextlib.suppress(contract.ContractError):
            decode(text)


@pytest.mark.parametrize(
    ("quantity", "milli"),
    [("250m", 250), ("0.25", 250), ("1", 1000), ("2k", 2_000_000), ("1e3", 1_000_000), ("0.0005", 1),
     ("1500m", 1500), (3, 3000), ("+.5", 500)],
)
def test_quantity_to_milli_matches_api_server(quantity: object, milli: int) -> None:
    assert quantity_to_milli(quantity) == milli


def test_memory_quantities_convert_to_mib() -> None:
    assert bytes_to_mib("10Gi") == 10240
    assert bytes_to_mib("1") == 1  # rounded up: a byte still needs a MiB of budget
    assert bytes_to_mib("512Mi") == 512


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "10 Gi", "1e99999", "Gi", None, True, [1]])
def test_bad_quantities_raise_quantity_error(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


@given(st.text(max_size=40))
def test_quantity_parser_only_raises_quantity_error(text: str) -> None:
    with contextlib.suppress(QuantityError):
        parse_quantity(text)


def test_device_ids_map_back_to_their_gpu() -> None:
    device = contract.device_id("GPU-fef8089b-4820-abfc-e83e-94318197576e", 7)
    assert device == "GPU-fef8089b-4820-abfc-e83e-94318197576e::0007"
    assert len(device) <= 63
    assert contract.gpu_of_device_id(device) == "GPU-fef8089b-4820-abfc-e83e-94318197576e"
    with pytest.raises(contract.ContractError):
        contract.gpu_of_device_id("GPU-1")


def test_inventory_heartbeat_splits_off_the_time_and_refuses_what_it_cannot_read() -> None:
    inventory = pb.Inventory(node_name="n1")
    inventory.gpus.add(uuid="GPU-a", index=0, model="H100", memory_mib=81559)
    inventory.heartbeat_time.CopyFrom(contract.timestamp_now(FIXED_TIME + dt.timedelta(microseconds=1500)))
    body, seconds = contract.inventory_heartbeat(contract.encode_inventory(inventory))
    assert "heartbeatTime" not in body and body["nodeName"] == "n1"
    assert seconds == pytest.approx(FIXED_TIME.timestamp() + 0.0015)
    for text in ("not json", "[]", '{"heartbeatTime": 5}', '{"heartbeatTime": "2026-11-23T12:00:00+01:00"}',
                 '{"heartbeatTime": "yesterday Z"}', '{"nodeName": "n1"}'):
        assert contract.inventory_heartbeat(text) is None, text
