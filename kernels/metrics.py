"""The worker's Prometheus metrics and its small HTTP server (/metrics and /healthz).

A private CollectorRegistry (not the global one) so several workers can live in one test process.
"""

from __future__ import annotations

import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tensorai.kernels.budget import MemoryBudget

LOG = logging.getLogger(__name__)

DURATION_BUCKETS_SECONDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class WorkerMetrics:
    """Counters and gauges a worker updates; memory gauges read the budget at scrape time."""

    def __init__(self, budget: MemoryBudget, share_milli: int | None) -> None:
        self.registry = registry = CollectorRegistry()
        self.operations = Counter(
            "tensorai_tensor_operations", "Tensor operations completed, by operation.", ["op"], registry=registry
        )
        self.duration = Histogram(
            "tensorai_tensor_operation_duration_seconds",
            "Measured GPU time of one operation (launch to synchronize).",
            ["op"],
            buckets=DURATION_BUCKETS_SECONDS,
            registry=registry,
        )
        self.failures = Counter(
            "tensorai_tensor_operation_failures", "Operations that raised, by operation.", ["op"], registry=registry
        )
        self.throttle_seconds = Counter(
            "tensorai_tensor_throttle_seconds", "Seconds the launch throttle held the worker back.", registry=registry
        )
        self.busy_seconds = Counter(
            "tensorai_tensor_busy_seconds", "Seconds of measured GPU time across all operations.", registry=registry
        )
        used = Gauge("tensorai_tensor_memory_used_bytes", "Device bytes charged to the budget now.", registry=registry)
        used.set_function(lambda: float(budget.used_bytes))
        peak = Gauge(
            "tensorai_tensor_memory_peak_bytes", "Most device bytes charged at once so far.", registry=registry
        )
        peak.set_function(lambda: float(budget.snapshot().peak_bytes))
        limit = Gauge(
            "tensorai_tensor_memory_budget_bytes",
            "Device memory budget of this worker (+Inf when none was granted).",
            registry=registry,
        )
        limit.set_function(lambda: math.inf if budget.limit_bytes is None else float(budget.limit_bytes))
        share = Gauge(
            "tensorai_tensor_share_milli", "Compute share granted, in milli-GPU (0 when unknown).", registry=registry
        )
        share.set(share_milli or 0)

    def record(self, op: str, seconds: float) -> None:
        self.operations.labels(op=op).inc()
        self.duration.labels(op=op).observe(seconds)
        self.busy_seconds.inc(seconds)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer  # type: ignore[assignment]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            healthy = self.server.healthy.is_set()
            self._reply(200 if healthy else 503, b"ok\n" if healthy else b"unhealthy\n", "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("metrics http: " + format, *args)


class MetricsServer(ThreadingHTTPServer):
    """Serves a WorkerMetrics registry; port 0 picks a free port (see `.port`)."""

    daemon_threads = True

    def __init__(self, metrics: WorkerMetrics, host: str = "0.0.0.0", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.metrics = metrics
        self.healthy = threading.Event()
        self.healthy.set()
        self._thread = threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
