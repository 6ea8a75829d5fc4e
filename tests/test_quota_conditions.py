"""GPUQuota status.conditions (metav1.Condition) and observedGeneration: what `kubectl wait` and
`kubectl describe gpuquota` read. lastTransitionTime moves only when a condition flips, and an
unchanged status is never written again (not by a restarted or new leader either)."""

from __future__ import annotations

import datetime as dt

import pytest
from test_extender_support import ExtenderStack, bind_args, filter_args, node, pod, post, quota, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.scheduler.quota_controller import CONDITION_QUOTA_EXCEEDED, CONDITION_READY, quota_conditions

T0 = "2026-12-08T00:00:00Z"
T1 = "2026-12-08T00:05:00Z"


def _by_type(conditions: list[dict]) -> dict[str, dict]:
    return {condition["type"]: condition for condition in conditions}


def test_conditions_say_ready_and_name_the_limit_waiting_pods_hit() -> None:
    waiting = {
        "u2": ("late", "GPUQuota ml/team: gpus used 1 + 1 > hard 1.5", 20.0),
        "u1": ("early", "GPUQuota ml/other: memory used 0Mi + 100Mi > hard 50Mi; GPUQuota ml/team: H100 GPUs "
                        "used 1 + 0.5 > hard 1", 10.0),
        "u3": ("elsewhere", "GPUQuota ml/other: gpus used 2 + 1 > hard 2", 5.0),
    }
    conditions = _by_type(quota_conditions("ml", "team", waiting, 3, None, T0))
    assert conditions[CONDITION_READY] == {
        "type": "Ready", "status": "True", "reason": "Enforced", "observedGeneration": 3, "lastTransitionTime": T0,
        "message": "spec.hard is read and enforced at filter and bind",
    }
    exceeded = conditions[CONDITION_QUOTA_EXCEEDED]
    assert (exceeded["status"], exceeded["reason"]) == ("True", "PodsWaiting")
    # two pods wait for this quota (the third for another one); the oldest's reason, only this quota's part
    assert exceeded["message"] == "2 pods waiting for this quota; ml/early: H100 GPUs used 1 + 0.5 > hard 1"
    calm = _by_type(quota_conditions("ml", "other", {}, 3, None, T0))[CONDITION_QUOTA_EXCEEDED]
    assert (calm["status"], calm["reason"]) == ("False", "NoPodsWaiting")


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    waiting = {"u1": ("p", "GPUQuota ml/team: gpus used 1 + 1 > hard 1", 1.0)}
    first = quota_conditions("ml", "team", {}, 1, None, T0)
    again = quota_conditions("ml", "team", {}, 2, first, T1)  # a new spec generation, same statuses
    assert [c["lastTransitionTime"] for c in again] == [T0, T0]
    assert [c["observedGeneration"] for c in again] == [2, 2]
    flipped = _by_type(quota_conditions("ml", "team", waiting, 2, again, T1))
    assert flipped[CONDITION_READY]["lastTransitionTime"] == T0
    assert flipped[CONDITION_QUOTA_EXCEEDED]["lastTransitionTime"] == T1


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _status(api: KubeStandin) -> dict:
    return (api.get_object("gpuquotas", "team", "ml") or {}).get("status") or {}


def _status_patches(api: KubeStandin) -> int:
    return sum(method == "PATCH" and path.endswith("/gpuquotas/team/status") for method, path in api.request_log)


class _Clock:
    """The controller's wall clock, moved by hand so every transition time is distinguishable."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=1)
        return self.now


def test_quota_status_conditions_follow_waiting_pods_and_the_spec_generation(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    api.add_object("gpuquotas", quota("team", gpus="0.5"))
    with ExtenderStack(api, interval_s=0.1) as stack:
        stack.controller.wall_clock = _Clock()
        stack.controller.status_min_interval_s = 0.0
        assert wait_for(lambda: _by_type(_status(api).get("conditions", [])).get(CONDITION_READY))
        status = _status(api)
        assert status["observedGeneration"] == 1
        ready = _by_type(status["conditions"])[CONDITION_READY]
        assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
        assert _by_type(status["conditions"])[CONDITION_QUOTA_EXCEEDED]["status"] == "False"

        first = api.add_pod(pod("first", 250))
        waiting = api.add_pod(pod("waiting", 500))
        assert wait_for(lambda: stack.view.pod(waiting["metadata"]["uid"]) is not None)
        post(stack.url + "/filter", filter_args(first, ["a"]))
        assert post(stack.url + "/bind", bind_args(first, "a"))[1] == {"Error": ""}
        post(stack.url + "/filter", filter_args(waiting, ["a"]))
        assert wait_for(lambda: _by_type(_status(api)["conditions"])[CONDITION_QUOTA_EXCEEDED]["status"] == "True")
        status = _status(api)
        exceeded = _by_type(status["conditions"])[CONDITION_QUOTA_EXCEEDED]
        assert exceeded["reason"] == "PodsWaiting"
        assert exceeded["message"] == "1 pod waiting for this quota; ml/waiting: gpus used 0.25 + 0.5 > hard 0.5"
        assert _by_type(status["conditions"])[CONDITION_READY]["lastTransitionTime"] == ready["lastTransitionTime"]

        # unchanged: the safety net runs every 0.1 s and writes nothing
        patches = _status_patches(api)
        assert not wait_for(lambda: _status_patches(api) > patches, 0.6)

        spec = api.get_object("gpuquotas", "team", "ml")
        spec["spec"]["hard"]["gpus"] = "1"
        from kubernetes import client

        client.CustomObjectsApi(api.api_client()).replace_namespaced_custom_object(
            "tensor.ai", "v1alpha1", "ml", "gpuquotas", "team", spec
        )
        assert wait_for(lambda: _status(api).get("observedGeneration") == 2)
        after = _by_type(_status(api)["conditions"])
        assert after[CONDITION_READY]["observedGeneration"] == 2
        assert after[CONDITION_READY]["lastTransitionTime"] == ready["lastTransitionTime"]  # no flip


def test_a_restarted_leader_does_not_rewrite_an_unchanged_status(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    api.add_object("gpuquotas", quota("team", gpus="2"))
    with ExtenderStack(api, interval_s=0.1):
        assert wait_for(lambda: _status(api).get("conditions"))
        written = _status(api)
    patches = _status_patches(api)
    with ExtenderStack(api, interval_s=0.1):  # the next leader (or this one restarted) reads the API's status
        assert not wait_for(lambda: _status_patches(api) > patches, 0.8)
    assert _status(api) == written


def test_nothing_is_written_before_the_view_has_listed_every_kind(api: KubeStandin) -> None:
    """Quotas listed before the pods would be written as `used: 0` over the real usage."""
    from tensorai.scheduler.quota_controller import QuotaController
    from tensorai.scheduler.view import ClusterView

    api.add_object("gpuquotas", quota("team", gpus="2"))
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [])
    view.replace("gpuquotas", api.list_objects("gpuquotas"))
    controller = QuotaController(view, api_client=api.api_client())
    controller.sync_namespace("ml")
    assert _status_patches(api) == 0
    view.replace("pods", [])
    controller.sync_namespace("ml")
    assert _status_patches(api) == 1
