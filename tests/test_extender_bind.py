"""Bind against the Kubernetes API stand-in: identity protocol order, failed binds leak nothing,
concurrent binds never over-commit a GPU or a quota."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extender_support import ExtenderStack, bind_args, filter_args, gpu_uuid, node, pod, post, quota, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import ClusterView


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _seed_nodes(api: KubeStandin, count: int = 2, gpus: int = 2) -> list[str]:
    names = []
    for index in range(count):
        built = node(f"gpu-{index}", gpus)
        api.add_object("nodes", built)
        names.append(built["metadata"]["name"])
    return names


def _create(api: KubeStandin, pod_object: dict) -> dict:
    created = api.add_pod(pod_object)
    pod_object["metadata"]["uid"] = created["metadata"]["uid"]
    return created


def test_bind_writes_the_assignment_with_the_binding_in_one_write(api: KubeStandin) -> None:
    names = _seed_nodes(api)
    with ExtenderStack(api) as stack:
        worker = pod("train-0", 250)
        created = _create(api, worker)
        assert wait_for(lambda: stack.view.pod(created["metadata"]["uid"]) is not None)
        status, result = post(stack.url + "/filter", filter_args(created, names))
        assert status == 200 and result["NodeNames"] == names
        api.request_log.clear()
        status, result = post(stack.url + "/bind", bind_args(created, "gpu-1"))
        assert (status, result) == (200, {"Error": ""})
        stored = api.get_object("pods", "train-0", "ml")
        assert stored["spec"]["nodeName"] == "gpu-1"
        assignment = contract.decode_assignment(stored["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT])
        assert assignment.node_name == "gpu-1" and assignment.pod_uid == created["metadata"]["uid"]
        assert [(c.name, [g.milli for g in c.gpus]) for c in assignment.containers] == [("c0", [250])]
        # One write: the Binding carries the Assignment (never a pod bound without it, as on kube-apiserver)
        writes = [(method, path) for method, path in api.request_log
                  if method in ("PATCH", "POST", "PUT") and "/events" not in path]
        assert writes == [("POST", "/api/v1/namespaces/ml/pods/train-0/binding")], writes
        # an Event explains the decision on the pod
        assert wait_for(
            lambda: any(e.get("reason") == "TensorAIScheduled" for e in api.list_objects("events", "ml")), 5.0
        )


def test_failed_bind_gives_back_every_milli(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 1)
    with ExtenderStack(api) as stack:
        worker = _create(api, pod("w", 700))
        before = stack.view.snapshot()
        api.fail_next("POST", r"/pods/w/binding$", status=500)
        post(stack.url + "/filter", filter_args(worker, names))
        status, result = post(stack.url + "/bind", bind_args(worker, names[0]))
        assert status == 200 and "failed" in result["Error"]
        assert stack.view.snapshot() == before, "a failed bind leaked capacity"
        assert stack.view.used("ml").is_zero()
        status, result = post(stack.url + "/bind", bind_args(worker, names[0]))
        assert result == {"Error": ""}, "the retried bind must find the capacity again"


def test_concurrent_binds_to_one_node_never_overcommit_a_gpu(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 2)  # 2 GPUs: room for exactly four 400-milli pods (two per GPU)
    with ExtenderStack(api) as stack:
        workers = [_create(api, pod(f"w{i}", 400)) for i in range(12)]
        assert wait_for(lambda: all(stack.view.pod(w["metadata"]["uid"]) for w in workers))
        barrier = threading.Barrier(len(workers))

        def bind(worker: dict) -> str:
            barrier.wait(timeout=10)
            return post(stack.url + "/bind", bind_args(worker, names[0]))[1]["Error"]

        with ThreadPoolExecutor(len(workers)) as pool:
            errors = list(pool.map(bind, workers))
        assert sum(1 for error in errors if not error) == 4
        per_gpu: dict[str, int] = {}
        for worker in workers:
            stored = api.get_object("pods", worker["metadata"]["name"], "ml")
            text = stored["metadata"].get("annotations", {}).get(contract.ANNOTATION_ASSIGNMENT)
            if stored["spec"].get("nodeName"):
                for container in contract.decode_assignment(text).containers:
                    for share in container.gpus:
                        per_gpu[share.uuid] = per_gpu.get(share.uuid, 0) + share.milli
        assert per_gpu and all(milli <= contract.MILLI_PER_GPU for milli in per_gpu.values()), per_gpu


def test_concurrent_binds_never_exceed_the_namespace_quota(api: KubeStandin) -> None:
    names = _seed_nodes(api, 2, 4)
    api.add_object("gpuquotas", quota("team", gpus="1"))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        workers = [_create(api, pod(f"q{i}", 250)) for i in range(10)]
        assert wait_for(lambda: all(stack.view.pod(w["metadata"]["uid"]) for w in workers))
        barrier = threading.Barrier(len(workers))

        def bind(position_worker: tuple[int, dict]) -> str:
            position, worker = position_worker
            barrier.wait(timeout=10)
            return post(stack.url + "/bind", bind_args(worker, names[position % 2]))[1]["Error"]

        with ThreadPoolExecutor(len(workers)) as pool:
            errors = list(pool.map(bind, enumerate(workers)))
        assert sum(1 for error in errors if not error) == 4  # 4 x 0.25 = the 1 GPU of the quota
        assert all("GPUQuota ml/team" in error for error in errors if error)
        assert stack.view.used("ml").gpus_milli == 1000


def _file_mode_view(nodes: int, gpus: int) -> ClusterView:
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node(f"n{i}", gpus) for i in range(nodes)])
    view.replace("pods", [])
    view.replace("gpuquotas", [])
    return view


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([100, 250, 333, 500, 750, 999, 1000, 2000]), min_size=1, max_size=24),
    targets=st.lists(st.integers(0, 1), min_size=24, max_size=24),
)
def test_property_threaded_binds_never_overcommit(sizes: list[int], targets: list[int]) -> None:
    view = _file_mode_view(2, 2)
    service = ExtenderService(view)
    pods = [pod(f"p{i}", size) for i, size in enumerate(sizes)]
    for pod_object in pods:
        view.remember_pending(pod_object)
    barrier = threading.Barrier(len(pods))

    def bind(position: int) -> str:
        barrier.wait(timeout=10)
        return service.bind(bind_args(pods[position], f"n{targets[position]}"))["Error"]

    with ThreadPoolExecutor(len(pods)) as pool:
        list(pool.map(bind, range(len(pods))))
    held: dict[str, int] = {}
    for pod_object in pods:
        record = view.pod(pod_object["metadata"]["uid"])
        for share in record.shares:
            held[share.uuid] = held.get(share.uuid, 0) + share.milli
    assert all(milli <= contract.MILLI_PER_GPU for milli in held.values())
    assert not any(view.distrusted_assignments.values()), "the extender's own Assignments must be taken as written"
    # the arrays agree with the records: free = 1000 - held on every GPU
    with view.lock:
        for name in ("n0", "n1"):
            row = view.node_index(name)
            for slot, uuid in enumerate(view.cluster.gpu_uuids[row]):
                assert view.cluster.gpu_free_milli[row, slot] == contract.MILLI_PER_GPU - held.get(uuid, 0)


def test_reconciler_settles_binds_whose_outcome_was_never_seen(api: KubeStandin) -> None:
    from tensorai.scheduler.bind import AssumedReconciler

    api.add_object("nodes", node("a", 1))
    unbound = _create(api, pod("lost", 400))
    bound = _create(api, pod("done", 300))
    view = _file_mode_view(0, 0)
    view.replace("nodes", api.list_objects("nodes"))
    service = ExtenderService(view)  # no API: the binds below only reserve, as if the calls timed out
    for pod_object in (unbound, bound):
        view.remember_pending(pod_object)
        assert service.bind(bind_args(pod_object, "a")) == {"Error": ""}
        view.pod(pod_object["metadata"]["uid"]).assumed = True
        view._assumed_at[pod_object["metadata"]["uid"]] = 0.0  # long ago
    # in the API, "done" really got bound with our annotation; "lost" never did
    from kubernetes import client

    core = client.CoreV1Api(api.api_client())
    text = view.pod(bound["metadata"]["uid"]).assignment_text
    core.patch_namespaced_pod(
        "done",
        "ml",
        {"metadata": {"annotations": {contract.ANNOTATION_ASSIGNMENT: text}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    core.create_namespaced_pod_binding(
        "done",
        "ml",
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "done", "namespace": "ml"},
            "target": {"kind": "Node", "name": "a"},
        },
        _preload_content=False,
    )
    assert view.snapshot()["a"][0] == (300,)
    assert AssumedReconciler(view, api.api_client(), max_age_s=0).reconcile() == 2
    assert view.snapshot()["a"][0] == (700,), "the lost bind's 400 milli came back, the real one stayed"
    assert not view.pod(bound["metadata"]["uid"]).assumed


# ---------------------------------------------------------------------- who bind trusts (issue 13)
def _forged(real: dict, milli: int) -> dict:
    """The same pod (name, namespace, uid) as a body anyone who reaches the extender's port could post."""
    forged = pod(real["metadata"]["name"], milli, namespace=real["metadata"]["namespace"], uid=real["metadata"]["uid"])
    forged["metadata"]["resourceVersion"] = "999999"  # "newer" than the watch's copy
    return forged


def test_bind_takes_the_demand_from_the_api_not_from_a_forged_filter_body(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 2)
    with ExtenderStack(api) as stack:
        real = _create(api, pod("whole", 1000))
        assert wait_for(lambda: stack.view.pod(real["metadata"]["uid"]) is not None)
        post(stack.url + "/filter", filter_args(_forged(real, 1), names))
        assert post(stack.url + "/bind", bind_args(real, names[0]))[1] == {"Error": ""}
        stored = api.get_object("pods", "whole", "ml")
        assignment = contract.decode_assignment(stored["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT])
        assert [g.milli for c in assignment.containers for g in c.gpus] == [1000], "demand came from the forged body"
        row = stack.view.node_index(names[0])
        assert sorted(stack.view.cluster.gpu_free_milli[row, :2].tolist()) == [0, 1000]


def test_bind_reads_the_pod_from_the_api_when_the_watch_has_not_shown_it(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 1)
    with ExtenderStack(api) as stack:
        stack.source.stop()  # the watch falls behind: bind must GET the pod, not use filter's body
        real = _create(api, pod("late", 600))
        post(stack.url + "/filter", filter_args(_forged(real, 1), names))
        assert post(stack.url + "/bind", bind_args(real, names[0]))[1] == {"Error": ""}
        assert stack.view.snapshot()[names[0]][0] == (400,)


def test_bind_refuses_an_empty_or_mismatched_pod_uid(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 1)
    with ExtenderStack(api) as stack:
        real = _create(api, pod("p", 250))
        assert wait_for(lambda: stack.view.pod(real["metadata"]["uid"]) is not None)
        before = stack.view.snapshot()
        empty = {**bind_args(real, names[0]), "PodUID": ""}
        status, result = post(stack.url + "/bind", empty)
        assert status == 400 and "PodUID must be a non-empty string" in result["Error"], result
        other = {**bind_args(real, names[0]), "PodUID": "0e1f5c3a-0000-4000-8000-000000000000"}
        error = post(stack.url + "/bind", other)[1]["Error"]
        assert "has uid" in error and "not the bind's PodUID" in error, error
        assert stack.view.snapshot() == before
        assert not api.get_object("pods", "p", "ml")["spec"].get("nodeName")


def test_bind_refuses_pods_of_another_scheduler_and_pods_already_bound(api: KubeStandin) -> None:
    names = _seed_nodes(api, 1, 2)
    with ExtenderStack(api) as stack:
        foreign = pod("theirs", 250, namespace="other")
        foreign["spec"]["schedulerName"] = "default-scheduler"
        foreign = _create(api, foreign)
        unnamed = pod("unnamed", 250, namespace="other")
        del unnamed["spec"]["schedulerName"]  # the API server's default: default-scheduler
        unnamed = _create(api, unnamed)
        placed = _create(api, pod("placed", 250, node_name=names[0]))  # bound by someone else, no Assignment
        uids = [p["metadata"]["uid"] for p in (foreign, unnamed, placed)]
        assert wait_for(lambda: all(stack.view.pod(uid) for uid in uids))
        before = stack.view.snapshot()
        for victim in (foreign, unnamed):
            error = post(stack.url + "/bind", bind_args(victim, names[0]))[1]["Error"]
            assert "spec.schedulerName 'default-scheduler'" in error and "tensorai-scheduler" in error, error
            assert not api.get_object("pods", victim["metadata"]["name"], "other")["spec"].get("nodeName")
        error = post(stack.url + "/bind", bind_args(placed, names[0]))[1]["Error"]
        assert "already" in error, error
        assert stack.view.snapshot() == before


def test_pods_that_exist_only_in_filter_bodies_reserve_nothing(api: KubeStandin) -> None:
    names = _seed_nodes(api, 2, 2)
    with ExtenderStack(api) as stack:
        before = stack.view.snapshot()
        for index in range(40):  # the attack: whole-GPU bodies posted to /filter, then /bind
            fake = pod(f"fake-{index}", 1000, namespace="attacker")
            assert post(stack.url + "/filter", filter_args(fake, names))[0] == 200
            error = post(stack.url + "/bind", bind_args(fake, names[index % 2]))[1]["Error"]
            assert error, "a pod that is not in the API was bound"
        assert stack.view.snapshot() == before
        assert stack.view.used("attacker").is_zero()
        assert stack.view.pod_count() == 0, "filter bodies must not become pod records"


def test_filter_body_entries_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorai.scheduler import view as view_module

    view = _file_mode_view(1, 1)
    monkeypatch.setattr(view_module, "PENDING_LIMIT", 50)
    for index in range(120):
        view.remember_pending(pod(f"f{index}", 250))
    assert view.pending_count() == 50
    assert view.pod_count() == 0
    monkeypatch.setattr(view_module, "PENDING_TTL_S", 0.05)
    import time

    time.sleep(0.1)
    view.remember_pending(pod("last", 250))
    assert view.pending_count() == 1, "entries without a filter call for longer than the TTL must go"


def test_bound_event_explains_the_choice_in_words_without_internal_scores(api: KubeStandin) -> None:
    """The TensorAIScheduled Event names the GPU by index and model, who else shares it, the whole GPUs
    left and what the policy prefers: the facts a pod's owner can act on, not the policy's score."""
    api.add_object("nodes", node("gpu-0", 4, model="NVIDIA H100 80GB HBM3"))
    uuids = [gpu_uuid("gpu-0", index) for index in range(4)]
    policy = "chosen by policy tensorai (packs GPU shares tightly to keep whole GPUs free)"
    with ExtenderStack(api) as stack:
        messages, indexes = [], []
        for name, milli in (("share-0", 250), ("share-1", 250), ("share-2", 250), ("whole", 1000)):
            worker = _create(api, pod(name, milli))
            assert wait_for(lambda worker=worker: stack.view.pod(worker["metadata"]["uid"]) is not None)
            assert post(stack.url + "/bind", bind_args(worker, "gpu-0"))[1] == {"Error": ""}
            stored = api.get_object("pods", name, "ml")
            assignment = contract.decode_assignment(stored["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT])
            indexes.append(uuids.index(assignment.containers[0].gpus[0].uuid))
            messages.append(stack.events.recent[-1].message)
    assert indexes[0] == indexes[1] == indexes[2] != indexes[3], "tensorai packs the three shares on one GPU"
    shared = f"bound to gpu-0: container c0 gets 250 milli-GPU (19.7 GiB) on GPU {indexes[0]} (NVIDIA H100 80GB HBM3)"
    assert messages == [
        f"{shared}; {policy}: opens an idle GPU, keeping 3 whole GPUs free on the node",
        f"{shared}, shared with 1 other pod; {policy}: fills a partly used GPU, keeping 3 whole GPUs free on the node",
        f"{shared}, shared with 2 other pods; {policy}: fills a partly used GPU, keeping 3 whole GPUs free on the node",
        f"bound to gpu-0: container c0 gets a whole GPU (78.6 GiB) on GPU {indexes[3]} (NVIDIA H100 80GB HBM3); "
        f"{policy}: takes 1 idle GPU whole, keeping 2 whole GPUs free on the node",
    ]


def test_bound_event_of_a_many_gpu_pod_stays_within_the_event_limit(api: KubeStandin) -> None:
    """A pod with many GPUs names the first few and counts the rest, so the message never hits events.py's cut."""
    api.add_object("nodes", node("gpu-0", 16, model="NVIDIA H100 80GB HBM3"))
    with ExtenderStack(api) as stack:
        worker = _create(api, pod("big", [1000] * 12))
        assert wait_for(lambda: stack.view.pod(worker["metadata"]["uid"]) is not None)
        assert post(stack.url + "/bind", bind_args(worker, "gpu-0"))[1] == {"Error": ""}
        message = stack.events.recent[-1].message
    assert len(message) <= 1024 and message.count(" on GPU ") == 8 and "; and 4 more GPUs;" in message, message
    assert message.endswith("takes 12 idle GPUs whole, keeping 4 whole GPUs free on the node"), message


def test_bound_event_says_when_no_whole_gpu_is_left_on_the_node(api: KubeStandin) -> None:
    api.add_object("nodes", node("gpu-0", 1))
    with ExtenderStack(api) as stack:
        worker = _create(api, pod("last", 250))
        assert wait_for(lambda: stack.view.pod(worker["metadata"]["uid"]) is not None)
        assert post(stack.url + "/bind", bind_args(worker, "gpu-0"))[1] == {"Error": ""}
        message = stack.events.recent[-1].message
    assert message.endswith(": opens an idle GPU; no whole GPU is left free on the node"), message
    assert "on GPU 0 (H100);" in message, message
