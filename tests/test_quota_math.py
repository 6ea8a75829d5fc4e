"""GPUQuota arithmetic: parsing spec.hard, pod usage, violations, status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_extender_support import quota

from tensorai.scheduler.core.quota import (
    QuotaError,
    Usage,
    estimate_usage,
    never_fits,
    parse_gpu_quota,
    quota_violations,
    status_used,
    usage_of_shares,
)
from tensorai.scheduler.core.types import ContainerDemand, PodDemand


def _demand(*containers: ContainerDemand) -> PodDemand:
    return PodDemand("ml", "p", "uid", containers)


def test_hard_limits_parse_fractional_gpus_memory_models_and_per_pod_max() -> None:
    limits = parse_gpu_quota(quota("q", gpus="2.5", memory="80Gi", models={"H100": "1", "A100": 3}, maxGpusPerPod="2"))
    assert (limits.gpus_milli, limits.memory_mib, dict(limits.models_milli), limits.max_gpus_per_pod_milli) == (
        2500,
        81920,
        {"H100": 1000, "A100": 3000},
        2000,
    )
    assert parse_gpu_quota(quota("open")).gpus_milli is None


@pytest.mark.parametrize(
    ("hard", "fragment"),
    [
        ({"gpus": "lots"}, "spec.hard.gpus"),
        ({"gpus": "-1"}, "negative"),
        ({"memory": "ten"}, "spec.hard.memory"),
        ({"models": ["H100"]}, "models"),
        ({"gpu": "1"}, "unknown keys"),
        ({"maxGpusPerPod": True}, "maxGpusPerPod"),
    ],
)
def test_malformed_quota_is_rejected_with_the_field_named(hard: dict, fragment: str) -> None:
    with pytest.raises(QuotaError, match=fragment):
        parse_gpu_quota(quota("q", **hard))


def test_namespaced_quota_needs_a_namespace() -> None:
    obj = quota("q", gpus="1")
    del obj["metadata"]["namespace"]
    with pytest.raises(QuotaError, match="namespace"):
        parse_gpu_quota(obj)


def test_usage_counts_largest_of_app_containers_and_each_init_container() -> None:
    shares = [("init", 1000, 100), ("a", 250, 10), ("b", 250, 10)]
    assert usage_of_shares(shares, frozenset({"init"}), "H100") == Usage(1000, 100, {"H100": 1000})
    assert usage_of_shares(shares, frozenset(), None) == Usage(1500, 120, {})


def test_estimate_uses_share_of_usable_memory_unless_memory_is_given() -> None:
    demand = _demand(ContainerDemand("a", 250, 1), ContainerDemand("b", 1000, 2, memory_mib=500))
    assert estimate_usage(demand, "H100", 80000) == Usage(2250, 20000 + 1000, {"H100": 2250})
    assert estimate_usage(demand, None, None).gpus_milli == 2250


def test_violations_name_the_quota_and_the_numbers() -> None:
    limits = [parse_gpu_quota(quota("team", gpus="1", models={"H100": "0.5"}, maxGpusPerPod="0.5"))]
    reasons = quota_violations(limits, Usage(750, 0, {"H100": 500}), Usage(500, 0, {"H100": 500}))
    assert any("gpus used 0.75 + 0.5 > hard 1" in reason for reason in reasons)
    assert any("H100 GPUs used 0.5 + 0.5 > hard 0.5" in reason for reason in reasons)
    assert quota_violations(limits, Usage(), Usage(500, 0, {})) == []
    assert never_fits(limits, Usage(600)) and not never_fits(limits, Usage(500))


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 10**6), st.sampled_from(["H100", "A100"])), max_size=12))
def test_usage_plus_then_minus_is_identity(parts: list[tuple[int, int, str]]) -> None:
    total = Usage()
    usages = [Usage(milli, mib, {model: milli} if milli else {}) for milli, mib, model in parts]
    for usage in usages:
        total = total.plus(usage)
    for usage in reversed(usages):
        total = total.minus(usage)
    assert total == Usage() and total.is_zero()


def test_status_used_has_the_units_of_spec_hard() -> None:
    assert status_used(Usage(2500, 4096, {"H100": 2500, "A100": 0})) == {
        "gpus": "2.5",
        "memory": "4096Mi",
        "models": {"H100": "2.5"},
    }


H100_SXM, H100_PCIE, A100_40, A100_80 = ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-PCIE-40GB",
                                         "NVIDIA A100-SXM4-80GB")


def test_a_per_model_limit_counts_every_gpu_its_name_matches() -> None:
    """`models: {H100: "1"}` holds the H100s of real nodes, whose GPUs report NVML's long names."""
    limits = [parse_gpu_quota(quota("team", models={"H100": "1", "A100-80GB": "0.5"}))]
    used = Usage(1250, 0, {H100_SXM: 500, H100_PCIE: 250, A100_40: 500})
    reasons = quota_violations(limits, used, Usage(500, 0, {H100_SXM: 500}))
    assert reasons == ["GPUQuota ml/team: H100 GPUs used 0.75 + 0.5 > hard 1"]
    assert quota_violations(limits, used, Usage(250, 0, {H100_PCIE: 250})) == []
    assert quota_violations(limits, used, Usage(1000, 0, {A100_40: 1000})) == []  # a 40 GB A100: not limited
    assert quota_violations(limits, used, Usage(1000, 0, {A100_80: 1000})) == [
        "GPUQuota ml/team: A100-80GB GPUs used 0 + 1 > hard 0.5"]
    nested = [parse_gpu_quota(quota("team", models={"H100": "2", "H100-PCIe": "0.5"}))]  # every key that matches
    assert quota_violations(nested, used, Usage(500, 0, {H100_PCIE: 500})) == [
        "GPUQuota ml/team: H100-PCIe GPUs used 0.25 + 0.5 > hard 0.5"]
    assert quota_violations(nested, used, Usage(500, 0, {H100_SXM: 500})) == []


def test_the_status_of_a_quota_shows_its_own_model_keys() -> None:
    limits = parse_gpu_quota(quota("team", models={"H100": "2", "L4": "1"}))
    used = Usage(1250, 0, {H100_SXM: 500, H100_PCIE: 250, A100_40: 500})
    assert status_used(used, limits)["models"] == {"H100": "0.75", "L4": "0"}


@pytest.mark.parametrize("name", ["NVIDIA", "-"])
def test_a_quota_model_that_names_no_model_is_refused(name: str) -> None:
    with pytest.raises(QuotaError, match=rf"spec.hard.models: '{name}' names no GPU model"):
        parse_gpu_quota(quota("team", models={"H100": "1", name: "1"}))
