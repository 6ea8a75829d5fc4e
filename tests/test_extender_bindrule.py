"""The device plugin's bind rule, end to end against the API stand-in: a pod is not bound to a node where
a pod with a same-size container of another class still waits for Allocate; filter says whom it
waits for, bind refuses without leaking anything, and the pod binds once `tensor.ai/allocated` is there."""

from __future__ import annotations

import pytest
from kubernetes import client
from test_extender_support import ExtenderStack, bind_args, filter_args, node, pod, post, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract

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
