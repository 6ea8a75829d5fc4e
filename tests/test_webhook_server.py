"""tensorai-webhook over real HTTPS: the AdmissionReview endpoint, health and metrics, bad input
(fuzzed with hypothesis), GPUQuota per-pod maxima read through the kubernetes client from the
Kubernetes API stand-in, and the CLI."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import requests
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorai.demo.kube_standin import KubeStandin
from tensorai.proto import contract
from tensorai.scheduler import certs
from tensorai.scheduler.webhook import WebhookConfig
from tensorai.scheduler.webhook_cli import build_parser, main
from tensorai.scheduler.webhook_server import KubeQuotaSource, WebhookMetrics, WebhookServer, strictest_pod_limit

GOLDEN_DIR = Path(__file__).parent / "golden" / "webhook"
VGPU, MILLI = contract.RESOURCE_VGPU, contract.RESOURCE_VGPU_MILLI
TIMEOUT = 10


class RunningWebhook:
    def __init__(self, server: WebhookServer, ca_path: Path) -> None:
        self.server = server
        self.ca_path = ca_path
        self.url = f"https://localhost:{server.port}"
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override `verify`
        self.session.verify = str(ca_path)

    def mutate(self, body: Any, **kwargs: Any) -> requests.Response:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.session.post(f"{self.url}/mutate", data=data, timeout=TIMEOUT,
                                 headers={"Content-Type": "application/json"}, **kwargs)


def start_webhook(tmp_path: Path, *, quotas: Any = None, config: WebhookConfig | None = None) -> RunningWebhook:
    bundle = certs.generate_self_signed("tensorai-webhook", "tensorai-system", extra_names=("localhost",))
    cert_path, key_path = bundle.write(tmp_path / "tls")
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(bundle.ca_pem)
    server = WebhookServer(("127.0.0.1", 0), cert_path=cert_path, key_path=key_path, quotas=quotas,
                           config=config, metrics=WebhookMetrics())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return RunningWebhook(server, ca_path)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[RunningWebhook]:
    running = start_webhook(tmp_path)
    yield running
    running.session.close()
    running.server.shutdown()
    running.server.server_close()


def review_of(obj: dict[str, Any], *, kind: str = "Pod", group: str = "", uid: str = "u-1",
              namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": group, "version": "v1", "kind": kind},
                        "namespace": namespace, "operation": "CREATE", "object": obj, "oldObject": None}}


def pod_with(*containers: tuple[str, str], init: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    def container(name: str, gpus: str) -> dict[str, Any]:
        return {"name": name, "image": "x", "resources": {"limits": {VGPU: gpus}, "requests": {VGPU: gpus}}}

    spec: dict[str, Any] = {"containers": [container(*c) for c in containers]}
    if init:
        spec["initContainers"] = [container(*c) for c in init]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"}, "spec": spec}


# --- the endpoint --------------------------------------------------------------------------


def test_golden_pod_review_over_https_returns_a_base64_json_patch(webhook: RunningWebhook) -> None:
    review = json.loads((GOLDEN_DIR / "pod.json").read_text())["review"]
    reply = webhook.mutate(review)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == review["request"]["uid"] and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(review["request"]["object"], json.loads(base64.b64decode(response["patch"])))
    assert patched["spec"]["containers"][0]["resources"]["limits"][MILLI] == "250"


def test_health_readiness_and_metrics_endpoints(webhook: RunningWebhook) -> None:
    assert webhook.session.get(f"{webhook.url}/healthz", timeout=TIMEOUT).status_code == 200
    assert webhook.session.get(f"{webhook.url}/readyz", timeout=TIMEOUT).status_code == 200
    webhook.mutate(review_of(pod_with(("main", "250m"))))
    webhook.mutate(review_of(pod_with(("main", "1500m")), uid="u-2"))
    webhook.mutate(b"{not json")
    metrics = webhook.session.get(f"{webhook.url}/metrics", timeout=TIMEOUT).text
    assert 'tensorai_webhook_reviews_total{kind="Pod",operation="CREATE",outcome="patched"} 1.0' in metrics
    assert 'tensorai_webhook_reviews_total{kind="Pod",operation="CREATE",outcome="denied"} 1.0' in metrics
    assert 'tensorai_webhook_bad_requests_total{reason="json"} 1.0' in metrics
    assert "tensorai_webhook_review_duration_seconds_bucket" in metrics


def test_plain_http_is_refused(webhook: RunningWebhook) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{webhook.server.port}/healthz", timeout=TIMEOUT)
    assert webhook.session.get(f"{webhook.url}/healthz", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request must be an object"),
    (b'{"apiVersion": "v1", "kind": "Pod"}', "AdmissionReview"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}', "uid"),
    (b"[" * 100_000, "JSON"),
])
def test_malformed_bodies_get_400_with_a_clear_message(webhook: RunningWebhook, body: bytes, fragment: str) -> None:
    reply = webhook.mutate(body)
    assert reply.status_code == 400
    assert fragment in reply.json()["response"]["status"]["message"]


def test_wrong_paths_and_oversized_bodies_are_refused(webhook: RunningWebhook) -> None:
    assert webhook.session.post(f"{webhook.url}/validate", data=b"{}", timeout=TIMEOUT).status_code == 404
    assert webhook.session.get(f"{webhook.url}/mutate", timeout=TIMEOUT).status_code == 405  # the path exists
    context = ssl.create_default_context(cafile=str(webhook.ca_path))
    with socket.create_connection(("127.0.0.1", webhook.server.port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert b" 413 " in tls.recv(4096).split(b"\r\n", 1)[0]


def test_a_stalled_tls_client_does_not_block_other_requests(webhook: RunningWebhook) -> None:
    with socket.create_connection(("127.0.0.1", webhook.server.port), timeout=TIMEOUT):
        # connected but never says hello: the handshake waits in its own thread
        assert webhook.session.get(f"{webhook.url}/healthz", timeout=TIMEOUT).status_code == 200


# --- fuzzing /mutate over HTTPS ------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_quantity = st.one_of(
    st.sampled_from(["250m", "1", "2k", "1e30", "1e999", "-1", "0", "1500m", "9" * 70, "1Ei", "0.0000001", "", " "]),
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True), _json)
_container = st.fixed_dictionaries({"name": st.text(max_size=8) | _json}, optional={
    "resources": st.fixed_dictionaries({}, optional={
        "limits": st.dictionaries(st.sampled_from([VGPU, MILLI, "cpu"]), _quantity, max_size=3) | _json,
        "requests": st.dictionaries(st.sampled_from([VGPU, MILLI]), _quantity, max_size=2)}),
    "securityContext": st.fixed_dictionaries({"privileged": st.booleans() | _json})})
_pod_spec = st.fixed_dictionaries({}, optional={"containers": st.lists(_container, max_size=3) | _json,
                                                "initContainers": st.lists(_container, max_size=2)})
_kind = st.sampled_from([("", "Pod"), ("apps", "Deployment"), ("batch", "CronJob"), ("", "PodTemplate"), ("x", "Y")])


@st.composite
def _reviews(draw: st.DrawFn) -> Any:
    group, kind = draw(_kind)
    template = {"metadata": draw(st.none() | st.just({}) | st.fixed_dictionaries(
        {"annotations": st.dictionaries(st.sampled_from([contract.ANNOTATION_VGPU_REQUESTED, "a"]),
                                        st.text(max_size=30) | _json.map(json.dumps), max_size=2)})),
        "spec": draw(_pod_spec)}
    obj = {"Pod": template, "Deployment": {"spec": {"template": template}},
           "CronJob": {"spec": {"jobTemplate": {"spec": {"template": template}}}}}.get(kind, {"template": template})
    request = {"uid": draw(st.text(min_size=1, max_size=8)), "kind": {"group": group, "kind": kind},
               "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", 7])),
               "namespace": "n", "object": obj, "oldObject": draw(st.none() | st.just(obj) | _json)}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_reviews(), _json, st.binary(max_size=200)))
def test_fuzzed_reviews_get_an_answer_never_a_crash(webhook: RunningWebhook, body: Any) -> None:
    reply = webhook.mutate(body if isinstance(body, bytes) else json.dumps(body))
    assert reply.status_code in (200, 400), reply.text
    answer = reply.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert isinstance(response["allowed"], bool)
    if reply.status_code == 200:
        assert response["uid"] == body["request"]["uid"]
        assert ("patch" in response) == ("patchType" in response)
        if not response["allowed"]:
            assert response["status"]["message"]
    assert webhook.session.get(f"{webhook.url}/healthz", timeout=TIMEOUT).status_code == 200


# --- GPUQuota per-pod maximum through the kubernetes client --------------------------------


def quota(name: str, max_gpus: Any, namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}", "kind": contract.QUOTA_KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": {"hard": {"maxGpusPerPod": max_gpus}}}


@pytest.fixture
def standin() -> Iterator[KubeStandin]:
    with KubeStandin() as api:
        yield api


@pytest.fixture
def quota_webhook(tmp_path: Path, standin: KubeStandin) -> Iterator[RunningWebhook]:
    running = start_webhook(tmp_path, quotas=KubeQuotaSource(standin.api_client(), ttl_seconds=0))
    yield running
    running.session.close()
    running.server.shutdown()
    running.server.server_close()


def test_pod_over_the_per_pod_maximum_of_a_gpuquota_is_denied(quota_webhook: RunningWebhook,
                                                              standin: KubeStandin) -> None:
    standin.add_object(contract.QUOTA_PLURAL, quota("team-limit", "1"))
    denied = quota_webhook.mutate(review_of(pod_with(("a", "500m"), ("b", "750m")))).json()["response"]
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert "1.25 GPUs" in denied["status"]["message"] and "team-a/team-limit" in denied["status"]["message"]
    two = quota_webhook.mutate(review_of(pod_with(("a", "2")))).json()["response"]
    assert two["allowed"] is False
    # init containers run before the app containers: the pod's peak is 1 GPU, within the maximum
    peak = quota_webhook.mutate(review_of(pod_with(("a", "500m"), init=(("prep", "1"),)))).json()["response"]
    assert peak["allowed"] is True
    other_namespace = quota_webhook.mutate(review_of(pod_with(("a", "2")), namespace="team-b")).json()["response"]
    assert other_namespace["allowed"] is True


def test_workload_templates_are_held_to_the_per_pod_maximum_too(quota_webhook: RunningWebhook,
                                                                standin: KubeStandin) -> None:
    standin.add_object(contract.QUOTA_PLURAL, quota("team-limit", "500m"))
    deployment = {"spec": {"template": {"spec": pod_with(("a", "1"))["spec"]}}}
    response = quota_webhook.mutate(review_of(deployment, kind="Deployment", group="apps")).json()["response"]
    assert response["allowed"] is False and "Deployment" in response["status"]["message"]


def test_the_strictest_valid_quota_wins_and_invalid_values_are_ignored() -> None:
    limit = strictest_pod_limit([quota("loose", "4"), quota("strict", "0.5"), quota("broken", "lots"),
                                 quota("negative", "-1"), {"metadata": {"name": "m", "namespace": "team-a"},
                                                           "spec": {"hard": {"memory": "1Gi"}}}, "junk"])
    assert limit is not None and limit.quota_name == "strict" and limit.max_gpus == Decimal("0.5")
    assert strictest_pod_limit([]) is None and strictest_pod_limit(None) is None


def test_an_unreachable_quota_api_admits_with_a_warning(quota_webhook: RunningWebhook, standin: KubeStandin) -> None:
    standin.add_object(contract.QUOTA_PLURAL, quota("team-limit", "1"))
    standin.fail_next("GET", contract.QUOTA_PLURAL, status=500)
    response = quota_webhook.mutate(review_of(pod_with(("a", "2")))).json()["response"]
    assert response["allowed"] is True
    assert any("GPUQuota" in warning and "not checked" in warning for warning in response["warnings"])


def test_quota_lookups_are_cached_per_namespace(standin: KubeStandin) -> None:
    standin.add_object(contract.QUOTA_PLURAL, quota("team-limit", "1"))
    metrics = WebhookMetrics()
    source = KubeQuotaSource(standin.api_client(), ttl_seconds=60, metrics=metrics)
    assert source("team-a") == source("team-a")
    assert metrics.quota_lookups.labels("miss")._value.get() == 1
    assert metrics.quota_lookups.labels("hit")._value.get() == 1


# --- the CLI -------------------------------------------------------------------------------


def test_help_lists_every_flag_the_manifests_rely_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--address", "--port", "--tls-cert", "--tls-key", "--self-signed", "--service-name", "--namespace",
                 "--webhook-config-name", "--patch-ca-bundle", "--scheduler-name", "--kubeconfig", "--no-kube",
                 "--log-level"):
        assert flag in text
    defaults = build_parser().parse_args([])
    assert (defaults.address, defaults.port, defaults.service_name, defaults.namespace,
            defaults.webhook_config_name, defaults.scheduler_name) == (
        "0.0.0.0", 8443, "tensorai-webhook", "tensorai-system", "tensorai-vgpu", "")


@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "TLS is required"),
    (["--self-signed", "--tls-cert", "x"], "either --self-signed"),
    (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "no such file"),
    (["--self-signed", "--patch-ca-bundle", "--no-kube"], "drop --no-kube"),
    (["--tls-cert", __file__, "--tls-key", __file__, "--patch-ca-bundle"], "needs --self-signed"),
])
def test_inconsistent_flags_exit_with_a_usage_error(argv: list[str], fragment: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_cli_serves_https_with_a_self_signed_certificate_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tensorai.scheduler.webhook_cli import main; sys.exit(main())",
         "--self-signed", "--no-kube", "--address", "127.0.0.1", "--port", "0", "--scheduler-name", "tensorai"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True).start()
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            match = re.search(r"serving https://127\.0\.0\.1:(\d+)/mutate", line)
            port = int(match.group(1)) if match else None
        assert port is not None, "the webhook did not report its port within 30 s"
        # The CA is generated in the process, so this client cannot verify it; the certificate tests do.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            reply = requests.post(f"https://127.0.0.1:{port}/mutate", json=review_of(pod_with(("a", "250m"))),
                                  verify=False, timeout=TIMEOUT)
        patch = json.loads(base64.b64decode(reply.json()["response"]["patch"]))
        assert {"op": "add", "path": "/spec/schedulerName", "value": "tensorai"} in patch
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()
