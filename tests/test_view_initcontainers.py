"""The extender's view counts a pod's GPU init containers the way kubelet holds them (core/initchain.py).

kubelet hands a finished init container's device IDs on to the container after it, so init 500 then
app 250 holds 500 on its GPU while the pod runs (not 750, not 250). The view, its quota usage, a
rebuilt view after a restart, and release on delete must all agree on that.
"""

from __future__ import annotations

import copy

import pytest
from test_extender_support import (
    ExtenderStack,
    bind_args,
    filter_args,
    gpu_uuid,
    node,
    pod,
    post,
    quota,
    share_memory_mib,
    wait_for,
)

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.view import ClusterView


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _init_container(name: str, milli: int, *, sidecar: bool = False) -> dict:
    limits = {contract.RESOURCE_VGPU_MILLI: str(milli)}
    container = {"name": name, "image": "setup", "resources": {"limits": dict(limits), "requests": {**limits}}}
    if sidecar:
        container["restartPolicy"] = "Always"
    return container


def _with_init(built: dict, *inits: dict) -> dict:
    """The pod with init containers (in this order) before its app containers."""
    built["spec"]["initContainers"] = list(inits)
    return built


def _assign(built: dict, node_name: str, shares: list[tuple[str, int, int]]) -> dict:
    """Bind `built` to node_name (Running) with an Assignment of (container, gpu index, milli) shares."""
    built["spec"]["nodeName"] = node_name
    built["status"]["phase"] = "Running"
    assignment = contract.pb.Assignment(pod_uid=built["metadata"]["uid"], node_name=node_name)
    for container_name, index, milli in shares:
        container = assignment.containers.add(name=container_name)
        container.gpus.add(uuid=gpu_uuid(node_name, index), milli=milli, memory_mib=share_memory_mib(milli))
    built["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    return built


def _free_milli(view: ClusterView, node_name: str) -> tuple[int, ...]:
    return view.snapshot()[node_name][0]


def _bind_through_extender(stack: ExtenderStack, api: KubeStandin, built: dict, node_name: str) -> dict:
    created = api.add_pod(built)
    uid = created["metadata"]["uid"]
    assert wait_for(lambda: stack.view.pod(uid) is not None, 10.0)
    status, result = post(stack.url + "/filter", filter_args(created, [node_name]))
    assert status == 200 and result["NodeNames"] == [node_name], result
    assert post(stack.url + "/bind", bind_args(created, node_name)) == (200, {"Error": ""})
    assert wait_for(lambda: not stack.view.pod(uid).assumed, 10.0), "the watch never confirmed the bind"
    return created


def test_init_500_then_app_250_bound_through_extender_holds_500_and_delete_restores_the_arrays(
    api: KubeStandin,
) -> None:
    api.add_object("nodes", node("gpu-0", 1))
    # a quota of exactly 0.5 GPU: it admits the pod only if quota charges what the GPU holds (500, not 750)
    api.add_object("gpuquotas", quota("team", gpus="0.5"))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"), 10.0)
        before = stack.view.snapshot()
        built = _with_init(pod("train", 250), _init_container("setup", 500))
        created = _bind_through_extender(stack, api, built, "gpu-0")
        assignment = contract.decode_assignment(
            api.get_object("pods", "train", "ml")["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT]
        )
        assert {g.uuid for c in assignment.containers for g in c.gpus} == {gpu_uuid("gpu-0", 0)}
        memory_mib = {c.name: c.gpus[0].memory_mib for c in assignment.containers}
        assert memory_mib["setup"] > memory_mib["c0"]
        assert _free_milli(stack.view, "gpu-0") == (500,)
        # memory follows the same rule: the init container's memory is handed on to the app container
        assert stack.view.snapshot()["gpu-0"][1] == (before["gpu-0"][1][0] - memory_mib["setup"],)
        assert stack.view.used("ml").gpus_milli == 500
        assert stack.view.used("ml").memory_mib == memory_mib["setup"]
        api.delete_object("pods", "train", "ml")
        assert wait_for(lambda: stack.view.pod(created["metadata"]["uid"]) is None, 10.0)
        assert stack.view.snapshot() == before
        assert stack.view.used("ml").is_zero()


def test_restarted_view_equals_the_live_one_for_pods_with_init_containers_and_sidecars(api: KubeStandin) -> None:
    names = [f"gpu-{index}" for index in range(3)]
    for name in names:  # one node each: a pod still awaiting the device plugin's Allocate blocks its node's GPU size
        api.add_object("nodes", node(name, 1))
    pods = [
        _with_init(pod("init-first", 250), _init_container("setup", 500)),
        _with_init(pod("sidecar", 250), _init_container("proxy", 100, sidecar=True)),
        _with_init(pod("both", 100), _init_container("warm", 300), _init_container("log", 100, sidecar=True)),
    ]
    with ExtenderStack(api) as live:
        for built, name in zip(pods, names, strict=True):
            _bind_through_extender(live, api, built, name)
        live_arrays, live_usage = live.view.snapshot(), live.view.usage_snapshot()
    # held: 500 (max of init 500, app 250), 350 (sidecar 100 beside app 250), 300 (warm's 300 handed on to
    # the sidecar's 100 and the app's 100, 100 left in kubelet's reuse pool)
    assert [1000 - live_arrays[name][0][0] for name in names] == [500, 350, 300]
    assert live_usage["ml"].gpus_milli == 1150
    with ExtenderStack(api) as rebuilt:
        assert rebuilt.view.snapshot() == live_arrays
        assert rebuilt.view.usage_snapshot() == live_usage


def test_over_committed_pod_with_init_container_is_counted_as_held_and_released_exactly() -> None:
    """A pod the API bound past capacity is counted anyway (force path); deleting it must give back the same."""
    view = ClusterView()
    view.replace("nodes", [node("n", 1)])
    view.replace("pods", [_assign(pod("big", 900), "n", [("c0", 0, 900)])])
    before = view.snapshot()
    late = _with_init(pod("late", 250), _init_container("setup", 500))
    late = _assign(late, "n", [("setup", 0, 500), ("c0", 0, 250)])
    view.upsert_pod(late)
    assert _free_milli(view, "n") == (100 - 500,)  # over-committed by what the init container leaves held
    view.delete_pod(late)
    assert view.snapshot() == before


def test_unparseable_pod_is_still_counted_as_kubelet_holds_its_init_containers() -> None:
    """A bound pod whose demand cannot be read (bad cpu request) is counted from its Assignment in spec order."""
    view = ClusterView()
    view.replace("nodes", [node("n", 1)])
    before = view.snapshot()
    broken = _with_init(pod("broken", 250, cpu="lots"), _init_container("setup", 500))
    broken = _assign(broken, "n", [("c0", 0, 250), ("setup", 0, 500)])  # Assignment order need not be spec order
    view.upsert_pod(broken)
    record = view.pod(broken["metadata"]["uid"])
    assert record.demand is None and record.demand_error
    assert _free_milli(view, "n") == (500,)
    assert view.used("ml").gpus_milli == 500
    view.delete_pod(broken)
    assert view.snapshot() == before


def test_unparseable_pod_with_sidecar_keeps_the_sidecars_share_beside_the_app() -> None:
    view = ClusterView()
    view.replace("nodes", [node("n", 1)])
    broken = _with_init(pod("broken", 250, cpu="lots"), _init_container("proxy", 500, sidecar=True))
    view.upsert_pod(_assign(broken, "n", [("proxy", 0, 500), ("c0", 0, 250)]))
    assert _free_milli(view, "n") == (250,)
    assert view.used("ml").gpus_milli == 750


def test_pod_updates_leave_the_counted_amount_unchanged() -> None:
    """Re-delivered watch events (same Assignment) never count a pod with init containers twice."""
    view = ClusterView()
    view.replace("nodes", [node("n", 1)])
    built = _assign(_with_init(pod("p", 250), _init_container("setup", 500)), "n", [("setup", 0, 500), ("c0", 0, 250)])
    view.upsert_pod(built)
    again = copy.deepcopy(built)
    again["metadata"]["labels"] = {"touched": "yes"}
    view.upsert_pod(again)
    assert _free_milli(view, "n") == (500,)
    assert view.used("ml").gpus_milli == 500
