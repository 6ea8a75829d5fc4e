"""How every tensor.ai program reaches the Kubernetes API: one rule, one place.

--kubeconfig when given; otherwise the in-cluster service account; otherwise the default kubeconfig
($KUBECONFIG or ~/.kube/config). The client is built on its own Configuration, so no global state of
the `kubernetes` package is touched (several clients can live in one process, as in the tests).
Only the client's low-level layer is imported, which keeps the device plugin's memory small.

`RawCoreApi` is the handful of core/v1 calls the programs make, as raw JSON over the official
client's REST layer. Why not `kubernetes.client.CoreV1Api`: importing it imports ~250 generated
pydantic model classes (+21.6 MiB of RSS, most of the device plugin's 80 MiB budget), and every
typed call runs pydantic's argument validation - a tenth of the extender's CPU per pod through a real
kube-scheduler went to it on bind's Binding and Event writes - while every caller reads answers as
dicts anyway. `ApiClient.param_serialize` + `ApiClient.call_api` are the same calls the typed API
makes underneath: auth (bearer token, client certificates, exec plugins through kubeconfig), TLS, the
host and the connection pool all come from the official client's `Configuration`, unchanged. Errors
are the client's own `ApiException` with the HTTP status, exactly as `CoreV1Api(...,
_preload_content=False)` raises them, so callers keep their `error.status == 404` / `409` handling.
The pod watch goes through `kubernetes.watch.Watch`: `watch_pods` has the shape `Watch.stream`
expects of a list function.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote


def kube_api_client(kubeconfig: str | os.PathLike[str] | None, *, pool_size: int | None = None) -> Any:
    """A `kubernetes.client.ApiClient` for the given kubeconfig, in-cluster config, or the default kubeconfig.

    `pool_size`: connections kept open to the API server (the client's default is 5 per CPU). A
    program with more calls in flight than that opens - and TLS-handshakes - a new connection for
    each call over it and drops it afterwards."""
    from kubernetes import client, config

    def configuration() -> Any:
        made = client.Configuration()
        if pool_size is not None:
            made.connection_pool_maxsize = pool_size
        return made

    if kubeconfig is not None and str(kubeconfig):
        return config.new_client_from_config(config_file=str(kubeconfig), client_configuration=configuration())
    try:
        in_cluster = configuration()
        config.load_incluster_config(client_configuration=in_cluster)
        return client.ApiClient(in_cluster)
    except config.ConfigException:
        return config.new_client_from_config(client_configuration=configuration())


def share_tls_context(api_client: Any) -> Any:
    """Let every new connection of `api_client` reuse one TLS context; returns the client.

    urllib3 otherwise builds a context per connection - and, with no CA configured (a kubeconfig
    with insecure-skip-tls-verify, or a system CA store), loads the whole system CA store into it:
    ~10 ms of CPU holding the GIL for every connection a busy client opens."""
    import ssl

    from urllib3.util.ssl_ import create_urllib3_context

    settings = api_client.rest_client.pool_manager.connection_pool_kw
    cert_reqs = settings.get("cert_reqs", ssl.CERT_REQUIRED)
    context = create_urllib3_context(cert_reqs=cert_reqs)
    if cert_reqs != ssl.CERT_NONE and not (settings.get("ca_certs") or settings.get("ca_cert_data")):
        context.load_default_certs()  # what urllib3 would do per connection, once
    settings["ssl_context"] = context
    return api_client


JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
AUTH_SETTINGS = ["BearerToken"]  # what CoreV1Api names for every call: the token from kubeconfig/in-cluster


class RawCoreApi:
    """Pods and Nodes as dicts, through a `kubernetes.client.ApiClient` (no generated models imported)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None, body: Any = None,
              content_type: str | None = None, request_timeout_s: float | None = None) -> Any:
        """One request; returns the urllib3 response (body not read), raises ApiException on non-2xx."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": JSON}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = self.api_client.param_serialize(
            method, path, query_params=query or None, header_params=headers, body=body, auth_settings=AUTH_SETTINGS
        )
        response = self.api_client.call_api(*request, _request_timeout=request_timeout_s)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        raw = self._call(method, path, **kwargs)
        try:
            decoded = json.loads(raw.data)
        finally:
            raw.release_conn()
        if not isinstance(decoded, dict):
            raise ValueError(f"{method} {path}: the API server answered {type(decoded).__name__}, not an object")
        return decoded

    def list_pods(self, field_selector: str, *, request_timeout_s: float = 30) -> dict[str, Any]:
        """The PodList (all namespaces) matching `field_selector`, e.g. "spec.nodeName=node-1"."""
        return self._json("GET", "/api/v1/pods", query=[("fieldSelector", field_selector)],
                          request_timeout_s=request_timeout_s)

    def watch_pods(self, *, field_selector: str, resource_version: str | None = None,
                   timeout_seconds: int | None = None, allow_watch_bookmarks: bool = False,
                   watch: bool = True, _preload_content: bool = False,
                   _request_timeout: float | None = None) -> Any:
        """Open a pod watch; returns the streaming urllib3 response, for `kubernetes.watch.Watch.stream`.

        `watch` and `_preload_content` are accepted because Watch.stream always passes them; the
        response is always a stream.
        """
        query: list[tuple[str, Any]] = [("fieldSelector", field_selector), ("watch", "true")]
        if resource_version is not None:
            query.append(("resourceVersion", resource_version))
        if timeout_seconds is not None:
            query.append(("timeoutSeconds", int(timeout_seconds)))
        if allow_watch_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        return self._call("GET", "/api/v1/pods", query=query, request_timeout_s=_request_timeout)

    def patch_pod_annotations(self, namespace: str, name: str, annotations: dict[str, str | None], *,
                              request_timeout_s: float = 30) -> None:
        """Merge-patch a pod's annotations (None removes one); the patched pod is not decoded."""
        raw = self._call("PATCH", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}",
                         body={"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH,
                         request_timeout_s=request_timeout_s)
        self._drain(raw)  # the patched pod is not built

    def read_pod(self, namespace: str, name: str, *, request_timeout_s: float = 30) -> dict[str, Any]:
        """The Pod as a dict."""
        return self._json("GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}",
                          request_timeout_s=request_timeout_s)

    def create_pod_binding(self, namespace: str, name: str, binding: dict[str, Any], *,
                           request_timeout_s: float = 30) -> None:
        """POST the pod's `binding` subresource (a v1 Binding); the answer (a Status) is read and dropped."""
        self._drain(self._call("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/"
                               f"{quote(name, safe='')}/binding", body=binding, content_type=JSON,
                               request_timeout_s=request_timeout_s))

    def create_event(self, namespace: str, event: dict[str, Any], *, request_timeout_s: float = 30) -> None:
        """POST a core/v1 Event; the created Event is read and dropped."""
        self._drain(self._call("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", body=event,
                               content_type=JSON, request_timeout_s=request_timeout_s))

    @staticmethod
    def _drain(raw: Any) -> None:
        """Hand the connection back to the pool without decoding the answer (unread, it stays checked out
        and the next call opens a new TLS connection)."""
        try:
            raw.drain_conn()
        finally:
            raw.release_conn()

    def read_node(self, name: str, *, request_timeout_s: float = 30) -> dict[str, Any]:
        """The Node as a dict."""
        return self._json("GET", f"/api/v1/nodes/{quote(name, safe='')}", request_timeout_s=request_timeout_s)

    def patch_node(self, name: str, body: dict[str, Any], *, request_timeout_s: float = 30) -> dict[str, Any]:
        """Merge-patch the Node; returns the patched Node as a dict."""
        return self._json("PATCH", f"/api/v1/nodes/{quote(name, safe='')}", body=body, content_type=MERGE_PATCH,
                          request_timeout_s=request_timeout_s)
