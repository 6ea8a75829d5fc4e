"""GPUQuota end to end against the API stand-in: pods over quota wait (not rejected) with the reason,
are re-activated promptly when quota frees (delay measured), and status.used stays current."""

from __future__ import annotations

import time

import pytest
from test_extender_support import ExtenderStack, assigned_pod, bind_args, filter_args, node, pod, post, quota, wait_for

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler.quota_controller import ANNOTATION_QUOTA_REQUEUE


@pytest.fixture
def api():
    with KubeStandin() as standin:
        yield standin


def _admit(stack: ExtenderStack, api: KubeStandin, pod_object: dict) -> dict:
    created = api.add_pod(pod_object)
    assert wait_for(lambda: stack.view.pod(created["metadata"]["uid"]) is not None)
    return created


def test_pod_over_quota_waits_with_the_reason_and_runs_promptly_when_quota_frees(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 2))
    api.add_object("gpuquotas", quota("team", gpus="0.5"))
    # a long safety-net period: only the immediate trigger can requeue within the test's wait
    with ExtenderStack(api, interval_s=60) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        first = _admit(stack, api, pod("first", 250))
        post(stack.url + "/filter", filter_args(first, ["a"]))
        assert post(stack.url + "/bind", bind_args(first, "a"))[1] == {"Error": ""}
        assert wait_for(
            lambda: (
                (api.get_object("gpuquotas", "team", "ml").get("status") or {}).get("used", {}).get("gpus") == "0.25"
            )
        )

        waiting = _admit(stack, api, pod("waiting", 500))
        status, result = post(stack.url + "/filter", filter_args(waiting, ["a"]))
        assert status == 200 and result["NodeNames"] == [] and result["Error"] == ""
        assert "GPUQuota ml/team: gpus used 0.25 + 0.5 > hard 0.5" in result["FailedNodes"]["a"]
        assert result["FailedAndUnresolvableNodes"] == {}  # it queues: other pods finishing can fix it
        assert wait_for(lambda: any(e.get("reason") == "TensorAIQuotaWait" for e in api.list_objects("events", "ml")))
        assert wait_for(lambda: (api.get_object("gpuquotas", "team", "ml").get("status") or {}).get("waitingPods") == 1)

        freed_at = time.monotonic()
        api.delete_object("pods", "first", "ml")
        assert wait_for(
            lambda: (
                ANNOTATION_QUOTA_REQUEUE
                in (api.get_object("pods", "waiting", "ml")["metadata"].get("annotations") or {})
            ),
            5.0,
        ), "the waiting pod was not re-activated"
        delay_s = time.monotonic() - freed_at
        print(f"quota requeue delay (delete -> requeue annotation on the waiting pod): {delay_s * 1000:.0f} ms")
        assert stack.controller.requeue_delays_s, "the controller measured no delay"

        # what kube-scheduler does next: filter and bind the re-activated pod
        _, result = post(stack.url + "/filter", filter_args(waiting, ["a"]))
        assert result["NodeNames"] == ["a"]
        assert post(stack.url + "/bind", bind_args(waiting, "a"))[1] == {"Error": ""}
        assert wait_for(lambda: api.get_object("gpuquotas", "team", "ml")["status"]["used"]["gpus"] == "0.5")


def test_pod_over_the_per_pod_maximum_is_unresolvable(api: KubeStandin) -> None:
    api.add_object("nodes", node("a", 4))
    api.add_object("gpuquotas", quota("team", maxGpusPerPod="1"))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        big = _admit(stack, api, pod("big", 2000))
        _, result = post(stack.url + "/filter", filter_args(big, ["a"]))
        assert result["NodeNames"] == []
        assert "over maxGpusPerPod 1" in result["FailedAndUnresolvableNodes"]["a"]


def test_per_model_quota_turns_away_only_nodes_of_that_model(api: KubeStandin) -> None:
    api.add_object("nodes", node("h", 1, model="H100"))
    api.add_object("nodes", node("l", 1, model="L4", memory_mib=23034, reserved_mib=500))
    api.add_object("gpuquotas", quota("team", models={"H100": "0.2"}))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        worker = _admit(stack, api, pod("w", 250))
        _, result = post(stack.url + "/filter", filter_args(worker, ["h", "l"]))
        assert result["NodeNames"] == ["l"]
        assert "H100 GPUs used 0 + 0.25 > hard 0.2" in result["FailedNodes"]["h"]
        # and the bind re-checks it exactly
        assert "H100" in post(stack.url + "/bind", bind_args(worker, "h"))[1]["Error"]


def test_models_as_users_write_them_work_on_nodes_that_report_nvml_names(api: KubeStandin) -> None:
    """The README's `tensor.ai/gpu-model: A100,H100` and a GPUQuota `models: {H100: ...}` on real names."""
    api.add_object("nodes", node("h", 1, model="NVIDIA H100 80GB HBM3"))
    api.add_object("nodes", node("a", 1, model="NVIDIA A100-SXM4-40GB", memory_mib=40960, reserved_mib=500))
    api.add_object("nodes", node("l", 1, model="NVIDIA L40S", memory_mib=46068, reserved_mib=500))
    api.add_object("gpuquotas", quota("team", models={"H100": "0.2"}))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        worker = _admit(stack, api, pod("w", 250, annotations={contract.ANNOTATION_GPU_MODEL: "A100,H100"}))
        _, result = post(stack.url + "/filter", filter_args(worker, ["h", "a", "l"]))
        assert result["NodeNames"] == ["a"]
        assert "H100 GPUs used 0 + 0.25 > hard 0.2" in result["FailedNodes"]["h"]
        assert "GPU model not allowed" in result["FailedAndUnresolvableNodes"]["l"]
        assert "H100" in post(stack.url + "/bind", bind_args(worker, "h"))[1]["Error"]


def test_waiting_pod_is_requeued_once_per_quota_change_and_only_when_it_fits() -> None:
    from tensorai.scheduler.extender import ExtenderService
    from tensorai.scheduler.quota_controller import QuotaController
    from tensorai.scheduler.view import ClusterView

    view = ClusterView(stale_seconds=0)
    holder = assigned_pod("holder", "a", [(0, 500)])
    view.replace("nodes", [node("a", 2)])
    view.replace("pods", [holder])
    view.replace("gpuquotas", [quota("team", gpus="1")])
    requeued: list[str] = []
    controller = QuotaController(view, on_requeue=lambda namespace, name, uid: requeued.append(name))
    service = ExtenderService(view)
    big = pod("big", 1000)
    assert service.filter(filter_args(big, ["a"]))["NodeNames"] == []
    assert view.waiting("ml")
    assert controller.sync_namespace("ml") == 0 and requeued == []  # still over quota: no patch
    view.upsert_pod({**holder, "status": {"phase": "Succeeded"}})
    assert controller.sync_namespace("ml") == 1 and requeued == ["big"]
    assert controller.sync_namespace("ml") == 0, "nothing changed since: no second patch"
    assert service.filter(filter_args(big, ["a"]))["NodeNames"] == ["a"]


def test_quota_metrics_show_used_and_hard(api: KubeStandin) -> None:
    import urllib.request

    api.add_object("nodes", node("a", 1, model="NVIDIA H100 80GB HBM3"))
    api.add_object("gpuquotas", quota("team", gpus="2", memory="100Gi", models={"H100": "1"}))
    with ExtenderStack(api) as stack:
        assert wait_for(lambda: stack.view.quotas("ml"))
        worker = _admit(stack, api, pod("w", 250))
        post(stack.url + "/filter", filter_args(worker, ["a"]))
        assert post(stack.url + "/bind", bind_args(worker, "a"))[1] == {"Error": ""}
        with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'tensorai_quota_used{namespace="ml",quota="team",resource="gpus"} 0.25' in text
        # a per-model limit as the user wrote it counts the GPUs whose reported name it matches
        assert 'tensorai_quota_used{namespace="ml",quota="team",resource="gpus/H100"} 0.25' in text
        # and status.used.models has spec.hard.models' keys, not the reported names
        assert wait_for(lambda: api.get_object("gpuquotas", "team", "ml").get("status", {}).get("used", {}).get(
            "models") == {"H100": "0.25"})
        assert 'tensorai_quota_hard{namespace="ml",quota="team",resource="memory_mib"} 102400.0' in text
        assert 'tensorai_extender_binds_total{result="bound"} 1.0' in text


def test_binds_wake_the_quota_controller_only_in_namespaces_with_a_gpuquota() -> None:
    """Growing usage changes only quotas' status.used: a namespace without a GPUQuota has nothing to write,
    and waking the controller there on every bind held the view's lock against the next filter."""
    from tensorai.scheduler.view import ClusterView

    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("a", 4)])
    view.replace("gpuquotas", [quota("team", namespace="ml", gpus="2")])
    view.wait_dirty(0)  # the quota's own arrival
    view.upsert_pod(assigned_pod("free-ns", "a", [(0, 500)], namespace="scratch"))
    assert view.wait_dirty(0) == set()
    view.upsert_pod(assigned_pod("quota-ns", "a", [(1, 500)], namespace="ml"))
    assert view.wait_dirty(0) == {"ml"}
    view.delete_quota(quota("team", namespace="ml", gpus="2"))
    view.wait_dirty(0)
    view.upsert_pod(assigned_pod("after-delete", "a", [(2, 500)], namespace="ml"))
    assert view.wait_dirty(0) == set()
    assert view.used("scratch").gpus_milli == 500 and view.used("ml").gpus_milli == 1000  # usage is kept either way
