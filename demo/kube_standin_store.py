"""The object store behind the Kubernetes API stand-in: one lock, one resourceVersion counter, watches.

Semantics follow kube-apiserver where our programs depend on them: a single global resourceVersion,
optimistic concurrency (a stale metadata.resourceVersion in an update is a 409 Conflict), the status
subresource (main-resource writes keep the old status, /status writes change only status), watch
events replayed from a bounded history with 410 Gone once a resourceVersion has been compacted, and
selector-filtered watches that turn "started matching" into ADDED and "stopped matching" into
DELETED. Stored objects are never mutated in place: every write stores a new dict, so the snapshots
handed to watchers can be shared without copying.
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import queue
import random
import string
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from tensorai.demo.kube_standin_patch import PatchError, PatchFormatError, json_patch, merge_patch
from tensorai.demo.kube_standin_resources import ResourceError, normalize_node_resources, normalize_pod_resources
from tensorai.demo.kube_standin_select import Selector
from tensorai.proto import contract

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)

_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_object(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict:
    """A Kubernetes `Status` object, the body of every error response."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
    }
    if message:
        body["message"] = message
    if code >= 400:
        body["reason"] = reason if reason is not None else _REASONS.get(code, "Unknown")
    body["code"] = code
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    """An error the stand-in answers with a Status object and HTTP `code`."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status_object(code, message, reason, details)


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and what the real server indexes for it."""

    key: str  # store key and the name the Python helpers take ("pods", "gpuquotas", "events.events.k8s.io")
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    field_selectors: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


_META = frozenset({"metadata.name", "metadata.namespace"})
_EVENT_FIELDS = _META | frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("nodes", "", "v1", "nodes", "Node", False, True, _META | {"spec.unschedulable"}),
    ResourceType(
        "pods",
        "",
        "v1",
        "pods",
        "Pod",
        True,
        True,
        _META
        | {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        },
    ),
    ResourceType("events", "", "v1", "events", "Event", True, False, _EVENT_FIELDS),
    ResourceType("namespaces", "", "v1", "namespaces", "Namespace", False, True, _META | {"status.phase"}),
    ResourceType("events.events.k8s.io", "events.k8s.io", "v1", "events", "Event", True, False, _META),
    ResourceType("leases", "coordination.k8s.io", "v1", "leases", "Lease", True, False, _META),
    ResourceType(  # tensorai-webhook --patch-ca-bundle reads and JSON-patches its configuration
        "mutatingwebhookconfigurations",
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
        False,
        _META,
    ),
    ResourceType(
        contract.QUOTA_PLURAL,
        contract.QUOTA_GROUP,
        contract.QUOTA_VERSION,
        contract.QUOTA_PLURAL,
        contract.QUOTA_KIND,
        True,
        True,
        _META,
    ),
)
RESOURCES_BY_KEY = {resource.key: resource for resource in RESOURCES}
RESOURCES_BY_PATH = {(resource.group, resource.version, resource.plural): resource for resource in RESOURCES}
CUSTOM_RESOURCE_GROUPS = frozenset({contract.QUOTA_GROUP})

# Pod spec fields a real API server lets an update change (everything else is immutable after create).
_MUTABLE_POD_SPEC_FIELDS = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates")


def resource_type(key: str) -> ResourceType:
    """Look up a resource by the key the Python helpers accept; KeyError names the valid keys."""
    try:
        return RESOURCES_BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown resource {key!r}; the stand-in serves {', '.join(sorted(RESOURCES_BY_KEY))}") from None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Watcher:
    """One open watch: events reach its queue as (type, object) pairs; None ends the stream."""

    resource: ResourceType
    namespace: str | None
    selector: Selector
    events: queue.Queue = field(default_factory=queue.Queue)

    def offer(self, event_type: str, old: dict | None, new: dict) -> None:
        """Translate a store change into what this watcher sees through its namespace and selectors."""
        if self.namespace is not None and new.get("metadata", {}).get("namespace") != self.namespace:
            return
        new_matches = self.selector.matches(new)
        if event_type == "ADDED":
            if new_matches:
                self.events.put(("ADDED", new))
        elif event_type == "DELETED":
            if new_matches:
                self.events.put(("DELETED", new))
        else:
            old_matches = old is not None and self.selector.matches(old)
            if old_matches and new_matches:
                self.events.put(("MODIFIED", new))
            elif new_matches:
                self.events.put(("ADDED", new))
            elif old_matches:
                self.events.put(("DELETED", new))


@dataclass(frozen=True)
class _Change:
    resource_version: int
    resource: ResourceType
    event_type: str
    old: dict | None
    new: dict


class Store:
    """All objects of the stand-in, guarded by one lock; every write emits one watch event."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], dict]] = {resource.key: {} for resource in RESOURCES}
        self._resource_version = 0
        self._history: collections.deque[_Change] = collections.deque(maxlen=history_limit)
        # Watches from a resourceVersion below this get 410 Gone: their events are no longer kept.
        self._oldest_valid_version = 0
        self._watchers: list[Watcher] = []
        for namespace in ("default", "kube-system"):
            self._ensure_namespace(namespace)

    # --- reads -----------------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._resource_version

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> dict:
        with self._lock:
            obj = self._objects[resource.key].get(self._key(resource, namespace, name))
            if obj is None:
                raise self._not_found(resource, name)
            return obj

    def list(self, resource: ResourceType, namespace: str | None, selector: Selector) -> tuple[list[dict], int]:
        """Matching objects sorted by namespace/name, and the resourceVersion they were read at."""
        with self._lock:
            items = [
                obj
                for (obj_namespace, _), obj in sorted(self._objects[resource.key].items())
                if (namespace is None or obj_namespace == namespace) and selector.matches(obj)
            ]
            return items, self._resource_version

    # --- writes ----------------------------------------------------------------------------------
    def create(self, resource: ResourceType, namespace: str | None, body: Any, *, keep_status: bool = False) -> dict:
        """Create; like the real server, a create over HTTP drops a given status (pods start Pending).

        keep_status=True is for in-process seeding (tests, demo) that wants e.g. a Running pod at once.
        """
        if not isinstance(body, dict):
            raise ApiError(400, f"a {resource.kind} must be a JSON object, got {type(body).__name__}")
        obj = copy.deepcopy(body)
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = obj["metadata"] = {}
        if not isinstance(metadata, dict):
            raise ApiError(400, f"{resource.kind}.metadata must be an object")
        self._check_kind(resource, obj)
        if not metadata.get("name") and isinstance(metadata.get("generateName"), str) and metadata["generateName"]:
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            metadata["name"] = metadata["generateName"] + suffix
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(
                422, f"{resource.kind} is invalid: metadata.name: Required value: name or generateName is required"
            )
        namespace = self._check_namespace(resource, namespace, metadata, name)
        self._validate(resource, obj, name)
        self._normalize_resources(resource, obj, name)
        with self._lock:
            key = self._key(resource, namespace, name)
            if key in self._objects[resource.key]:
                raise ApiError(
                    409,
                    f'{resource.plural} "{name}" already exists',
                    "AlreadyExists",
                    {"name": name, "kind": resource.plural},
                )
            if namespace is not None:
                self._ensure_namespace(namespace)
            obj["apiVersion"] = resource.api_version
            obj["kind"] = resource.kind
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = _now()
            metadata.setdefault("generation", 1)
            for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                metadata.pop(server_owned, None)
            if resource.has_status and resource.key != "nodes" and not keep_status:
                obj.pop("status", None)
            if resource.key == "pods":
                status = obj.get("status")
                obj["status"] = status if isinstance(status, dict) else {}
                obj["status"].setdefault("phase", "Pending")
            return self._commit(resource, key, None, obj, "ADDED")

    def replace(self, resource: ResourceType, namespace: str | None, name: str, body: Any, *, status: bool) -> dict:
        """PUT: the whole object (or, with status=True, only its status) replaced, with rv precondition."""
        if not isinstance(body, dict):
            raise ApiError(400, f"a {resource.kind} must be a JSON object, got {type(body).__name__}")
        with self._lock:
            old = self.get(resource, namespace, name)
            return self._update(resource, old, copy.deepcopy(body), status=status)

    def patch(
        self, resource: ResourceType, namespace: str | None, name: str, content_type: str, body: Any, *, status: bool
    ) -> dict:
        """PATCH with a merge, strategic-merge (served as merge) or JSON patch."""
        if content_type == STRATEGIC_MERGE_PATCH and resource.group in CUSTOM_RESOURCE_GROUPS:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                f"{JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml (strategic merge patch is not "
                "supported for custom resources)",
            )
        with self._lock:
            old = self.get(resource, namespace, name)
            try:
                if content_type == JSON_PATCH:
                    patched = json_patch(old, body)
                else:
                    if not isinstance(body, dict):
                        raise PatchFormatError(f"a {content_type} body must be a JSON object")
                    patched = merge_patch(copy.deepcopy(old), body)
            except PatchFormatError as error:
                raise ApiError(400, str(error)) from error
            except PatchError as error:
                raise ApiError(422, str(error)) from error
            if not isinstance(patched, dict):
                raise ApiError(422, f"the patched {resource.kind} is not a JSON object")
            return self._update(resource, old, patched, status=status)

    def delete(self, resource: ResourceType, namespace: str | None, name: str, options: dict | None = None) -> dict:
        """Delete at once (no graceful termination, no finalizers); watchers get DELETED.

        `options` is a DeleteOptions body; its preconditions (uid, resourceVersion) are honoured with
        a 409 Conflict, which is how a controller deletes "the pod I saw" and not a recreated one.
        """
        preconditions = (options or {}).get("preconditions") if isinstance(options, dict) else None
        if preconditions is not None and not isinstance(preconditions, dict):
            raise ApiError(400, "DeleteOptions.preconditions must be an object")
        with self._lock:
            key = self._key(resource, namespace, name)
            old = self.get(resource, namespace, name)
            for field_name in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field_name)
                if wanted not in (None, "") and str(wanted) != old["metadata"].get(field_name):
                    raise ApiError(
                        409,
                        f"Precondition failed: {field_name}: {wanted}, object has {old['metadata'].get(field_name)}",
                        "Conflict",
                        {"name": name, "kind": resource.plural},
                    )
            del self._objects[resource.key][key]
            gone = copy.deepcopy(old)
            return self._commit(resource, None, old, gone, "DELETED")

    def bind(self, namespace: str, name: str, binding: Any) -> None:
        """Binding subresource: sets spec.nodeName once; a second bind is 409 like the real server."""
        pods = RESOURCES_BY_KEY["pods"]
        if not isinstance(binding, dict):
            raise ApiError(400, "a Binding must be a JSON object")
        target = binding.get("target")
        node_name = target.get("name") if isinstance(target, dict) else None
        if not isinstance(node_name, str) or not node_name:
            raise ApiError(422, "Binding is invalid: target.name: Required value")
        binding_metadata = binding.get("metadata") if isinstance(binding.get("metadata"), dict) else {}
        annotations = binding_metadata.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise ApiError(422, "Binding is invalid: metadata.annotations must map strings to strings")
        with self._lock:
            old = self.get(pods, namespace, name)
            current = old.get("spec", {}).get("nodeName")
            if current:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already assigned '
                    f'to node "{current}"',
                    "Conflict",
                    {"name": name, "kind": "pods/binding"},
                )
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["nodeName"] = node_name
            if annotations:
                new["metadata"].setdefault("annotations", {}).update(annotations)
            conditions = [
                c for c in new.setdefault("status", {}).get("conditions", []) if c.get("type") != "PodScheduled"
            ]
            conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()})
            new["status"]["conditions"] = conditions
            self._commit(pods, self._key(pods, namespace, name), old, new, "MODIFIED")

    # --- watches ---------------------------------------------------------------------------------
    def watch(
        self, resource: ResourceType, namespace: str | None, selector: Selector, resource_version: str | None
    ) -> Watcher:
        """Register a watcher, pre-filled with the events it missed (or the current objects as ADDED)."""
        watcher = Watcher(resource=resource, namespace=namespace, selector=selector)
        with self._lock:
            if resource_version in (None, "", "0"):
                for (obj_namespace, _), obj in sorted(self._objects[resource.key].items()):
                    if (namespace is None or obj_namespace == namespace) and selector.matches(obj):
                        watcher.events.put(("ADDED", obj))
            else:
                since = self._parse_resource_version(resource_version)
                if since < self._oldest_valid_version:
                    watcher.events.put(("ERROR", self.gone_status(since)))
                    watcher.events.put(None)
                    return watcher
                for change in self._history:
                    if change.resource_version > since and change.resource is resource:
                        watcher.offer(change.event_type, change.old, change.new)
            self._watchers.append(watcher)
        return watcher

    @property
    def watcher_count(self) -> int:
        """Open watches (tests use it to check that vanished clients are forgotten)."""
        with self._lock:
            return len(self._watchers)

    def bookmark_version(self, watcher: Watcher) -> int | None:
        """The version a BOOKMARK may claim: only when nothing is queued, so no event is skipped."""
        with self._lock:
            return self._resource_version if watcher.events.empty() else None

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def expire_watches(self) -> None:
        """End every open watch and compact history: clients resuming from an old version get 410."""
        with self._lock:
            self._resource_version += 1  # a fresh list after this returns a version that is still valid
            self._oldest_valid_version = self._resource_version
            self._history.clear()
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.events.put(None)

    def close_watches(self) -> None:
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.events.put(None)

    def gone_status(self, since: int) -> dict:
        return status_object(410, f"too old resource version: {since} ({self._oldest_valid_version})", "Expired")

    # --- internals -------------------------------------------------------------------------------
    def _update(self, resource: ResourceType, old: dict, new: dict, *, status: bool) -> dict:
        metadata = new.get("metadata")
        if not isinstance(metadata, dict):
            metadata = new["metadata"] = {}
        old_metadata = old["metadata"]
        for immutable in ("name", "namespace"):
            if metadata.get(immutable, old_metadata.get(immutable)) != old_metadata.get(immutable):
                raise ApiError(422, f"{resource.kind} is invalid: metadata.{immutable}: field is immutable")
            if immutable in old_metadata:  # a patch that dropped them must not leave a nameless object
                metadata[immutable] = old_metadata[immutable]
        self._check_kind(resource, new)
        wanted_version = metadata.get("resourceVersion")
        if wanted_version not in (None, "") and str(wanted_version) != old_metadata.get("resourceVersion"):
            raise ApiError(
                409,
                f"Operation cannot be fulfilled on {resource.plural}.{resource.group or 'core'} "
                f'"{old_metadata["name"]}": the object has been modified; please apply your changes to the '
                "latest version and try again",
                "Conflict",
                {"name": old_metadata["name"], "kind": resource.plural},
            )
        if status:
            # /status changes only status (plus nothing else), like the real subresource.
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if resource.has_status:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            for server_owned in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if server_owned in old_metadata:
                    metadata[server_owned] = old_metadata[server_owned]
            if resource.key == "pods":
                self._check_pod_spec_update(old, result)
            self._validate(resource, result, old_metadata["name"])
            if result.get("spec") != old.get("spec"):
                metadata["generation"] = int(old_metadata.get("generation", 1)) + 1
        self._normalize_resources(resource, result, old_metadata["name"])
        result["apiVersion"] = resource.api_version
        result["kind"] = resource.kind
        result["metadata"]["resourceVersion"] = old_metadata["resourceVersion"]
        if result == old:
            return old  # like kube-apiserver: a write that changes nothing keeps the version, emits no event
        namespace = old_metadata.get("namespace")
        return self._commit(resource, self._key(resource, namespace, old_metadata["name"]), old, result, "MODIFIED")

    def _commit(
        self, resource: ResourceType, key: tuple[str, str] | None, old: dict | None, new: dict, event: str
    ) -> dict:
        """Stamp a new resourceVersion, store `new` (unless deleting) and tell the watchers."""
        self._resource_version += 1
        new["metadata"]["resourceVersion"] = str(self._resource_version)
        if key is not None:
            self._objects[resource.key][key] = new
        change = _Change(self._resource_version, resource, event, old, new)
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._oldest_valid_version = self._history[0].resource_version
        self._history.append(change)
        for watcher in self._watchers:
            if watcher.resource is resource:
                watcher.offer(event, old, new)
        return new

    def _ensure_namespace(self, namespace: str) -> None:
        """Namespaces exist implicitly: the first object in one creates it (a real server would 404)."""
        namespaces = RESOURCES_BY_KEY["namespaces"]
        key = ("", namespace)
        if key in self._objects["namespaces"]:
            return
        obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now()},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        self._commit(namespaces, key, None, obj, "ADDED")

    @staticmethod
    def _key(resource: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "") if resource.namespaced else "", name

    @staticmethod
    def _not_found(resource: ResourceType, name: str) -> ApiError:
        group = f".{resource.group}" if resource.group else ""
        return ApiError(
            404, f'{resource.plural}{group} "{name}" not found', "NotFound", {"name": name, "kind": resource.plural}
        )

    @staticmethod
    def _parse_resource_version(text: str) -> int:
        if not text.isdigit() or len(text) > 18:
            raise ApiError(400, f"invalid resourceVersion {text!r}: expected a non-negative integer")
        return int(text)

    @staticmethod
    def _check_kind(resource: ResourceType, obj: dict) -> None:
        kind = obj.get("kind")
        if kind not in (None, "", resource.kind):
            raise ApiError(400, f"the body is a {kind!r}, expected a {resource.kind!r} for {resource.plural}")

    @staticmethod
    def _check_namespace(resource: ResourceType, namespace: str | None, metadata: dict, name: str) -> str | None:
        if not resource.namespaced:
            metadata.pop("namespace", None)
            return None
        body_namespace = metadata.get("namespace")
        if namespace is None:
            namespace = body_namespace if isinstance(body_namespace, str) and body_namespace else "default"
        elif body_namespace not in (None, "", namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        metadata["namespace"] = namespace
        return namespace

    @staticmethod
    def _validate(resource: ResourceType, obj: dict, name: str) -> None:
        """The few checks that keep clients from choking on objects their models cannot represent."""
        metadata = obj["metadata"]
        for map_field in ("labels", "annotations"):
            value = metadata.get(map_field)
            if value is not None and (
                not isinstance(value, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                raise ApiError(
                    422, f'{resource.kind} "{name}" is invalid: metadata.{map_field}: must map strings to strings'
                )
        if resource.key == "pods":
            spec = obj.get("spec")
            containers = spec.get("containers") if isinstance(spec, dict) else None
            if not isinstance(containers, list) or not containers:
                raise ApiError(422, f'Pod "{name}" is invalid: spec.containers: Required value')
            for list_name in ("containers", "initContainers"):
                for index, container in enumerate(spec.get(list_name) or []):
                    if (
                        not isinstance(container, dict)
                        or not isinstance(container.get("name"), str)
                        or not container["name"]
                    ):
                        raise ApiError(422, f'Pod "{name}" is invalid: spec.{list_name}[{index}].name: Required value')
        if resource.key == "events" and not isinstance(obj.get("involvedObject"), dict):
            raise ApiError(422, f'Event "{name}" is invalid: involvedObject: Required value')

    @staticmethod
    def _normalize_resources(resource: ResourceType, obj: dict, name: str) -> None:
        """Quantities stored canonical (`8000` -> `8k`) and checked, as a real API server does."""
        try:
            if resource.key == "pods":
                normalize_pod_resources(obj)
            elif resource.key == "nodes":
                normalize_node_resources(obj)
        except ResourceError as error:
            raise ApiError(422, f'{resource.kind} "{name}" is invalid: {error}') from None

    @staticmethod
    def _check_pod_spec_update(old: dict, new: dict) -> None:
        """Pod specs are immutable except a few fields; spec.nodeName changes only through a Binding."""

        def comparable(spec: Any) -> Any:
            if not isinstance(spec, dict):
                return spec
            stripped = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_SPEC_FIELDS}
            for list_name in ("containers", "initContainers"):
                if isinstance(stripped.get(list_name), list):
                    stripped[list_name] = [
                        {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                        for c in stripped[list_name]
                    ]
            return stripped

        if comparable(old.get("spec")) != comparable(new.get("spec")):
            name = old["metadata"]["name"]
            raise ApiError(
                422,
                f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields other than '
                "`spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, "
                "`spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds`",
            )
