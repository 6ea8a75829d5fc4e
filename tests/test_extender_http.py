"""The extender's wire format over real HTTP: golden requests shaped as kube-scheduler sends them
(both nodeCacheCapable modes), exact answers, error statuses, health/readiness/metrics, TLS."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_extender_support import node, pod, post

from tensorai.proto import contract
from tensorai.scheduler.extender import ROUTES, ExtenderService, serve
from tensorai.scheduler.view import ClusterView

GOLDEN = Path(__file__).parent / "golden" / "extender"


def _golden(name: str) -> object:
    return json.loads((GOLDEN / name).read_text())


def _cluster() -> ClusterView:
    """gpu-a: one free GPU; gpu-b: one GPU 900 milli used by victim-gpu (+ a CPU-only pod); gpu-c: no plugin."""
    view = ClusterView(stale_seconds=0)
    plain = node("gpu-c", 1)
    del plain["metadata"]["annotations"][contract.ANNOTATION_INVENTORY]
    view.replace("nodes", [node("gpu-a", 1), node("gpu-b", 1), plain])
    victim = pod("victim", 900, uid="victim-gpu", node_name="gpu-b", phase="Running", namespace="other")
    assignment = contract.pb.Assignment(pod_uid="victim-gpu", node_name="gpu-b")
    from test_extender_support import gpu_uuid

    assignment.containers.add(name="c0").gpus.add(uuid=gpu_uuid("gpu-b", 0), milli=900, memory_mib=1000)
    victim["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    cpu_only = pod("cpu", 0, uid="victim-cpu-only", node_name="gpu-b", phase="Running", namespace="other")
    view.replace("pods", [victim, cpu_only])
    view.replace("gpuquotas", [])
    return view


@pytest.fixture
def served():
    view = _cluster()
    server, _ = serve(ExtenderService(view), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}", view
    finally:
        server.shutdown()
        server.server_close()


def _normalise(answer: dict) -> dict:
    """Reasons are the core's prose; the wire shape (keys, nulls, which node where) is what is golden."""
    out = dict(answer)
    for key in ("FailedNodes", "FailedAndUnresolvableNodes"):
        assert all(isinstance(reason, str) and reason for reason in answer[key].values()), answer
        out[key] = dict.fromkeys(answer[key], "<reason>")
    return out


@pytest.mark.parametrize("mode", ["nodecache", "nodelist"])
def test_filter_answers_exactly_the_golden_shape(served, mode: str) -> None:
    url, _ = served
    status, answer = post(url + "/filter", _golden(f"filter_{mode}_request.json"))
    assert status == 200
    assert _normalise(answer) == _golden(f"filter_{mode}_response.json")
    assert list(answer) == ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"]


def test_prioritize_answers_a_bare_array_of_host_priorities(served) -> None:
    url, _ = served
    status, answer = post(url + "/prioritize", _golden("prioritize_request.json"))
    assert (status, answer) == (200, _golden("prioritize_response.json"))


def test_bind_then_preempt_keep_only_gpu_holding_victims(served) -> None:
    url, view = served
    status, answer = post(url + "/preempt", _golden("preempt_request.json"))
    # gpu-b: only victim-gpu frees GPU capacity, and freeing it lets 250 milli fit; gpu-a's victim is not there
    assert (status, answer) == (200, _golden("preempt_response.json"))
    post(url + "/filter", _golden("filter_nodecache_request.json"))
    status, answer = post(url + "/bind", _golden("bind_request.json"))
    assert (status, answer) == (200, _golden("bind_response.json"))
    assert view.snapshot()["gpu-a"][0] == (750,)


def test_preempt_with_full_victim_pods_when_not_node_cache_capable(served) -> None:
    url, _ = served
    request = _golden("preempt_request.json")
    request["NodeNameToVictims"] = {"gpu-b": {"Pods": [{"metadata": {"uid": "victim-gpu"}}], "NumPDBViolations": 2}}
    request["NodeNameToMetaVictims"] = None
    _, answer = post(url + "/preempt", request)
    assert answer == {"NodeNameToMetaVictims": {"gpu-b": {"Pods": [{"UID": "victim-gpu"}], "NumPDBViolations": 2}}}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/filter", b"{not json", 400),
        ("/filter", {"Pod": "x", "NodeNames": []}, 400),
        ("/filter", {"Pod": {"metadata": {"name": "p"}}, "Nodes": None, "NodeNames": None}, 400),
        ("/prioritize", [], 400),
        ("/bind", {"PodName": "p"}, 400),
        ("/preempt", {"Pod": {}, "NodeNameToMetaVictims": {"n": {"Pods": [{"UID": 5}]}}}, 400),
        ("/nope", {}, 404),
    ],
)
def test_malformed_requests_get_a_4xx_with_an_error(served, path: str, body: object, status: int) -> None:
    url, view = served
    before = view.snapshot()
    got, answer = post(url + path, body)
    assert got == status and answer["Error"]
    assert view.snapshot() == before


def test_unreadable_pod_is_an_error_field_for_filter_and_422_for_prioritize(served) -> None:
    url, _ = served
    bad = pod("bad", 250)
    bad["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] = "1500"
    status, answer = post(url + "/filter", {"Pod": bad, "Nodes": None, "NodeNames": ["gpu-a"]})
    assert status == 200 and answer["Error"] and answer["NodeNames"] is None
    status, answer = post(url + "/prioritize", {"Pod": bad, "Nodes": None, "NodeNames": ["gpu-a"]})
    assert status == 422 and answer["Error"]


def test_pods_without_gpu_pass_every_node(served) -> None:
    url, _ = served
    _, answer = post(url + "/filter", {"Pod": pod("cpu", 0), "Nodes": None, "NodeNames": ["gpu-a", "gpu-c"]})
    assert answer["NodeNames"] == ["gpu-a", "gpu-c"] and not answer["FailedNodes"]


def test_health_readiness_and_metrics(served) -> None:
    url, _ = served
    post(url + "/filter", _golden("filter_nodecache_request.json"))
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in (
        'tensorai_extender_request_seconds_count{verb="filter"} 1.0',
        'tensorai_extender_filter_failures_total{reason="gpu_fit"}',
        'tensorai_extender_filter_failures_total{reason="unknown_node"}',
        "tensorai_gpu_allocated_milli{",
        "tensorai_extender_binds_in_flight 0.0",
    ):
        assert name in text, name


def test_routes_are_the_documented_verbs() -> None:
    assert ROUTES == ("/filter", "/prioritize", "/bind", "/preempt")


def test_extender_serves_https_with_the_given_certificate(tmp_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server, _ = serve(
        ExtenderService(_cluster()),
        "127.0.0.1",
        0,
        tls_cert=str(tmp_path / "tls.crt"),
        tls_key=str(tmp_path / "tls.key"),
    )
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
        request = urllib.request.Request(
            f"https://localhost:{server.port}/filter",
            data=(GOLDEN / "filter_nodecache_request.json").read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            assert json.loads(response.read())["NodeNames"] == ["gpu-a"]
    finally:
        server.shutdown()
        server.server_close()


def test_cli_help_lists_every_flag_the_manifests_use() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tensorai.scheduler.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in (
        "--address",
        "--port",
        "--metrics-address",
        "--metrics-port",
        "--max-connections",
        "--request-timeout-seconds",
        "--idle-timeout-seconds",
        "--kubeconfig",
        "--cluster-file",
        "--policy",
        "--tls-cert",
        "--tls-key",
        "--node-stale-seconds",
        "--requeue-interval-seconds",
        "--log-level",
    ):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--port", "9000", "--metrics-port", "9000"], "--metrics-port must differ from --port"),
        (["--metrics-port", "70000"], "--metrics-port must be 0..65535"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--request-timeout-seconds", "0"], "--request-timeout-seconds must be positive"),
    ],
)
def test_cli_refuses_bad_listener_flags_with_one_line(flags: list[str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tensorai.scheduler.cli", "--cluster-file", "/nonexistent", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and fragment in result.stderr, result.stderr


def test_cli_serves_a_cluster_file_and_stops_on_sigterm(tmp_path) -> None:
    import signal

    import yaml

    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [node("gpu-a", 2)]}))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorai.scheduler.cli",
            "--cluster-file",
            str(path),
            "--port",
            "0",
            "--address",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # "tensorai-extender serving on http://127.0.0.1:PORT"
        assert "serving on" in line, process.stderr.read() if process.poll() is not None else line
        url = line.strip().rsplit(" ", 1)[1]
        metrics_line = process.stdout.readline()  # "tensorai-extender /metrics at http://0.0.0.0:PORT"
        metrics_port = int(metrics_line.strip().rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert b"tensorai_extender_request_seconds" in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/metrics", timeout=5)
        assert refused.value.code == 404, "the verbs listener serves no /metrics"
        worker = pod("w", 500)
        _, answer = post(url + "/filter", {"Pod": worker, "Nodes": None, "NodeNames": ["gpu-a"]})
        assert answer["NodeNames"] == ["gpu-a"]
        _, answer = post(
            url + "/bind", {"PodName": "w", "PodNamespace": "ml", "PodUID": worker["metadata"]["uid"], "Node": "gpu-a"}
        )
        assert answer == {"Error": ""}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_prioritize_fast_encoding_is_the_same_json_for_any_node_name() -> None:
    service = ExtenderService(_cluster())
    names = ["gpu-a", "gpu-b", 'quote"d', "back\\slash", "ünïcode", "", "new\nline", "gpu-a"]
    body = {"Pod": pod("p", 250), "Nodes": None, "NodeNames": names}
    assert json.loads(service.prioritize_json(body)) == service.prioritize(body)


def test_warm_up_scores_every_policy_without_touching_the_view() -> None:
    view = _cluster()
    before = view.snapshot()
    assert ExtenderService(view).warm_up() >= 0
    assert view.snapshot() == before


def test_warm_up_compiles_the_one_gpu_scorer_before_the_first_pod() -> None:
    """A fresh process: after warm_up the compiled path has its signature, so no pod waits for numba."""
    script = (
        "from tensorai.scheduler.core.policies import onegpu\n"
        "from tensorai.scheduler.extender import ExtenderService\n"
        "from tensorai.scheduler.view import ClusterView\n"
        "assert not onegpu._score_rows.signatures\n"
        "ExtenderService(ClusterView(stale_seconds=0)).warm_up()\n"
        "print(len(onegpu._score_rows.signatures))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 1


@pytest.mark.parametrize("policy", ["random", "bestfit", "binpack", "spread", "fgd", "tensorai"])
def test_every_policy_works_as_a_per_pod_override(policy: str) -> None:
    service = ExtenderService(_cluster())
    worker = pod(f"p-{policy}", 250, annotations={contract.ANNOTATION_POLICY: policy})
    args = {"Pod": worker, "Nodes": None, "NodeNames": ["gpu-a", "gpu-b"]}
    assert service.filter(args)["NodeNames"] == ["gpu-a"]
    assert service.prioritize(args) == [{"Host": "gpu-a", "Score": 10}, {"Host": "gpu-b", "Score": 0}]
    assert service.bind(
        {
            "PodName": worker["metadata"]["name"],
            "PodNamespace": "ml",
            "PodUID": worker["metadata"]["uid"],
            "Node": "gpu-a",
        }
    ) == {"Error": ""}


def test_preempt_drops_a_node_where_evicting_the_victims_would_not_make_room(served) -> None:
    url, _ = served
    whole = pod("whole", 2000)  # two whole GPUs: gpu-b has only one GPU, no eviction helps
    request = {
        "Pod": whole,
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {"gpu-b": {"Pods": [{"UID": "victim-gpu"}], "NumPDBViolations": 0}},
    }
    assert post(url + "/preempt", request) == (200, {"NodeNameToMetaVictims": {}})


def test_prioritize_accepts_a_node_list_when_not_node_cache_capable(served) -> None:
    url, _ = served
    request = _golden("filter_nodelist_request.json")
    status, answer = post(url + "/prioritize", request)
    assert status == 200
    assert answer == [{"Host": "gpu-a", "Score": 10}, {"Host": "gpu-b", "Score": 0}, {"Host": "gpu-c", "Score": 0}]
