"""Hostile sizes at the extender's edge, over real HTTP: amounts past int64 are a pod error (never a
500 from the compiled scorers); the caches that keep request strings stay bounded (see also
tests/benchmarks/bench_soak.py for the process's memory under attack)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from test_extender_support import node, pod, post

from tensorai.proto import contract
from tensorai.scheduler.argsdecode import MAX_TAIL_BYTES, ArgsDecoder
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.shapes import OnlineWorkload
from tensorai.scheduler.extender import MAX_BODY_BYTES, ExtenderService, _Literals, serve
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


def _status_of_a_declared_length(url: str, length: int) -> int:
    """POST /filter announcing `length` body bytes (sending none) on a raw socket; the answer's status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        return int(connection.recv(4096).split(b" ", 2)[1])


def test_bodies_over_8_mib_are_refused_before_they_are_read(served) -> None:
    url, _ = served
    assert MAX_BODY_BYTES == 8 << 20
    assert _status_of_a_declared_length(url, MAX_BODY_BYTES + 1) == 413


def test_the_largest_body_kube_scheduler_can_send_fits_under_the_limit() -> None:
    """The worst kube-scheduler sends with nodeCacheCapable: true: a Pod at the API server's 3 MiB request
    limit (an annotation filling it) and 15,000 node names of the longest kind (253 characters)."""
    big_pod = pod("big", 250, annotations={"filler": "x" * (3 << 20)})
    names = [f"{index:05d}" + "n" * 248 for index in range(15_000)]
    body = json.dumps({"Pod": big_pod, "Nodes": None, "NodeNames": names}, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY_BYTES


def test_node_names_the_view_does_not_know_are_never_cached(served) -> None:
    url, service = served
    unknown = [f"not-a-node-{index}-" + "x" * 200 for index in range(3000)]
    for round_ in range(3):
        names = ["gpu-a", "gpu-b", *(f"{name}-{round_}" for name in unknown)]
        args = {"Pod": pod(f"p{round_}", 250), "Nodes": None, "NodeNames": names}
        status, answer = post(url + "/filter", args)
        assert status == 200 and answer["NodeNames"] == ["gpu-a", "gpu-b"]
        assert len(answer["FailedAndUnresolvableNodes"]) == len(unknown)
        status, scores = post(url + "/prioritize", args)
        assert status == 200 and len(scores) == len(names)
    assert set(service._quoted) <= {"gpu-a", "gpu-b"}
    assert service._reason_values.bytes <= 4 << 20  # each unknown node's reason names it: a smaller budget
    assert set(service._host_prefixes) <= {"gpu-a", "gpu-b"}
    assert all(len(cached[1]) <= 2 for cached in service._names_cache)  # lists longer than the cluster: not kept


def test_a_literal_cache_starts_over_before_it_passes_its_byte_budget() -> None:
    cache = _Literals(json.dumps, max_bytes=100_000)
    for index in range(2_000):
        assert cache[f"reason {index} " + "y" * 500] == json.dumps(f"reason {index} " + "y" * 500)
        assert cache.bytes <= 100_000
        assert sum(len(text) + len(literal) for text, literal in cache.items()) <= 100_000
    assert 0 < len(cache) < 100


def test_the_args_decoder_never_keeps_a_tail_over_its_byte_limit() -> None:
    decoder = ArgsDecoder()
    names = [f"n{index:07d}-" + "z" * 100 for index in range(MAX_TAIL_BYTES // 100)]
    raw = json.dumps({"Pod": {}, "Nodes": None, "NodeNames": names}, separators=(",", ":")).encode()
    assert len(raw) > MAX_TAIL_BYTES
    for _ in range(3):  # a tail is learned the second time it comes
        body = decoder.decode(raw)
        assert body["NodeNames"] == names and not decoder.known(body["NodeNames"])
    tail = json.dumps(names, separators=(",", ":")).encode() + b"}"
    decoder.remember(names, tail)
    assert not decoder.known(names)
    small = names[:1000]
    decoder.remember(small, json.dumps(small, separators=(",", ":")).encode() + b"}")
    assert decoder.known(small)


@pytest.mark.parametrize(("field", "length"), [("uid", 129), ("name", 254), ("namespace", 64), ("resourceVersion", 65)])
def test_pod_identities_longer_than_kubernetes_allows_get_400_and_are_not_remembered(served, field, length) -> None:
    url, service = served
    long = pod("long", 250)
    long["metadata"][field] = "a" * length
    before = service.view.pending_count()
    for verb in ("/filter", "/prioritize"):
        status, answer = post(url + verb, {"Pod": long, "Nodes": None, "NodeNames": ["gpu-a"]})
        assert status == 400 and f"metadata.{field} has {length} characters" in answer["Error"], answer
    status, _ = post(url + "/preempt", {"Pod": long, "NodeNameToMetaVictims": {"gpu-a": {"Pods": [{"UID": "x"}]}}})
    assert status == 400
    assert service.view.pending_count() == before


def test_the_online_workload_remembers_uids_by_hash_not_their_text() -> None:
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("gpu-a", 1)])
    view.replace("pods", [])
    view.replace("gpuquotas", [])
    service = ExtenderService(view, context=PolicyContext(online=OnlineWorkload(), rng=np.random.default_rng(0)))
    for index in range(5):
        args = {"Pod": pod(f"p{index}", 250, uid=f"{index:03d}" + "u" * 125), "Nodes": None, "NodeNames": ["gpu-a"]}
        assert service.filter(args)["Error"] == ""
    assert len(service._observed) == 5 and all(isinstance(key, int) for key in service._observed)
    assert service.context.online.seen == 5


def test_filter_bodies_of_unreadable_pods_keep_no_container_lists() -> None:
    """A pending entry of a pod whose demand fails keeps only why: 2,000 container names were 240 KiB each."""
    import tracemalloc

    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("gpu-a", 1)])
    view.replace("pods", [])
    view.replace("gpuquotas", [])
    service = ExtenderService(view)
    many = pod("wide", [250] * 2000)  # over the per-pod limit of GPU containers: the demand is an error
    for index, container in enumerate(many["spec"]["containers"]):
        container["name"] = f"container-with-a-long-name-{index:05d}"
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(20):
        many["metadata"]["uid"], many["metadata"]["name"] = f"uid-{index}", f"wide-{index}"
        answer = service.filter({"Pod": many, "Nodes": None, "NodeNames": ["gpu-a"]})
        assert answer["Error"]
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert view.pending_count() == 20
    assert kept < 20 * 16_384, f"{kept} bytes kept for 20 pending pods"
