"""Leadership: the extender writes only while its own pod's kube-scheduler holds the scheduler Lease.

Two replicas share one API stand-in, as two scheduler pods share the cluster: only the leader's
quota status counts (its view holds the waiting pods), and a new leader writes at once.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from test_extender_support import assigned_pod, bind_args, filter_args, node, pod, quota, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.scheduler.leader import (
    DEFAULT_LEASE_NAME,
    DEFAULT_LEASE_NAMESPACE,
    AlwaysLeader,
    LeaseLeader,
    holds_lease,
    lease_expiry_s,
    parse_lease_ref,
)

NOW_S = 1_800_000_000.0


def _micro_time(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease(holder: str | None, renewed_s: float | None = None, duration_s: int = 15) -> dict:
    """A Lease as kube-scheduler's leader election writes it."""
    spec: dict = {"leaseDurationSeconds": duration_s}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_s is not None:
        spec["acquireTime"] = spec["renewTime"] = _micro_time(renewed_s)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": DEFAULT_LEASE_NAME, "namespace": DEFAULT_LEASE_NAMESPACE},
        "spec": spec,
    }


# ---------------------------------------------------------------------------- the rule, pure


@pytest.mark.parametrize(
    ("lease", "now_s", "expected"),
    [
        (_lease("sched-0_5f1e", NOW_S), NOW_S + 1, True),
        (_lease("sched-0_5f1e", NOW_S), NOW_S + 15, False),  # not renewed for leaseDurationSeconds: expired
        (_lease("sched-1_77aa", NOW_S), NOW_S + 1, False),  # the other replica leads
        (_lease("sched-0x_77aa", NOW_S), NOW_S + 1, False),  # a longer hostname with ours as its start
        (_lease("sched-0", NOW_S), NOW_S + 1, False),  # not kube-scheduler's <hostname>_<uuid> form
        (_lease("", NOW_S), NOW_S + 1, False),  # released: client-go empties the holder when it lets go
        (_lease(None, NOW_S), NOW_S + 1, False),
        (_lease("sched-0_5f1e"), NOW_S + 1, False),  # never renewed: cannot be dated, not trusted
        (_lease("sched-0_5f1e", NOW_S, duration_s=0), NOW_S, False),
        (None, NOW_S, False),
    ],
)
def test_this_pod_leads_while_its_kube_scheduler_holds_the_unexpired_lease(
    lease: dict | None, now_s: float, expected: bool
) -> None:
    assert holds_lease(lease, "sched-0", now_s) is expected


def test_lease_expiry_is_renew_time_plus_duration() -> None:
    assert lease_expiry_s(_lease("a_1", NOW_S, duration_s=15)) == pytest.approx(NOW_S + 15)
    unrenewed = _lease("a_1", NOW_S)
    del unrenewed["spec"]["renewTime"]  # only acquired so far
    assert lease_expiry_s(unrenewed) == pytest.approx(NOW_S + 15)


def test_lease_flag_names_namespace_and_name() -> None:
    import argparse

    assert parse_lease_ref("tensorai-system/tensorai-scheduler") == ("tensorai-system", "tensorai-scheduler")
    for bad in ("tensorai-scheduler", "/x", "x/", "a/b/c"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAMESPACE/NAME"):
            parse_lease_ref(bad)


# ---------------------------------------------------------------------------- following the Lease


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _hold(api: KubeStandin, holder: str, renewed_s: float, duration_s: int = 15) -> None:
    """Take or renew the Lease the way kube-scheduler does: a PUT of the whole object (create if none)."""
    from kubernetes import client

    coordination = client.CoordinationV1Api(api.api_client())
    current = api.get_object("leases", DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE)
    if current is None:
        api.add_object("leases", _lease(holder, renewed_s, duration_s))
        return
    current["spec"].update(_lease(holder, renewed_s, duration_s)["spec"])
    coordination.replace_namespaced_lease(DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE, current)


def _follow(api: KubeStandin, hostname: str, **kwargs: object) -> LeaseLeader:
    leader = LeaseLeader(api.api_client(), hostname=hostname, retry_s=0.1, **kwargs).start()
    assert leader.synced.wait(5.0), "the Lease was never listed"
    return leader


def test_without_any_lease_nobody_elects_and_the_extender_writes(api: KubeStandin) -> None:
    leader = _follow(api, "sched-0")
    try:
        assert leader.is_leader()
    finally:
        leader.stop()


def test_a_new_holder_is_seen_within_a_second_and_the_callback_says_so(api: KubeStandin) -> None:
    api.add_object("leases", _lease("sched-1_77aa", time.time()))
    leader = _follow(api, "sched-0")
    flips: list[tuple[bool, float]] = []
    leader.on_change(lambda leading: flips.append((leading, time.monotonic())))
    try:
        assert not leader.is_leader()
        taken_at = time.monotonic()
        _hold(api, "sched-0_5f1e", time.time())
        assert wait_for(lambda: bool(flips), 1.0), "the take-over was not noticed within a second"
        assert flips[0][0] is True and flips[0][1] - taken_at < 1.0
        assert leader.is_leader()
    finally:
        leader.stop()


def test_a_lease_that_is_not_renewed_stops_the_writes_when_it_expires(api: KubeStandin) -> None:
    _hold(api, "sched-0_5f1e", time.time(), duration_s=1)
    leader = _follow(api, "sched-0")
    flips: list[bool] = []
    leader.on_change(flips.append)
    try:
        assert leader.is_leader()
        # no renewal comes (this pod's kube-scheduler hung or died): no event either, the clock decides
        assert wait_for(lambda: flips == [False], 2.5), flips
        assert not leader.is_leader()
    finally:
        leader.stop()


def test_a_lease_that_cannot_be_read_never_makes_a_leader(api: KubeStandin) -> None:
    api.fail_next("GET", r"/leases$", status=403, times=1000)
    leader = LeaseLeader(api.api_client(), hostname="sched-0", retry_s=0.05).start()
    try:
        time.sleep(0.5)
        assert not leader.synced.is_set() and not leader.is_leader()
    finally:
        leader.stop()


def test_the_lease_is_read_by_name_with_one_watch() -> None:
    with KubeStandin() as api:
        _hold(api, "sched-0_5f1e", time.time())
        leader = _follow(api, "sched-0")
        try:
            time.sleep(0.3)
        finally:
            leader.stop()
        reads = [path for method, path in api.request_log if method == "GET" and "/leases" in path]
    assert reads and all("fieldSelector=metadata.name%3Dtensorai-scheduler" in path for path in reads), reads
    assert sum("watch=true" in path.lower() for path in reads) == 1 and len(reads) == 2, reads  # not a poll


def test_always_leader_is_for_one_replica_and_the_cluster_file() -> None:
    leader = AlwaysLeader()
    leader.on_change(lambda _: pytest.fail("never flips"))
    assert leader.is_leader()


# ---------------------------------------------------------------------------- two replicas, one API


class Replica:
    """One scheduler pod's extender: its own view and watch, service, Events and quota controller."""

    def __init__(self, api: KubeStandin, hostname: str, *, interval_s: float) -> None:
        from tensorai.scheduler.events import EventRecorder
        from tensorai.scheduler.extender import ExtenderService
        from tensorai.scheduler.quota_controller import QuotaController
        from tensorai.scheduler.view import ClusterView, KubeSource

        client = api.api_client()
        self.view = ClusterView(stale_seconds=120.0)
        self.source = KubeSource(self.view, client, retry_s=0.1)
        self.events = EventRecorder(client)
        self.leader = LeaseLeader(client, hostname=hostname, retry_s=0.1)
        self.service = ExtenderService(self.view, api_client=client, events=self.events)
        self.controller = QuotaController(
            self.view, api_client=client, interval_s=interval_s, events=self.events, leader=self.leader,
            status_min_interval_s=0.0,
        )

    def start(self) -> Replica:
        self.source.start()
        self.events.start()
        self.leader.start()
        self.controller.start()
        assert wait_for(lambda: self.view.ready and self.leader.synced.is_set(), 10.0), "replica never synced"
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.leader.stop()
        self.events.stop()
        self.source.stop()


def _status(api: KubeStandin) -> dict:
    return (api.get_object("gpuquotas", "team", "ml") or {}).get("status") or {}


def test_only_the_leader_writes_quota_status_and_waiting_pods_is_its_count(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    api.add_object("gpuquotas", quota("team", gpus="0.5"))
    _hold(api, "sched-0_5f1e", time.time(), duration_s=3600)
    # a short safety-net period: a standby that wrote would overwrite the leader's status many times over
    leader, standby = Replica(api, "sched-0", interval_s=0.05), Replica(api, "sched-1", interval_s=0.05)
    leader.start()
    standby.start()
    try:
        assert leader.leader.is_leader() and not standby.leader.is_leader()
        first = api.add_pod(pod("first", 250))
        waiting = api.add_pod(pod("waiting", 500))
        assert wait_for(lambda: leader.view.pod(waiting["metadata"]["uid"]) is not None)
        # kube-scheduler calls only its own extender, the leader's
        leader.service.filter(filter_args(first, ["a"]))
        assert leader.service.bind(bind_args(first, "a")) == {"Error": ""}
        assert leader.service.filter(filter_args(waiting, ["a"]))["NodeNames"] == []
        assert wait_for(lambda: _status(api).get("waitingPods") == 1 and _status(api)["used"]["gpus"] == "0.25")
        assert wait_for(lambda: standby.view.used("ml").gpus_milli == 250)  # the standby's view is warm
        samples = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            samples.append(_status(api).get("waitingPods"))
            time.sleep(0.02)
        assert set(samples) == {1}, "the standby overwrote the leader's waitingPods"
        waits = [e for e in api.list_objects("events", "ml") if e.get("reason") == "TensorAIQuotaWait"]
        assert len(waits) == 1
    finally:
        standby.stop()
        leader.stop()


def test_a_new_leader_writes_the_status_within_a_second_of_taking_the_lease(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    api.add_object("gpuquotas", quota("team", gpus="2"))
    api.add_pod(assigned_pod("holder", "a", [(0, 250)]))
    _hold(api, "sched-0_5f1e", time.time(), duration_s=3600)
    # a long safety-net period: only the take-over itself can make the new leader write in time
    old, new = Replica(api, "sched-0", interval_s=60), Replica(api, "sched-1", interval_s=60)
    old.start()
    new.start()
    try:
        assert wait_for(lambda: _status(api).get("used", {}).get("gpus") == "0.25"), "the leader wrote no status"
        old.stop()  # the leading pod goes away; its lease runs on until the other kube-scheduler takes it
        api.delete_object("pods", "holder", "ml")
        assert wait_for(lambda: new.view.used("ml").gpus_milli == 0)
        time.sleep(0.3)
        assert _status(api)["used"]["gpus"] == "0.25", "the standby wrote before it led"
        taken_at = time.monotonic()
        _hold(api, "sched-1_9c3b", time.time(), duration_s=15)
        assert wait_for(lambda: _status(api)["used"]["gpus"] == "0", 1.0), "the new leader did not write at once"
        print(f"take-over to status write: {(time.monotonic() - taken_at) * 1000:.0f} ms")
    finally:
        new.stop()
        old.stop()


def test_a_replica_that_does_not_lead_neither_requeues_nor_records_events(api: KubeStandin) -> None:
    """A leader that lost the lease still remembers its waiting pods: the requeue is the new leader's."""
    from tensorai.scheduler.events import EventRecorder
    from tensorai.scheduler.extender import ExtenderService
    from tensorai.scheduler.quota_controller import ANNOTATION_QUOTA_REQUEUE, QuotaController
    from tensorai.scheduler.view import ClusterView

    _hold(api, "sched-1_77aa", time.time(), duration_s=3600)
    view = ClusterView(stale_seconds=0)
    holder = assigned_pod("holder", "a", [(0, 500)])
    big = api.add_pod(pod("big", 1000))
    view.replace("nodes", [node("a", 2)])
    view.replace("pods", [holder, big])
    view.replace("gpuquotas", [api.add_object("gpuquotas", quota("team", gpus="1"))])
    leader = _follow(api, "sched-0")
    events = EventRecorder()
    controller = QuotaController(view, api_client=api.api_client(), events=events, leader=leader)
    try:
        assert ExtenderService(view).filter(filter_args(big, ["a"]))["NodeNames"] == []
        view.upsert_pod({**holder, "status": {"phase": "Succeeded"}})  # quota frees
        assert controller.sync_namespace("ml") == 0
        annotations = api.get_object("pods", "big", "ml")["metadata"].get("annotations") or {}
        assert ANNOTATION_QUOTA_REQUEUE not in annotations
        assert not [e for e in events.recent if e.reason == "TensorAIQuotaFreed"]
        _hold(api, "sched-0_5f1e", time.time())
        assert wait_for(leader.is_leader, 1.0)
        assert controller.sync_namespace("ml") == 1
        assert ANNOTATION_QUOTA_REQUEUE in api.get_object("pods", "big", "ml")["metadata"]["annotations"]
        assert [e.pod_name for e in events.recent if e.reason == "TensorAIQuotaFreed"] == ["big"]
    finally:
        leader.stop()


def test_the_default_lease_is_in_the_pods_own_namespace(tmp_path) -> None:
    """A Helm install in another namespace moves kube-scheduler's lease there; the extender follows."""
    from tensorai.scheduler.leader import default_lease_ref

    mounted = tmp_path / "namespace"
    mounted.write_text("gpu-scheduling\n")
    assert default_lease_ref(str(mounted)) == ("gpu-scheduling", DEFAULT_LEASE_NAME)
    assert default_lease_ref(str(tmp_path / "absent")) == (DEFAULT_LEASE_NAMESPACE, DEFAULT_LEASE_NAME)
    assert default_lease_ref(None) == (DEFAULT_LEASE_NAMESPACE, DEFAULT_LEASE_NAME)  # --kubeconfig given
