"""A bounded HTTP/1.1 server shared by the extender and the webhook: deadlines, a connection cap,
TLS in the connection's own thread, strict framing and JSON errors.

Why not the stdlib's ThreadingHTTPServer as is: it starts a thread per connection without limit,
has no deadline (a client that sends one byte every few seconds, or a body shorter than its
Content-Length, holds a thread forever), does a listening socket's TLS handshake in the accept
loop (one silent client blocks every other), and answers errors with an HTML page.

The contract (docs/extender.md and docs/webhook.md, "Transport security and limits"):
- at most `Limits.max_connections` connections are served at once, one thread each; a connection
  over the cap is answered `503` with a JSON body and closed at once by the accept loop (over TLS,
  where no answer is possible without a handshake, it is closed);
- TLS: the handshake runs in the connection's thread and must finish `handshake_timeout_s` after
  the accept;
- a new connection must deliver its first request (line, headers and body) within
  `request_timeout_s` of connecting (of the handshake over TLS); a kept-alive connection may wait
  `idle_timeout_s` for its next request, which must then be complete `request_timeout_s` after its
  first byte; sending a response may take `request_timeout_s` too. A request cut off by its
  deadline is answered `408` and the connection closed; an idle connection is closed silently;
- framing: HTTP/1.0 or 1.1 only; header lines `name: value` with no whitespace before the colon
  and no folding; at most 100 header lines and 64 KiB of them; Content-Length only as one header
  of digits; any Transfer-Encoding is refused (501; 400 beside a Content-Length - a request
  smuggling shape); POST needs Content-Length (411) within the server's body limit (413); GET and
  HEAD take no body. Every error is JSON and closes the connection.

Deadlines are enforced by one reaper thread per server that shuts a late connection's socket down
(a blocked read then returns end-of-file): the request path itself only stores a float per phase,
so the extender's per-request cost stays what it was (sockets stay in blocking mode, no poll per read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger(__name__)

_MAX_LINE_BYTES = 65536
_MAX_HEADER_LINES = 100
_MAX_HEADER_BYTES = 65536
_DISCARD_LIMIT_BYTES = 1 << 20  # an error answer reads (and drops) a body up to this size, so the client sees it
_STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_NEVER = math.inf
_REFUSAL_LOG_INTERVAL_S = 10.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """How many connections a server serves at once and how long each phase of one may take.

    The idle timeout is above the 90 s after which Go's http.Transport (kube-scheduler's extender
    client, the API server's webhook client) drops an idle connection itself, so it is the client that
    closes an idle connection, never the server just as the client reuses it."""

    max_connections: int = 256
    handshake_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("handshake_timeout_s", "request_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class _Connection:
    """One accepted connection as the reaper sees it: the socket, the current phase's deadline and
    whether an expiry may still be answered (reading a request: shut only the read side, answer 408)."""

    __slots__ = ("closed", "deadline", "expired", "lock", "reading", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.reading = True
        self.expired = False
        self.closed = False
        self.lock = threading.Lock()

    def expire(self) -> None:
        """Past its deadline: wake the worker blocked on this socket (called by the reaper)."""
        with self.lock:
            if self.closed or self.expired:
                return
            how = socket.SHUT_RD if self.reading else socket.SHUT_RDWR
            self.expired = True  # before the shutdown: the woken worker reads it at once
            try:
                # socket.socket.shutdown, not SSLSocket.shutdown: that one would also drop the TLS
                # object under the worker's feet; shutting the TCP socket down is what wakes it.
                socket.socket.shutdown(self.sock, how)
            except OSError:  # not connected any more, or detached mid-wrap: try again next tick
                self.expired = False


def server_tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) for `LimitedHTTPServer`.

    OP_IGNORE_UNEXPECTED_EOF: the reaper ends a late request by shutting the TCP read side down, which
    TLS sees as an end-of-file without close_notify; OpenSSL 3 would then fail the connection (and
    send an alert) instead of letting the server write its 408."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    context.load_cert_chain(cert_path, key_path)
    return context


Route = dict[str, Callable[["LimitedHandler", int | None], None]]  # method -> handler(self, content length)


class LimitedHTTPServer(HTTPServer):
    """HTTP(S) server with `Limits`; `routes` maps an exact path (query string ignored) to its methods.

    `tls` returns the SSLContext for each new connection (so a certificate can be reloaded), or is
    None for plain HTTP. `error_document(status, message)` shapes every error body (JSON)."""

    allow_reuse_address = True
    request_queue_size = 256  # connections waiting for the accept loop (kernel backlog)
    _REAPER_TICK_S = 0.1

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[LimitedHandler],
        *,
        routes: dict[str, Route],
        limits: Limits,
        tls: Callable[[], ssl.SSLContext] | None = None,
        error_document: Callable[[int, str], object] | None = None,
        name: str = "http",
    ) -> None:
        self.routes = routes
        self.limits = limits
        self.tls = tls
        self.error_document = error_document or (lambda status, message: {"Error": message})
        self.name = name
        self._connections: dict[_Connection, None] = {}
        self._connections_lock = threading.Lock()
        self._stopped = threading.Event()
        self.closing = False  # set by server_close: kept-alive connections end after their current request
        self.refused_connections = 0
        self._refusal_logged_at = -math.inf
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._overflow_answer = self._canned(503, f"more than {limits.max_connections} connections at once; retry")
        self._reaper = threading.Thread(target=self._reap, name=f"{name}-deadlines", daemon=True)
        self._reaper.start()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server_address[1])

    @property
    def connection_count(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    def _canned(self, status: int, message: str) -> bytes:
        body = json.dumps(self.error_document(status, message), separators=(",", ":")).encode()
        reason = BaseHTTPRequestHandler.responses.get(status, ("",))[0]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body

    # ------------------------------------------------------------------ accept loop
    def process_request(self, request: Any, client_address: Any) -> None:  # type: ignore[override]
        """In the accept loop: refuse over the cap (never block, never start a thread), else hand the
        connection to its own thread. No TLS and no read happen here."""
        limits = self.limits
        with self._connections_lock:
            if len(self._connections) >= limits.max_connections:
                connection = None
            else:
                first = limits.handshake_timeout_s if self.tls is not None else limits.request_timeout_s
                connection = _Connection(request, time.monotonic() + first)
                self._connections[connection] = None
        if connection is None:
            self._refuse(request, client_address)
            return
        try:
            threading.Thread(
                target=self._serve_connection, args=(connection, client_address), name=f"{self.name}-conn", daemon=True
            ).start()
        except RuntimeError:  # cannot start a thread (process limits): drop this one
            self._forget(connection)
            self.shutdown_request(request)

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL_S:  # a flood must not flood the log too
            self._refusal_logged_at = now
            log.warning(
                "%s: refusing connections over the cap of %d (latest from %s; %d refused so far)",
                self.name,
                self.limits.max_connections,
                client_address[0],
                self.refused_connections,
            )
        with contextlib.suppress(OSError):
            if self.tls is None:  # a fresh socket's send buffer takes these few hundred bytes without blocking
                request.send(self._overflow_answer, socket.MSG_DONTWAIT)
        self.shutdown_request(request)

    def _forget(self, connection: _Connection) -> None:
        with self._connections_lock:
            self._connections.pop(connection, None)

    # ------------------------------------------------------------------ the connection's thread
    def _serve_connection(self, connection: _Connection, client_address: Any) -> None:
        sock: socket.socket = connection.sock
        try:
            # One write per answer, and TCP_NODELAY anyway: nothing waits for a delayed ACK (~40 ms).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                connection.sock = sock
                sock.do_handshake()
                connection.deadline = time.monotonic() + self.limits.request_timeout_s
            self.RequestHandlerClass(sock, client_address, self, connection)  # type: ignore[call-arg]
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError; ValueError: read on a closed socket
            log.debug("%s: connection from %s ended: %s", self.name, client_address[0], error)
        except Exception:
            self.handle_error(sock, client_address)
        finally:
            with connection.lock:
                connection.closed = True
                self.shutdown_request(sock)
            self._forget(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("%s: connection from %s ended with an error", self.name, client_address, exc_info=True)

    # ------------------------------------------------------------------ deadlines
    def _reap(self) -> None:
        """Shut down connections past their deadline (ten checks a second over at most max_connections
        entries; the request path only writes each connection's deadline)."""
        while not self._stopped.wait(self._REAPER_TICK_S):
            now = time.monotonic()
            for connection in list(self._connections):
                if connection.deadline <= now:
                    connection.expire()

    def server_close(self) -> None:
        """Stop the reaper, close the listening socket and end the connections still open (their
        threads see end-of-file and finish; a request being handled still gets its answer out)."""
        self.closing = True
        self._stopped.set()
        super().server_close()
        for connection in list(self._connections):
            if connection.deadline != _NEVER:  # not in the middle of handling a request
                connection.reading = False
                connection.expire()


class LimitedHandler(BaseHTTPRequestHandler):
    """Reads one request at a time under the connection's deadlines, checks the framing and calls the
    route's handler with the Content-Length (None without one); the handler reads the body with
    `read_body` when it is ready to hold it, and answers with `send_bytes` / `send_json` / `send_error_json`.

    A lean parser on purpose: the stdlib's email-based header parsing and multi-write responses cost
    ~0.3 ms a request, a third of the extender's CPU per pod."""

    protocol_version = "HTTP/1.1"  # keep-alive, as kube-scheduler's and the API server's Go clients expect
    server: LimitedHTTPServer
    headers: dict[str, str]  # type: ignore[assignment]  # lower-cased names

    def __init__(self, request: Any, client_address: Any, server: LimitedHTTPServer, connection: _Connection) -> None:
        self.state = connection
        self.served = 0
        self.head_only = False
        self._content_length: int | None = None
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        # StreamRequestHandler.setup without its timeout and TCP_NODELAY (the server set those up)
        self.connection = self.request
        self.rfile = self.connection.makefile("rb", -1)
        self.wfile = self.connection.makefile("wb", 0)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    # ------------------------------------------------------------------ one request
    def handle_one_request(self) -> None:
        self.close_connection = True
        self.head_only = False
        self.requestline = ""
        state, limits = self.state, self.server.limits
        if self.served:  # kept alive: the next request may take the idle timeout to begin
            if self.server.closing:
                return
            state.reading = False  # nothing to answer when an idle connection expires
            state.deadline = time.monotonic() + limits.idle_timeout_s
            if not self.rfile.peek(1):
                return
            state.deadline = time.monotonic() + limits.request_timeout_s
            state.reading = True
        elif not self.rfile.peek(1):  # a new connection that hung up, or sent nothing until its deadline
            return
        self.served += 1
        if not self._parse():
            return
        method = self.command
        route = self.server.routes.get(self.path.partition("?")[0])
        if route is None:
            self._refuse_request(404, "not_found", f"no such path {self.path[:200]!r}; {self._paths_help()}")
            return
        call = route.get(method)
        if call is None and method == "HEAD":
            call = route.get("GET")
            self.head_only = call is not None
        if call is None:
            allowed = ", ".join(sorted({*route, *(["HEAD"] if "GET" in route else [])}))
            status = 405 if method in _STANDARD_METHODS else 501
            self._refuse_request(
                status,
                "method",
                f"{method[:20]} is not served at {self.path[:200]!r}; use {allowed}",
                extra=f"Allow: {allowed}\r\n",
            )
            return
        length = self._content_length
        if method in ("GET", "HEAD"):
            if length:
                self.send_error_json(400, "framing", f"{method} takes no body, got Content-Length {length}")
                return
        elif length is None:
            self.send_error_json(411, "length", "a Content-Length header with the body size is required")
            return
        elif length > limits.max_body_bytes:
            self.send_error_json(
                413, "too_large", f"body of {length} bytes is over the {limits.max_body_bytes} byte limit"
            )
            return
        if length and (self.headers.get("expect") or "").lower() == "100-continue":  # curl asks before > 1 KiB
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # still reading: the request's deadline holds
        call(self, length)

    def _parse(self) -> bool:
        """Request line and headers into command/path/request_version/headers; False after answering an error."""
        rfile = self.rfile
        raw = rfile.readline(_MAX_LINE_BYTES + 1)
        self.raw_requestline = raw
        if not raw.endswith(b"\n"):
            return self._incomplete(raw, 414, "request line longer than 64 KiB")
        line = str(raw, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        self.command, self.path, self.request_version = "", "", "HTTP/1.1"
        parts = line.split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
            self.send_error_json(400, "framing", f"malformed request line {line[:100]!r}")
            return False
        method, target, version = parts
        self.command, self.path = method, target
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            status = 505 if version.startswith("HTTP/") else 400
            self.send_error_json(status, "framing", f"HTTP version {version[:20]!r} is not served; use HTTP/1.1")
            return False
        self.request_version = version
        headers: dict[str, str] = {}
        total = 0
        for _ in range(_MAX_HEADER_LINES + 1):
            raw = rfile.readline(_MAX_LINE_BYTES + 1)
            if raw == b"\r\n" or raw == b"\n":
                break
            total += len(raw)
            if not raw.endswith(b"\n") or total > _MAX_HEADER_BYTES:
                return self._incomplete(raw, 431, f"headers longer than {_MAX_HEADER_BYTES} bytes", total)
            text = str(raw, "iso-8859-1")
            name, separator, value = text.partition(":")
            if not separator or not name or name != name.strip() or text[0] in " \t":
                self.send_error_json(400, "framing", f"malformed header line {text[:100]!r}")
                return False
            name = name.lower()
            value = value.strip(" \t\r\n")
            if name in headers:
                if name in ("content-length", "transfer-encoding", "host"):
                    self.send_error_json(400, "framing", f"more than one {name} header")
                    return False
                value = headers[name] + ", " + value
            headers[name] = value
        else:
            self.send_error_json(431, "framing", f"more than {_MAX_HEADER_LINES} header lines")
            return False
        self.headers = headers
        connection = (headers.get("connection") or "").lower()
        self.close_connection = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        length_text = headers.get("content-length")
        if "transfer-encoding" in headers:
            if length_text is None:
                self.send_error_json(501, "framing", "Transfer-Encoding is not supported; send a Content-Length")
            else:
                self.send_error_json(400, "framing", "Transfer-Encoding and Content-Length together are ambiguous")
            return False
        if length_text is None:
            self._content_length = None
        elif length_text.isascii() and length_text.isdigit():
            self._content_length = int(length_text)
        else:
            self.send_error_json(400, "framing", f"Content-Length must be digits, got {length_text[:40]!r}")
            return False
        return True

    def _incomplete(self, raw: bytes, status: int, too_long: str, total: int = 0) -> bool:
        """A line that did not end: too long, cut off by the deadline (408), or the client hung up."""
        if len(raw) > _MAX_LINE_BYTES or total > _MAX_HEADER_BYTES:
            self.send_error_json(status, "framing", too_long)
        elif self.state.expired:
            self.send_error_json(408, "timeout", self._late())
        return False

    def _late(self) -> str:
        return f"request not complete within {self.server.limits.request_timeout_s:g} s"

    def _paths_help(self) -> str:
        return "; ".join(f"{'/'.join(sorted(methods))} {path}" for path, methods in self.server.routes.items())

    def _refuse_request(self, status: int, reason: str, message: str, extra: str = "") -> None:
        """An error answer before the body was read: drop a small body so the client sees the answer."""
        length = self._content_length or 0
        if length > _DISCARD_LIMIT_BYTES:
            self.close_connection = True
        elif length and not self.discard_body(length):
            if self.state.expired:
                self.send_error_json(408, "timeout", self._late())
            return
        self.send_error_json(status, reason, message, extra=extra, close=False)

    # ------------------------------------------------------------------ body and answers
    def read_body(self, length: int) -> bytes | None:
        """The body, or None after answering 408 (cut off by the deadline) or when the client hung up."""
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            if self.state.expired:
                self.send_error_json(408, "timeout", self._late())
            return None
        self.state.deadline = _NEVER  # handling the request has no deadline here; answering it has one
        return raw

    def discard_body(self, length: int) -> bool:
        """Read and drop a body in small pieces (memory stays flat), so an error answer reaches a client
        that sends its whole body before reading; False (connection to be closed) if it was cut short."""
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                self.close_connection = True
                return False
            remaining -= len(chunk)
        return True

    def _write(self, data: bytes) -> None:
        state = self.state
        state.reading = False
        state.deadline = time.monotonic() + self.server.limits.request_timeout_s
        self.wfile.write(data)

    def send_bytes(self, status: int, data: bytes, content_type: str, extra: str = "") -> None:
        """One write: status line, headers (`extra`: more header lines, each ending CRLF) and body."""
        reason = self.responses.get(status, ("",))[0]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}"
        if self.close_connection:
            head += "Connection: close\r\n"
        self._write(head.encode("latin-1") + b"\r\n" + (b"" if self.head_only else data))
        self.log_request(status, len(data))

    def send_json(self, status: int, document: object) -> None:
        self.send_bytes(status, json.dumps(document, separators=(",", ":")).encode(), "application/json")

    def send_error_json(self, status: int, reason: str, message: str, *, extra: str = "", close: bool = True) -> None:
        """An error answer shaped by the server's `error_document`; closes the connection unless told not to
        (only where the request was read to its end)."""
        if close:
            self.close_connection = True
        self.count_error(reason)
        document = self.server.error_document(status, message)
        self.send_bytes(status, json.dumps(document, separators=(",", ":")).encode(), "application/json", extra)

    def count_error(self, reason: str) -> None:
        """Hook for a metric of refused requests (the webhook counts them)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s "%s" %s %s', self.client_address[0], self.requestline[:200], code, size)
