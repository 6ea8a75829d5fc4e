"""The cluster view from objects: inventory rows, bad annotations, stale heartbeats, pod lifecycle,
rebuild from annotations, assumed pods, the cluster file."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extender_support import bind_args, gpu_uuid, node, pod, quota, share_memory_mib

from tensorai.proto import contract
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import ClusterFileError, ClusterView, load_cluster_file


class FakeClock:
    """An injectable clock (seconds since the epoch)."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _view(nodes: list[dict], pods: list[dict] = (), quotas: list[dict] = (), **kwargs: object) -> ClusterView:
    view = ClusterView(**kwargs)
    view.replace("nodes", nodes)
    view.replace("pods", list(pods))
    view.replace("gpuquotas", list(quotas))
    return view


def _assigned(name: str, node_name: str, shares: list[tuple[int, int]], **kwargs: object) -> dict:
    """A Running pod with an Assignment of (gpu index, milli) shares on node_name."""
    built = pod(name, [milli for _, milli in shares], node_name=node_name, phase="Running", **kwargs)
    assignment = contract.pb.Assignment(pod_uid=built["metadata"]["uid"], node_name=node_name)
    for position, (index, milli) in enumerate(shares):
        container = assignment.containers.add(name=f"c{position}")
        container.gpus.add(uuid=gpu_uuid(node_name, index), milli=milli, memory_mib=share_memory_mib(milli))
    built["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    return built


def test_inventory_becomes_one_row_per_node_with_usable_memory() -> None:
    view = _view([node("a", 8), node("b", 2, memory_mib=16384, reserved_mib=384)], stale_seconds=0)
    with view.lock:
        row = view.node_index("b")
        assert view.cluster.gpu_count[row] == 2
        assert list(view.cluster.gpu_free_milli[row, :2]) == [1000, 1000]
        assert list(view.cluster.gpu_usable_memory_mib[row, :2]) == [16000, 16000]
        assert view.cluster.gpu_free_milli[row, 2:].tolist() == [-1] * 6  # padding never picked
        assert view.cluster.node_schedulable[row]


@pytest.mark.parametrize(
    "annotation",
    ["not json", "[]", '{"gpus": [{"uuid": "", "memoryMib": 1}]}', '{"gpus": [{"uuid": "G", "memoryMib": -5}]}', None],
)
def test_bad_inventory_annotation_makes_the_node_unusable_with_a_reason(annotation: str | None) -> None:
    bad = node("bad", 2)
    if annotation is None:
        del bad["metadata"]["annotations"][contract.ANNOTATION_INVENTORY]
    else:
        bad["metadata"]["annotations"][contract.ANNOTATION_INVENTORY] = annotation
    view = _view([bad, node("good", 2)], stale_seconds=0)
    assert view.node_problem("bad") and "inventory" in view.node_problem("bad")
    assert view.node_problem("good") is None
    with view.lock:
        assert not view.cluster.node_schedulable[view.node_index("bad")]


def test_stale_heartbeat_node_gets_no_new_pods_until_it_beats_again() -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    clock = FakeClock(start.timestamp())
    view = _view([node("a", 1, heartbeat=start), node("b", 1, heartbeat=start)], stale_seconds=120, clock=clock)
    service = ExtenderService(view)
    args = {"Pod": pod("p", 250), "Nodes": None, "NodeNames": ["a", "b"]}
    assert service.filter(args)["NodeNames"] == ["a", "b"]
    clock.now_s += 121
    view.upsert_node(node("b", 1, heartbeat=start + dt.timedelta(seconds=121)))  # b's plugin is alive
    result = service.filter(args)
    assert result["NodeNames"] == ["b"]
    assert "heartbeat" in result["FailedAndUnresolvableNodes"]["a"]
    assert "heartbeat" in service.bind(bind_args(args["Pod"], "a"))["Error"]


def test_terminated_and_deleted_pods_release_their_gpus() -> None:
    running = _assigned("r", "a", [(0, 500)])
    other = _assigned("o", "a", [(1, 250)])
    view = _view([node("a", 2)], [running, other], stale_seconds=0)
    with view.lock:
        assert view.cluster.gpu_free_milli[view.node_index("a"), :2].tolist() == [500, 750]
    running["status"]["phase"] = "Succeeded"
    view.upsert_pod(running)
    view.delete_pod(other)
    with view.lock:
        assert view.cluster.gpu_free_milli[view.node_index("a"), :2].tolist() == [1000, 1000]


def test_pod_event_before_its_node_is_counted_when_the_node_arrives() -> None:
    view = _view([], [_assigned("early", "late-node", [(0, 300)])], stale_seconds=0)
    view.upsert_node(node("late-node", 1))
    assert view.snapshot()["late-node"][0] == (700,)


def test_inventory_change_reapplies_the_pods_on_the_node() -> None:
    view = _view([node("a", 2)], [_assigned("p", "a", [(1, 400)])], stale_seconds=0)
    view.upsert_node(node("a", 2, unhealthy=frozenset({0})))
    with view.lock:
        row = view.node_index("a")
        assert view.cluster.gpu_free_milli[row, :2].tolist() == [1000, 600]
        assert view.cluster.gpu_healthy[row, :2].tolist() == [False, True]


def test_overcommitted_bound_pods_are_counted_not_dropped() -> None:
    view = _view([node("a", 1)], [_assigned("x", "a", [(0, 700)]), _assigned("y", "a", [(0, 700)])], stale_seconds=0)
    assert view.snapshot()["a"][0] == (-400,)


def test_assumed_pod_survives_the_annotation_event_and_is_confirmed_by_the_bind_event() -> None:
    view = _view([node("a", 1)], stale_seconds=0)
    service = ExtenderService(view)
    pending = pod("p", 600)
    view.remember_pending(pending)
    assert service.bind(bind_args(pending, "a")) == {"Error": ""}
    record = view.pod(pending["metadata"]["uid"])
    annotated = dict(
        pending,
        metadata={**pending["metadata"], "annotations": {contract.ANNOTATION_ASSIGNMENT: record.assignment_text}},
    )
    record.assumed = True  # as in API mode, before the watch confirms
    view.upsert_pod(annotated)  # the annotation patch arrives first, still without nodeName
    assert view.snapshot()["a"][0] == (400,)
    bound = dict(annotated, spec={**annotated["spec"], "nodeName": "a"})
    view.upsert_pod(bound)
    assert not view.pod(pending["metadata"]["uid"]).assumed
    assert view.snapshot()["a"][0] == (400,)


@settings(max_examples=30, deadline=None)
@given(
    placements=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 3), st.sampled_from([100, 250, 500, 1000])), max_size=20
    ),
    order_seed=st.randoms(use_true_random=False),
)
def test_rebuild_from_annotations_equals_the_original_view(placements, order_seed) -> None:
    nodes = [node(f"n{i}", 4) for i in range(3)]
    pods = [_assigned(f"p{i}", f"n{n}", [(g, m)], namespace="team") for i, (n, g, m) in enumerate(placements)]
    quotas = [quota("q", "team", gpus="100")]
    original = _view(nodes, pods, quotas, stale_seconds=0)
    shuffled_pods = list(pods)
    order_seed.shuffle(shuffled_pods)
    # a restarted extender may see pods before nodes, in any order
    rebuilt = ClusterView(stale_seconds=0)
    rebuilt.replace("pods", shuffled_pods)
    rebuilt.replace("nodes", nodes)
    rebuilt.replace("gpuquotas", quotas)
    assert rebuilt.snapshot() == original.snapshot()
    assert rebuilt.usage_snapshot() == original.usage_snapshot()
    assert original.used("team").gpus_milli == sum(m for _, _, m in placements)


def test_no_double_allocation_after_restart() -> None:
    first = _view([node("a", 1)], stale_seconds=0)
    service = ExtenderService(first)
    pending = pod("p", 800)
    first.remember_pending(pending)
    assert service.bind(bind_args(pending, "a")) == {"Error": ""}
    record = first.pod(pending["metadata"]["uid"])
    bound = dict(
        pending,
        metadata={**pending["metadata"], "annotations": {contract.ANNOTATION_ASSIGNMENT: record.assignment_text}},
        spec={**pending["spec"], "nodeName": "a"},
    )
    restarted = _view([node("a", 1)], [bound], stale_seconds=0)
    again = ExtenderService(restarted)
    second = pod("q", 800)
    result = again.filter({"Pod": second, "Nodes": None, "NodeNames": ["a"]})
    assert result["NodeNames"] == [] and "a" in result["FailedNodes"]


def test_cluster_file_loads_nodes_pods_and_quotas(tmp_path) -> None:
    import yaml

    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [node("a", 2), _assigned("p", "a", [(0, 250)]), quota("q", "ml", gpus="2")],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(listing))
    view = ClusterView(stale_seconds=0)
    assert load_cluster_file(view, str(path)) == {"nodes": 1, "pods": 1, "gpuquotas": 1}
    assert view.ready and view.snapshot()["a"][0] == (750, 1000)
    (tmp_path / "broken.yaml").write_text("{: nope")
    with pytest.raises(ClusterFileError):
        load_cluster_file(ClusterView(), str(tmp_path / "broken.yaml"))


def test_rows_grow_past_the_initial_capacity_and_wider_nodes() -> None:
    view = ClusterView(stale_seconds=0, initial_nodes=2, initial_gpus=2)
    view.replace("nodes", [node(f"n{i}", 2) for i in range(5)] + [node("wide", 16)])
    with view.lock:
        assert view.cluster.gpu_free_milli.shape[1] >= 16
        assert int(np.sum(view.cluster.gpu_count)) == 5 * 2 + 16
    view.delete_node("n0")
    assert "n0" not in view.snapshot()
    view.upsert_node(node("n9", 2))
    assert view.snapshot()["n9"][0] == (1000, 1000)


def test_pending_pod_annotation_change_is_honoured_at_bind() -> None:
    view = _view([node("h", 1, model="H100"), node("l", 1, model="L4")], stale_seconds=0)
    pending = pod("p", 250)
    pending["metadata"]["resourceVersion"] = "1"
    view.upsert_pod(pending)
    changed = {
        **pending,
        "metadata": {
            **pending["metadata"],
            "resourceVersion": "2",
            "annotations": {contract.ANNOTATION_GPU_MODEL: "L4"},
        },
    }
    view.upsert_pod(changed)  # the user added a model constraint while the pod was pending
    service = ExtenderService(view)
    assert "no longer fits" in service.bind(bind_args(pending, "h"))["Error"]
    assert service.bind(bind_args(pending, "l")) == {"Error": ""}


def test_filter_sees_the_capacity_a_bind_just_took() -> None:
    view = _view([node("a", 1)], stale_seconds=0)
    service = ExtenderService(view)
    first, second = pod("first", 600), pod("second", 600)
    assert service.filter({"Pod": first, "Nodes": None, "NodeNames": ["a"]})["NodeNames"] == ["a"]
    assert service.filter({"Pod": second, "Nodes": None, "NodeNames": ["a"]})["NodeNames"] == ["a"]
    assert service.bind(bind_args(first, "a")) == {"Error": ""}
    assert service.filter({"Pod": second, "Nodes": None, "NodeNames": ["a"]})["NodeNames"] == []
    assert service.prioritize({"Pod": second, "Nodes": None, "NodeNames": ["a"]}) == [{"Host": "a", "Score": 0}]


def test_heartbeat_only_update_keeps_rows_and_quota_untouched() -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    clock = FakeClock(start.timestamp() + 200)
    view = _view([node("a", 2, heartbeat=start)], [_assigned("p", "a", [(0, 500)])], stale_seconds=120, clock=clock)
    view.refresh_schedulable()
    assert view.node_problem("a") and "heartbeat" in view.node_problem("a")
    version, freed = view.version, view.freed_at("ml")
    view.upsert_node(node("a", 2, heartbeat=start + dt.timedelta(seconds=190)))
    assert view.node_problem("a") is None
    assert view.snapshot()["a"][0] == (500, 1000)
    assert view.freed_at("ml") == freed, "a heartbeat is not a quota release"
    assert view.version == version + 1  # only node_schedulable flipped


def test_metrics_export_each_nodes_inventory_heartbeat_for_the_stale_alert() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tensorai.scheduler.metrics import ExtenderMetrics

    beat = dt.datetime(2026, 11, 1, 12, 0, 5, tzinfo=dt.UTC)
    view = _view([node("a", 1, heartbeat=beat), node("b", 1, heartbeat=beat + dt.timedelta(seconds=30))],
                 stale_seconds=0)
    text = generate_latest(ExtenderMetrics(view).registry).decode()
    samples = {
        sample.labels["node"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tensorai_node_inventory_heartbeat_timestamp_seconds"
        for sample in family.samples
    }
    assert samples == {"a": beat.timestamp(), "b": beat.timestamp() + 30}


def test_placement_log_names_the_rows_binds_and_deletions_changed_and_nothing_else() -> None:
    view = _view([node("a", 2), node("b", 2)])
    service = ExtenderService(view)
    start = view.version
    assert view.placement_rows_since(start) == []
    first, second = pod("p1", 250, uid="u1"), pod("p2", 500, uid="u2")
    for pending, target in ((first, "b"), (second, "a")):
        service.filter({"Pod": pending, "Nodes": None, "NodeNames": ["a", "b"]})
        assert service.bind(bind_args(pending, target)) == {"Error": ""}
    rows = view.placement_rows_since(start)
    assert sorted(set(rows)) == sorted({view.node_index("a"), view.node_index("b")})
    after_binds = view.version
    view.delete_pod(first)
    assert view.placement_rows_since(after_binds) == [view.node_index("b")]
    view.upsert_node(node("a", 2, unhealthy=frozenset({1})))  # anything may change: no row list
    assert view.placement_rows_since(after_binds) is None
    assert view.placement_rows_since(view.version) == []
    assert view.placement_rows_since(view.version + 1) is None  # a token from the future is never trusted


def test_heartbeat_only_update_reuses_the_decoded_inventory() -> None:
    """33 heartbeats a second at 1,000 nodes: an unchanged Inventory is not decoded again."""
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    clock = FakeClock(start.timestamp() + 200)
    view = _view([node("a", 2, heartbeat=start)], stale_seconds=120, clock=clock)
    decoded = view.node_record("a").inventory
    assert decoded is not None
    view.upsert_node(node("a", 2, heartbeat=start + dt.timedelta(seconds=190, microseconds=250)))
    assert view.node_record("a").inventory is decoded
    assert view.node_problem("a") is None  # the new heartbeat counts although nothing was decoded
    with view.lock:
        assert view._heartbeat_s[view.node_index("a")] == pytest.approx(start.timestamp() + 190.00025)


def test_inventory_change_with_a_new_heartbeat_is_decoded_again() -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    view = _view([node("a", 2, heartbeat=start)], stale_seconds=0)
    view.upsert_node(node("a", 2, heartbeat=start + dt.timedelta(seconds=30), unhealthy=frozenset({1})))
    with view.lock:
        assert view.cluster.gpu_healthy[view.node_index("a"), :2].tolist() == [True, False]
    broken = node("a", 2, heartbeat=start + dt.timedelta(seconds=60))
    text = broken["metadata"]["annotations"][contract.ANNOTATION_INVENTORY]
    broken["metadata"]["annotations"][contract.ANNOTATION_INVENTORY] = text.replace('"memoryMib":', '"memoryMib":-')
    view.upsert_node(broken)
    assert "invalid" in view.node_problem("a")
