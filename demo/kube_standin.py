"""A local stand-in for the Kubernetes API server — a TEST DOUBLE, not a cluster.

Our programs (device plugin, extender, demo) reach Kubernetes only through the real `kubernetes`
Python client and a kubeconfig. Tests and `make demo` point that kubeconfig here, so the programs'
real client code (lists, watches, patches, Bindings, the GPUQuota CRD) runs unchanged against plain
HTTP on loopback. It serves only the REST calls our programs make, with no auth, no admission and
no defaulting beyond a few listed fields; docs/kube-standin.md lists what it does and does not do.

    with KubeStandin() as api:
        api.add_node("node-a", allocatable={"tensor.ai/vgpu-milli": "8000"})
        core = kubernetes.client.CoreV1Api(api.api_client())
        core.list_node()

`python -m tensorai.demo.kube_standin --port 0 --kubeconfig PATH` runs it as a process and prints
its URL as the first line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes
import yaml

from tensorai.demo.kube_standin_select import Selector, SelectorError, parse_field_selector, parse_label_selector
from tensorai.demo.kube_standin_store import (
    MERGE_PATCH,
    PATCH_TYPES,
    RESOURCES_BY_PATH,
    ApiError,
    ResourceType,
    Store,
    Watcher,
    resource_type,
    status_object,
)

MAX_BODY_BYTES = 16 << 20  # far above any object we store; bounds memory on hostile input
MAX_NESTING_DEPTH = 100  # Kubernetes objects nest a few dozen levels; deeper bodies would only exhaust the stack
_SUBRESOURCES = ("status", "binding")


@dataclass(frozen=True)
class _Route:
    """What a request path names: a collection, an item, a subresource, or the bindings collection."""

    resource: ResourceType | None
    namespace: str | None
    name: str | None = None
    subresource: str | None = None
    bindings: bool = False  # POST /api/v1/namespaces/{ns}/bindings


@dataclass
class _Fault:
    method: str
    path_pattern: re.Pattern[str]
    status: int
    body: dict | None
    remaining: int


def _parse_route(path: str) -> _Route:
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ApiError(404, f"the server could not find the requested resource (path {path!r})", "NotFound")

    def lookup(plural: str) -> ResourceType:
        resource = RESOURCES_BY_PATH.get((group, version, plural))
        if resource is None:
            api = f"{group}/{version}" if group else version
            raise ApiError(404, f"the server could not find the requested resource ({plural} in {api})", "NotFound")
        return resource

    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _SUBRESOURCES:
        namespace, plural, item = rest[1], rest[2], rest[3:]
        if group == "" and plural == "bindings" and not item:
            return _Route(resource=None, namespace=namespace, bindings=True)
        resource = lookup(plural)
        if not resource.namespaced:
            raise ApiError(404, f"{plural} are cluster-scoped; they have no namespaced path", "NotFound")
    elif rest:
        namespace, plural, item = None, rest[0], rest[1:]
        resource = lookup(plural)
    else:
        raise ApiError(404, f"the server could not find the requested resource (path {path!r})", "NotFound")
    if len(item) > 2:
        raise ApiError(404, f"the server could not find the requested resource (path {path!r})", "NotFound")
    name = item[0] if item else None
    subresource = item[1] if len(item) == 2 else None
    if subresource is not None and not (
        (subresource == "status" and resource.has_status) or (subresource == "binding" and resource.key == "pods")
    ):
        raise ApiError(404, f"{resource.plural} have no subresource {subresource!r}", "NotFound")
    return _Route(resource=resource, namespace=namespace, name=name, subresource=subresource)


class _Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection; every request is answered, errors as Kubernetes Status objects."""

    protocol_version = "HTTP/1.1"
    server: _Server

    # --- plumbing --------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without NODELAY, Nagle plus the client's delayed
        # ACK stalls every keep-alive request by ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.standin.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        if not length_header.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, f"invalid Content-Length {length_header!r}")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"request body of {length} bytes is larger than {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "malformed chunked request body") from None
            if size == 0:
                self.rfile.readline(1024)
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    # --- requests --------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        standin = self.server.standin
        standin.request_log.append((method, self.path))
        try:
            raw_body = self._read_body()
            fault = standin.take_fault(method, urlsplit(self.path).path)
            if fault is not None:
                self._send_json(fault.status, fault.body or status_object(fault.status, "injected failure (fail_next)"))
                return
            self._serve(method, raw_body)
        except ApiError as error:
            self._send_json(error.code, error.status)
        except SelectorError as error:
            self._send_json(400, status_object(400, str(error)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # the stand-in must answer, never die, whatever it is sent
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, status_object(500, f"stand-in internal error: {type(error).__name__}: {error}"))

    def _serve(self, method: str, raw_body: bytes) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        if split.path in ("/healthz", "/readyz", "/livez"):
            self._send_plain("ok")
            return
        if split.path == "/version":
            self._send_json(200, {"major": "1", "minor": "36", "gitVersion": "v1.36.0-tensorai-standin"})
            return
        if "dryRun" in query:
            raise ApiError(400, "dryRun is not supported by the Kubernetes API stand-in")
        route = _parse_route(split.path)
        store = self.server.standin.store
        if route.bindings or route.subresource == "binding":
            if method != "POST":
                raise ApiError(405, f"{method} is not allowed on a binding", "MethodNotAllowed")
            body = self._json_body(raw_body)
            name = route.name
            if route.bindings:
                metadata = body.get("metadata") if isinstance(body, dict) else None
                name = metadata.get("name") if isinstance(metadata, dict) else None
                if not isinstance(name, str) or not name:
                    raise ApiError(422, "Binding is invalid: metadata.name: Required value")
            assert route.namespace is not None and name is not None
            store.bind(route.namespace, name, body)
            self._send_json(201, status_object(201, ""))
            return
        resource = route.resource
        assert resource is not None
        if route.name is None:
            self._serve_collection(method, route, resource, query, raw_body)
            return
        status = route.subresource == "status"
        if method == "GET":
            self._send_json(200, store.get(resource, route.namespace, route.name))
        elif method == "PUT":
            self._send_json(
                200, store.replace(resource, route.namespace, route.name, self._json_body(raw_body), status=status)
            )
        elif method == "PATCH":
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type not in PATCH_TYPES:
                raise ApiError(
                    415,
                    f"the body of the request was in an unknown format {content_type!r} - accepted media types "
                    f"include: {', '.join(PATCH_TYPES)}",
                )
            body = self._json_body(raw_body, check_content_type=False)
            self._send_json(200, store.patch(resource, route.namespace, route.name, content_type, body, status=status))
        elif method == "DELETE" and not status:
            options = self._json_body(raw_body) if raw_body.strip() else None
            if options is not None and not isinstance(options, dict):
                raise ApiError(400, "a DELETE body must be a DeleteOptions object")
            self._send_json(200, store.delete(resource, route.namespace, route.name, options))
        else:
            raise ApiError(405, f"{method} is not allowed on {self.path}", "MethodNotAllowed")

    def _serve_collection(
        self, method: str, route: _Route, resource: ResourceType, query: dict[str, str], raw_body: bytes
    ) -> None:
        store = self.server.standin.store
        if method == "POST":
            if resource.namespaced and route.namespace is None:
                raise ApiError(405, f"create {resource.plural} through /namespaces/{{namespace}}/{resource.plural}")
            self._send_json(201, store.create(resource, route.namespace, self._json_body(raw_body)))
            return
        if method != "GET":
            raise ApiError(405, f"{method} is not allowed on a collection", "MethodNotAllowed")
        selector = Selector(
            fields=parse_field_selector(query.get("fieldSelector", ""), resource.field_selectors),
            labels=parse_label_selector(query.get("labelSelector", "")),
        )
        if query.get("watch", "").lower() in ("true", "1"):
            self._stream_watch(resource, route.namespace, selector, query)
            return
        items, version = store.list(resource, route.namespace, selector)
        self._send_json(
            200,
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(version)},
                "items": items,
            },
        )

    def _stream_watch(self, resource: ResourceType, namespace: str | None, selector: Selector, query: dict) -> None:
        standin = self.server.standin
        timeout_text = query.get("timeoutSeconds", "")
        if timeout_text and (not timeout_text.isdigit() or len(timeout_text) > 9):
            raise ApiError(400, f"invalid timeoutSeconds {timeout_text!r}: expected a non-negative integer")
        deadline = time.monotonic() + int(timeout_text) if timeout_text else None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        watcher = standin.store.watch(resource, namespace, selector, query.get("resourceVersion"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._pump_events(watcher, resource, deadline, bookmarks)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            standin.store.unwatch(watcher)

    def _pump_events(self, watcher: Watcher, resource: ResourceType, deadline: float | None, bookmarks: bool) -> None:
        standin = self.server.standin
        last_sent = time.monotonic()
        while not standin.stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait_seconds = standin.bookmark_interval_seconds
            if deadline is not None:
                wait_seconds = min(wait_seconds, deadline - now)
            try:
                event = watcher.events.get(timeout=max(wait_seconds, 0.01))
            except queue.Empty:
                if self._client_gone():
                    return
                if bookmarks and time.monotonic() - last_sent >= standin.bookmark_interval_seconds:
                    version = standin.store.bookmark_version(watcher)
                    if version is not None:
                        bookmark = {
                            "kind": resource.kind,
                            "apiVersion": resource.api_version,
                            "metadata": {"resourceVersion": str(version)},
                        }
                        self._write_chunk({"type": "BOOKMARK", "object": bookmark})
                        last_sent = time.monotonic()
                continue
            if event is None:
                return
            event_type, obj = event
            self._write_chunk({"type": event_type, "object": obj})
            last_sent = time.monotonic()

    def _client_gone(self) -> bool:
        """True once the watching client has closed its socket.

        A quiet watch never writes, so without this check a vanished client would keep its thread and
        its growing event queue for the life of the server.
        """
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _write_chunk(self, event: dict) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_plain(self, text: str) -> None:
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json_body(self, raw_body: bytes, *, check_content_type: bool = True) -> Any:
        if check_content_type:
            content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
            if content_type not in ("application/json", "*/*", ""):
                raise ApiError(415, f"unsupported media type {content_type!r}: the stand-in accepts application/json")
        if not raw_body:
            raise ApiError(400, "the request needs a JSON body")
        try:
            body = json.loads(raw_body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise ApiError(400, f"the request body is not valid JSON: {error}") from None
        if _nesting_depth(body) > MAX_NESTING_DEPTH:
            raise ApiError(400, f"the request body nests deeper than {MAX_NESTING_DEPTH} levels")
        return body


def _nesting_depth(value: Any) -> int:
    """Depth of nested objects/arrays, computed without recursion so hostile bodies cannot blow the stack."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, depth)
            children = current.values() if isinstance(current, dict) else current
            pending.extend((child, depth + 1) for child in children)
    return deepest


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], standin: KubeStandin) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its keep-alive connection is routine, not worth a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Shut open keep-alive and watch connections so clients notice the stop at once."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class KubeStandin:
    """The stand-in server plus in-process helpers that share its store (and emit the same watch events)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, bookmark_interval_seconds: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval_seconds = bookmark_interval_seconds
        self.verbose = False
        self.store = Store()
        self.request_log: list[tuple[str, str]] = []
        self.url = ""
        self.kubeconfig_path = ""
        self.stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._faults_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tempdir: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> KubeStandin:
        """Bind, serve on a background thread and write the kubeconfig; returns self."""
        if self._server is not None:
            raise RuntimeError("KubeStandin is already started")
        self.stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-standin", daemon=True
        )
        self._thread.start()
        self._tempdir = tempfile.mkdtemp(prefix="kube-standin-")
        self.kubeconfig_path = os.path.join(self._tempdir, "kubeconfig")
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    def stop(self) -> None:
        """Stop serving, end watches and drop connections; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        self.store.close_watches()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def __enter__(self) -> KubeStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str) -> None:
        """Write a kubeconfig whose current context points at this server (no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-standin", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-standin", "user": {"token": "kube-standin-has-no-auth"}}],
            "contexts": [
                {
                    "name": "kube-standin",
                    "context": {"cluster": "kube-standin", "user": "kube-standin", "namespace": "default"},
                }
            ],
            "current-context": "kube-standin",
        }
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes ApiClient loaded from this server's kubeconfig, as a program would load it."""
        if not self.kubeconfig_path:
            raise RuntimeError("start() the stand-in before asking for a client")
        return kubernetes.config.new_client_from_config(config_file=self.kubeconfig_path)

    # --- in-process seeding and inspection --------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        labels: dict | None = None,
        annotations: dict | None = None,
        allocatable: dict | None = None,
    ) -> dict:
        """A Ready node; capacity = allocatable (with `pods: 110` unless given)."""
        resources = {"pods": "110", **(allocatable or {})}
        node = {
            "metadata": {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})},
            "spec": {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }
        return self.add_object("nodes", node)

    def add_pod(self, pod: dict) -> dict:
        """Create a pod (namespace from its metadata, else "default"); status.phase defaults to Pending."""
        return self.add_object("pods", pod)

    def add_object(self, resource: str, obj: dict) -> dict:
        """Create any served object in-process, keeping a given status (handy for seeding Running pods)."""
        rtype = resource_type(resource)
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        namespace = (metadata.get("namespace") or "default") if rtype.namespaced else None
        return copy.deepcopy(self.store.create(rtype, namespace, obj, keep_status=True))

    def get_object(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        rtype = resource_type(resource)
        try:
            return copy.deepcopy(self.store.get(rtype, self._namespace(rtype, namespace), name))
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def list_objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        """All objects of a resource (every namespace when `namespace` is None)."""
        items, _ = self.store.list(resource_type(resource), namespace, Selector())
        return copy.deepcopy(items)

    def delete_object(self, resource: str, name: str, namespace: str | None = None) -> None:
        rtype = resource_type(resource)
        self.store.delete(rtype, self._namespace(rtype, namespace), name)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        """What kubelet would report: status.phase through the status subresource (emits MODIFIED)."""
        self.store.patch(resource_type("pods"), namespace, name, MERGE_PATCH, {"status": {"phase": phase}}, status=True)

    # --- fault injection -------------------------------------------------------------------------
    def fail_next(
        self, method: str, path_regex: str, status: int = 500, body: dict | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` requests whose method matches and whose path (query excluded)
        matches `path_regex` (re.search) with `status` and `body` (default: a Status object)."""
        with self._faults_lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, body, times))

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.method == method and fault.path_pattern.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def expire_watches(self) -> None:
        """End open watches; resuming from any resourceVersion seen so far answers 410 Gone."""
        self.store.expire_watches()

    @staticmethod
    def _namespace(rtype: ResourceType, namespace: str | None) -> str | None:
        return (namespace or "default") if rtype.namespaced else None


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in as a process until SIGINT/SIGTERM; the URL is the first line on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m tensorai.demo.kube_standin",
        description="Local stand-in for the Kubernetes API (test double: HTTP, no auth, loopback).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--kubeconfig", help="also write a kubeconfig pointing at the server to this path")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        standin = KubeStandin(args.host, args.port).start()
    except OSError as error:
        print(f"kube-standin: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    standin.verbose = args.verbose
    try:
        if args.kubeconfig:
            standin.write_kubeconfig(args.kubeconfig)
        print(standin.url, flush=True)
        print(f"kube-standin: serving; kubeconfig {args.kubeconfig or standin.kubeconfig_path}", file=sys.stderr)
        done.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
