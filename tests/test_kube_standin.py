"""The Kubernetes API stand-in, specified through the real `kubernetes` client and raw HTTP.

Other parts' tests trust the stand-in to behave like kube-apiserver where their code depends on it:
watch ordering and resumption, 410 Gone after compaction, selector-filtered watches, Bindings,
the status subresource, optimistic concurrency, patch types, and never dying on bad input.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal, localcontext
from pathlib import Path

import jsonpatch
import kubernetes
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, watch

from tensorai.demo.kube_standin import KubeStandin
from tensorai.demo.kube_standin_patch import PatchError, json_patch, merge_patch
from tensorai.demo.kube_standin_resources import canonical_quantity
from tensorai.demo.kube_standin_select import SelectorError, parse_label_selector
from tensorai.proto import contract
from tensorai.proto.quantity import parse_quantity

WAIT_SECONDS = 10


@pytest.fixture
def api() -> Iterator[KubeStandin]:
    with KubeStandin(bookmark_interval_seconds=0.2) as standin:
        yield standin


@pytest.fixture
def core(api: KubeStandin) -> client.CoreV1Api:
    return client.CoreV1Api(api.api_client())


@pytest.fixture
def custom(api: KubeStandin) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api.api_client())


def pod_body(name: str, namespace: str = "default", **metadata: object) -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace, **metadata},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


class EventCollector:
    """Runs a kubernetes Watch on a thread and hands its events (or its exception) to the test."""

    def __init__(self, func, **kwargs) -> None:
        self.watch = watch.Watch()
        self.events: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(func, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func, kwargs) -> None:
        try:
            for event in self.watch.stream(func, **kwargs):
                self.events.put(event)
        except BaseException as error:  # handed to the test thread, which asserts on it
            self.error = error
        finally:
            self.events.put(None)

    def take(self, count: int) -> list[tuple[str, dict]]:
        got = []
        while len(got) < count:
            event = self.events.get(timeout=WAIT_SECONDS)
            if event is None:
                raise AssertionError(f"watch ended after {got} with {self.error!r}")
            if event["type"] != "BOOKMARK":
                got.append((event["type"], event["raw_object"]))
        return got

    def finish(self) -> None:
        self.watch.stop()
        self._thread.join(timeout=WAIT_SECONDS)
        assert not self._thread.is_alive(), "watch thread did not stop"


# --- basic CRUD through the real client ------------------------------------------------------------
def test_nodes_seeded_in_process_are_listed_and_read_by_the_client(api: KubeStandin, core: client.CoreV1Api) -> None:
    api.add_node("gpu-a", labels={contract.LABEL_GPU_NODE: "true"}, allocatable={contract.RESOURCE_VGPU_MILLI: "8k"})
    api.add_node("cpu-b")
    nodes = core.list_node()
    assert sorted(node.metadata.name for node in nodes.items) == ["cpu-b", "gpu-a"]
    node = core.read_node("gpu-a")
    assert node.status.allocatable[contract.RESOURCE_VGPU_MILLI] == "8k"
    assert node.status.allocatable["pods"] == "110"
    assert int(nodes.metadata.resource_version) >= int(node.metadata.resource_version)
    labelled = core.list_node(label_selector=f"{contract.LABEL_GPU_NODE}=true")
    assert [node.metadata.name for node in labelled.items] == ["gpu-a"]


def test_pod_created_by_the_client_gets_uid_version_timestamp_and_pending_phase(core: client.CoreV1Api) -> None:
    body = pod_body("p1")
    body["status"] = {"phase": "Running"}  # a real server ignores a client-given pod status
    pod = core.create_namespaced_pod("default", body)
    assert pod.metadata.uid and pod.metadata.creation_timestamp is not None
    assert pod.status.phase == "Pending"
    assert core.read_namespaced_pod("p1", "default").metadata.resource_version == pod.metadata.resource_version
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_pod("nope", "default")
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["reason"] == "NotFound"
    with pytest.raises(client.ApiException) as duplicate:
        core.create_namespaced_pod("default", pod_body("p1"))
    assert duplicate.value.status == 409 and json.loads(duplicate.value.body)["reason"] == "AlreadyExists"


def test_pod_without_containers_is_invalid(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as invalid:
        core.create_namespaced_pod("default", {"metadata": {"name": "empty"}, "spec": {"containers": []}})
    assert invalid.value.status == 422


def test_pods_list_per_namespace_and_cluster_wide(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("team-a", pod_body("a1", "team-a"))
    core.create_namespaced_pod("team-b", pod_body("b1", "team-b"))
    assert [p.metadata.name for p in core.list_namespaced_pod("team-a").items] == ["a1"]
    assert sorted(p.metadata.name for p in core.list_pod_for_all_namespaces().items) == ["a1", "b1"]
    namespaces = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "team-a", "team-b"} <= namespaces
    assert core.read_namespace("team-a").status.phase == "Active"


def test_namespace_in_url_and_body_must_agree(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as mismatch:
        core.create_namespaced_pod("team-a", pod_body("x", "team-b"))
    assert mismatch.value.status == 400


# --- patches ---------------------------------------------------------------------------------------
def test_strategic_merge_patch_from_a_dict_merges_annotations(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1", annotations={"keep": "1", "drop": "2"}))
    pod = core.patch_namespaced_pod("p1", "default", {"metadata": {"annotations": {"add": "3", "drop": None}}})
    assert pod.metadata.annotations == {"keep": "1", "add": "3"}


def test_json_patch_from_a_list_adds_escaped_annotation_keys(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1", annotations={"a": "1"}))
    key = contract.ANNOTATION_ASSIGNMENT.replace("/", "~1")
    pod = core.patch_namespaced_pod(
        "p1", "default", [{"op": "add", "path": f"/metadata/annotations/{key}", "value": "{}"}]
    )
    assert pod.metadata.annotations == {"a": "1", contract.ANNOTATION_ASSIGNMENT: "{}"}
    with pytest.raises(client.ApiException) as failed_test:
        core.patch_namespaced_pod("p1", "default", [{"op": "test", "path": "/metadata/annotations/a", "value": "9"}])
    assert failed_test.value.status == 422


def test_merge_patch_content_type_is_honoured(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1", labels={"a": "1"}))
    pod = core.patch_namespaced_pod(
        "p1", "default", {"metadata": {"labels": {"b": "2"}}}, _content_type="application/merge-patch+json"
    )
    assert pod.metadata.labels == {"a": "1", "b": "2"}


def test_unsupported_patch_type_is_415(api: KubeStandin) -> None:
    api.add_node("n1")
    response = requests.patch(
        f"{api.url}/api/v1/nodes/n1",
        data="metadata: {}",
        headers={"Content-Type": "application/apply-patch+yaml"},
        timeout=WAIT_SECONDS,
    )
    assert response.status_code == 415
    assert response.json()["kind"] == "Status"


def test_pod_spec_is_immutable_except_through_a_binding(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1"))
    with pytest.raises(client.ApiException) as forbidden:
        core.patch_namespaced_pod("p1", "default", {"spec": {"nodeName": "n1"}})
    assert forbidden.value.status == 422
    pod = core.patch_namespaced_pod("p1", "default", {"spec": {"activeDeadlineSeconds": 30}})
    assert pod.spec.active_deadline_seconds == 30


def test_stale_resource_version_in_an_update_is_a_conflict(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod_body("p1"))
    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"v": "2"}}})
    stale = {"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"v": "3"}}}
    with pytest.raises(client.ApiException) as conflict:
        core.patch_namespaced_pod("p1", "default", stale)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"
    current = core.read_namespaced_pod("p1", "default")
    assert current.metadata.labels == {"v": "2"}
    current.metadata.labels = {"v": "4"}
    replaced = core.replace_namespaced_pod("p1", "default", current)
    assert replaced.metadata.labels == {"v": "4"}
    current.metadata.labels = {"v": "5"}  # still carries the version the replace above consumed
    with pytest.raises(client.ApiException) as conflict_again:
        core.replace_namespaced_pod("p1", "default", current)
    assert conflict_again.value.status == 409


def test_delete_honours_uid_and_resource_version_preconditions(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_pod("default", pod_body("p1"))
    core.delete_namespaced_pod("p1", "default")
    core.create_namespaced_pod("default", pod_body("p1"))
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=first.metadata.uid))
    with pytest.raises(client.ApiException) as conflict:
        core.delete_namespaced_pod("p1", "default", body=stale)
    assert conflict.value.status == 409
    assert core.read_namespaced_pod("p1", "default").metadata.uid != first.metadata.uid


def test_a_patch_cannot_leave_an_object_without_its_name(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1", labels={"a": "1"})
    core.patch_node("n1", [{"op": "remove", "path": "/metadata"}])
    assert [node.metadata.name for node in core.list_node().items] == ["n1"]


def test_node_status_changes_only_through_the_status_subresource(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1", allocatable={contract.RESOURCE_VGPU_MILLI: "1500"})
    node = core.patch_node("n1", {"status": {"allocatable": {contract.RESOURCE_VGPU_MILLI: "9"}}})
    assert node.status.allocatable[contract.RESOURCE_VGPU_MILLI] == "1500"
    node = core.patch_node_status("n1", {"status": {"allocatable": {contract.RESOURCE_VGPU_MILLI: "2500"}}})
    assert node.status.allocatable[contract.RESOURCE_VGPU_MILLI] == "2500"
    node = core.patch_node("n1", {"metadata": {"annotations": {contract.ANNOTATION_INVENTORY: "{}"}}})
    assert node.metadata.annotations[contract.ANNOTATION_INVENTORY] == "{}"


# --- quantities as a real API server stores them -----------------------------------------------------
def test_quantities_come_back_canonical_like_a_real_api_server(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1", allocatable={contract.RESOURCE_VGPU_MILLI: "8000", "memory": "1024Mi"})
    node = core.read_node("n1")
    assert node.status.allocatable[contract.RESOURCE_VGPU_MILLI] == "8k"
    assert node.status.allocatable["memory"] == "1Gi"
    body = pod_body("p1")
    body["spec"]["containers"][0]["resources"] = {
        "limits": {contract.RESOURCE_VGPU_MILLI: "2000", "cpu": "0.5", "memory": "0.2501"}
    }
    pod = core.create_namespaced_pod("default", body)
    resources = pod.spec.containers[0].resources
    # pod quantities are also rounded up to whole milli, as observed on kube-apiserver
    assert resources.limits == {contract.RESOURCE_VGPU_MILLI: "2k", "cpu": "500m", "memory": "251m"}
    assert resources.requests == resources.limits  # requests defaulted from limits


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"limits": {contract.RESOURCE_VGPU: "0.25"}}, "must be an integer"),
        ({"limits": {contract.RESOURCE_VGPU: "0.0005"}}, '"1m": must be an integer'),
        ({"requests": {contract.RESOURCE_VGPU_MILLI: "250"}}, "Limit must be set"),
        ({"requests": {contract.RESOURCE_VGPU_MILLI: "250"}, "limits": {contract.RESOURCE_VGPU_MILLI: "500"}}, "equal"),
        ({"limits": {"cpu": "lots"}}, "quantities must match"),
        ({"limits": {"memory": "-1Gi"}}, "greater than or equal to 0"),
    ],
)
def test_pods_with_resources_a_real_server_rejects_are_invalid(
    core: client.CoreV1Api, resources: dict, message: str
) -> None:
    body = pod_body("p1")
    body["spec"]["containers"][0]["resources"] = resources
    with pytest.raises(client.ApiException) as invalid:
        core.create_namespaced_pod("default", body)
    assert invalid.value.status == 422
    assert message in json.loads(invalid.value.body)["message"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2000", "2k"),
        ("1500", "1500"),
        ("0.25", "250m"),
        ("1.5", "1500m"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("0.5Gi", "512Mi"),
        ("1e3", "1e3"),
        ("1000000", "1M"),
        ("0", "0"),
        (110, "110"),
    ],
)
def test_canonical_quantity_matches_kube_apiserver(given: object, stored: str) -> None:
    assert canonical_quantity(given) == stored


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=0, max_value=10**15, places=3), st.sampled_from(["", "m", "k", "Mi", "Gi"]))
def test_canonical_quantity_keeps_the_value(number, suffix: str) -> None:
    text = f"{number}{suffix}"
    with localcontext() as context:
        context.prec = 80
        expected = parse_quantity(text).quantize(Decimal("1e-9"), ROUND_CEILING)
        assert parse_quantity(canonical_quantity(text)) == expected


# --- bindings --------------------------------------------------------------------------------------
def test_binding_sets_node_name_once_and_a_second_binding_conflicts(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    core.create_namespaced_pod("default", pod_body("p1"))
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "p1", "annotations": {contract.ANNOTATION_ASSIGNMENT: "{}"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    }
    response = core.create_namespaced_pod_binding("p1", "default", binding, _preload_content=False)
    assert response.status == 201
    pod = core.read_namespaced_pod("p1", "default")
    assert pod.spec.node_name == "n1"
    assert pod.metadata.annotations[contract.ANNOTATION_ASSIGNMENT] == "{}"
    assert any(c.type == "PodScheduled" and c.status == "True" for c in pod.status.conditions)
    with pytest.raises(client.ApiException) as conflict:
        core.create_namespaced_pod_binding("p1", "default", binding, _preload_content=False)
    assert conflict.value.status == 409
    with pytest.raises(client.ApiException) as missing:
        core.create_namespaced_binding("default", {**binding, "metadata": {"name": "ghost"}}, _preload_content=False)
    assert missing.value.status == 404


# --- watches ---------------------------------------------------------------------------------------
def test_watch_sees_added_modified_deleted_in_order(core: client.CoreV1Api, api: KubeStandin) -> None:
    version = core.list_namespaced_pod("default").metadata.resource_version
    collector = EventCollector(core.list_namespaced_pod, namespace="default", resource_version=version)
    try:
        core.create_namespaced_pod("default", pod_body("p1"))
        api.set_pod_phase("default", "p1", "Running")
        core.delete_namespaced_pod("p1", "default")
        events = collector.take(3)
    finally:
        collector.finish()
    assert [(kind, obj["metadata"]["name"]) for kind, obj in events] == [
        ("ADDED", "p1"),
        ("MODIFIED", "p1"),
        ("DELETED", "p1"),
    ]
    assert events[1][1]["status"]["phase"] == "Running"
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_a_write_that_changes_nothing_keeps_the_version_and_emits_no_event(
    core: client.CoreV1Api, api: KubeStandin
) -> None:
    api.add_node("n1", labels={"a": "1"})
    before = core.read_node("n1").metadata.resource_version
    collector = EventCollector(core.list_node, resource_version=before)
    try:
        assert core.patch_node("n1", {"metadata": {"labels": {"a": "1"}}}).metadata.resource_version == before
        api.add_node("n2")  # a later change, so the watch has something to deliver
        assert [obj["metadata"]["name"] for _, obj in collector.take(1)] == ["n2"]
    finally:
        collector.finish()


def test_watch_without_version_starts_with_current_objects_as_added(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    api.add_node("n2")
    collector = EventCollector(core.list_node)
    try:
        assert sorted(obj["metadata"]["name"] for _, obj in collector.take(2)) == ["n1", "n2"]
    finally:
        collector.finish()


def test_watch_resumes_from_a_resource_version_without_losing_events(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    version = core.list_node().metadata.resource_version
    api.add_node("n2")
    core.patch_node("n1", {"metadata": {"labels": {"x": "1"}}})
    collector = EventCollector(core.list_node, resource_version=version)
    try:
        events = collector.take(2)
    finally:
        collector.finish()
    assert [(kind, obj["metadata"]["name"]) for kind, obj in events] == [("ADDED", "n2"), ("MODIFIED", "n1")]


def test_expired_watch_gets_410_and_the_client_relists(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    old_version = core.list_node().metadata.resource_version
    api.expire_watches()
    with pytest.raises(client.ApiException) as gone:
        for _ in watch.Watch().stream(core.list_node, resource_version=old_version):
            pass
    assert gone.value.status == 410
    fresh = core.list_node()
    collector = EventCollector(core.list_node, resource_version=fresh.metadata.resource_version)
    try:
        api.add_node("n2")
        assert [(kind, obj["metadata"]["name"]) for kind, obj in collector.take(1)] == [("ADDED", "n2")]
    finally:
        collector.finish()


def test_expiry_ends_open_watches_and_their_resume_gets_410(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    collector = EventCollector(core.list_node, resource_version=core.list_node().metadata.resource_version)
    api.add_node("n2")
    collector.take(1)
    api.expire_watches()
    assert collector.events.get(timeout=WAIT_SECONDS) is None
    assert isinstance(collector.error, client.ApiException) and collector.error.status == 410
    collector.finish()


def test_watch_filtered_by_node_name_sees_a_pod_arrive_by_binding(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    api.add_node("n2")
    for name in ("mine", "other"):
        core.create_namespaced_pod("default", pod_body(name))
    version = core.list_pod_for_all_namespaces().metadata.resource_version
    collector = EventCollector(
        core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", resource_version=version
    )
    try:
        for pod_name, node_name in (("other", "n2"), ("mine", "n1")):
            target = {"metadata": {"name": pod_name}, "target": {"kind": "Node", "name": node_name}}
            core.create_namespaced_pod_binding(pod_name, "default", target, _preload_content=False)
        api.set_pod_phase("default", "other", "Running")
        api.set_pod_phase("default", "mine", "Running")
        core.delete_namespaced_pod("mine", "default")
        events = collector.take(3)
    finally:
        collector.finish()
    assert [(kind, obj["metadata"]["name"]) for kind, obj in events] == [
        ("ADDED", "mine"),  # it started matching spec.nodeName=n1 when bound
        ("MODIFIED", "mine"),
        ("DELETED", "mine"),
    ]


def test_field_selectors_filter_lists_and_unknown_fields_are_refused(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_pod({**pod_body("running"), "status": {"phase": "Running"}})
    api.add_pod({**pod_body("done"), "status": {"phase": "Succeeded"}})
    live = core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,metadata.namespace=default")
    assert [pod.metadata.name for pod in live.items] == ["running"]
    with pytest.raises(client.ApiException) as refused:
        core.list_pod_for_all_namespaces(field_selector="spec.containers=x")
    assert refused.value.status == 400


def test_watch_bookmarks_carry_the_current_version(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    stream = watch.Watch().stream(core.list_node, allow_watch_bookmarks=True, timeout_seconds=3)
    kinds = []
    for event in stream:
        kinds.append(event["type"])
        if event["type"] == "BOOKMARK":
            assert int(event["raw_object"]["metadata"]["resourceVersion"]) >= 1
            break
    assert kinds[0] == "ADDED" and kinds[-1] == "BOOKMARK"


def test_watch_ends_after_timeout_seconds(core: client.CoreV1Api) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_pod, namespace="empty", timeout_seconds=1))
    assert events == []
    assert time.monotonic() - started < WAIT_SECONDS


def test_a_watch_client_that_disconnects_is_forgotten(api: KubeStandin) -> None:
    response = requests.get(f"{api.url}/api/v1/nodes?watch=true", stream=True, timeout=WAIT_SECONDS)
    deadline = time.monotonic() + WAIT_SECONDS
    while api.store.watcher_count != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.store.watcher_count == 1
    response.close()
    while api.store.watcher_count != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.store.watcher_count == 0


def test_stopping_the_server_ends_open_watches(core: client.CoreV1Api, api: KubeStandin) -> None:
    collector = EventCollector(core.list_node, resource_version="0", _request_timeout=WAIT_SECONDS)
    time.sleep(0.2)
    api.stop()
    assert collector.events.get(timeout=WAIT_SECONDS) is None


# --- GPUQuota custom resource ----------------------------------------------------------------------
def quota_body(name: str) -> dict:
    return {
        "apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}",
        "kind": contract.QUOTA_KIND,
        "metadata": {"name": name},
        "spec": {"hard": {"gpus": "2"}},
        "status": {"used": {"gpus": "99"}},
    }


def test_gpuquota_crd_with_status_subresource(custom: client.CustomObjectsApi) -> None:
    args = (contract.QUOTA_GROUP, contract.QUOTA_VERSION)
    created = custom.create_namespaced_custom_object(*args, "team-a", contract.QUOTA_PLURAL, quota_body("q"))
    assert "status" not in created  # the status subresource owns status; create drops it
    patched = custom.patch_namespaced_custom_object_status(
        *args, "team-a", contract.QUOTA_PLURAL, "q", {"status": {"used": {"gpus": "0.5"}}}
    )
    assert patched["status"] == {"used": {"gpus": "0.5"}}
    spec_patch = {"spec": {"hard": {"gpus": "4"}}, "status": {"used": {"gpus": "7"}}}
    patched = custom.patch_namespaced_custom_object(*args, "team-a", contract.QUOTA_PLURAL, "q", spec_patch)
    assert patched["spec"]["hard"]["gpus"] == "4" and patched["status"] == {"used": {"gpus": "0.5"}}
    replaced = custom.replace_namespaced_custom_object_status(
        *args, "team-a", contract.QUOTA_PLURAL, "q", {**patched, "status": {"used": {"gpus": "1"}}}
    )
    assert replaced["status"] == {"used": {"gpus": "1"}}
    everywhere = custom.list_cluster_custom_object(*args, contract.QUOTA_PLURAL)
    assert [item["metadata"]["name"] for item in everywhere["items"]] == ["q"]
    assert custom.get_namespaced_custom_object(*args, "team-a", contract.QUOTA_PLURAL, "q")["spec"]["hard"] == {
        "gpus": "4"
    }


def test_gpuquota_watch_through_custom_objects_api(custom: client.CustomObjectsApi) -> None:
    args = (contract.QUOTA_GROUP, contract.QUOTA_VERSION)
    collector = EventCollector(custom.list_cluster_custom_object, group=args[0], version=args[1], plural="gpuquotas")
    try:
        custom.create_namespaced_custom_object(*args, "team-a", contract.QUOTA_PLURAL, quota_body("q"))
        events = collector.take(1)
    finally:
        collector.finish()
    assert events[0][0] == "ADDED" and events[0][1]["kind"] == contract.QUOTA_KIND


def test_strategic_merge_patch_on_a_custom_resource_is_415(api: KubeStandin, custom: client.CustomObjectsApi) -> None:
    args = (contract.QUOTA_GROUP, contract.QUOTA_VERSION)
    custom.create_namespaced_custom_object(*args, "default", contract.QUOTA_PLURAL, quota_body("q"))
    response = requests.patch(
        f"{api.url}/apis/tensor.ai/v1alpha1/namespaces/default/gpuquotas/q",
        json={"spec": {}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
        timeout=WAIT_SECONDS,
    )
    assert response.status_code == 415


# --- events and leases -----------------------------------------------------------------------------
def test_events_are_created_and_listed_by_involved_object(core: client.CoreV1Api) -> None:
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="p1."),
        involved_object=client.V1ObjectReference(kind="Pod", name="p1", namespace="default"),
        reason="Scheduled",
        message="bound to n1",
        type="Normal",
    )
    created = core.create_namespaced_event("default", event)
    assert created.metadata.name.startswith("p1.")
    listed = core.list_namespaced_event("default", field_selector="involvedObject.name=p1")
    assert [item.reason for item in listed.items] == ["Scheduled"]
    events_v1 = client.EventsV1Api(core.api_client)
    created_v1 = events_v1.create_namespaced_event(
        "default",
        {"metadata": {"name": "e1"}, "eventTime": "2026-11-23T00:00:00.000000Z", "reason": "R", "action": "A"},
    )
    assert created_v1.metadata.name == "e1"


def test_leases_support_optimistic_leader_election(api: KubeStandin) -> None:
    leases = client.CoordinationV1Api(api.api_client())
    body = {"metadata": {"name": "extender"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    lease = leases.create_namespaced_lease("kube-system", body)
    lease.spec.holder_identity = "b"
    updated = leases.replace_namespaced_lease("extender", "kube-system", lease)
    assert updated.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"
    with pytest.raises(client.ApiException) as lost:
        leases.replace_namespaced_lease("extender", "kube-system", lease)
    assert lost.value.status == 409


def test_webhook_configuration_ca_bundle_can_be_json_patched(api: KubeStandin) -> None:
    admission = client.AdmissionregistrationV1Api(api.api_client())
    api.add_object(
        "mutatingwebhookconfigurations",
        {
            "metadata": {"name": "tensorai"},
            "webhooks": [
                {
                    "name": "vgpu.tensor.ai",
                    "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                }
            ],
        },
    )
    operations = [
        {"op": "test", "path": "/webhooks/0/name", "value": "vgpu.tensor.ai"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="},
    ]
    admission.patch_mutating_webhook_configuration("tensorai", operations, _content_type="application/json-patch+json")
    raw = json.loads(admission.read_mutating_webhook_configuration("tensorai", _preload_content=False).data)
    assert raw["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="


# --- fault injection and request log ----------------------------------------------------------------
def test_fail_next_fails_exactly_the_matching_requests(core: client.CoreV1Api, api: KubeStandin) -> None:
    api.add_node("n1")
    core.create_namespaced_pod("default", pod_body("p1"))
    api.fail_next("POST", r"/pods/[^/]+/binding$", status=500, times=2)
    target = {"metadata": {"name": "p1"}, "target": {"kind": "Node", "name": "n1"}}
    for _ in range(2):
        with pytest.raises(client.ApiException) as injected:
            core.create_namespaced_pod_binding("p1", "default", target, _preload_content=False)
        assert injected.value.status == 500
        assert core.read_namespaced_pod("p1", "default").spec.node_name is None
    assert core.create_namespaced_pod_binding("p1", "default", target, _preload_content=False).status == 201
    api.fail_next("GET", r"^/api/v1/nodes$", status=409, body={"kind": "Status", "code": 409, "message": "custom"})
    with pytest.raises(client.ApiException) as custom_body:
        core.list_node()
    assert custom_body.value.status == 409 and json.loads(custom_body.value.body)["message"] == "custom"
    assert core.list_node().items[0].metadata.name == "n1"


def test_request_log_tells_watches_from_lists(core: client.CoreV1Api, api: KubeStandin) -> None:
    core.list_node()
    list(watch.Watch().stream(core.list_node, timeout_seconds=1))
    assert api.request_log[0] == ("GET", "/api/v1/nodes")
    method, path = api.request_log[1]
    assert method == "GET" and path.startswith("/api/v1/nodes?") and "watch=" in path.lower()


# --- concurrency -----------------------------------------------------------------------------------
def test_concurrent_creates_get_unique_versions_and_all_reach_a_watch(core: client.CoreV1Api, api: KubeStandin) -> None:
    version = core.list_namespaced_pod("default").metadata.resource_version
    collector = EventCollector(core.list_namespaced_pod, namespace="default", resource_version=version)
    errors: list[BaseException] = []

    def create_many(worker: int) -> None:
        try:
            worker_api = client.CoreV1Api(api.api_client())
            for index in range(10):
                worker_api.create_namespaced_pod("default", pod_body(f"w{worker}-{index}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create_many, args=(worker,)) for worker in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_SECONDS * 3)
        assert not errors
        events = collector.take(60)
    finally:
        collector.finish()
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in events]
    assert versions == sorted(versions) and len(set(versions)) == 60
    assert len(core.list_namespaced_pod("default").items) == 60


# --- the process and its kubeconfig ------------------------------------------------------------------
def test_runs_as_a_process_and_writes_a_loadable_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorai.demo.kube_standin", "--port", "0", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        url = lines.get(timeout=30).strip()
        assert url.startswith("http://127.0.0.1:")
        api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        assert api_client.configuration.host == url
        assert client.CoreV1Api(api_client).list_namespace().items
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_SECONDS) == 0


# --- hostile input ---------------------------------------------------------------------------------
_PATHS = [
    "/api/v1/nodes",
    "/api/v1/nodes/n1",
    "/api/v1/nodes/n1/status",
    "/api/v1/pods",
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/p1",
    "/api/v1/namespaces/default/pods/p1/status",
    "/api/v1/namespaces/default/pods/p1/binding",
    "/api/v1/namespaces/default/bindings",
    "/api/v1/namespaces/default/events",
    "/api/v1/namespaces",
    "/api/v1/namespaces/default",
    "/apis/tensor.ai/v1alpha1/namespaces/default/gpuquotas",
    "/apis/tensor.ai/v1alpha1/namespaces/default/gpuquotas/q",
    "/apis/tensor.ai/v1alpha1/namespaces/default/gpuquotas/q/status",
    "/apis/coordination.k8s.io/v1/namespaces/default/leases",
    "/apis/nope/v1/things",
    "/api/v1/namespaces/default/pods/p1/exec",
]
_QUERIES = ["", "?watch=true&timeoutSeconds=0", "?fieldSelector=spec.nodeName%3D", "?labelSelector=a+in+(b", "?x=%ff"]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_object_like = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["p1", "n1", "q", ""]) | _json_values, "labels": _json_values}
        ),
        "spec": _json_values,
        "status": _json_values,
        "target": _json_values,
    },
)
_bodies = (
    st.binary(max_size=64)
    | _json_values.map(lambda value: json.dumps(value).encode())
    | _object_like.map(lambda value: json.dumps(value).encode())
    | st.sampled_from([b"[" * 150 + b"]" * 150, b'{"a":' * 5000 + b"1" + b"}" * 5000])
)
_content_types = st.sampled_from(
    [
        "application/json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
        "text/plain",
        "",
    ]
)


def test_malformed_requests_get_4xx_status_objects_and_never_break_the_server(api: KubeStandin) -> None:
    api.add_node("n1")
    api.add_pod(pod_body("p1"))
    session = requests.Session()

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        path=st.sampled_from(_PATHS),
        query=st.sampled_from(_QUERIES),
        body=_bodies,
        content_type=_content_types,
    )
    def check(method: str, path: str, query: str, body: bytes, content_type: str) -> None:
        if "watch=true" in query and method == "GET":
            query = "?watch=true&timeoutSeconds=0"  # a valid watch would otherwise stream until its timeout
        headers = {"Content-Type": content_type} if content_type else {}
        response = session.request(method, api.url + path + query, data=body, headers=headers, timeout=WAIT_SECONDS)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            status = response.json()
            assert status["kind"] == "Status" and status["code"] == response.status_code
        assert session.get(f"{api.url}/api/v1/nodes", timeout=WAIT_SECONDS).status_code == 200

    check()


# --- the pure helpers --------------------------------------------------------------------------------
def test_label_selector_grammar() -> None:
    labels = {"app": "web", "tier": "gpu"}
    assert all(r.matches(labels) for r in parse_label_selector("app=web,tier in (gpu, cpu),!missing"))
    assert not all(r.matches(labels) for r in parse_label_selector("app notin (web)"))
    assert all(r.matches(labels) for r in parse_label_selector("app!=db,tier"))
    for bad in ("app in (web", "=x", "app=web,", "a b c"):
        with pytest.raises(SelectorError):
            parse_label_selector(bad)


def test_merge_patch_follows_rfc7386() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {
        "a": "z",
        "c": {"d": "e"},
    }
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": 1}, "text") == "text"


_documents = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["a", "b"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), children),
    max_leaves=8,
)
_pointers = st.lists(st.sampled_from(["a", "b", "c", "0", "1", "-"]), max_size=3).map(
    lambda parts: "".join("/" + part for part in parts)
)
_operations = st.lists(
    st.one_of(
        st.builds(lambda p, v: {"op": "add", "path": p, "value": v}, _pointers, _documents),
        st.builds(lambda p: {"op": "remove", "path": p}, _pointers),
        st.builds(lambda p, v: {"op": "replace", "path": p, "value": v}, _pointers, _documents),
        st.builds(lambda p, f: {"op": "move", "path": p, "from": f}, _pointers, _pointers),
        st.builds(lambda p, f: {"op": "copy", "path": p, "from": f}, _pointers, _pointers),
        st.builds(lambda p, v: {"op": "test", "path": p, "value": v}, _pointers, _documents),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(document=_documents, operations=_operations)
def test_json_patch_agrees_with_the_jsonpatch_library(document: object, operations: list[dict]) -> None:
    try:
        expected = jsonpatch.apply_patch(document, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError, TypeError):
        with pytest.raises(PatchError):
            json_patch(document, operations)
        return
    assert json_patch(document, operations) == expected
