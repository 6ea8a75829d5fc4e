"""The view never frees capacity because an Assignment says so (issue 13, defence in depth).

The admission policy keeps tenants from writing `tensor.ai/assignment`; these tests hold the view to
the same rule on its own: an Assignment that contradicts the pod's requests is counted as the pod
asks (never less), and a rewrite of a bound pod's accepted Assignment is taken only when it moves
containers between GPUs of the node, as the device plugin's swaps do.
"""

from __future__ import annotations

import copy
import urllib.request

import pytest
from test_extender_support import (
    ExtenderStack,
    assigned_pod,
    filter_args,
    gpu_uuid,
    node,
    pod,
    post,
    share_memory_mib,
    wait_for,
)

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import DISTRUST_CONTRADICTS_POD, DISTRUST_REWRITE_REFUSED, ClusterView

USABLE_MIB = share_memory_mib(1000)


def _view(*pods: dict, gpus: int = 2) -> ClusterView:
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("a", gpus)])
    view.replace("pods", list(pods))
    view.replace("gpuquotas", [])
    return view


def _free(view: ClusterView) -> tuple[tuple[int, ...], tuple[int, ...]]:
    milli, memory, _ = view.snapshot()["a"]
    return milli, memory


def _with_assignment(built: dict, shares: list[tuple[str, int, int, int]], node_name: str = "a") -> dict:
    """`built` with its Assignment replaced by (container, gpu index, milli, memory MiB) shares."""
    changed = copy.deepcopy(built)
    assignment = pb.Assignment(pod_uid=built["metadata"]["uid"], node_name=node_name)
    containers: dict[str, pb.ContainerAssignment] = {}
    for container, index, milli, memory_mib in shares:
        if container not in containers:
            containers[container] = assignment.containers.add(name=container)
        containers[container].gpus.add(uuid=gpu_uuid("a", index), milli=milli, memory_mib=memory_mib)
    changed["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    changed["metadata"]["resourceVersion"] = str(int(changed["metadata"].get("resourceVersion", "1")) + 1)
    return changed


def _without_assignment(built: dict) -> dict:
    changed = copy.deepcopy(built)
    del changed["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT]
    return changed


def test_a_lowered_or_removed_assignment_of_a_bound_pod_frees_nothing() -> None:
    whole = assigned_pod("whole", "a", [(0, 1000)])
    view = _view(whole)
    before = _free(view)
    assert before == ((0, 1000), (0, USABLE_MIB))
    view.upsert_pod(_with_assignment(whole, [("c0", 0, 1, 0)]))  # rewritten to 1 milli
    assert _free(view) == before
    view.upsert_pod(_without_assignment(whole))
    assert _free(view) == before
    assert view.distrusted_assignments[DISTRUST_REWRITE_REFUSED] == 2
    # the GPU is not handed to another tenant's 0.9-GPU pod
    other = pod("other", 900, namespace="team-b")
    result = ExtenderService(view).filter(filter_args(other, ["a"]))
    assert result["NodeNames"] == ["a"]
    with view.lock:
        row = view.node_index("a")
        assert view.cluster.gpu_free_milli[row, 0] == 0, "the whole pod's GPU must stay taken"


def test_the_same_refused_rewrite_is_logged_and_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    whole = assigned_pod("whole", "a", [(0, 1000)])
    view = _view(whole)
    forged = _with_assignment(whole, [("c0", 0, 1, 0)])
    for _ in range(5):  # every later event of the pod carries the same forged text
        view.upsert_pod(forged)
    assert view.distrusted_assignments[DISTRUST_REWRITE_REFUSED] == 1
    assert len([r for r in caplog.records if "keeping the Assignment accepted before" in r.getMessage()]) == 1


def test_the_device_plugins_gpu_move_is_still_taken() -> None:
    share = assigned_pod("share", "a", [(0, 600)])
    view = _view(share)
    assert _free(view)[0] == (400, 1000)
    view.upsert_pod(_with_assignment(share, [("c0", 1, 600, share_memory_mib(600))]))  # same size, other GPU
    assert _free(view)[0] == (1000, 400)
    assert view.distrusted_assignments == dict.fromkeys((DISTRUST_CONTRADICTS_POD, DISTRUST_REWRITE_REFUSED), 0)


@pytest.mark.parametrize(
    ("shares", "node_name", "why"),
    [
        ([("c0", 0, 300, share_memory_mib(300))], "a", "changes what it holds"),
        ([("c0", 0, 600, 0)], "a", "less memory"),
        ([("c0", 0, 600, share_memory_mib(600)), ("c0", 1, 600, share_memory_mib(600))], "a", "a second GPU"),
        ([("c1", 1, 600, share_memory_mib(600))], "a", "another container"),
        ([("c0", 9, 600, share_memory_mib(600))], "a", "a GPU the node lacks"),
        ([("c0", 1, 600, share_memory_mib(600))], "b", "another node"),
    ],
)
def test_a_rewrite_that_is_more_than_a_gpu_move_is_refused(
    shares: list[tuple[str, int, int, int]], node_name: str, why: str
) -> None:
    share = assigned_pod("share", "a", [(0, 600)])
    view = _view(share)
    before = (_free(view), view.usage_snapshot())
    view.upsert_pod(_with_assignment(share, shares, node_name))
    assert (_free(view), view.usage_snapshot()) == before, why
    assert view.distrusted_assignments[DISTRUST_REWRITE_REFUSED] == 1, why


def test_a_forged_assignment_seen_first_is_counted_as_the_pod_asks() -> None:
    """After a restart the view sees the pod for the first time: nothing accepted to keep, so the pod's own
    requests bound what is counted from below."""
    whole = _with_assignment(assigned_pod("whole", "a", [(0, 1000)]), [("c0", 0, 1, 0)])
    view = _view(whole)
    assert _free(view) == ((0, 1000), (0, USABLE_MIB))
    assert view.distrusted_assignments[DISTRUST_CONTRADICTS_POD] == 1
    record = view.pod(whole["metadata"]["uid"])
    assert [(s.milli, s.memory_mib) for s in record.shares] == [(1000, USABLE_MIB)]
    assert [(s.milli, s.memory_mib) for s in record.written] == [(1, 0)]
    # pods before nodes (a restart's relist order): counted the same once the node arrives
    rebuilt = ClusterView(stale_seconds=0)
    rebuilt.replace("pods", [whole])
    rebuilt.replace("nodes", [node("a", 2)])
    assert rebuilt.snapshot() == view.snapshot()


def test_a_forged_share_of_a_container_that_asks_for_no_gpu_takes_nothing() -> None:
    """kubelet allocates no device to such a container: counting the share would let a forged Assignment
    block a GPU for everyone else."""
    share = assigned_pod("share", "a", [(0, 600)])
    forged = _with_assignment(share, [("c0", 0, 600, share_memory_mib(600)), ("ghost", 1, 1000, USABLE_MIB)])
    view = _view(forged)
    assert _free(view)[0] == (400, 1000)
    assert view.used("ml").gpus_milli == 600
    assert view.distrusted_assignments[DISTRUST_CONTRADICTS_POD] == 1


def test_an_assignment_the_extender_wrote_is_taken_as_written() -> None:
    pods = [assigned_pod("quarter", "a", [(0, 250)]), assigned_pod("pair", "a", [(1, 500), (1, 250)]),
            assigned_pod("explicit", "a", [(0, 500)], memory="10Gi")]
    explicit = pods[2]
    text = explicit["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT]
    assignment = contract.decode_assignment(text)
    assignment.containers[0].gpus[0].memory_mib = 10240  # what bind writes for vgpu-memory: 10Gi
    explicit["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    view = _view(*pods)
    assert view.distrusted_assignments == dict.fromkeys((DISTRUST_CONTRADICTS_POD, DISTRUST_REWRITE_REFUSED), 0)
    assert _free(view)[0] == (250, 250)


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def test_a_tenant_rewriting_its_assignment_through_the_api_frees_nothing(api: KubeStandin) -> None:
    """The attack as seen: a whole-GPU pod's Assignment patched to 1 milli, then another tenant's 0.9-GPU
    pod asks for that GPU. (The stand-in has no admission policies: this is the view's own defence.)"""
    from kubernetes import client

    api.add_object("nodes", node("a", 1))
    whole = api.add_pod(assigned_pod("whole", "a", [(0, 1000)]))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.pod(whole["metadata"]["uid"]) is not None)
        forged = _with_assignment(whole, [("c0", 0, 1, 0)])["metadata"]["annotations"]
        client.CoreV1Api(stack.client).patch_namespaced_pod(
            "whole", "ml", {"metadata": {"annotations": forged}}, _content_type="application/merge-patch+json")
        assert wait_for(lambda: stack.view.distrusted_assignments[DISTRUST_REWRITE_REFUSED] == 1)
        other = api.add_pod(pod("other", 900, namespace="team-b"))
        result = post(stack.url + "/filter", filter_args(other, ["a"]))[1]
        assert result["NodeNames"] == [] and "a" in result["FailedNodes"], result
        with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'tensorai_extender_assignments_distrusted_total{reason="rewrite_refused"} 1.0' in text
