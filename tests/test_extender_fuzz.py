"""Fuzz every extender endpoint over real HTTP: whatever arrives, the answer is a 2xx/4xx with JSON,
never a 500, a hang or a dropped connection, and the cluster view is not corrupted."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extender_support import node, pod

from tensorai.proto import contract
from tensorai.scheduler.extender import ExtenderService, serve
from tensorai.scheduler.view import ClusterView

VERBS = ("/filter", "/prioritize", "/bind", "/preempt")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
quantities = st.one_of(
    st.sampled_from(["250", "2k", "1500", "-1", "0", "1e40", "250m", "10Gi", "", "abc", "1000", "3000"]),
    st.integers(-5, 10_000),
    json_values,
)


@st.composite
def pods(draw: st.DrawFn) -> dict:
    """Pods that look nearly right: the fields the extender reads, with hostile values."""
    built = pod("fuzz", 250, uid=draw(st.sampled_from(["u1", "u2", ""])))
    container = built["spec"]["containers"][0]
    container["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] = draw(quantities)
    if draw(st.booleans()):
        container["resources"]["limits"][contract.RESOURCE_VGPU_MEMORY] = draw(quantities)
    annotations = built["metadata"]["annotations"]
    for key in (
        contract.ANNOTATION_GPU_MODEL,
        contract.ANNOTATION_EXCLUSIVE,
        contract.ANNOTATION_POLICY,
        contract.ANNOTATION_ANTI_AFFINITY_GROUP,
        contract.ANNOTATION_GPU_UUID_EXCLUDE,
    ):
        if draw(st.booleans()):
            annotations[key] = draw(st.one_of(st.text(max_size=10), json_values))
    if draw(st.booleans()):
        built["spec"]["initContainers"] = draw(st.one_of(json_values, st.just([container])))
    if draw(st.integers(0, 5)) == 0:
        built["metadata"][draw(st.sampled_from(["name", "namespace", "uid"]))] = draw(json_values)
    return built


@st.composite
def bodies(draw: st.DrawFn, verb: str) -> object:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(json_values)
    names = draw(st.one_of(st.lists(st.sampled_from(["a", "b", "zz", ""]), max_size=4), json_values))
    if verb == "/bind":
        body = {
            "PodName": draw(st.sampled_from(["fuzz", "x", ""])),
            "PodNamespace": "ml",
            "PodUID": "u1",
            "Node": draw(st.sampled_from(["a", "b", "zz"])),
        }
        if choice == 1:
            body[draw(st.sampled_from(list(body)))] = draw(json_values)
        return body
    if verb == "/preempt":
        victims = {
            "a": {
                "Pods": draw(
                    st.one_of(
                        st.lists(st.fixed_dictionaries({"UID": st.sampled_from(["r", "u1"])}), max_size=3), json_values
                    )
                ),
                "NumPDBViolations": draw(st.one_of(st.integers(0, 3), json_values)),
            }
        }
        return {"Pod": draw(pods()), "NodeNameToVictims": None, "NodeNameToMetaVictims": victims}
    if choice == 1:
        return {"Pod": draw(pods()), "Nodes": None, "NodeNames": names}
    return {
        "Pod": draw(pods()),
        "Nodes": {"items": draw(st.one_of(json_values, st.just([node("a", 1)])))},
        "NodeNames": None,
    }


@pytest.fixture(scope="module")
def served():
    view = ClusterView(stale_seconds=0)
    running = pod("r", 500, uid="r", node_name="a", phase="Running")
    view.replace("nodes", [node("a", 2), node("b", 1)])
    view.replace("pods", [running])
    view.replace("gpuquotas", [])
    server, _ = serve(ExtenderService(view), "127.0.0.1", 0)
    yield server.port, view
    server.shutdown()
    server.server_close()


def _post(port: int, path: str, data: bytes, headers: dict | None = None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.mark.parametrize("verb", VERBS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_bodies_never_crash_or_corrupt_the_view(served, verb: str, data: st.DataObject) -> None:
    port, view = served
    before = view.snapshot()
    body = data.draw(bodies(verb))
    status, answer = _post(port, verb, json.dumps(body).encode())
    assert status in (200, 400, 422), (status, answer)
    if status != 200:
        assert isinstance(answer, dict) and answer.get("Error")
    if verb != "/bind":  # a well-formed bind of a known pod may legitimately take capacity
        assert view.snapshot() == before
    # the server is still alive and consistent
    assert (
        _post(port, "/filter", json.dumps({"Pod": pod("ok", 100), "Nodes": None, "NodeNames": ["b"]}).encode())[0]
        == 200
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_raw_bytes_get_400(served, raw: bytes) -> None:
    port, _ = served
    status, answer = _post(port, "/filter", raw)
    assert status in (200, 400)
    assert isinstance(answer, dict | list)


def test_missing_or_oversized_content_length_is_refused(served) -> None:
    port, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", "/filter")
        connection.putheader("Content-Length", str(1 << 40))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
    finally:
        connection.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    head=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda method, path, version, headers: f"{method} {path} {version}\r\n{headers}\r\n".encode(),
            st.sampled_from(["POST", "GET", "PUT", "", "post"]),
            st.sampled_from(["/filter", "/bind", "/", "/readyz", "x"]),
            st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "junk"]),
            st.text(alphabet="abc:\r\n -0123456789", max_size=80),
        ),
    )
)
def test_raw_request_heads_get_an_http_answer_and_the_server_lives(served, head: bytes) -> None:
    import socket

    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1."), answer[:80]
    status, _ = _post(port, "/filter", json.dumps({"Pod": pod("ok", 100), "Nodes": None, "NodeNames": ["b"]}).encode())
    assert status == 200
