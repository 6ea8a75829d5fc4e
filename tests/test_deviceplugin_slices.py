"""Specification of device IDs <-> GPUs and of the preferred-slice policy (pure, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.deviceplugin.gpus import GPUInfo
from tensorai.deviceplugin.slices import (
    HEALTHY,
    MAX_DEVICE_ID_CHARS,
    UNHEALTHY,
    AvailableIds,
    SliceError,
    SliceTable,
    choose_preferred,
    request_shape,
)
from tensorai.proto import contract

UUIDS = [f"GPU-{index:08x}-aaaa-bbbb-cccc-{index:012x}" for index in range(4)]


def make_table(numa: tuple[int, ...] = (0, 0, 1, 1)) -> SliceTable:
    return SliceTable(
        [GPUInfo(uuid, index, "H100", 81559, 600, numa[index]) for index, uuid in enumerate(UUIDS[: len(numa)])]
    )


def free_ids(table: SliceTable, used: dict[str, int]) -> AvailableIds:
    """Available IDs when `used[uuid]` slices (the first ones) of each GPU are taken."""
    return table.available(d for uuid in table.uuids for d in table.device_ids(uuid)[used.get(uuid, 0):])


def test_every_gpu_is_advertised_as_1000_ids_of_at_most_63_characters() -> None:
    table = make_table()
    listing = table.device_list(dict.fromkeys(UUIDS, True))
    assert len(listing.devices) == 4 * contract.MILLI_PER_GPU
    assert len({device.ID for device in listing.devices}) == 4000
    assert max(len(device.ID) for device in listing.devices) <= MAX_DEVICE_ID_CHARS
    assert all(contract.gpu_of_device_id(device.ID) in UUIDS for device in listing.devices)


def test_unhealthy_gpu_stays_listed_as_unhealthy_and_numa_is_reported() -> None:
    table = make_table(numa=(0, 1))
    listing = table.device_list({UUIDS[0]: True, UUIDS[1]: False})
    health = {device.ID: device.health for device in listing.devices}
    assert health[contract.device_id(UUIDS[0], 5)] == HEALTHY
    assert health[contract.device_id(UUIDS[1], 5)] == UNHEALTHY
    numa = {contract.gpu_of_device_id(d.ID): [n.ID for n in d.topology.nodes] for d in listing.devices}
    assert numa == {UUIDS[0]: [0], UUIDS[1]: [1]}


def test_unknown_numa_leaves_topology_empty_so_kubelet_stays_numa_agnostic() -> None:
    table = make_table(numa=(-1,))
    assert not table.device_list({UUIDS[0]: True}).devices[0].HasField("topology")


def test_a_uuid_too_long_for_63_character_ids_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="63"):
        SliceTable([GPUInfo("GPU-" + "x" * 60, 0, "H100", 81559, 600, 0)])


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("nonsense", "not of the form"),
        ("GPU-unknown::0001", "does not have"),
        (UUIDS[0] + "::1000", "not one of the slices"),
        (UUIDS[0] + "::12", "not one of the slices"),
    ],
)
def test_ids_we_never_advertised_are_refused_with_the_reason(device: str, reason: str) -> None:
    with pytest.raises(SliceError, match=reason) as caught:
        make_table().group_by_gpu([device])
    assert not caught.value.precondition


def test_duplicate_ids_are_refused() -> None:
    device = contract.device_id(UUIDS[0], 1)
    with pytest.raises(SliceError, match="twice"):
        make_table().group_by_gpu([device, device])


def test_sizes_above_one_gpu_must_be_whole_gpus() -> None:
    with pytest.raises(SliceError, match="not a whole number of GPUs"):
        request_shape(1500, gpu_count=4)
    with pytest.raises(SliceError, match="at least 1"):
        request_shape(0, gpu_count=4)
    with pytest.raises(SliceError, match="exceeds") as caught:
        request_shape(5000, gpu_count=4)
    assert caught.value.precondition
    assert request_shape(2000, gpu_count=4).whole_gpus == 2


def test_fractional_preference_binpacks_onto_the_fullest_gpu_that_fits() -> None:
    table = make_table()
    available = free_ids(table, {UUIDS[0]: 900, UUIDS[1]: 600, UUIDS[2]: 0, UUIDS[3]: 700})
    chosen = choose_preferred(table, available, {}, 250, target_gpus=())
    # GPU0 has only 100 free (does not fit); GPU3 (300 free) is fuller than GPU1 (400 free)
    assert {contract.gpu_of_device_id(d) for d in chosen} == {UUIDS[3]}
    assert len(chosen) == 250


def test_fractional_preference_follows_the_scheduler_assignment_when_it_fits() -> None:
    table = make_table()
    available = free_ids(table, {UUIDS[3]: 700})
    chosen = choose_preferred(table, available, {}, 250, target_gpus=[(UUIDS[1],)])
    assert {contract.gpu_of_device_id(d) for d in chosen} == {UUIDS[1]}


def test_fractional_request_that_fits_no_single_gpu_is_refused_not_spread() -> None:
    table = make_table()
    available = free_ids(table, dict.fromkeys(UUIDS, 800))  # 200 free on each, 800 in total
    with pytest.raises(SliceError, match="cannot span GPUs") as caught:
        choose_preferred(table, available, {}, 300)
    assert caught.value.precondition


def test_whole_gpu_request_takes_wholly_free_gpus_on_one_numa_node() -> None:
    table = make_table()
    available = free_ids(table, {UUIDS[0]: 1})  # GPU0 partly used: not whole
    chosen = choose_preferred(table, available, {}, 2000)
    assert {contract.gpu_of_device_id(d) for d in chosen} == {UUIDS[2], UUIDS[3]}  # NUMA 1 holds both
    assert len(chosen) == 2000


def test_whole_gpu_request_needs_enough_wholly_free_gpus() -> None:
    table = make_table()
    with pytest.raises(SliceError, match="wholly free"):
        choose_preferred(table, free_ids(table, {UUIDS[0]: 1, UUIDS[1]: 1, UUIDS[2]: 1}), {}, 2000)


@settings(max_examples=150, deadline=None)
@given(
    used=st.lists(st.integers(0, 1000), min_size=4, max_size=4),
    size=st.integers(1, 999),
    target=st.sampled_from([None, 0, 1, 2, 3]),
)
def test_fractional_preference_never_spans_gpus(used: list[int], size: int, target: int | None) -> None:
    table = make_table()
    available = free_ids(table, dict(zip(UUIDS, used, strict=True)))
    targets = [(UUIDS[target],)] if target is not None else []
    try:
        chosen = choose_preferred(table, available, {}, size, target_gpus=targets)
    except SliceError as error:
        assert error.precondition
        assert all(1000 - u < size for u in used)
        return
    gpus = {contract.gpu_of_device_id(d) for d in chosen}
    assert len(gpus) == 1 and len(chosen) == size == len(set(chosen))
    (gpu,) = gpus
    assert set(chosen) <= set(available.ids_on(gpu))
    if target is not None and 1000 - used[target] >= size:
        assert gpu == UUIDS[target]
