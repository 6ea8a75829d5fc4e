"""RawCoreApi: the plugin's pod/node calls as raw JSON over the official client's ApiClient, against the
API stand-in through its kubeconfig (the same auth/TLS path as in a cluster)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import kubernetes
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.demo.kube_standin import KubeStandin
from tensorai.deviceplugin.identity import _raw_watch_class
from tensorai.proto.kubeclient import RawCoreApi

NODE = "node-a"


def make_pod(name: str, node: str | None = NODE, annotations: dict[str, str] | None = None) -> dict:
    spec: dict = {"containers": [{"name": "main", "image": "x"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}}}


@pytest.fixture
def cluster() -> Iterator[tuple[KubeStandin, RawCoreApi]]:
    with KubeStandin() as api:
        api.add_node(NODE, annotations={"keep": "me"})
        client = api.api_client()
        try:
            yield api, RawCoreApi(client)
        finally:
            client.close()


def test_list_pods_returns_only_the_pods_bound_to_the_selected_node_as_dicts(cluster) -> None:
    api, core = cluster
    api.add_pod(make_pod("mine"))
    api.add_pod(make_pod("elsewhere", node="node-b"))
    api.add_pod(make_pod("unbound", node=None))
    listed = core.list_pods(f"spec.nodeName={NODE}")
    assert [p["metadata"]["name"] for p in listed["items"]] == ["mine"]
    assert listed["metadata"]["resourceVersion"]


def test_patch_pod_annotations_sets_and_removes_keys_and_keeps_the_others(cluster) -> None:
    api, core = cluster
    api.add_pod(make_pod("p", annotations={"keep": "1", "drop": "2"}))
    core.patch_pod_annotations("default", "p", {"new": "3", "drop": None})
    assert api.get_object("pods", "p", "default")["metadata"]["annotations"] == {"keep": "1", "new": "3"}


def test_node_read_and_merge_patch_round_trip_as_dicts(cluster) -> None:
    api, core = cluster
    node = core.read_node(NODE)
    assert node["metadata"]["annotations"] == {"keep": "me"}
    patched = core.patch_node(NODE, {"metadata": {"annotations": {"added": "yes"}}})
    assert patched["metadata"]["annotations"] == {"keep": "me", "added": "yes"}
    assert api.get_object("nodes", NODE)["metadata"]["annotations"] == {"keep": "me", "added": "yes"}


def test_api_errors_raise_the_clients_api_exception_with_the_http_status(cluster) -> None:
    _api, core = cluster
    with pytest.raises(kubernetes.client.ApiException) as missing:
        core.read_node("no-such-node")
    assert missing.value.status == 404
    with pytest.raises(kubernetes.client.ApiException) as missing_pod:
        core.patch_pod_annotations("default", "no-such-pod", {"a": "b"})
    assert missing_pod.value.status == 404
    stale = core.read_node(NODE)["metadata"]["resourceVersion"]
    core.patch_node(NODE, {"metadata": {"annotations": {"bump": "1"}}})
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        core.patch_node(NODE, {"metadata": {"resourceVersion": stale, "annotations": {"late": "1"}}})
    assert conflict.value.status == 409


@pytest.mark.parametrize("name", ["a/b", "../nodes", "x?y=1", "%2F", "名前"])
def test_names_are_path_quoted_so_odd_input_cannot_reach_another_object(cluster, name: str) -> None:
    api, core = cluster
    with pytest.raises(kubernetes.client.ApiException) as raised:
        core.read_node(name)
    assert raised.value.status in (400, 404)
    with pytest.raises(kubernetes.client.ApiException):
        core.patch_pod_annotations(name, name, {"a": "b"})
    assert api.get_object("nodes", NODE)["metadata"]["annotations"] == {"keep": "me"}


def test_the_official_watch_streams_raw_pod_events_from_the_listed_version(cluster) -> None:
    api, core = cluster
    api.add_pod(make_pod("before"))
    version = core.list_pods(f"spec.nodeName={NODE}")["metadata"]["resourceVersion"]
    api.add_pod(make_pod("after"))
    api.add_pod(make_pod("other-node", node="node-b"))
    api.delete_object("pods", "before", "default")
    watch = _raw_watch_class()()
    seen: list[tuple[str, str]] = []
    for event in watch.stream(core.watch_pods, field_selector=f"spec.nodeName={NODE}", resource_version=version,
                              timeout_seconds=2, _request_timeout=10):
        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            assert isinstance(event["raw_object"], dict)
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
        if len(seen) == 2:
            watch.stop()
    assert seen == [("ADDED", "after"), ("DELETED", "before")]


def test_kube_mode_plugin_never_imports_the_typed_api_or_its_generated_models() -> None:
    """The 80 MiB budget: CoreV1Api and its ~250 pydantic models cost 21.6 MiB, the plugin uses neither."""
    script = textwrap.dedent(
        """
        import sys
        from tensorai.demo.kube_standin import KubeStandin
        from tensorai.deviceplugin.cli import Plugin, PluginConfig
        with KubeStandin() as api:
            api.add_node("n1")
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                plugin = Plugin(PluginConfig(node_name="n1", backend="sim", sim_gpus="2xH100:81559",
                                             device_plugin_dir=tmp, pod_resources_socket=tmp + "/none.sock",
                                             kubeconfig=api.kubeconfig_path, metrics_port=0))
                plugin.watch.start()
                assert plugin.identity.synced.wait(10), "pod watch never listed"
                plugin.watch.stop()
        typed = sorted(m for m in sys.modules
                       if m.startswith("kubernetes.client.api.") or m.startswith("kubernetes.client.models."))
        print("TYPED", typed)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "TYPED []" in result.stdout, result.stdout


def test_any_node_name_reads_only_that_node_or_fails_with_an_http_status() -> None:
    """Fuzz: arbitrary text as a name is quoted into one path segment; it never reaches another object."""
    with KubeStandin() as api:
        api.add_node(NODE)
        client = api.api_client()
        core = RawCoreApi(client)

        @settings(max_examples=40, deadline=None)
        @given(st.text(min_size=1, max_size=30))
        def check(name: str) -> None:
            try:
                node = core.read_node(name)
            except kubernetes.client.ApiException as error:
                assert 400 <= error.status < 500
            else:
                assert node["metadata"]["name"] == name == NODE

        try:
            check()
        finally:
            client.close()
