"""The view follows the device plugin's side of the protocol: an Assignment rewritten by the plugin (a
swap of two interchangeable pending pods) is re-accounted exactly, and bound pods awaiting Allocate
are indexed per node until `tensor.ai/allocated` (or Running) says kubelet is done with them."""

from __future__ import annotations

import pytest
from kubernetes import client
from test_extender_support import assigned_pod, gpu_uuid, node, share_memory_mib, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.scheduler.view import ClusterView, KubeSource

WAIT_S = 10.0


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


@pytest.fixture
def watched(api: KubeStandin):
    view = ClusterView(stale_seconds=0)
    source = KubeSource(view, api.api_client(), retry_s=0.1).start()
    try:
        assert wait_for(lambda: view.ready, WAIT_S)
        yield view
    finally:
        source.stop()


def _pending_bound(name: str, node_name: str, gpu: int, milli: int) -> dict:
    """A pod bound with an Assignment that kubelet has not admitted yet (no tensor.ai/allocated)."""
    built = assigned_pod(name, node_name, [(gpu, milli)])
    built["status"]["phase"] = "Pending"
    return built


def _assignment(pod_uid: str, node_name: str, gpu: int, milli: int) -> str:
    assignment = pb.Assignment(pod_uid=pod_uid, node_name=node_name)
    assignment.containers.add(name="c0").gpus.add(uuid=gpu_uuid(node_name, gpu), milli=milli,
                                                  memory_mib=share_memory_mib(milli))
    return contract.encode_assignment(assignment)


def _annotate(api: KubeStandin, name: str, key: str, text: str) -> None:
    client.CoreV1Api(api.api_client()).patch_namespaced_pod(
        name, "ml", {"metadata": {"annotations": {key: text}}}, _content_type="application/merge-patch+json"
    )


def _relisted(api: KubeStandin) -> ClusterView:
    """A view built afresh from a full list: what the watched view must equal after any event sequence."""
    fresh = ClusterView(stale_seconds=0)
    fresh.replace("nodes", api.list_objects("nodes"))
    fresh.replace("pods", api.list_objects("pods"))
    fresh.replace("gpuquotas", [])
    return fresh


def _free(view: ClusterView, node_name: str = "gpu-0") -> tuple[int, ...] | None:
    entry = view.snapshot().get(node_name)
    return None if entry is None else entry[0]


def _same_as_relist(view: ClusterView, api: KubeStandin) -> bool:
    fresh = _relisted(api)
    return (
        view.snapshot() == fresh.snapshot()
        and view.usage_snapshot() == fresh.usage_snapshot()
        and view.nodes_awaiting_allocate() == fresh.nodes_awaiting_allocate()
    )


def test_plugin_swap_of_two_pending_assignments_is_reaccounted_without_double_counting(
    api: KubeStandin, watched: ClusterView
) -> None:
    api.add_object("nodes", node("gpu-0", 2))
    first = api.add_pod(_pending_bound("first", "gpu-0", 0, 600))
    second = api.add_pod(_pending_bound("second", "gpu-0", 1, 600))
    assert wait_for(lambda: _free(watched) == (400, 400), WAIT_S)
    # the plugin moves `first` onto GPU 1 first: for a moment GPU 1 is over-committed (1200 milli)
    _annotate(api, "first", contract.ANNOTATION_ASSIGNMENT, _assignment(first["metadata"]["uid"], "gpu-0", 1, 600))
    assert wait_for(lambda: _free(watched) == (1000, -200), WAIT_S)
    assert _same_as_relist(watched, api)
    _annotate(api, "second", contract.ANNOTATION_ASSIGNMENT, _assignment(second["metadata"]["uid"], "gpu-0", 0, 600))
    assert wait_for(lambda: _free(watched) == (400, 400), WAIT_S)
    assert _same_as_relist(watched, api)
    assert watched.usage_snapshot()["ml"] == _relisted(api).usage_snapshot()["ml"]
    assert not any(watched.distrusted_assignments.values()), "a GPU swap must be taken as written"
    # both gone: every milli and every MiB comes back, no record is left indexed
    api.delete_object("pods", "first", "ml")
    api.delete_object("pods", "second", "ml")
    assert wait_for(lambda: _free(watched) == (1000, 1000), WAIT_S)
    assert watched.snapshot() == _relisted(api).snapshot()
    assert watched.usage_snapshot() == {} and watched.nodes_awaiting_allocate() == frozenset()


def test_bound_pods_await_allocate_until_the_plugin_writes_allocated(api: KubeStandin, watched: ClusterView) -> None:
    api.add_object("nodes", node("gpu-0", 2))
    created = api.add_pod(_pending_bound("first", "gpu-0", 0, 500))
    assert wait_for(lambda: watched.nodes_awaiting_allocate() == {"gpu-0"}, WAIT_S)
    [(awaiting_pod, sizes)] = watched.awaiting_allocate("gpu-0")
    assert awaiting_pod["metadata"]["name"] == "first" and sizes == {500}
    text = created["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT]
    _annotate(api, "first", contract.ANNOTATION_ALLOCATED, text)
    assert wait_for(lambda: watched.nodes_awaiting_allocate() == frozenset(), WAIT_S)
    assert _free(watched) == (500, 1000), "allocation changes the index, never the accounting"


def test_running_pods_and_unreadable_allocated_annotations(api: KubeStandin, watched: ClusterView) -> None:
    api.add_object("nodes", node("gpu-0", 2))
    api.add_pod(_pending_bound("first", "gpu-0", 0, 500))
    api.add_pod(_pending_bound("second", "gpu-0", 1, 250))
    assert wait_for(lambda: len(watched.awaiting_allocate("gpu-0")) == 2, WAIT_S)
    _annotate(api, "second", contract.ANNOTATION_ALLOCATED, "not json")  # unreadable: stays waiting (safe side)
    api.set_pod_phase("ml", "first", "Running")  # kubelet allocates every container at admission
    assert wait_for(lambda: [p["metadata"]["name"] for p, _ in watched.awaiting_allocate("gpu-0")] == ["second"],
                    WAIT_S)
    api.set_pod_phase("ml", "second", "Failed")
    assert wait_for(lambda: watched.nodes_awaiting_allocate() == frozenset(), WAIT_S)
