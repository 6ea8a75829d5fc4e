"""GetPreferredAllocation's IDs read from the wire bytes: the same answer as the per-ID path, or none.

The per-ID path (`SliceTable.available`) is the reference: for every request the wire reader either
declines (None) or agrees with it exactly - counts, every GPU's free IDs and their order - and it never
accepts an ID the reference refuses, except a duplicate, which listing that GPU refuses instead.
"""

from __future__ import annotations

import random
from typing import ClassVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.deviceplugin.allocations import AllocationBook
from tensorai.deviceplugin.gpus import GPUInfo
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.service import DevicePluginServicer, PluginServer, VGPUManager
from tensorai.deviceplugin.sharing import SharingPolicy
from tensorai.deviceplugin.simulated import simulated_uuid
from tensorai.deviceplugin.slices import AvailableIds, SliceError, SliceTable
from tensorai.deviceplugin.wireids import WireLayout, WireRequest, container_spans
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc

HEX = "0123456789abcdef"


def table_of(uuids: list[str]) -> SliceTable:
    return SliceTable([GPUInfo(uuid, index, "H100", 81559, 600, -1) for index, uuid in enumerate(uuids)])


def paired_uuids(rng: random.Random, count: int) -> list[str]:
    """UUIDs equal but for two characters, so that no single character tells them apart (when count > 4)."""
    base = list("GPU-" + "".join(rng.choice(HEX) for _ in range(36)))
    first, second = rng.sample(range(4, 40), 2)
    uuids = []
    for code in range(count):
        uuid = base[:]
        uuid[first], uuid[second] = HEX[code // 4], HEX[code % 4]
        uuids.append("".join(uuid))
    return uuids


def read(layout: WireLayout, available: list[str], must: list[str] | None = None) -> AvailableIds | None:
    raw = dp.PreferredAllocationRequest(container_requests=[dp.ContainerPreferredAllocationRequest(
        available_deviceIDs=available, must_include_deviceIDs=must or [], allocation_size=7)]).SerializeToString()
    spans = container_spans(raw)
    assert spans is not None and len(spans) == 1
    read = layout.read_container(raw, *spans[0])
    if read is None:
        return None
    found, rest = read
    assert list(rest.must_include_deviceIDs) == (must or []) and rest.allocation_size == 7
    return found


def refuses_twice(available: AvailableIds, uuid: str) -> bool:
    try:
        available.on(uuid)
    except SliceError as error:
        assert "twice" in str(error)
        return True
    return False


def assert_same(table: SliceTable, got: AvailableIds, exact: AvailableIds) -> None:
    assert got.counts == exact.counts
    for uuid in table.uuids:
        assert got.on(uuid) == exact.on(uuid)
        assert got.ids_on(uuid) == exact.ids_on(uuid)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gpus=st.integers(1, 12), paired=st.booleans(),
       damage=st.sampled_from(["none", "duplicate", "one character", "shorter", "junk", "unknown gpu"]))
def test_the_wire_reader_agrees_with_the_per_id_path_or_declines(seed: int, gpus: int, paired: bool,
                                                                 damage: str) -> None:
    rng = random.Random(seed)
    uuids = paired_uuids(rng, gpus) if paired else [simulated_uuid(f"n{seed}", index) for index in range(gpus)]
    table = table_of(uuids)
    layout = WireLayout.for_table(table)
    assert layout is not None  # one or two characters always tell these apart
    every = [device for uuid in uuids for device in table.device_ids(uuid)]
    available = rng.sample(every, rng.randint(1, len(every)))
    victim = rng.choice(available)
    at = rng.randrange(len(victim))
    available += {
        "none": [],
        "duplicate": [victim],
        "one character": [victim[:at] + rng.choice(HEX + "XG:-") + victim[at + 1:]],
        "shorter": [victim[:-1]],
        "junk": ["x" * len(victim)],
        "unknown gpu": [contract.device_id(simulated_uuid("elsewhere", 0), 5)],
    }[damage]
    rng.shuffle(available)
    got = read(layout, available)
    try:
        exact = table.available(available)
    except SliceError as refused:
        if got is not None:  # only a duplicate gets past the reader; listing its GPU refuses it
            assert "twice" in str(refused)
            assert any(refuses_twice(got, uuid) for uuid in uuids)
        return
    assert got is not None, "the wire reader declined a well-formed request"
    assert_same(table, got, exact)


def test_kubelets_request_for_every_slice_of_eight_gpus_is_read_from_the_wire() -> None:
    table = table_of([simulated_uuid("node", index) for index in range(8)])
    layout = WireLayout.for_table(table)
    assert layout is not None
    every = [device for uuid in table.uuids for device in table.device_ids(uuid)]
    random.Random(3).shuffle(every)
    got = read(layout, every, must=every[:2])
    assert got is not None
    assert_same(table, got, table.available(every))


def test_ids_after_other_fields_or_of_several_lengths_fall_back_to_the_per_id_path() -> None:
    table = table_of([simulated_uuid("node", index) for index in range(2)])
    layout = WireLayout.for_table(table)
    assert layout is not None
    ids = list(table.device_ids(table.uuids[1])[:2])
    # a valid encoding kubelet does not use: allocation_size before the IDs
    container = (dp.ContainerPreferredAllocationRequest(allocation_size=1).SerializeToString()
                 + dp.ContainerPreferredAllocationRequest(available_deviceIDs=ids).SerializeToString())
    raw = b"\x0a" + bytes([len(container)]) + container
    parsed = dp.PreferredAllocationRequest.FromString(raw).container_requests[0]
    assert list(parsed.available_deviceIDs) == ids and parsed.allocation_size == 1
    assert layout.read(raw, 2, len(raw), len(ids)) is None
    assert layout.read_container(raw, 2, len(raw)) is None
    manager = VGPUManager(table, HealthTracker(table.uuids), SharingPolicy(), AllocationBook())
    servicer = DevicePluginServicer(manager)
    answer = servicer.GetPreferredAllocation(WireRequest(raw), Context())
    assert list(answer.container_responses[0].deviceIDs) == ids[:1]
    assert WireLayout.for_table(table_of([simulated_uuid("node", 0), "GPU-short"])) is None  # two ID lengths


def test_container_spans_decline_anything_but_container_requests() -> None:
    one = dp.ContainerPreferredAllocationRequest(allocation_size=5).SerializeToString()
    two = dp.PreferredAllocationRequest(container_requests=[
        dp.ContainerPreferredAllocationRequest(allocation_size=5),
        dp.ContainerPreferredAllocationRequest(allocation_size=6)]).SerializeToString()
    assert container_spans(two) == [(2, 2 + len(one)), (4 + len(one), 4 + 2 * len(one))]
    assert container_spans(two + b"\x10\x01") is None  # an unknown field
    assert container_spans(b"\x0a\xff") is None  # a length past the end
    assert container_spans(b"") == []


class Context:
    """The part of gRPC's servicer context the servicer uses, for calls in this process."""

    def add_callback(self, callback: object) -> bool:
        return False

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"{code}: {details}")


class RecordingServicer(DevicePluginServicer):
    """The real servicer, remembering what the server handed it and which path read the IDs."""

    request_types: ClassVar[list[type]] = []
    read_from_wire: ClassVar[list[bool]] = []  # per container request: IDs read from the bytes (not per ID)

    def GetPreferredAllocation(self, request, context):  # type: ignore[no-untyped-def]
        self.request_types.append(type(request))
        return super().GetPreferredAllocation(request, context)

    def _containers(self, request):  # type: ignore[no-untyped-def]
        containers = super()._containers(request)
        self.read_from_wire.extend(available is not None for _, available in containers)
        return containers


def test_the_plugin_server_hands_getpreferredallocation_its_wire_bytes_and_answers_like_the_per_id_path(
    workdir: str,
) -> None:
    table = table_of([simulated_uuid("node", index) for index in range(4)])
    manager = VGPUManager(table, HealthTracker(table.uuids), SharingPolicy(), AllocationBook())
    server = PluginServer(RecordingServicer(manager), f"{workdir}/plugin.sock").start()
    try:
        with grpc.insecure_channel(f"unix://{workdir}/plugin.sock") as channel:
            stub = dp_grpc.DevicePluginStub(channel)
            used = dict(zip(table.uuids, (900, 600, 0, 700), strict=True))
            free = [d for uuid in table.uuids for d in table.device_ids(uuid)[used[uuid]:]]
            random.Random(5).shuffle(free)
            answer = stub.GetPreferredAllocation(dp.PreferredAllocationRequest(container_requests=[
                dp.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=250)]), timeout=10)
            chosen = list(answer.container_responses[0].deviceIDs)
            # binpack: the fullest GPU that fits is GPU 3 (300 free); its lowest free slices first
            assert chosen == list(table.device_ids(table.uuids[3])[700:950])
            with pytest.raises(grpc.RpcError) as refused:  # a duplicate on the GPU answered from
                stub.GetPreferredAllocation(dp.PreferredAllocationRequest(container_requests=[
                    dp.ContainerPreferredAllocationRequest(available_deviceIDs=[*free, chosen[0]],
                                                           allocation_size=250)]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "twice" in (refused.value.details() or "")
            raw_call = channel.unary_unary("/v1beta1.DevicePlugin/GetPreferredAllocation")
            with pytest.raises(grpc.RpcError) as garbled:  # not protobuf: refused, not a crash
                raw_call(b"\x0a\x05\x0a\x09abc", timeout=10)
            assert garbled.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with_must = stub.GetPreferredAllocation(dp.PreferredAllocationRequest(container_requests=[
                dp.ContainerPreferredAllocationRequest(available_deviceIDs=free, must_include_deviceIDs=free[:1],
                                                       allocation_size=2)]), timeout=10)
            assert with_must.container_responses[0].deviceIDs[0] == free[0]
        assert RecordingServicer.request_types and set(RecordingServicer.request_types) == {WireRequest}
        assert RecordingServicer.read_from_wire and all(RecordingServicer.read_from_wire)  # the fast path answered
    finally:
        server.stop()
