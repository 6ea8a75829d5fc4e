"""The HTTPS server of `tensorai-webhook`: POST /mutate, GET /healthz, /readyz, /metrics.

Thin on purpose: it reads the body, hands it to `tensorai.scheduler.webhook.admit` and writes the
answer. It also holds the one piece of I/O the admission logic needs, the GPUQuota lookup through
the kubernetes client (cached briefly: the API server calls the webhook on every matched write).
TLS is always on (the API server only calls webhooks over HTTPS); the handshake runs in the
connection's own thread so a slow or hostile client cannot stall the accept loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tensorai.proto import contract
from tensorai.scheduler.core.quota import QuotaError, parse_gpu_quota
from tensorai.scheduler.webhook import (
    TEMPLATE_LOCATIONS,
    PodGpuLimit,
    QuotaLookupError,
    QuotaSource,
    ReviewError,
    WebhookConfig,
    admit,
    bad_request_review,
)

log = logging.getLogger(__name__)

# An AdmissionReview carries object and oldObject; etcd caps an object at ~1.5 MiB, so 8 MiB is ample.
MAX_BODY_BYTES = 8 << 20
CONNECTION_TIMEOUT_SECONDS = 15.0
_KNOWN_KINDS = frozenset(kind for _, kind in TEMPLATE_LOCATIONS)
_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


class WebhookMetrics:
    """Prometheus metrics of one server (own registry, so several servers in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter("tensorai_webhook_reviews_total", "AdmissionReviews answered, by kind, operation and "
                               "outcome (patched, allowed, denied)", ["kind", "operation", "outcome"],
                               registry=self.registry)
        self.bad_requests = Counter("tensorai_webhook_bad_requests_total", "Requests answered with HTTP 4xx",
                                    ["reason"], registry=self.registry)
        self.latency = Histogram("tensorai_webhook_review_duration_seconds", "Time to decide one AdmissionReview",
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
                                 registry=self.registry)
        self.quota_lookups = Counter("tensorai_webhook_quota_lookups_total", "GPUQuota lookups by result "
                                     "(hit = served from cache)", ["result"], registry=self.registry)
        self.ca_bundle_patched = Gauge("tensorai_webhook_ca_bundle_patched", "1 once the caBundle patch succeeded",
                                       registry=self.registry)


class KubeQuotaSource:
    """Per-pod GPU maximum of a namespace from its GPUQuota objects (tensor.ai/v1alpha1 gpuquotas).

    The strictest `spec.hard.maxGpusPerPod` (scheduler/core/quota.py) wins. Results are cached for
    `ttl_seconds`; a failed lookup raises QuotaLookupError and the webhook admits with a warning (the extender enforces
    quotas at scheduling time as well, so a blind webhook never over-commits).
    """

    def __init__(self, api_client: Any, *, ttl_seconds: float = 10.0, metrics: WebhookMetrics | None = None) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self._ttl_seconds = ttl_seconds
        self._metrics = metrics
        self._cache: dict[str, tuple[float, PodGpuLimit | None]] = {}
        self._lock = threading.Lock()

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.quota_lookups.labels(result).inc()

    def __call__(self, namespace: str) -> PodGpuLimit | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(namespace)
        if cached is not None and now - cached[0] < self._ttl_seconds:
            self._count("hit")
            return cached[1]
        from kubernetes.client.exceptions import ApiException

        try:
            listing = self._api.list_namespaced_custom_object(
                contract.QUOTA_GROUP, contract.QUOTA_VERSION, namespace, contract.QUOTA_PLURAL, _request_timeout=3)
        except ApiException as error:
            self._count("error")
            raise QuotaLookupError(f"listing {contract.QUOTA_PLURAL} failed: {error.status} {error.reason}") from error
        except (OSError, ValueError) as error:
            self._count("error")
            raise QuotaLookupError(f"listing {contract.QUOTA_PLURAL} failed: {error}") from error
        limit = strictest_pod_limit(listing.get("items") if isinstance(listing, dict) else None)
        self._count("miss")
        with self._lock:
            self._cache[namespace] = (now, limit)
        return limit


def strictest_pod_limit(items: Any) -> PodGpuLimit | None:
    """The smallest spec.hard.maxGpusPerPod among GPUQuota objects, parsed by the scheduling core's
    own quota parser (one reading of the CRD for webhook and extender); malformed quotas are logged
    and skipped here, since the extender reports them too."""
    best: PodGpuLimit | None = None
    for item in items if isinstance(items, list) else []:
        try:
            limits = parse_gpu_quota(item)
        except QuotaError as error:
            log.warning("ignoring a %s: %s", contract.QUOTA_KIND, error)
            continue
        if limits.max_gpus_per_pod_milli is None:
            continue
        max_gpus = Decimal(limits.max_gpus_per_pod_milli) / contract.MILLI_PER_GPU
        if best is None or max_gpus < best.max_gpus:
            best = PodGpuLimit(max_gpus=max_gpus, quota_name=limits.name)
    return best


class WebhookServer(ThreadingHTTPServer):
    """HTTPS server; certificate files are re-read when they change (cert-manager rotates them)."""

    daemon_threads = True
    block_on_close = False  # a kept-alive API server connection must not hold up shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, cert_path: Path, key_path: Path,
                 config: WebhookConfig | None = None, quotas: QuotaSource | None = None,
                 metrics: WebhookMetrics | None = None) -> None:
        self.config = config or WebhookConfig()
        self.quotas = quotas
        self.metrics = metrics or WebhookMetrics()
        self.cert_path, self.key_path = cert_path, key_path
        self._tls_lock = threading.Lock()
        self._tls_stamp: tuple[float, float] | None = None
        self._tls_context = self._load_tls()  # fail at start, not at the first request, on a bad cert
        self.ready = threading.Event()  # /readyz; the CLI clears it until the caBundle patch succeeded
        self.not_ready_reason = "starting"
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.ready.set()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _load_tls(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._tls_stamp = (self.cert_path.stat().st_mtime, self.key_path.stat().st_mtime)
        return context

    def tls_context(self) -> ssl.SSLContext:
        """The current context, reloaded when the certificate or key file changed on disk."""
        with self._tls_lock:
            try:
                stamp = (self.cert_path.stat().st_mtime, self.key_path.stat().st_mtime)
                if stamp != self._tls_stamp:
                    self._tls_context = self._load_tls()
                    log.info("reloaded TLS certificate %s", self.cert_path)
            except (OSError, ssl.SSLError) as error:
                log.warning("keeping the previous TLS certificate: %s", error)
            return self._tls_context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the per-connection thread: the TLS handshake happens here, bounded by a timeout.
        request.settimeout(CONNECTION_TIMEOUT_SECONDS)
        # Headers and body go out as separate TLS records: without NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls_socket = self.tls_context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake with %s failed: %s", client_address, error)
            return
        try:
            self.RequestHandlerClass(tls_socket, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls_socket.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"  # the API server keeps connections alive

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")  # so a keep-alive client does not reuse the socket
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _bad_request(self, status: int, reason: str, message: str) -> None:
        self.server.metrics.bad_requests.labels(reason).inc()
        self._send_json(status, bad_request_review(message, code=status))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            if self.server.ready.is_set():
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(503, f"not ready: {self.server.not_ready_reason}\n".encode(), "text/plain")
        elif path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        else:
            self._send(404, b"not found: GET /healthz, /readyz, /metrics; POST /mutate\n", "text/plain")

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._bad_request(411, "length", "a Content-Length header is required")
            return
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._bad_request(413, "too_large", f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
            return
        # Read the body even for a wrong path: closing with unread data would reset the connection
        # before the client sees the answer, and keeping it would be parsed as the next request.
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0] != "/mutate":
            self._bad_request(404, "not_found", f"no such endpoint {self.path!r}; the API server posts to /mutate")
            return
        started = time.perf_counter()
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as error:
            self._bad_request(400, "json", f"body is not JSON: {str(error)[:200]}")
            return
        try:
            decision = admit(document, self.server.config, self.server.quotas)
        except ReviewError as error:
            self._bad_request(400, "review", str(error))
            return
        except RecursionError:
            self._bad_request(400, "review", "AdmissionReview is nested too deeply")
            return
        except Exception:  # a bug must cost one request (the API server applies failurePolicy), not the server
            log.exception("internal error while deciding an AdmissionReview")
            self.server.metrics.bad_requests.labels("internal").inc()
            self._send_json(500, bad_request_review("internal error in tensorai-webhook; see its log", code=500,
                                                    reason="InternalError"))
            return
        metrics = self.server.metrics
        metrics.latency.observe(time.perf_counter() - started)
        # Labels only from fixed sets: hostile reviews must not grow the metric's cardinality.
        kind = decision.kind if decision.kind in _KNOWN_KINDS else "other"
        operation = decision.operation if decision.operation in _OPERATIONS else "other"
        metrics.reviews.labels(kind, operation, decision.outcome).inc()
        if not decision.allowed:
            log.info("denied %s %s (uid %s): %s", decision.operation, decision.kind, decision.uid, decision.message)
        self._send_json(200, decision.to_review())
