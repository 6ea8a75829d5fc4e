"""The watch-based view against the Kubernetes API stand-in with the real kubernetes client."""

from __future__ import annotations

import pytest
from test_extender_support import ExtenderStack, bind_args, filter_args, node, pod, post, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.view import ClusterView, KubeSource


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _free(view: ClusterView, name: str) -> tuple[int, ...] | None:
    entry = view.snapshot().get(name)
    return None if entry is None else entry[0]


def test_view_follows_nodes_and_pods_through_watch_events(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    view = ClusterView()
    source = KubeSource(view, api.api_client(), retry_s=0.1).start()
    try:
        assert wait_for(lambda: view.ready, 10)
        assert _free(view, "a") == (1000, 1000)
        api.add_object("nodes", node("b", 1))
        assert wait_for(lambda: _free(view, "b") == (1000,), 10)
        api.delete_object("nodes", "b")
        assert wait_for(lambda: _free(view, "b") is None, 10)
        # watch events, not a list per change: one list per kind so far
        lists = [p for m, p in api.request_log if m == "GET" and "watch" not in p]
        assert len([p for p in lists if p.startswith("/api/v1/nodes")]) == 1, lists
    finally:
        source.stop()


def test_view_relists_after_watches_expire_and_misses_nothing(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 1))
    view = ClusterView()
    source = KubeSource(view, api.api_client(), retry_s=0.1).start()
    try:
        assert wait_for(lambda: view.ready, 10)
        relists = dict(source.relists)
        api.expire_watches()
        api.add_object("nodes", node("b", 1))
        assert wait_for(lambda: _free(view, "b") == (1000,), 10)
        assert wait_for(lambda: source.relists["nodes"] > relists["nodes"], 10)
    finally:
        source.stop()


def test_readyz_waits_for_the_first_sync(api: KubeStandin) -> None:
    import urllib.error
    import urllib.request

    from tensorai.scheduler.extender import ExtenderService, serve

    view = ClusterView()
    server, _ = serve(ExtenderService(view), "127.0.0.1", 0)
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
        assert raised.value.code == 503
        source = KubeSource(view, api.api_client(), retry_s=0.1).start()
        try:
            assert wait_for(lambda: view.ready, 10)
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as response:
                assert response.status == 200
        finally:
            source.stop()
    finally:
        server.shutdown()
        server.server_close()


def test_pod_bound_and_finished_through_the_api_is_released(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 1))
    with ExtenderStack(api) as stack:
        created = api.add_pod(pod("p", 600))
        assert wait_for(lambda: stack.view.pod(created["metadata"]["uid"]) is not None)
        post(stack.url + "/filter", filter_args(created, ["a"]))
        assert post(stack.url + "/bind", bind_args(created, "a"))[1] == {"Error": ""}
        assert wait_for(lambda: not stack.view.pod(created["metadata"]["uid"]).assumed, 10), "watch never confirmed"
        assert _free(stack.view, "a") == (400,)
        api.set_pod_phase("ml", "p", "Succeeded")
        assert wait_for(lambda: _free(stack.view, "a") == (1000,), 10)


def test_restarted_extender_rebuilds_from_annotations_without_double_allocation(api: KubeStandin) -> None:
    for name in ("a", "b"):
        api.add_object("nodes", node(name, 2))
    with ExtenderStack(api) as first:
        for index, milli in enumerate([700, 700, 300, 1000]):
            created = api.add_pod(pod(f"p{index}", milli))
            assert wait_for(lambda c=created: first.view.pod(c["metadata"]["uid"]) is not None)
            post(first.url + "/filter", filter_args(created, ["a", "b"]))
            assert post(first.url + "/bind", bind_args(created, "a" if index < 3 else "b"))[1] == {"Error": ""}
        assert wait_for(lambda: not any(r.assumed for r in first.view.pods_on_node("a")), 10)
        before = first.view.snapshot()
    with ExtenderStack(api) as second:
        assert second.view.snapshot() == before
        late = api.add_pod(pod("late", 800))
        assert wait_for(lambda: second.view.pod(late["metadata"]["uid"]) is not None)
        _, result = post(second.url + "/filter", filter_args(late, ["a", "b"]))
        # a holds 700+300 on one GPU and 700 on the other: no GPU has 800 free; b has one whole GPU left
        assert result["NodeNames"] == ["b"], result
        stored = api.get_object("pods", "p0", "ml")
        assert contract.ANNOTATION_ASSIGNMENT in stored["metadata"]["annotations"]
