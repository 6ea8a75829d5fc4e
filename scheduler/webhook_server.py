"""The HTTPS server of `tensorai-webhook`: POST /mutate, GET /healthz, /readyz, /metrics.

Thin on purpose: it reads the body, hands it to `tensorai.scheduler.webhook.admit` and writes the
answer. It also holds the one piece of I/O the admission logic needs, the GPUQuota lookup through
the kubernetes client (cached briefly: the API server calls the webhook on every matched write).
TLS is always on (the API server only calls webhooks over HTTPS). The transport - handshake in the
connection's own thread, deadlines, connection cap, framing - is `httpserver.LimitedHTTPServer`;
this module adds a memory budget for the reviews being read and decoded at once
(docs/webhook.md, "Transport security and limits").
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tensorai.proto import contract
from tensorai.scheduler.core.quota import QuotaError, parse_gpu_quota
from tensorai.scheduler.httpserver import LimitedHandler, LimitedHTTPServer, Limits, Route, server_tls_context
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

# The API server refuses request bodies over 3 MiB; an UPDATE's review carries the object twice
# (object and oldObject) plus a small envelope, so 7 MiB holds any review it can send.
MAX_BODY_BYTES = 7 << 20
# The API server's connections; the configuration's timeoutSeconds (5 s) bounds each call anyway.
MAX_CONNECTIONS = 128
REQUEST_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 120.0  # above Go's 90 s idle-connection timeout: the API server closes first
# Decoding JSON into Python objects costs up to ~9x the text for strings and maps of strings and
# ~150 bytes more per object or array (measured: 7 MiB of labels -> 53 MiB; 7.6 MiB of `[{},...]` ->
# 146 MiB). Reviews hold their estimate from a shared budget while read, decoded and decided, so
# any mix of them stays within it; 96 MiB beside a ~60 MiB process keeps peak RSS under the
# Deployment's 256 Mi limit. A review waits up to REVIEW_WAIT_S for room (then 503: the API
# server applies failurePolicy, and its own timeout is 5 s).
DECODE_BYTES_PER_BODY_BYTE = 9
DECODE_BYTES_PER_CONTAINER = 150
REVIEW_BUDGET_BYTES = 96 << 20
REVIEW_WAIT_S = 3.0
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


class ReviewBudget:
    """Estimated bytes of the reviews being read, decoded and decided at once (see REVIEW_BUDGET_BYTES)."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self._changed = threading.Condition()

    def acquire(self, amount: int, timeout_s: float) -> bool:
        """Take `amount` bytes, waiting up to `timeout_s` for room; False if there was none."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.used_bytes + amount > self.total_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self.used_bytes += amount
            self.peak_bytes = max(self.peak_bytes, self.used_bytes)
            return True

    def release(self, amount: int) -> None:
        with self._changed:
            self.used_bytes -= amount
            self._changed.notify_all()


def decode_estimate(body: bytes) -> int:
    """Upper estimate of the memory json.loads(body) takes (counting brackets inside strings too)."""
    containers = body.count(b"{") + body.count(b"[")
    return DECODE_BYTES_PER_BODY_BYTE * len(body) + DECODE_BYTES_PER_CONTAINER * containers


_STATUS_REASONS = {404: "NotFound", 405: "MethodNotAllowed", 408: "Timeout", 413: "RequestEntityTooLarge",
                   500: "InternalError", 501: "MethodNotAllowed", 503: "ServiceUnavailable"}


def _error_review(status: int, message: str) -> dict[str, Any]:
    """Every error answer is an AdmissionReview with a Status, reason as metav1.StatusReason names it."""
    return bad_request_review(message, code=status, reason=_STATUS_REASONS.get(status, "BadRequest"))


class WebhookServer(LimitedHTTPServer):
    """HTTPS server; certificate files are re-read when they change (cert-manager rotates them)."""

    def __init__(self, address: tuple[str, int], *, cert_path: Path, key_path: Path,
                 config: WebhookConfig | None = None, quotas: QuotaSource | None = None,
                 metrics: WebhookMetrics | None = None, limits: Limits | None = None,
                 review_budget_bytes: int = REVIEW_BUDGET_BYTES, review_wait_s: float = REVIEW_WAIT_S) -> None:
        self.config = config or WebhookConfig()
        self.quotas = quotas
        self.metrics = metrics or WebhookMetrics()
        self.cert_path, self.key_path = cert_path, key_path
        self._tls_lock = threading.Lock()
        self._tls_stamp: tuple[float, float] | None = None
        self._tls_context = self._load_tls()  # fail at start, not at the first request, on a bad cert
        self.ready = threading.Event()  # /readyz; the CLI clears it until the caBundle patch succeeded
        self.not_ready_reason = "starting"
        limits = limits or Limits(max_connections=MAX_CONNECTIONS, handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
                                  request_timeout_s=REQUEST_TIMEOUT_S, idle_timeout_s=IDLE_TIMEOUT_S,
                                  max_body_bytes=MAX_BODY_BYTES)
        if DECODE_BYTES_PER_BODY_BYTE * limits.max_body_bytes > review_budget_bytes:
            raise ValueError(f"a review of {limits.max_body_bytes} bytes could never fit the review budget of "
                             f"{review_budget_bytes} bytes")
        self.review_budget = ReviewBudget(review_budget_bytes)
        self.review_wait_s = review_wait_s
        super().__init__(address, _Handler, routes=_ROUTES, limits=limits, tls=self.tls_context,
                         error_document=_error_review, name="webhook")
        self.ready.set()

    def _load_tls(self) -> ssl.SSLContext:
        context = server_tls_context(str(self.cert_path), str(self.key_path))
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


class _Handler(LimitedHandler):
    server: WebhookServer

    def count_error(self, reason: str) -> None:
        self.server.metrics.bad_requests.labels(reason).inc()

    def _bad_request(self, status: int, reason: str, message: str) -> None:
        """A refused review whose body was read to its end: the connection stays usable."""
        self.send_error_json(status, reason, message, close=False)

    def healthz(self, _length: int | None) -> None:
        self.send_bytes(200, b"ok\n", "text/plain")

    def readyz(self, _length: int | None) -> None:
        if self.server.ready.is_set():
            self.send_bytes(200, b"ok\n", "text/plain")
        else:
            self.send_bytes(503, f"not ready: {self.server.not_ready_reason}\n".encode(), "text/plain")

    def metrics(self, _length: int | None) -> None:
        self.send_bytes(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)

    def mutate(self, length: int | None) -> None:
        """POST /mutate: room in the review budget first (the body is not read before), then decode and decide."""
        length = length or 0
        budget, wait_s = self.server.review_budget, self.server.review_wait_s
        held = DECODE_BYTES_PER_BODY_BYTE * length
        if not budget.acquire(held, wait_s):
            # dropped in 64 KiB pieces, not held: the API server writes the whole body before it reads
            if self.discard_body(length):
                self.send_error_json(503, "busy", f"tensorai-webhook is busy: no room for a {length}-byte review "
                                     f"within {wait_s:g} s; retry", close=False)
            return
        try:
            body = self.read_body(length)
            if body is None:
                return
            needed = decode_estimate(body)
            if needed > budget.total_bytes:
                self._bad_request(413, "too_large", f"this review would take about {needed >> 20} MiB to decode, "
                                  f"over the {budget.total_bytes >> 20} MiB the webhook decodes at once")
                return
            if needed > held:  # dense JSON: more than its size says; wait for the rest without holding a part
                budget.release(held)
                held = 0
                if not budget.acquire(needed, wait_s):
                    self.send_error_json(503, "busy", f"tensorai-webhook is busy: no room to decode this review "
                                         f"within {wait_s:g} s; retry", close=False)
                    return
                held = needed
            self._review(body)
        finally:
            budget.release(held)

    def _review(self, body: bytes) -> None:
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
            self.send_error_json(500, "internal", "internal error in tensorai-webhook; see its log", close=False)
            return
        metrics = self.server.metrics
        metrics.latency.observe(time.perf_counter() - started)
        # Labels only from fixed sets: hostile reviews must not grow the metric's cardinality.
        kind = decision.kind if decision.kind in _KNOWN_KINDS else "other"
        operation = decision.operation if decision.operation in _OPERATIONS else "other"
        metrics.reviews.labels(kind, operation, decision.outcome).inc()
        if not decision.allowed:
            log.info("denied %s %s (uid %s): %s", decision.operation, decision.kind, decision.uid, decision.message)
        self.send_json(200, decision.to_review())


_ROUTES: dict[str, Route] = {
    "/mutate": {"POST": _Handler.mutate},
    "/healthz": {"GET": _Handler.healthz},
    "/readyz": {"GET": _Handler.readyz},
    "/metrics": {"GET": _Handler.metrics},
}
