"""The device plugin's bind rule, end to end against the API stand-in: a pod is not bound to a node where
a pod with a same-size container of another class still waits for Allocate; filter says whom it
waits for, bind refuses without leaking anything, and the pod binds once `tensor.ai/allocated` is there."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from test_extender_support import ExtenderStack, assigned_pod, bind_args, filter_args, node, pod, post, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import ClusterView

WAIT_S = 10.0


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _create(api: KubeStandin, pod_object: dict) -> dict:
    created = api.add_pod(pod_object)
    pod_object["metadata"]["uid"] = created["metadata"]["uid"]
    return created


def _bind(stack: ExtenderStack, worker: dict, node_name: str) -> str:
    status, result = post(stack.url + "/bind", bind_args(worker, node_name))
    assert status == 200
    return result["Error"]


def _plugin_allocates(api: KubeStandin, name: str) -> None:
    """What the device plugin writes once kubelet's Allocate calls for the pod are done."""
    stored = api.get_object("pods", name, "ml")
    text = stored["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT]
    client.CoreV1Api(api.api_client()).patch_namespaced_pod(
        name, "ml", {"metadata": {"annotations": {contract.ANNOTATION_ALLOCATED: text}}},
        _content_type="application/merge-patch+json",
    )


def test_second_pod_of_another_class_is_held_until_the_first_is_allocated(api: KubeStandin) -> None:
    api.add_object("nodes", node("gpu-0", 2))
    with ExtenderStack(api) as stack:
        first = _create(api, pod("first", 500, memory="8Gi"))
        second = _create(api, pod("second", 500, memory="16Gi"))  # same size, another class (memory)
        assert wait_for(lambda: stack.view.pod(second["metadata"]["uid"]) is not None, WAIT_S)
        assert post(stack.url + "/filter", filter_args(first, ["gpu-0"]))[1]["NodeNames"] == ["gpu-0"]
        assert _bind(stack, first, "gpu-0") == ""
        assert wait_for(lambda: stack.view.nodes_awaiting_allocate() == {"gpu-0"}, WAIT_S)

        status, result = post(stack.url + "/filter", filter_args(second, ["gpu-0"]))
        assert status == 200 and result["NodeNames"] == []
        assert "ml/first" in result["FailedNodes"]["gpu-0"], "the reason names the pod it waits for"
        assert result["FailedAndUnresolvableNodes"] == {}, "waiting is resolvable: kube-scheduler retries"

        before, used_before = stack.view.snapshot(), stack.view.used("ml")
        error = _bind(stack, second, "gpu-0")
        assert "ml/first" in error and "allocated by the device plugin" in error
        assert stack.view.snapshot() == before and stack.view.used("ml") == used_before, "a refused bind leaked"
        assert stack.view.pod(second["metadata"]["uid"]).node_name is None
        assert not api.get_object("pods", "second", "ml")["spec"].get("nodeName")

        _plugin_allocates(api, "first")
        assert wait_for(lambda: stack.view.nodes_awaiting_allocate() == frozenset(), WAIT_S)
        assert post(stack.url + "/filter", filter_args(second, ["gpu-0"]))[1]["NodeNames"] == ["gpu-0"]
        assert _bind(stack, second, "gpu-0") == ""
        assert api.get_object("pods", "second", "ml")["spec"]["nodeName"] == "gpu-0"
        assert "awaiting_allocate" in stack.metrics.exposition().decode()


def test_same_class_or_other_size_pods_are_never_held(api: KubeStandin) -> None:
    api.add_object("nodes", node("gpu-0", 4))
    with ExtenderStack(api) as stack:
        first = _create(api, pod("first", 500, memory="8Gi"))
        twin = _create(api, pod("twin", 500, memory="8Gi"))  # interchangeable: the plugin may swap them
        small = _create(api, pod("small", 250, memory="16Gi"))  # kubelet's calls tell 250 from 500
        assert wait_for(lambda: all(stack.view.pod(p["metadata"]["uid"]) for p in (first, twin, small)), WAIT_S)
        assert _bind(stack, first, "gpu-0") == ""
        for worker in (twin, small):
            assert post(stack.url + "/filter", filter_args(worker, ["gpu-0"]))[1]["NodeNames"] == ["gpu-0"]
            assert _bind(stack, worker, "gpu-0") == ""


def test_a_bind_in_flight_already_holds_the_next_pod(api: KubeStandin) -> None:
    """The assumed pod (bound by us, no watch event yet) counts as waiting: two racing binds cannot both pass."""
    api.add_object("nodes", node("gpu-0", 2))
    with ExtenderStack(api) as stack:
        first = _create(api, pod("first", 500, memory="8Gi"))
        second = _create(api, pod("second", 500, memory="16Gi"))
        assert wait_for(lambda: stack.view.pod(second["metadata"]["uid"]) is not None, WAIT_S)
        post(stack.url + "/filter", filter_args(first, ["gpu-0"]))
        post(stack.url + "/filter", filter_args(second, ["gpu-0"]))
        with stack.view.lock:  # bind the first and check the second before any watch event can arrive
            assert stack.service.binder.bind(_request(first)) == ""
            assert "ml/first" in stack.service.binder.bind(_request(second))


def _request(worker: dict):
    from tensorai.scheduler.bind import BindRequest

    return BindRequest.from_json(bind_args(worker, "gpu-0"))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 3000) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


_ANNOTATION_KEYS = st.sampled_from(
    [contract.ANNOTATION_ASSIGNMENT, contract.ANNOTATION_ALLOCATED, "tensor.ai/gpu-model"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(milli=st.sampled_from([250, 500]), field=st.sampled_from(["resources", "name", "restartPolicy", "env"]),
       junk=_JSON, annotations=st.dictionaries(_ANNOTATION_KEYS, st.text(max_size=20)))
def test_filter_and_bind_survive_any_pod_while_a_node_awaits_allocate(milli: int, field: str, junk: object,
                                                                     annotations: dict) -> None:
    """The bind-rule path parses the candidate as the device plugin would: junk never crashes it or leaks."""
    view = ClusterView(stale_seconds=0)
    view.upsert_node(node("gpu-0", 2))
    waiting = assigned_pod("waiting", "gpu-0", [(0, 500)])
    waiting["status"]["phase"] = "Pending"
    view.upsert_pod(waiting)
    assert view.nodes_awaiting_allocate() == {"gpu-0"}
    service = ExtenderService(view)
    candidate = pod("fuzzed", milli, memory="4Gi", annotations=annotations)
    candidate["spec"]["containers"][0][field] = junk
    before = view.snapshot()
    result = service.filter(filter_args(candidate, ["gpu-0"]))
    assert isinstance(result, dict) and set(result) >= {"NodeNames", "FailedNodes", "Error"}
    error = service.bind(bind_args(candidate, "gpu-0"))["Error"]
    if error:
        assert view.snapshot() == before, "a refused bind leaked"
