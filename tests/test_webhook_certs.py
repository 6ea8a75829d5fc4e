"""TLS without a manual step: the self-signed CA and serving certificate are valid for the webhook
Service's DNS names (checked with real TLS handshakes), and the caBundle patch of the
MutatingWebhookConfiguration goes through the kubernetes client to the Kubernetes API stand-in."""

from __future__ import annotations

import base64
import os
import queue
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tensorai.demo.kube_standin import KubeStandin
from tensorai.scheduler import certs

SERVICE, NAMESPACE, CONFIG_NAME = "tensorai-webhook", "tensorai-system", "tensorai-vgpu"
TIMEOUT = 10


def handshake(bundle: certs.CertBundle, server_hostname: str, tmp_path: Path, *, ca_pem: bytes | None = None) -> None:
    """A full TLS handshake in memory: raises ssl.SSLCertVerificationError when the name or CA is wrong."""
    cert_path, key_path = bundle.write(tmp_path / "tls")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cadata=(ca_pem or bundle.ca_pem).decode())
    client_in, client_out, server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        for endpoint, done_flag in ((client, "client"), (server, "server")):
            try:
                endpoint.do_handshake()
                if done_flag == "client":
                    client_done = True
                else:
                    server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                raise
            except ssl.SSLError:
                if done_flag == "server":  # the server sees the client's alert after a failed verification
                    continue
                raise
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if client_done and server_done:
            return
    raise AssertionError("TLS handshake did not complete")


@pytest.fixture(scope="module")
def bundle() -> certs.CertBundle:
    return certs.generate_self_signed(SERVICE, NAMESPACE)


@pytest.mark.parametrize("name", certs.service_dns_names(SERVICE, NAMESPACE))
def test_serving_certificate_validates_for_every_service_dns_name(bundle: certs.CertBundle, name: str,
                                                                 tmp_path: Path) -> None:
    handshake(bundle, name, tmp_path)


def test_the_api_server_dials_service_dot_namespace_dot_svc_which_is_covered() -> None:
    assert f"{SERVICE}.{NAMESPACE}.svc" in certs.service_dns_names(SERVICE, NAMESPACE)


def test_other_names_and_other_cas_are_rejected(bundle: certs.CertBundle, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(bundle, f"evil.{NAMESPACE}.svc", tmp_path)
    stranger = certs.generate_self_signed(SERVICE, NAMESPACE)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(bundle, f"{SERVICE}.{NAMESPACE}.svc", tmp_path, ca_pem=stranger.ca_pem)


def test_leaf_is_a_server_certificate_and_only_the_ca_may_sign(bundle: certs.CertBundle) -> None:
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    ca = x509.load_pem_x509_certificate(bundle.ca_pem)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert leaf.issuer == ca.subject


def test_extra_ip_names_are_added_as_ip_addresses(tmp_path: Path) -> None:
    local = certs.generate_self_signed(SERVICE, NAMESPACE, extra_names=("127.0.0.1", "localhost"))
    handshake(local, "127.0.0.1", tmp_path)
    handshake(local, "localhost", tmp_path)


def test_private_key_file_is_readable_by_the_owner_only(bundle: certs.CertBundle, tmp_path: Path) -> None:
    _, key_path = bundle.write(tmp_path / "tls")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


# --- caBundle patching through the kubernetes client, against the Kubernetes API stand-in ----

WEBHOOK_CONFIGS = "mutatingwebhookconfigurations"


def webhook_configuration(*names: str) -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIG_NAME},
            "webhooks": [{"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "clientConfig": {"service": {"name": SERVICE, "namespace": NAMESPACE, "path": "/mutate"}}}
                         for name in names]}


@pytest.fixture
def standin() -> Iterator[KubeStandin]:
    with KubeStandin() as api:
        yield api


def patches_sent(standin: KubeStandin) -> int:
    return sum(1 for method, path in standin.request_log if method == "PATCH" and WEBHOOK_CONFIGS in path)


def test_ca_bundle_is_written_into_every_webhook_of_the_configuration(standin: KubeStandin,
                                                                     bundle: certs.CertBundle) -> None:
    standin.add_object(WEBHOOK_CONFIGS, webhook_configuration("vgpu.tensor.ai", "vgpu-templates.tensor.ai"))
    client = standin.api_client()
    assert certs.patch_ca_bundle(client, CONFIG_NAME, bundle.ca_pem) == 2
    stored = standin.get_object(WEBHOOK_CONFIGS, CONFIG_NAME)
    assert stored is not None
    for webhook in stored["webhooks"]:
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == bundle.ca_pem
        assert webhook["clientConfig"]["service"]["name"] == SERVICE
    assert patches_sent(standin) == 1
    assert certs.patch_ca_bundle(client, CONFIG_NAME, bundle.ca_pem) == 0  # already current: no write
    assert patches_sent(standin) == 1


def test_missing_configuration_gives_a_clear_error(standin: KubeStandin, bundle: certs.CertBundle) -> None:
    with pytest.raises(certs.CaBundlePatchError, match="cannot read MutatingWebhookConfiguration 'tensorai-vgpu': 404"):
        certs.patch_ca_bundle(standin.api_client(), CONFIG_NAME, bundle.ca_pem)


def https_get(port: int, path: str, context: ssl.SSLContext) -> bytes:
    """One GET to the webhook, verified as the API server would: for <svc>.<ns>.svc against `context`."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=f"{SERVICE}.{NAMESPACE}.svc") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(1024)


def test_cli_self_signed_patches_the_ca_bundle_that_then_verifies_its_own_https(standin: KubeStandin) -> None:
    """The whole 'no manual step' path: start with --self-signed --patch-ca-bundle before the
    configuration exists (it is retried), read the caBundle back as the API server would, and verify
    the webhook's certificate for <svc>.<ns>.svc with it."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tensorai.scheduler.webhook_cli import main; sys.exit(main())",
         "--self-signed", "--patch-ca-bundle", "--kubeconfig", standin.kubeconfig_path, "--address", "127.0.0.1",
         "--port", "0", "--service-name", SERVICE, "--namespace", NAMESPACE, "--webhook-config-name", CONFIG_NAME],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            try:
                match = re.search(r"serving https://127\.0\.0\.1:(\d+)/mutate", lines.get(timeout=1))
            except queue.Empty:
                continue
            port = int(match.group(1)) if match else None
        assert port is not None, "the webhook did not report its port within 30 s"
        assert https_get(port, "/readyz", ssl._create_unverified_context()).startswith(b"HTTP/1.1 503")
        standin.add_object(WEBHOOK_CONFIGS, webhook_configuration("vgpu.tensor.ai"))
        ca_bundle = None
        while ca_bundle is None and time.monotonic() < deadline:
            stored = standin.get_object(WEBHOOK_CONFIGS, CONFIG_NAME) or {}
            ca_bundle = stored["webhooks"][0]["clientConfig"].get("caBundle")
            time.sleep(0.1)
        assert ca_bundle is not None, "caBundle was not patched within 30 s"
        context = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode())
        ready = b""
        while not ready.startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
            ready = https_get(port, "/readyz", context)
        assert ready.startswith(b"HTTP/1.1 200"), ready
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
