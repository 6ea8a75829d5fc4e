"""The transport limits of the extender's and the webhook's HTTP servers, attacked over real sockets:
which paths each listener serves, deadlines (slow headers, short bodies, idle keep-alive, TLS
handshakes), the connection cap, strict framing and JSON errors for every status
(docs/extender.md and docs/webhook.md, "Transport security and limits")."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_extender_support import node, pod
from test_webhook_server import pod_with, review_of

from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.extender_http import serve, serve_metrics, verbs_limits
from tensorai.scheduler.httpserver import Limits
from tensorai.scheduler.view import ClusterView
from tensorai.scheduler.webhook_server import DECODE_BYTES_PER_BODY_BYTE, WebhookServer

FAST = Limits(
    max_connections=8, handshake_timeout_s=0.5, request_timeout_s=0.5, idle_timeout_s=0.8, max_body_bytes=1 << 20
)
SLACK_S = 1.0  # the reaper checks deadlines every 0.1 s; a loaded 2-core machine adds its own delay


def _view() -> ClusterView:
    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [node("gpu-a", 1)])
    view.replace("pods", [])
    view.replace("gpuquotas", [])
    return view


@pytest.fixture
def extender() -> Iterator[tuple[int, ClusterView]]:
    """The verbs listener with short limits (and /metrics on it too, as `serve` does by default)."""
    view = _view()
    server, _ = serve(ExtenderService(view), "127.0.0.1", 0, limits=FAST)
    try:
        yield server.port, view
    finally:
        server.shutdown()
        server.server_close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: (status, lower-cased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def _closed(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes the connection within `within_s` (what it sent before is skipped)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(port) as sock:
        sock.sendall(raw)
        return _read_answer(sock)


def _bind_body(name: str) -> bytes:
    return json.dumps({"PodName": name, "PodNamespace": "ml", "PodUID": f"uid-{name}", "Node": "gpu-a"}).encode()


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/../../../bind", "/x/bind", "/bind/", "/tensorai/bind", "//bind", "/BIND"])
def test_only_the_exact_verb_paths_bind(extender: tuple[int, ClusterView], path: str) -> None:
    port, view = extender
    worker = pod("w", 250, uid="uid-w")
    filter_args = json.dumps({"Pod": worker, "Nodes": None, "NodeNames": ["gpu-a"]}).encode()
    assert _request(port, _post("/filter", filter_args))[0] == 200
    status, _, body = _request(port, _post(path, _bind_body("w")))
    assert status == 404 and "no such path" in json.loads(body)["Error"]
    assert view.snapshot()["gpu-a"][0] == (1000,), "nothing was bound"
    status, _, body = _request(port, _post("/bind", _bind_body("w")))
    assert (status, json.loads(body)) == (200, {"Error": ""})


def test_the_verbs_listener_without_metrics_and_the_metrics_listener_without_verbs() -> None:
    service = ExtenderService(_view())
    verbs, _ = serve(service, "127.0.0.1", 0, limits=FAST, with_metrics=False)
    metrics, _ = serve_metrics(service, "127.0.0.1", 0, limits=FAST)
    try:
        assert _request(verbs.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 404
        for path in ("/healthz", "/readyz"):
            assert _request(verbs.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())[0] == 200
            assert _request(metrics.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())[0] == 200
        status, headers, body = _request(metrics.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["content-type"].startswith("text/plain") and b"tensorai_" in body
        status, _, body = _request(metrics.port, _post("/bind", _bind_body("w")))
        assert status == 404 and json.loads(body)["Error"]
    finally:
        for server in (verbs, metrics):
            server.shutdown()
            server.server_close()


# --- method errors and framing: JSON, never the stdlib's HTML page --------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "allow"),
    [
        (b"PUT /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405, "POST"),
        (b"DELETE /bind HTTP/1.1\r\nHost: x\r\n\r\n", 405, "POST"),
        (b"GET /filter HTTP/1.1\r\nHost: x\r\n\r\n", 405, "POST"),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "GET, HEAD"),
        (b"BREW /filter HTTP/1.1\r\nHost: x\r\n\r\n", 501, "POST"),
    ],
)
def test_method_errors_are_json_with_an_allow_header(
    extender: tuple[int, ClusterView], raw: bytes, status: int, allow: str
) -> None:
    got, headers, body = _request(extender[0], raw)
    assert (got, headers["allow"], headers["content-type"]) == (status, allow, "application/json")
    assert json.loads(body)["Error"]


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"POST /filter HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, "more than one"),
        (b"POST /filter HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501, "Transfer-Encoding"),
        (b"POST /filter HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400, "ambiguous"),
        (b"POST /filter HTTP/1.1\r\nContent-Length : 2\r\n\r\n{}", 400, "malformed header"),
        (b"POST /filter HTTP/1.1\r\nX: a\r\n  folded\r\nContent-Length: 2\r\n\r\n{}", 400, "malformed header"),
        (b"POST /filter HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", 400, "digits"),
        (b"POST /filter HTTP/1.1\r\n\r\n{}", 411, "Content-Length"),
        (b"POST /filter HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413, "limit"),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, "no body"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505, "HTTP version"),
        (b"GET  /healthz HTTP/1.1\r\n\r\n", 400, "request line"),
    ],
)
def test_ambiguous_or_unsupported_framing_is_refused_and_the_connection_closed(
    extender: tuple[int, ClusterView], raw: bytes, status: int, fragment: str
) -> None:
    with _connect(extender[0]) as sock:
        sock.sendall(raw)
        got, headers, body = _read_answer(sock)
        assert (got, headers["connection"]) == (status, "close")
        assert fragment in json.loads(body)["Error"]
        assert _closed(sock, SLACK_S)


def test_keep_alive_serves_many_requests_on_one_connection(extender: tuple[int, ClusterView]) -> None:
    with _connect(extender[0]) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = _read_answer(sock)
            assert (status, body) == (200, b"ok") and "connection" not in headers


def test_head_answers_headers_only(extender: tuple[int, ClusterView]) -> None:
    with _connect(extender[0]) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"ok"):
            data += sock.recv(4096)
        assert data.count(b"ok") == 1  # the HEAD answer has Content-Length 2 but no body


# --- deadlines -----------------------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_is_answered_408_at_the_deadline(
    extender: tuple[int, ClusterView],
) -> None:
    with _connect(extender[0]) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        status, headers, body = _read_answer(sock)
        assert (status, headers["connection"]) == (408, "close") and "0.5 s" in json.loads(body)["Error"]
        assert time.monotonic() - started < FAST.request_timeout_s + SLACK_S
        assert _closed(sock, SLACK_S)


def test_slowloris_headers_are_cut_off_at_the_request_deadline(extender: tuple[int, ClusterView]) -> None:
    """Each connection trickles a header byte every 0.1 s, never finishing: no single read waits long,
    the whole-request deadline ends them all (a 408, or a reset when the trickle crosses the close)."""
    port = extender[0]
    sockets = [_connect(port) for _ in range(FAST.max_connections)]
    started = time.monotonic()
    received = {sock: b"" for sock in sockets}
    ended: dict[socket.socket, float] = {}
    try:
        for sock in sockets:
            sock.sendall(b"POST /filter HTTP/1.1\r\nX-Slow: ")
            sock.setblocking(False)
        while len(ended) < len(sockets) and time.monotonic() - started < FAST.request_timeout_s + SLACK_S:
            for sock in sockets:
                if sock in ended:
                    continue
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                    continue
                except ConnectionResetError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    ended[sock] = time.monotonic() - started
            time.sleep(0.1)
    finally:
        for sock in sockets:
            sock.close()
    assert len(ended) == len(sockets), "a trickling connection outlived the request deadline"
    assert min(ended.values()) >= FAST.request_timeout_s * 0.9
    answers = {data.split(b" ")[1] for data in received.values() if data}
    assert answers <= {b"408"} and answers, received


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(extender: tuple[int, ClusterView]) -> None:
    with _connect(extender[0]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answer(sock)[0] == 200
        started = time.monotonic()
        assert not _closed(sock, FAST.idle_timeout_s * 0.5), "closed before the idle timeout"
        assert _closed(sock, FAST.idle_timeout_s + SLACK_S)
        assert time.monotonic() - started >= FAST.idle_timeout_s * 0.9


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_request_deadline(
    extender: tuple[int, ClusterView],
) -> None:
    with _connect(extender[0]) as sock:
        sock.settimeout(FAST.request_timeout_s + SLACK_S)
        assert sock.recv(4096) == b""  # no 408 on a connection that never asked anything


def test_closing_the_server_ends_its_open_connections() -> None:
    server, _ = serve(ExtenderService(_view()), "127.0.0.1", 0, limits=FAST)
    with _connect(server.port) as idle, _connect(server.port) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answer(kept)[0] == 200
        server.shutdown()
        server.server_close()
        assert _closed(idle, 0.5) and _closed(kept, 0.5)


def test_an_overlong_request_line_is_answered_414_with_debug_logging(
    extender: tuple[int, ClusterView], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tensorai.scheduler.httpserver")
    status, _, body = _request(extender[0], b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and json.loads(body)["Error"]
    time.sleep(0.2)  # the handler logs after its answer went out
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


# --- the connection cap --------------------------------------------------------------------------


def test_connections_over_the_cap_get_a_quick_503_and_no_thread(
    extender: tuple[int, ClusterView], caplog: pytest.LogCaptureFixture
) -> None:
    """...and one log line for the five refusals, not one each."""
    caplog.set_level(logging.WARNING, logger="tensorai.scheduler.httpserver")
    port = extender[0]
    held = [_connect(port) for _ in range(FAST.max_connections)]
    try:
        time.sleep(0.2)  # every held connection has its thread by now
        threads = threading.active_count()
        for _ in range(5):
            started = time.monotonic()
            status, headers, body = _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, headers["connection"]) == (503, "close")
            assert "connections at once" in json.loads(body)["Error"]
            assert time.monotonic() - started < 0.4
        assert threading.active_count() == threads
        assert [record for record in caplog.records if "refusing" in record.getMessage()] == caplog.records[:1]
    finally:
        for sock in held:
            sock.close()
    # the held ones ended (closed by the client, or at their deadline): the listener serves again
    deadline = time.monotonic() + FAST.request_timeout_s + SLACK_S
    while time.monotonic() < deadline:
        if _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the listener did not recover after the held connections closed")


def test_the_default_verbs_limits_take_the_service_body_limit() -> None:
    from tensorai.scheduler import extender

    assert verbs_limits().max_body_bytes == extender.MAX_BODY_BYTES
    assert verbs_limits().idle_timeout_s > 90, "Go's http.Transport drops idle connections after 90 s itself"


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    from tensorai.scheduler import certs

    bundle = certs.generate_self_signed("tensorai-webhook", "tensorai-system", extra_names=("localhost",))
    cert_path, key_path = bundle.write(tmp_path / "tls")
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(bundle.ca_pem)
    return cert_path, key_path, ca_path


def _tls_get(port: int, ca_path: Path, path: str = "/healthz") -> int:
    context = ssl.create_default_context(cafile=str(ca_path))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return _read_answer(tls)[0]  # type: ignore[arg-type]


def test_extender_tls_handshakes_happen_per_connection_with_a_deadline(tls_files: tuple[Path, Path, Path]) -> None:
    """An idle TCP connection to the HTTPS listener used to block the accept loop (the listening socket
    was wrapped): now other clients are served meanwhile, and the silent one is closed at the deadline."""
    cert_path, key_path, ca_path = tls_files
    server, _ = serve(
        ExtenderService(_view()), "127.0.0.1", 0, tls_cert=str(cert_path), tls_key=str(key_path), limits=FAST
    )
    try:
        with _connect(server.port) as silent:
            started = time.monotonic()
            assert _tls_get(server.port, ca_path) == 200
            assert time.monotonic() - started < FAST.handshake_timeout_s
            assert _closed(silent, FAST.handshake_timeout_s + SLACK_S)
    finally:
        server.shutdown()
        server.server_close()


# --- the webhook ---------------------------------------------------------------------------------

WEBHOOK_FAST = Limits(
    max_connections=4, handshake_timeout_s=0.5, request_timeout_s=0.5, idle_timeout_s=0.8, max_body_bytes=64 << 10
)


def _start_webhook(tls_files: tuple[Path, Path, Path], **options: object) -> WebhookServer:
    cert_path, key_path, _ = tls_files
    server = WebhookServer(("127.0.0.1", 0), cert_path=cert_path, key_path=key_path, **options)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def webhook(tls_files: tuple[Path, Path, Path]) -> Iterator[tuple[WebhookServer, Path]]:
    budget = DECODE_BYTES_PER_BODY_BYTE * WEBHOOK_FAST.max_body_bytes  # the smallest the server accepts
    server = _start_webhook(tls_files, limits=WEBHOOK_FAST, review_budget_bytes=budget)
    try:
        yield server, tls_files[2]
    finally:
        server.shutdown()
        server.server_close()


def _tls_connect(port: int, ca_path: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca_path))
    return context.wrap_socket(_connect(port), server_hostname="localhost")


def _review_bytes(padding: int = 0, namespace: str = "team-a") -> bytes:
    review = review_of(pod_with(("main", "250m")), namespace=namespace)
    review["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * padding}
    return json.dumps(review).encode()


def test_webhook_cuts_a_trickling_tls_client_at_the_request_deadline(webhook: tuple[WebhookServer, Path]) -> None:
    server, ca_path = webhook
    with _tls_connect(server.port, ca_path) as tls:
        started = time.monotonic()
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        status, headers, body = _read_answer(tls)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body)["response"]["status"] == {
            "status": "Failure",
            "code": 408,
            "reason": "Timeout",
            "message": "request not complete within 0.5 s",
        }
        assert time.monotonic() - started < WEBHOOK_FAST.request_timeout_s + SLACK_S


def test_webhook_closes_a_silent_connection_at_the_handshake_deadline_and_serves_others(
    webhook: tuple[WebhookServer, Path],
) -> None:
    server, ca_path = webhook
    with _connect(server.port) as silent:
        assert _tls_get(server.port, ca_path) == 200
        started = time.monotonic()
        assert _closed(silent, WEBHOOK_FAST.handshake_timeout_s + SLACK_S)
        assert time.monotonic() - started < WEBHOOK_FAST.handshake_timeout_s + SLACK_S


def test_webhook_connections_over_the_cap_are_closed_at_once(webhook: tuple[WebhookServer, Path]) -> None:
    server, ca_path = webhook
    held = [_tls_connect(server.port, ca_path) for _ in range(WEBHOOK_FAST.max_connections)]
    try:
        with _connect(server.port) as extra:
            started = time.monotonic()
            assert _closed(extra, SLACK_S)  # no TLS answer is possible without a handshake: closed
            assert time.monotonic() - started < 0.5
        assert server.connection_count == WEBHOOK_FAST.max_connections
    finally:
        for tls in held:
            tls.close()


def test_webhook_method_errors_are_admission_reviews(webhook: tuple[WebhookServer, Path]) -> None:
    server, ca_path = webhook
    with _tls_connect(server.port, ca_path) as tls:
        tls.sendall(b"PUT /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        status, headers, body = _read_answer(tls)
    assert (status, headers["allow"]) == (405, "POST")
    assert json.loads(body)["response"]["status"]["reason"] == "MethodNotAllowed"


def test_reviews_wait_for_room_in_the_decode_budget_then_get_503(tls_files: tuple[Path, Path, Path]) -> None:
    """One review in flight fills the budget (it waits in its quota lookup): the next one is answered
    503 after the wait, its body dropped unparsed; once the first is done, reviews pass again."""
    in_lookup, release = threading.Event(), threading.Event()

    def slow_quotas(namespace: str) -> None:
        if namespace == "slow":
            in_lookup.set()
            release.wait(10)

    body = _review_bytes(padding=40 << 10, namespace="slow")
    server = _start_webhook(
        tls_files,
        limits=WEBHOOK_FAST,
        quotas=slow_quotas,
        review_budget_bytes=DECODE_BYTES_PER_BODY_BYTE * WEBHOOK_FAST.max_body_bytes,
        review_wait_s=0.3,
    )
    ca_path = tls_files[2]
    answers: list[int] = []
    try:
        with _tls_connect(server.port, ca_path) as first:
            first.sendall(_post("/mutate", body))
            assert in_lookup.wait(5)
            assert server.review_budget.used_bytes >= DECODE_BYTES_PER_BODY_BYTE * len(body)
            with _tls_connect(server.port, ca_path) as second:
                second.sendall(_post("/mutate", _review_bytes(padding=40 << 10)))
                status, headers, answer = _read_answer(second)
                assert status == 503 and "connection" not in headers  # its body was drained, not held
                assert "busy" in json.loads(answer)["response"]["status"]["message"]
            release.set()
            answers.append(_read_answer(first)[0])
        with _tls_connect(server.port, ca_path) as third:
            third.sendall(_post("/mutate", _review_bytes()))
            answers.append(_read_answer(third)[0])
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert answers == [200, 200]
    assert server.review_budget.used_bytes == 0


def test_a_review_that_would_decode_past_the_budget_is_refused_unparsed(webhook: tuple[WebhookServer, Path]) -> None:
    """`[{},{},...]` decodes to ~20x its size: the estimate refuses it before json.loads runs."""
    server, ca_path = webhook
    dense = b"[" + b",".join([b"{}"] * 20_000) + b"]"
    assert len(dense) < WEBHOOK_FAST.max_body_bytes
    with _tls_connect(server.port, ca_path) as tls:
        tls.sendall(_post("/mutate", dense))
        status, _, answer = _read_answer(tls)
        assert status == 413 and "to decode" in json.loads(answer)["response"]["status"]["message"]
        tls.sendall(_post("/mutate", _review_bytes()))  # the connection stays usable
        assert _read_answer(tls)[0] == 200


def test_webhook_body_limit_holds_any_review_the_api_server_can_send() -> None:
    """The API server refuses bodies over 3 MiB; an UPDATE review holds the object twice."""
    from tensorai.scheduler import webhook_server

    assert 2 * (3 << 20) < webhook_server.MAX_BODY_BYTES < 8 << 20
    assert DECODE_BYTES_PER_BODY_BYTE * webhook_server.MAX_BODY_BYTES <= webhook_server.REVIEW_BUDGET_BYTES


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc's malloc on Linux")
def test_the_webhook_makes_glibc_return_freed_review_buffers() -> None:
    """Without a fixed mmap threshold, each connection thread's heap kept its freed review bodies
    (199 MiB peak for 24 concurrent 6.9 MiB reviews against 117 MiB with it; bench_webhook_memory.py)."""
    from tensorai.scheduler.webhook_cli import return_large_buffers_to_the_os

    assert return_large_buffers_to_the_os()
