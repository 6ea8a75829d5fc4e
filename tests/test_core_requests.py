"""pod_demand: a v1.Pod dict as kube-scheduler sends it becomes a PodDemand, or a DemandError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.proto import contract
from tensorai.scheduler.core.requests import DemandError, pod_demand


def pod(containers: list[dict], annotations: dict | None = None, init: list[dict] | None = None) -> dict:
    spec: dict = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "annotations": annotations or {}},
            "spec": spec}


def container(name: str = "main", milli: object = None, cpu: str | None = None, memory: str | None = None,
              vgpu_memory: str | None = None) -> dict:
    limits: dict = {}
    requests: dict = {}
    if milli is not None:
        limits[contract.RESOURCE_VGPU_MILLI] = milli
    if vgpu_memory is not None:
        limits[contract.RESOURCE_VGPU_MEMORY] = vgpu_memory
    if cpu is not None:
        requests["cpu"] = cpu
    if memory is not None:
        requests["memory"] = memory
    return {"name": name, "resources": {"limits": limits, "requests": requests}}


def test_fractional_share_is_one_gpu_with_that_milli():
    demand = pod_demand(pod([container(milli="250")]))
    assert [(c.milli, c.gpu_count) for c in demand.containers] == [(250, 1)]
    assert (demand.namespace, demand.name, demand.uid) == ("ns", "p", "u-1")


def test_canonical_quantity_2k_means_two_whole_gpus():
    demand = pod_demand(pod([container(milli="2k")]))
    assert [(c.milli, c.gpu_count) for c in demand.containers] == [(1000, 2)]


def test_more_than_one_gpu_must_be_whole_gpus():
    with pytest.raises(DemandError, match="multiple of 1000"):
        pod_demand(pod([container(milli="1500")]))


@pytest.mark.parametrize("value", ["-250", "0.5", "abc", True, [1]])
def test_malformed_milli_is_a_demand_error_naming_the_container(value):
    with pytest.raises(DemandError, match="main"):
        pod_demand(pod([container(milli=value)]))


def test_user_facing_vgpu_is_accepted_when_the_webhook_did_not_rewrite_it():
    raw = pod([{"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU: "250m"}}}])
    assert pod_demand(raw).containers[0].milli == 250


def test_vgpu_memory_is_per_gpu_mib():
    demand = pod_demand(pod([container(milli="500", vgpu_memory="10Gi")]))
    assert demand.containers[0].memory_mib == 10240


def test_vgpu_memory_without_a_gpu_is_rejected():
    with pytest.raises(DemandError, match="asks for no GPU"):
        pod_demand(pod([container(vgpu_memory="1Gi")]))


def test_cpu_and_memory_take_the_larger_of_app_sum_and_largest_init_container():
    demand = pod_demand(pod([container("a", cpu="1", memory="1Gi"), container("b", cpu="500m", memory="512Mi")],
                            init=[container("setup", cpu="2", memory="256Mi")]))
    assert demand.cpu_milli == 2000  # init container's 2 CPUs beat the app's 1.5
    assert demand.memory_mib == 1536  # the app's 1.5 GiB beats the init container's 256 MiB


def test_init_container_gpu_requests_are_marked_init():
    demand = pod_demand(pod([container("app", milli="300")], init=[container("warm", milli="1000")]))
    assert {(c.name, c.init) for c in demand.containers} == {("app", False), ("warm", True)}


def test_annotations_are_trimmed_comma_lists():
    demand = pod_demand(pod([container(milli="100")], annotations={
        contract.ANNOTATION_GPU_MODEL: " A100 , H100,, ",
        contract.ANNOTATION_GPU_UUID_EXCLUDE: "GPU-1",
        contract.ANNOTATION_EXCLUSIVE: "True",
        contract.ANNOTATION_ANTI_AFFINITY_GROUP: " team-a ",
        contract.ANNOTATION_POLICY: "binpack",
    }))
    assert demand.allowed_models == frozenset({"A100", "H100"})
    assert demand.excluded_uuids == frozenset({"GPU-1"})
    assert demand.exclusive is True
    assert demand.anti_affinity_group == "team-a"
    assert demand.policy == "binpack"


def test_unknown_policy_and_bad_exclusive_value_are_rejected_with_the_choices():
    with pytest.raises(DemandError, match="fgd"):
        pod_demand(pod([container(milli="100")], annotations={contract.ANNOTATION_POLICY: "fastest"}))
    with pytest.raises(DemandError, match="'true' or 'false'"):
        pod_demand(pod([container(milli="100")], annotations={contract.ANNOTATION_EXCLUSIVE: "maybe"}))


def test_duplicate_container_names_are_rejected():
    with pytest.raises(DemandError, match="used twice"):
        pod_demand(pod([container("a"), container("a")]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
resource_tables = st.dictionaries(
    st.sampled_from([contract.RESOURCE_VGPU_MILLI, contract.RESOURCE_VGPU, contract.RESOURCE_VGPU_MEMORY, "cpu",
                     "memory"]),
    json_values | st.sampled_from(["250", "2k", "1e3", "10Gi", "-1", "1500", "0.3", "999999999999"]),
    max_size=4,
)
hostile_containers = st.lists(
    st.fixed_dictionaries({"name": st.text(max_size=5) | json_values,
                           "resources": st.fixed_dictionaries({"limits": resource_tables, "requests": resource_tables})
                           | json_values}),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    json_values,
    st.fixed_dictionaries({"metadata": st.fixed_dictionaries({"annotations": st.dictionaries(
        st.sampled_from([contract.ANNOTATION_GPU_MODEL, contract.ANNOTATION_EXCLUSIVE, contract.ANNOTATION_POLICY,
                         contract.ANNOTATION_ANTI_AFFINITY_GROUP]), json_values, max_size=3)}) | json_values,
        "spec": st.fixed_dictionaries({"containers": hostile_containers, "initContainers": hostile_containers})
        | json_values}),
))
def test_hostile_pods_raise_only_demand_error(raw):
    try:
        demand = pod_demand(raw)
    except DemandError:
        return
    for c in demand.containers:  # whatever parses is a valid demand
        assert 1 <= c.milli <= 1000 and c.gpu_count >= 1
        assert c.milli == 1000 or c.gpu_count == 1


@pytest.mark.parametrize(
    ("field", "entry", "says"),
    [
        ("vgpu_memory", container(milli="250", vgpu_memory="1e30"), "more memory than any GPU has"),
        ("cpu", container(milli="250", cpu="1e30"), "cpu request"),
        ("memory", container(milli="250", memory="1e30"), "memory request"),
        ("memory", container(milli="250", memory="9e24"), "memory request"),  # 2^63 MiB: past int64
    ],
)
def test_amounts_beyond_any_node_are_demand_errors_not_int64_overflows(field, entry, says):
    with pytest.raises(DemandError, match=says):
        pod_demand(pod([entry]))


def test_the_largest_accepted_amounts_still_fit_int64():
    from tensorai.scheduler.core.requests import MAX_AMOUNT

    demand = pod_demand(pod([container(milli="1000", vgpu_memory=f"{MAX_AMOUNT}Mi", memory=f"{MAX_AMOUNT}Mi")]))
    assert demand.containers[0].memory_mib == demand.memory_mib == MAX_AMOUNT < 2**62


@pytest.mark.parametrize(
    "listed",
    [",".join(f"model-{index}" for index in range(65)), "H100," + "x" * 129, "," * 20_000],
)
def test_gpu_lists_longer_than_any_cluster_needs_are_demand_errors(listed):
    with pytest.raises(DemandError, match="more than 64 entries or an entry longer than 128"):
        pod_demand(pod([container(milli="250")], annotations={contract.ANNOTATION_GPU_MODEL: listed}))


def test_a_list_of_64_short_entries_with_repeats_is_read_as_its_set():
    listed = ",".join(["H100", "A100"] * 32)
    demand = pod_demand(pod([container(milli="250")], annotations={contract.ANNOTATION_GPU_UUID: listed}))
    assert demand.allowed_uuids == frozenset({"H100", "A100"})


def test_more_than_64_gpu_containers_in_one_pod_is_a_demand_error():
    many = [container(name=f"c{index}", milli="10") for index in range(65)]
    with pytest.raises(DemandError, match="more than 64 containers"):
        pod_demand(pod(many))
    assert len(pod_demand(pod(many[:64])).containers) == 64


@pytest.mark.parametrize("key", [contract.ANNOTATION_GPU_MODEL, contract.ANNOTATION_GPU_MODEL_EXCLUDE])
def test_a_gpu_model_entry_that_names_no_model_is_a_demand_error(key):
    """`NVIDIA` or `-` could match no GPU (proto/gpumodels.py): the pod would wait forever, so it is refused."""
    with pytest.raises(DemandError, match=rf"annotations\[{key}\]: 'NVIDIA' names no GPU model"):
        pod_demand(pod([container(milli="250")], annotations={key: "H100, NVIDIA"}))
    kept = pod_demand(pod([container(milli="250")], annotations={key: "NVIDIA H100 80GB HBM3, a100-80gb"}))
    assert (kept.allowed_models or kept.excluded_models) == {"NVIDIA H100 80GB HBM3", "a100-80gb"}  # as written
