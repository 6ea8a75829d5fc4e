"""Hostile sizes at the extender's edge, over real HTTP: amounts past int64 are a pod error (never a
500 from the compiled scorers); the caches that keep request strings stay bounded (see also
tests/benchmarks/bench_soak.py for the process's memory under attack)."""

from __future__ import annotations

import pytest
from test_extender_support import node, pod, post

from tensorai.proto import contract
from tensorai.scheduler.extender import ExtenderService, serve
from tensorai.scheduler.view import ClusterView


@pytest.fixture
def served():
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("gpu-a", 1), node("gpu-b", 2)])
    view.replace("pods", [])
    view.replace("gpuquotas", [])
    service = ExtenderService(view)
    server, _ = serve(service, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}", service
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("resource", "value"),
    [(contract.RESOURCE_VGPU_MEMORY, "1e30"), ("cpu", "1e30"), ("memory", "1e30"), ("memory", "9e24")],
)
def test_amounts_past_int64_are_a_pod_error_on_every_verb(served, resource: str, value: str) -> None:
    url, _ = served
    huge = pod("huge", 250)
    for table in ("limits", "requests"):
        huge["spec"]["containers"][0]["resources"][table][resource] = value
    args = {"Pod": huge, "Nodes": None, "NodeNames": ["gpu-a", "gpu-b"]}
    status, answer = post(url + "/filter", args)
    assert status == 200 and "more" in answer["Error"] and answer["NodeNames"] is None, answer
    status, answer = post(url + "/prioritize", args)
    assert status == 422 and "more" in answer["Error"], answer
    preempt = {"Pod": huge, "NodeNameToVictims": None, "NodeNameToMetaVictims": {"gpu-a": {"Pods": [{"UID": "x"}]}}}
    assert post(url + "/preempt", preempt) == (200, {"NodeNameToMetaVictims": {}})
