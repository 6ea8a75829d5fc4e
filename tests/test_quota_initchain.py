"""Quota charges exactly what a pod's GPUs hold under kubelet's reuse of init containers' devices.

The count is `requests.total_gpu_milli` / `initchain.held_per_gpu`: init 500 then app 250 holds 500;
a sidecar (restartPolicy Always) keeps its own share, so sidecar 250, init 500, app 250 holds 750
(the init container runs beside the sidecar and hands only 250 of its 500 on to the app).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extender_support import ExtenderStack, filter_args, gpu_uuid, node, pod, post, quota, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.core.quota import demand_gpus_milli, estimate_usage, usage_of_shares
from tensorai.scheduler.core.requests import pod_demand, total_gpu_milli
from tensorai.scheduler.core.types import ContainerDemand, PodDemand
from tensorai.scheduler.view import ClusterView

# (role, milli) per container in spec order; role: "init" (regular), "sidecar" or "app"
ROLES = ("init", "sidecar", "app")


def _demand(*containers: ContainerDemand) -> PodDemand:
    return PodDemand("ml", "p", "uid", containers)


def _pod_with(containers: list[tuple[str, int]], *, node_name: str | None = None) -> dict:
    """A pod whose init containers (regular or sidecar) come first, then its app containers, all on GPU 0."""
    apps = [milli for role, milli in containers if role == "app"] or [0]
    built = pod("p", apps, node_name=node_name, phase="Running" if node_name else "Pending")
    inits = []
    for position, (role, milli) in enumerate(c for c in containers if c[0] != "app"):
        limits = {contract.RESOURCE_VGPU_MILLI: str(milli)}
        init = {"name": f"i{position}", "image": "setup", "resources": {"limits": limits, "requests": dict(limits)}}
        if role == "sidecar":
            init["restartPolicy"] = "Always"
        inits.append(init)
    built["spec"]["initContainers"] = inits
    if node_name:
        assignment = contract.pb.Assignment(pod_uid=built["metadata"]["uid"], node_name=node_name)
        for container in inits + built["spec"]["containers"]:
            milli = int(container["resources"]["limits"].get(contract.RESOURCE_VGPU_MILLI, 0))
            if milli:
                share = assignment.containers.add(name=container["name"]).gpus.add(uuid=gpu_uuid(node_name, 0))
                share.milli, share.memory_mib = milli, milli * 10
        built["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    return built


def test_init_500_then_app_250_is_charged_500() -> None:
    demand = _demand(ContainerDemand("setup", 500, 1, init=True), ContainerDemand("main", 250, 1))
    assert demand_gpus_milli(demand) == 500
    assert estimate_usage(demand, "H100", 80000).models_milli == {"H100": 500}


def test_sidecar_before_an_init_container_keeps_its_share_while_the_init_container_runs() -> None:
    demand = _demand(
        ContainerDemand("proxy", 250, 1, sidecar=True),
        ContainerDemand("setup", 500, 1, init=True),
        ContainerDemand("main", 250, 1),
    )
    assert demand_gpus_milli(demand) == 750 == total_gpu_milli(demand)


def test_estimated_memory_follows_the_same_hand_on_as_milli() -> None:
    demand = _demand(ContainerDemand("setup", 500, 1, 4000, init=True), ContainerDemand("main", 250, 1, 3000))
    assert estimate_usage(demand, None, None).memory_mib == 4000
    demand = _demand(ContainerDemand("setup", 500, 1, 1000, init=True), ContainerDemand("main", 250, 1, 3000))
    assert estimate_usage(demand, None, None).memory_mib == 3000


def test_usage_of_shares_in_spec_order_replays_the_reuse_pool() -> None:
    shares = [("proxy", 250, 25), ("setup", 500, 50), ("main", 250, 25)]
    assert usage_of_shares(shares, frozenset({"setup"}), None).gpus_milli == 750


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ROLES), st.integers(1, 999)), min_size=1, max_size=5))
def test_quota_charges_exactly_what_the_view_subtracts_from_the_gpu(containers: list[tuple[str, int]]) -> None:
    """Any mix of init containers, sidecars and apps on one GPU: usage == held milli, delete restores both."""
    view = ClusterView()
    view.replace("nodes", [node("n", 1)])
    before = view.snapshot()
    built = _pod_with(containers, node_name="n")
    view.upsert_pod(built)
    held_milli = 1000 - view.snapshot()["n"][0][0]
    assert view.used("ml").gpus_milli == held_milli == total_gpu_milli(pod_demand(built))
    assert view.used("ml").memory_mib == before["n"][1][0] - view.snapshot()["n"][1][0]
    view.delete_pod(built)
    assert view.snapshot() == before and view.used("ml").is_zero()


def test_filter_refuses_a_pod_whose_sidecar_and_init_container_hold_more_than_the_quota() -> None:
    with KubeStandin() as api:
        api.add_object("nodes", node("gpu-0", 1))
        api.add_object("gpuquotas", quota("team", gpus="0.6"))
        with ExtenderStack(api) as stack:
            assert wait_for(lambda: stack.view.quotas("ml"), 10.0)
            created = api.add_pod(_pod_with([("sidecar", 250), ("init", 500), ("app", 250)]))
            assert wait_for(lambda: stack.view.pod(created["metadata"]["uid"]) is not None, 10.0)
            status, result = post(stack.url + "/filter", filter_args(created, ["gpu-0"]))
            assert status == 200 and result["NodeNames"] == [], result
            reasons = " ".join({**result["FailedNodes"], **result["FailedAndUnresolvableNodes"]}.values())
            assert "0.75" in reasons and "0.6" in reasons, reasons
