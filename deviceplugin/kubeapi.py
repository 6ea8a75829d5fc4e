"""The few Kubernetes API calls the device plugin makes, as raw JSON over the official client's REST layer.

Why not `kubernetes.client.CoreV1Api`: importing it imports ~250 generated pydantic model classes,
+21.6 MiB of RSS in a process whose whole budget is 80 MiB, and the plugin reads every answer as a
dict anyway. `ApiClient.param_serialize` + `ApiClient.call_api` are the same calls the typed API makes
underneath: auth (bearer token, client certificates, exec plugins through kubeconfig), TLS, the host
and the connection pool all come from the official client's `Configuration`, unchanged. Errors are the
client's own `ApiException` with the HTTP status, exactly as `CoreV1Api(..., _preload_content=False)`
raises them, so callers keep their `error.status == 410` / `409` handling.

The watch goes through `kubernetes.watch.Watch` too: `watch_pods` has the shape `Watch.stream` expects
of a list function (it sets `watch=True` and `_preload_content=False` and reads the returned urllib3
response line by line).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

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
        raw.drain_conn()  # return the connection to the pool without building the pod
        raw.release_conn()

    def read_node(self, name: str, *, request_timeout_s: float = 30) -> dict[str, Any]:
        """The Node as a dict."""
        return self._json("GET", f"/api/v1/nodes/{quote(name, safe='')}", request_timeout_s=request_timeout_s)

    def patch_node(self, name: str, body: dict[str, Any], *, request_timeout_s: float = 30) -> dict[str, Any]:
        """Merge-patch the Node; returns the patched Node as a dict."""
        return self._json("PATCH", f"/api/v1/nodes/{quote(name, safe='')}", body=body, content_type=MERGE_PATCH,
                          request_timeout_s=request_timeout_s)
