"""The extender's two HTTP listeners over one ExtenderService (docs/extender.md, "Transport security and limits").

- verbs (`serve`, default 127.0.0.1:8888): POST /filter /prioritize /bind /preempt, exactly those
  paths, plus GET /healthz and /readyz. Loopback only by default: kube-scheduler is a sidecar in the
  same pod, and nothing else should be able to bind pods.
- metrics (`serve_metrics`, default 0.0.0.0:8889): GET /metrics /healthz /readyz, for Prometheus
  and the kubelet's probes (which dial the pod IP, so they cannot reach a loopback listener).

Both run on `httpserver.LimitedHTTPServer`: deadlines, a connection cap, TLS per connection and
strict framing. Errors are `{"Error": "..."}` like the verbs' own.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time

from tensorai.scheduler import extender as service_module
from tensorai.scheduler.extender import BadRequest, ExtenderService, PodError
from tensorai.scheduler.httpserver import LimitedHandler, LimitedHTTPServer, Limits, Route, server_tls_context

log = logging.getLogger("tensorai.scheduler.extender")

ROUTES = ("/filter", "/prioritize", "/bind", "/preempt")  # the verbs' paths; the manifests' KubeSchedulerConfiguration
# names these (urlPrefix without a path: kube-scheduler posts to urlPrefix + "/" + verb)

# kube-scheduler binds in a goroutine per pod, each on its own connection while others are busy: room for
# hundreds of binds in flight behind a slow API server. The metrics listener serves a scraper and probes.
VERBS_MAX_CONNECTIONS = 512
METRICS_MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10.0  # kube-scheduler's whole call (httpTimeout) is 5 s; its bodies arrive in milliseconds
HANDSHAKE_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 120.0  # above Go's 90 s idle-connection timeout: the client closes first
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def verbs_limits(
    max_connections: int = VERBS_MAX_CONNECTIONS,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Limits:
    """The verbs listener's limits; the body limit is the service's `MAX_BODY_BYTES` (read now, not at import)."""
    return Limits(
        max_connections=max_connections,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        request_timeout_s=request_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_body_bytes=service_module.MAX_BODY_BYTES,
    )


def metrics_limits(request_timeout_s: float = REQUEST_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S) -> Limits:
    """GET only: no body is ever accepted there."""
    return Limits(
        max_connections=METRICS_MAX_CONNECTIONS,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        request_timeout_s=request_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_body_bytes=0,
    )


class _Handler(LimitedHandler):
    server: ExtenderHTTPServer

    def healthz(self, _length: int | None) -> None:
        self.send_bytes(200, b"ok", "text/plain")

    def readyz(self, _length: int | None) -> None:
        ready = self.server.service.view.ready
        self.send_bytes(200 if ready else 503, b"ok" if ready else b"cluster view not synced yet", "text/plain")

    def metrics(self, _length: int | None) -> None:
        self.send_bytes(200, self.server.service.metrics.exposition(), _METRICS_TYPE)

    def verb(self, length: int | None) -> None:
        """POST /<verb>: the body is read whole (Content-Length was checked), decoded and handed to the service."""
        raw = self.read_body(length or 0)
        if raw is None:
            return
        started = time.perf_counter()
        service = self.server.service
        verb = self.path.partition("?")[0][1:]
        status, payload = self._handle(service, verb, raw)
        failed = status != 200 or (isinstance(payload, dict) and payload.get("Error"))
        if verb == "filter" and status == 200:
            payload = service.encode_filter(payload)  # type: ignore[arg-type]
        data = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        self.send_bytes(status, data, "application/json")
        service.metrics.verb_latency_by_verb[verb].observe(time.perf_counter() - started)
        if failed:
            service.metrics.verb_errors.labels(verb).inc()

    @staticmethod
    def _handle(service: ExtenderService, verb: str, raw: bytes) -> tuple[int, object]:
        try:
            body = service.args_decoder.decode(raw) if verb in ("filter", "prioritize") else json.loads(raw)
        except (ValueError, RecursionError) as error:
            return 400, {"Error": f"body is not JSON: {error}"}
        try:
            if verb == "prioritize":
                return 200, service.prioritize_json(body)
            return 200, getattr(service, verb)(body)
        except BadRequest as error:
            return 400, {"Error": str(error)}
        except PodError as error:
            return 422, {"Error": str(error)}
        except Exception as error:  # the server must answer and live on whatever a verb hits
            log.exception("%s failed", verb)
            return 500, {"Error": f"{verb} failed: {type(error).__name__}: {error}"}


_HEALTH: dict[str, Route] = {"/healthz": {"GET": _Handler.healthz}, "/readyz": {"GET": _Handler.readyz}}
_VERBS: dict[str, Route] = {path: {"POST": _Handler.verb} for path in ROUTES}
_METRICS: dict[str, Route] = {"/metrics": {"GET": _Handler.metrics}}


class ExtenderHTTPServer(LimitedHTTPServer):
    """One listener of the extender, bound to one ExtenderService."""

    def __init__(
        self,
        address: tuple[str, int],
        service: ExtenderService,
        *,
        routes: dict[str, Route],
        limits: Limits,
        tls: ssl.SSLContext | None = None,
        name: str = "extender",
    ) -> None:
        self.service = service
        super().__init__(
            address, _Handler, routes=routes, limits=limits, tls=(lambda: tls) if tls is not None else None, name=name
        )


def _tls_context(tls_cert: str | None, tls_key: str | None) -> ssl.SSLContext | None:
    if not tls_cert:
        return None
    return server_tls_context(tls_cert, tls_key or tls_cert)


def _start(server: ExtenderHTTPServer) -> tuple[ExtenderHTTPServer, threading.Thread]:
    thread = threading.Thread(target=server.serve_forever, name=f"{server.name}-accept", daemon=True)
    thread.start()
    return server, thread


def serve(
    service: ExtenderService,
    address: str = "127.0.0.1",
    port: int = 8888,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    limits: Limits | None = None,
    with_metrics: bool = True,
) -> tuple[ExtenderHTTPServer, threading.Thread]:
    """Serve the verbs (and /healthz, /readyz) in a background thread; returns the server (call
    `shutdown()` then `server_close()` to stop) and its accept thread.

    `with_metrics` also serves GET /metrics here - one listener for tests and embedding; the CLI
    passes False and serves /metrics on its own listener (`serve_metrics`)."""
    routes = {**_VERBS, **_HEALTH, **(_METRICS if with_metrics else {})}
    server = ExtenderHTTPServer(
        (address, port),
        service,
        routes=routes,
        limits=limits or verbs_limits(),
        tls=_tls_context(tls_cert, tls_key),
        name="extender-verbs",
    )
    return _start(server)


def serve_metrics(
    service: ExtenderService,
    address: str = "0.0.0.0",
    port: int = 8889,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    limits: Limits | None = None,
) -> tuple[ExtenderHTTPServer, threading.Thread]:
    """Serve GET /metrics, /healthz and /readyz (no verbs) in a background thread."""
    server = ExtenderHTTPServer(
        (address, port),
        service,
        routes={**_METRICS, **_HEALTH},
        limits=limits or metrics_limits(),
        tls=_tls_context(tls_cert, tls_key),
        name="extender-metrics",
    )
    return _start(server)
