"""Mutating admission: `tensor.ai/vgpu` in GPUs -> the integer `tensor.ai/vgpu-milli` the API accepts.

The API server rejects non-integer extended resources, so `tensor.ai/vgpu: 0.25` can only reach
storage through this rewrite. Everything here is pure: an AdmissionReview dict goes in, a
`Decision` (allowed / denied, JSON Patch, warnings) comes out. The only outside fact it may need
(a namespace's GPUQuota per-pod maximum) arrives through the `QuotaSource` it is handed, so the
HTTPS server, the tests and any other driver call the same code.

What is rewritten, where (JSON Pointer prefixes): Pods (``), the templates of Deployments,
ReplicaSets, StatefulSets, DaemonSets, Jobs and ReplicationControllers (`/spec/template`), CronJobs
(`/spec/jobTemplate/spec/template`) and PodTemplates (`/template`). The user's original request is
kept in the template's (or Pod's) `tensor.ai/vgpu-requested` annotation as compact JSON, e.g.
`{"containers":{"main":"0.25"},"initContainers":{"setup":"1"}}`, GPUs as plain decimals.

Before any rewrite, an object whose Pod spec names any of our resources (`tensor.ai/vgpu`, `-milli`,
`-memory`) is denied if it could reach GPUs it was not given (`isolation_violations`: privileged,
SYS_ADMIN, hostPID/hostIPC, hostPath /dev, the env names the device plugin sets); so is a
`kubectl debug` ephemeral container that would add such an escape to a running vGPU pod.
"""

from __future__ import annotations

import base64
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from tensorai.proto import contract
from tensorai.proto.quantity import QuantityError, parse_quantity

ADMISSION_API_VERSION = "admission.k8s.io/v1"
ADMISSION_KIND = "AdmissionReview"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"  # written by kubectl apply
DEFAULT_SCHEDULER = "default-scheduler"
# Far above any node's GPU count; refuses hostile values such as 1e30 before they become int64 overflows.
MAX_WHOLE_GPUS_PER_CONTAINER = 1024
CONTAINER_GROUPS = ("containers", "initContainers")

# (API group, kind) -> JSON path from the object to the Pod-shaped part that holds metadata + spec.
TEMPLATE_LOCATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "ReplicationController"): ("spec", "template"),
    ("", "PodTemplate"): ("template",),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}


# Every resource name of ours a container may ask for. A pod naming any of them runs on a GPU node
# under our isolation rules (the isolation check below), so the matchConditions must send it here too:
# `tensor.ai/vgpu-milli` written directly skips the rewrite but must not skip the check.
VGPU_RESOURCES = (contract.RESOURCE_VGPU, contract.RESOURCE_VGPU_MILLI, contract.RESOURCE_VGPU_MEMORY)


def _cel_mentions_vgpu(containers: str) -> str:
    resources = "c.resources"

    def names_one(section: str) -> str:
        keys = " || ".join(f"'{name}' in {resources}.{section}" for name in VGPU_RESOURCES)
        return f"(has({resources}.{section}) && ({keys}))"

    return (
        f"(has({containers}) && {containers}.exists(c, has({resources}) && ("
        f"{names_one('limits')} || {names_one('requests')})))"
    )


def _cel_for_location(root: str, location: tuple[str, ...]) -> str:
    template = ".".join((root, *location))
    guards = [f"has({'.'.join((root, *location[: depth + 1]))})" for depth in range(len(location))]
    spec = f"{template}.spec"
    metadata = f"{template}.metadata"
    body = (
        f"(has({spec}) && ({_cel_mentions_vgpu(spec + '.containers')} || "
        f"{_cel_mentions_vgpu(spec + '.initContainers')})) || "
        f"(has({metadata}) && has({metadata}.annotations) && "
        f"'{contract.ANNOTATION_VGPU_REQUESTED}' in {metadata}.annotations)"
    )
    return "(" + " && ".join([*guards, f"({body})"]) + ")"


def _build_match_condition() -> str:
    # One disjunct per distinct template location; `has()` guards make each false for other kinds.
    locations = sorted(set(TEMPLATE_LOCATIONS.values()), key=len)
    return " || ".join(_cel_for_location("object", location) for location in locations)


# The MutatingWebhookConfiguration's matchConditions expression: true only for objects that name
# tensor.ai/vgpu, tensor.ai/vgpu-milli or tensor.ai/vgpu-memory in a container's (or init container's)
# requests or limits, or carry the annotation
# this webhook writes (so UPDATEs that drop the request still reach it). A webhook outage then
# blocks only vGPU objects. Evaluated by the API server (CEL); tested here with cel-python.
MATCH_CONDITION_NAME = "names-tensor-ai-vgpu"
MATCH_CONDITION_EXPRESSION = _build_match_condition()


class ReviewError(ValueError):
    """A body that is not an AdmissionReview we can answer (no uid to echo): the server sends 400."""


class QuotaLookupError(RuntimeError):
    """The GPUQuota objects of a namespace could not be read."""


@dataclass(frozen=True, slots=True)
class PodGpuLimit:
    """The strictest per-pod GPU maximum among a namespace's GPUQuotas, and which quota set it."""

    max_gpus: Decimal
    quota_name: str


# namespace -> the strictest per-pod maximum, None when no GPUQuota sets one; raises QuotaLookupError.
QuotaSource = Callable[[str], PodGpuLimit | None]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Behaviour switches of the webhook (from the CLI)."""

    scheduler_name: str = ""  # inject as spec.schedulerName of vGPU pods; empty = leave alone


@dataclass(slots=True)
class Decision:
    """The answer to one AdmissionReview; `to_review()` renders the exact v1 response."""

    uid: str
    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    status_code: int = 200
    reason: str = ""
    message: str = ""
    kind: str = ""
    operation: str = ""

    @property
    def outcome(self) -> str:
        """`patched`, `allowed` or `denied` (a metrics label)."""
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"

    def to_review(self) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if not self.allowed:
            response["status"] = {
                "status": "Failure",
                "code": self.status_code,
                "reason": self.reason,
                "message": self.message,
            }
        elif self.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(self.patch, separators=(",", ":")).encode()).decode()
        if self.warnings:
            response["warnings"] = list(self.warnings)
        return {"apiVersion": ADMISSION_API_VERSION, "kind": ADMISSION_KIND, "response": response}


class _Denied(Exception):
    """Internal: stop processing and deny with this message."""

    def __init__(self, message: str, *, code: int = 422, reason: str = "Invalid") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901): `/` inside a key becomes `~1`, `~` becomes `~0`."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def format_gpus(gpus: Decimal) -> str:
    """GPUs as a plain decimal without exponent or trailing zeros: 0.25, 1, 2."""
    text = format(gpus.normalize(), "f")
    return text if text != "-0" else "0"


def _dict_at(document: Any, path: tuple[str, ...]) -> dict[str, Any] | None:
    """The dict at `path`, None when any step is missing or not a dict."""
    node = document
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, dict) else None


# --- parsing the review ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    uid: str
    group: str
    kind: str
    operation: str
    namespace: str
    obj: dict[str, Any] | None
    old_obj: dict[str, Any] | None
    sub_resource: str = ""


def _parse_review(document: Any) -> _Request:
    if not isinstance(document, dict):
        raise ReviewError(f"body must be a JSON object (an AdmissionReview), got {type(document).__name__}")
    if document.get("kind") != ADMISSION_KIND or document.get("apiVersion") != ADMISSION_API_VERSION:
        raise ReviewError(
            f"expected apiVersion {ADMISSION_API_VERSION!r} kind {ADMISSION_KIND!r}, got "
            f"{document.get('apiVersion')!r} {document.get('kind')!r} (set admissionReviewVersions: [v1])"
        )
    request = document.get("request")
    if not isinstance(request, dict):
        raise ReviewError("AdmissionReview.request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview.request.uid must be a non-empty string")
    kind = request.get("kind")
    kind = kind if isinstance(kind, dict) else {}
    group, kind_name = kind.get("group", ""), kind.get("kind", "")
    operation = request.get("operation", "")
    namespace = request.get("namespace") or ""
    obj, old_obj = request.get("object"), request.get("oldObject")
    sub_resource = request.get("subResource") or ""
    problems = []
    if not isinstance(group, str) or not isinstance(kind_name, str):
        problems.append("request.kind.group and request.kind.kind must be strings")
    if not isinstance(operation, str):
        problems.append("request.operation must be a string")
    if not isinstance(namespace, str):
        problems.append("request.namespace must be a string")
    if obj is not None and not isinstance(obj, dict):
        problems.append("request.object must be an object or null")
    if old_obj is not None and not isinstance(old_obj, dict):
        problems.append("request.oldObject must be an object or null")
    if not isinstance(sub_resource, str):
        problems.append("request.subResource must be a string")
    if problems:
        raise _RequestProblem(uid, "; ".join(problems))
    return _Request(uid, group, kind_name, operation, namespace, obj, old_obj, sub_resource)


class _RequestProblem(Exception):
    def __init__(self, uid: str, message: str) -> None:
        super().__init__(message)
        self.uid = uid
        self.message = message


# --- GPU isolation ---------------------------------------------------------------------------

# Env names the device plugin's Allocate response sets (sharing.py): the GPUs the container toolkit
# mounts and the share the worker enforces. A user value would either ask the runtime for other GPUs
# or contradict the share, so a vGPU pod may not set them itself.
PLUGIN_ENV_NAMES = frozenset({
    contract.ENV_VISIBLE_DEVICES, contract.ENV_VGPU_MILLI, contract.ENV_VGPU_MEMORY_MIB,
    contract.ENV_SHARING_MODE, contract.ENV_MPS_PIPE_DIRECTORY, contract.ENV_MPS_PINNED_DEVICE_MEM_LIMIT,
    contract.ENV_MPS_ACTIVE_THREAD_PERCENTAGE,
})
# Capabilities that reach every device node (SYS_ADMIN: mount, device cgroup tricks); ALL includes it.
FORBIDDEN_CAPABILITIES = frozenset({"SYS_ADMIN", "ALL"})
ISOLATION_GROUPS = ("containers", "initContainers", "ephemeralContainers")


def _names_vgpu_resource(spec: dict[str, Any]) -> bool:
    """True when any container or init container names one of our resources in requests or limits."""
    for group in CONTAINER_GROUPS:
        containers = spec.get(group)
        if not isinstance(containers, list):
            continue
        for container in containers:
            if isinstance(container, dict) and any(_names_resource(container, name) for name in VGPU_RESOURCES):
                return True
    return False


def _reaches_dev(path: str) -> bool:
    """A host path that is /dev, below it, or above it (`/`): mounting it hands over every GPU's device node."""
    normalised = "/" + posixpath.normpath("/" + path).lstrip("/")
    return normalised in ("/", "/dev") or normalised.startswith("/dev/")


def _container_violations(container: dict[str, Any], cwhere: str) -> Iterator[str]:
    security = container.get("securityContext")
    if isinstance(security, dict):
        if security.get("privileged") is True:
            yield f"{cwhere}: securityContext.privileged is true (a privileged container sees every GPU of its node)"
        capabilities = security.get("capabilities")
        added = capabilities.get("add") if isinstance(capabilities, dict) else None
        for capability in added if isinstance(added, list) else []:
            name = str(capability).upper().removeprefix("CAP_")
            if name in FORBIDDEN_CAPABILITIES:
                yield f"{cwhere}: securityContext.capabilities.add has {capability} (it can reach every device node)"
    env = container.get("env")
    for entry in env if isinstance(env, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name in PLUGIN_ENV_NAMES:
            yield (f"{cwhere}: env {name} is set by the device plugin for the GPUs it allocates; a value of "
                   "your own could select other GPUs or contradict the share (remove it)")


def isolation_violations(template: dict[str, Any], where: str) -> list[str]:
    """Every way this Pod-shaped object would escape the GPU isolation of a vGPU pod, one reason each.

    Empty when the object names none of our resources: other pods are PodSecurity's business, and
    denying them here would make a webhook outage block unrelated workloads."""
    spec = _dict_at(template, ("spec",))
    if spec is None or not _names_vgpu_resource(spec):
        return []
    violations: list[str] = []
    for field_name in ("hostPID", "hostIPC"):
        if spec.get(field_name) is True:
            violations.append(f"{where}.spec.{field_name} is true (it shares the node's processes or memory "
                              "with every other GPU pod)")
    volumes = spec.get("volumes")
    for index, volume in enumerate(volumes if isinstance(volumes, list) else []):
        host_path = _dict_at(volume, ("hostPath",))
        path = host_path.get("path") if host_path else None
        if isinstance(path, str) and _reaches_dev(path):
            name = volume.get("name") if isinstance(volume, dict) else None
            violations.append(f"{where}.spec.volumes[{index}] ({name}): hostPath {path} exposes the node's "
                              "device nodes, every GPU included")
    for group in ISOLATION_GROUPS:
        containers = spec.get(group)
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            if isinstance(container, dict):
                name = container.get("name")
                key = name if isinstance(name, str) and name else f"#{index}"
                violations.extend(_container_violations(container, f"{where}.spec.{group}[{index}] ({key})"))
    return violations


def _check_isolation(template: dict[str, Any], where: str) -> None:
    violations = isolation_violations(template, where)
    if violations:
        raise _Denied(f"a pod that asks for {contract.RESOURCE_VGPU} GPUs must stay inside the GPUs it is given, "
                      f"but: {'; '.join(violations)}", code=403, reason="Forbidden")


# --- the per-template rewrite ----------------------------------------------------------------


@dataclass(slots=True)
class _Share:
    """One container's GPU share after the rewrite (for the per-pod quota check)."""

    group: str
    milli: int
    sidecar: bool


def _read_record(template: dict[str, Any] | None) -> tuple[dict[str, dict[str, str]] | None, str | None]:
    """The webhook's own annotation on a template: (parsed record or None, raw text or None)."""
    annotations = _dict_at(template, ("metadata", "annotations"))
    raw = annotations.get(contract.ANNOTATION_VGPU_REQUESTED) if annotations else None
    if not isinstance(raw, str):
        return None, None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None, raw
    if not isinstance(parsed, dict):
        return None, raw
    record: dict[str, dict[str, str]] = {}
    for group in CONTAINER_GROUPS:
        entries = parsed.get(group, {})
        if not isinstance(entries, dict):
            return None, raw
        record[group] = {str(name): str(value) for name, value in entries.items()}
    return record, raw


def encode_record(record: dict[str, dict[str, str]]) -> str:
    """The annotation text: compact, key-sorted JSON, empty groups left out (stable for idempotency)."""
    return json.dumps({group: record[group] for group in CONTAINER_GROUPS if record.get(group)},
                      separators=(",", ":"), sort_keys=True)


def _containers(spec: dict[str, Any] | None, group: str, where: str) -> list[Any]:
    if spec is None:
        return []
    containers = spec.get(group)
    if containers is None:
        return []
    if not isinstance(containers, list):
        raise _Denied(f"{where}.spec.{group} must be a list, got {type(containers).__name__}", code=400,
                      reason="BadRequest")
    return containers


def _container_by_name(template: dict[str, Any] | None, group: str, name: str) -> dict[str, Any] | None:
    spec = _dict_at(template, ("spec",))
    containers = spec.get(group) if spec else None
    if not isinstance(containers, list):
        return None
    for container in containers:
        if isinstance(container, dict) and container.get("name") == name:
            return container
    return None


def _names_resource(container: dict[str, Any] | None, resource: str) -> bool:
    if container is None:
        return False
    return any(resource in (_dict_at(container, ("resources", section)) or {}) for section in ("limits", "requests"))


def _apply_owners(obj: dict[str, Any] | None, location: tuple[str, ...], group: str, name: str) -> set[str]:
    """Managers whose server-side Apply owns `tensor.ai/vgpu` of this container (managedFields)."""
    managed = _dict_at(obj, ("metadata",))
    entries = managed.get("managedFields") if managed else None
    owners: set[str] = set()
    if not isinstance(entries, list):
        return owners
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("operation") != "Apply":
            continue
        node = _dict_at(entry, ("fieldsV1", *(f"f:{step}" for step in location), "f:spec", f"f:{group}"))
        if node is None:
            continue
        for key, container_fields in node.items():
            if not key.startswith("k:") or not isinstance(container_fields, dict):
                continue
            try:
                container_key = json.loads(key[2:])
            except (ValueError, RecursionError):
                continue
            if not isinstance(container_key, dict) or container_key.get("name") != name:
                continue
            for section in ("f:limits", "f:requests"):
                if f"f:{contract.RESOURCE_VGPU}" in (_dict_at(container_fields, ("f:resources", section)) or {}):
                    owners.add(str(entry.get("manager", "")))
    return owners


@dataclass(slots=True)
class _UpdateContext:
    """What an UPDATE offers to tell "the user removed tensor.ai/vgpu" from "never touched it"."""

    obj: dict[str, Any]
    old_obj: dict[str, Any] | None
    location: tuple[str, ...]

    def last_applied_template(self) -> dict[str, Any] | None:
        annotations = _dict_at(self.obj, ("metadata", "annotations"))
        raw = annotations.get(LAST_APPLIED_ANNOTATION) if annotations else None
        if not isinstance(raw, str):
            return None
        try:
            applied = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return _dict_at(applied, self.location) if self.location else applied if isinstance(applied, dict) else None

    def user_removed(self, group: str, name: str) -> bool:
        applied = self.last_applied_template()
        applied_container = _container_by_name(applied, group, name)
        if applied_container is not None:
            # client-side apply: the manifest the user just applied is the truth about this container
            return not (_names_resource(applied_container, contract.RESOURCE_VGPU)
                        or _names_resource(applied_container, contract.RESOURCE_VGPU_MILLI))
        owners_now = _apply_owners(self.obj, self.location, group, name)
        owners_before = _apply_owners(self.old_obj, self.location, group, name)
        # server-side apply: a field manager that owned tensor.ai/vgpu gave it up in this apply
        return bool(owners_before) and not owners_now


def _parse_share(container: dict[str, Any], where: str) -> Decimal | None:
    """GPUs the container asks for in tensor.ai/vgpu (None: it does not); denies invalid values."""
    values: dict[str, Decimal] = {}
    for section in ("limits", "requests"):
        resources = container.get("resources")
        if resources is None:
            continue
        if not isinstance(resources, dict):
            raise _Denied(f"{where}.resources must be an object", code=400, reason="BadRequest")
        entries = resources.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise _Denied(f"{where}.resources.{section} must be an object", code=400, reason="BadRequest")
        if contract.RESOURCE_VGPU in entries:
            raw = entries[contract.RESOURCE_VGPU]
            try:
                values[section] = parse_quantity(raw)
            except QuantityError as error:
                raise _Denied(f"{where}.resources.{section}[{contract.RESOURCE_VGPU}]: {error}") from error
    if not values:
        return None
    if len(values) == 2 and values["limits"] != values["requests"]:
        raise _Denied(
            f"{where}: {contract.RESOURCE_VGPU} request {format_gpus(values['requests'])} must equal its limit "
            f"{format_gpus(values['limits'])} (GPU shares cannot be overcommitted; set only limits)"
        )
    return values.get("limits", values.get("requests"))


def _milli_of(gpus: Decimal, where: str) -> int:
    if gpus < 0:
        raise _Denied(f"{where}: {contract.RESOURCE_VGPU} {format_gpus(gpus)} is negative; ask for 0 < GPUs <= 1 "
                      "(a share, e.g. 0.25) or a whole number of GPUs (e.g. 2)")
    if gpus > 1 and gpus != gpus.to_integral_value():
        raise _Denied(f"{where}: {contract.RESOURCE_VGPU} {format_gpus(gpus)} can never be placed: a share above one "
                      f"GPU must be a whole number of GPUs (use {format_gpus(gpus.to_integral_value(ROUND_CEILING))} "
                      f"or at most 1)")
    if gpus > MAX_WHOLE_GPUS_PER_CONTAINER:
        raise _Denied(f"{where}: {contract.RESOURCE_VGPU} {format_gpus(gpus)} is more GPUs than any node has "
                      f"(at most {MAX_WHOLE_GPUS_PER_CONTAINER})")
    # The API server already rounds to whole milli (0.0005 -> 1m); round up the same way for raw input.
    return int((gpus * contract.MILLI_PER_GPU).to_integral_value(rounding=ROUND_CEILING))


def _existing_milli(container: dict[str, Any]) -> int | None:
    for section in ("limits", "requests"):
        entries = _dict_at(container, ("resources", section))
        if entries and contract.RESOURCE_VGPU_MILLI in entries:
            try:
                return int(parse_quantity(entries[contract.RESOURCE_VGPU_MILLI]))
            except (QuantityError, ValueError, ArithmeticError):
                return None
    return None


def _set_milli_ops(prefix: tuple[str | int, ...], container: dict[str, Any], milli: int | None) -> Iterator[dict]:
    """Ops that drop tensor.ai/vgpu and set (or, with milli None, drop) tensor.ai/vgpu-milli in both sections."""
    resources = container.get("resources")
    for section in ("limits", "requests"):
        entries = resources.get(section) if isinstance(resources, dict) else None
        if isinstance(entries, dict):
            if contract.RESOURCE_VGPU in entries:
                yield {"op": "remove", "path": pointer(*prefix, "resources", section, contract.RESOURCE_VGPU)}
            if milli is not None:
                yield {"op": "add", "path": pointer(*prefix, "resources", section, contract.RESOURCE_VGPU_MILLI),
                       "value": str(milli)}
            elif contract.RESOURCE_VGPU_MILLI in entries:
                yield {"op": "remove", "path": pointer(*prefix, "resources", section, contract.RESOURCE_VGPU_MILLI)}
        elif milli is not None and isinstance(resources, dict):
            yield {"op": "add", "path": pointer(*prefix, "resources", section),
                   "value": {contract.RESOURCE_VGPU_MILLI: str(milli)}}


@dataclass(slots=True)
class _TemplateResult:
    ops: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shares: list[_Share] = field(default_factory=list)
    rewrote: bool = False


def _rewrite_template(template: dict[str, Any], prefix: tuple[str, ...], where: str,
                      update: _UpdateContext | None, old_template: dict[str, Any] | None,
                      config: WebhookConfig) -> _TemplateResult:
    result = _TemplateResult()
    spec = template.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise _Denied(f"{where}.spec must be an object", code=400, reason="BadRequest")
    record, raw_record = _read_record(template)
    if raw_record is not None and record is None:
        result.warnings.append(f"{where}: ignored a malformed {contract.ANNOTATION_VGPU_REQUESTED} annotation")
    if record is None and old_template is not None:
        record, _ = _read_record(old_template)
    previous = record or {group: {} for group in CONTAINER_GROUPS}
    new_record: dict[str, dict[str, str]] = {group: {} for group in CONTAINER_GROUPS}

    for group in CONTAINER_GROUPS:
        for index, container in enumerate(_containers(spec, group, where)):
            if not isinstance(container, dict):
                raise _Denied(f"{where}.spec.{group}[{index}] must be an object", code=400, reason="BadRequest")
            name = container.get("name")
            key = name if isinstance(name, str) and name else f"#{index}"
            cwhere = f"{where}.spec.{group}[{index}] ({key})"
            path = (*prefix, "spec", group, index)
            gpus = _parse_share(container, cwhere)
            sidecar = group == "initContainers" and container.get("restartPolicy") == "Always"
            if gpus is not None:
                if gpus == 0:
                    result.ops.extend(_set_milli_ops(path, container, None))
                    result.warnings.append(f"{cwhere}: {contract.RESOURCE_VGPU}: 0 asks for no GPU; removed it")
                    result.rewrote = True
                    continue
                milli = _milli_of(gpus, cwhere)
                existing = _existing_milli(container)
                if existing is not None and existing != milli and key not in previous.get(group, {}):
                    result.warnings.append(f"{cwhere}: {contract.RESOURCE_VGPU} {format_gpus(gpus)} replaces "
                                           f"{contract.RESOURCE_VGPU_MILLI} {existing}")
                result.ops.extend(_set_milli_ops(path, container, milli))
                new_record[group][key] = format_gpus(gpus)
                result.shares.append(_Share(group, milli, sidecar))
                result.rewrote = True
                continue
            existing = _existing_milli(container)
            recorded = previous.get(group, {}).get(key)
            if existing is not None and recorded is not None:
                if update is not None and update.user_removed(group, key):
                    result.ops.extend(_set_milli_ops(path, container, None))
                    result.warnings.append(f"{cwhere}: {contract.RESOURCE_VGPU} was removed from the manifest, so "
                                           f"its {contract.RESOURCE_VGPU_MILLI} {existing} share was removed too")
                    result.rewrote = True
                    continue
                new_record[group][key] = recorded
            if existing is not None:
                result.shares.append(_Share(group, existing, sidecar))

    _record_ops(template, prefix, new_record, raw_record, result)
    if config.scheduler_name and spec is not None and any(new_record.values()):
        current = spec.get("schedulerName")
        if current in (None, "", DEFAULT_SCHEDULER) and current != config.scheduler_name:
            result.ops.append({"op": "add", "path": pointer(*prefix, "spec", "schedulerName"),
                               "value": config.scheduler_name})
    return result


def _record_ops(template: dict[str, Any], prefix: tuple[str, ...], new_record: dict[str, dict[str, str]],
                raw_record: str | None, result: _TemplateResult) -> None:
    """Keep the annotation equal to what the webhook rewrote; drop it when nothing is left."""
    metadata = template.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    key = contract.ANNOTATION_VGPU_REQUESTED
    if any(new_record.values()):
        text = encode_record(new_record)
        if text == raw_record:
            return
        if not isinstance(metadata, dict):
            result.ops.append({"op": "add", "path": pointer(*prefix, "metadata"),
                               "value": {"annotations": {key: text}}})
        elif not isinstance(annotations, dict):
            result.ops.append({"op": "add", "path": pointer(*prefix, "metadata", "annotations"),
                               "value": {key: text}})
        else:
            result.ops.append({"op": "add", "path": pointer(*prefix, "metadata", "annotations", key), "value": text})
    elif raw_record is not None and isinstance(annotations, dict):
        result.ops.append({"op": "remove", "path": pointer(*prefix, "metadata", "annotations", key)})


def _effective_pod_milli(shares: list[_Share]) -> int:
    """What the pod holds at its peak, like Kubernetes' effective request: init containers run one at a
    time before the app containers (sidecars, restartPolicy Always, keep running alongside)."""
    running = sum(share.milli for share in shares if share.group == "containers")
    sidecars = 0
    init_peak = 0
    for share in shares:
        if share.group != "initContainers":
            continue
        if share.sidecar:
            sidecars += share.milli
        else:
            init_peak = max(init_peak, sidecars + share.milli)
    return max(running + sidecars, init_peak)


# --- the entry point -------------------------------------------------------------------------


def admit(document: Any, config: WebhookConfig | None = None, quotas: QuotaSource | None = None) -> Decision:
    """Decide one AdmissionReview. Raises ReviewError only when there is no uid to answer to."""
    config = config or WebhookConfig()
    try:
        request = _parse_review(document)
    except _RequestProblem as problem:
        return Decision(uid=problem.uid, allowed=False, status_code=400, reason="BadRequest",
                        message=f"malformed AdmissionReview: {problem.message}")
    decision = Decision(uid=request.uid, allowed=True, kind=request.kind, operation=request.operation)
    location = TEMPLATE_LOCATIONS.get((request.group, request.kind))
    if location is None or request.obj is None or request.operation not in ("CREATE", "UPDATE"):
        return decision
    if request.kind == "Pod" and request.operation == "UPDATE":
        # A stored Pod's resources and schedulerName are immutable; any change would fail the update
        # (every label or status write of a vGPU pod), so Pod updates pass untouched - except the one
        # way to add a container to a running pod (`kubectl debug`), which must not add an escape.
        if request.sub_resource == "ephemeralcontainers":
            try:
                _check_isolation(request.obj, request.kind)
            except _Denied as denial:
                decision.allowed = False
                decision.status_code, decision.reason, decision.message = denial.code, denial.reason, denial.message
        return decision
    template = _dict_at(request.obj, location) if location else request.obj
    if template is None:
        return decision
    where = ".".join((request.kind, *location)) if location else request.kind
    old_template = _dict_at(request.old_obj, location) if request.old_obj is not None and location else request.old_obj
    update = (_UpdateContext(request.obj, request.old_obj, location)
              if request.operation == "UPDATE" else None)
    try:
        _check_isolation(template, where)
        result = _rewrite_template(template, location, where, update, old_template, config)
        if result.rewrote and quotas is not None:
            _check_quota(request, result, quotas)
    except _Denied as denial:
        decision.allowed = False
        decision.status_code, decision.reason, decision.message = denial.code, denial.reason, denial.message
        return decision
    decision.patch = result.ops
    # The API server may truncate warnings longer than 256 characters; ours fit, this keeps it so.
    decision.warnings = [warning[:256] for warning in result.warnings]
    return decision


def _check_quota(request: _Request, result: _TemplateResult, quotas: QuotaSource) -> None:
    namespace = request.namespace or str((_dict_at(request.obj, ("metadata",)) or {}).get("namespace", ""))
    pod_milli = _effective_pod_milli(result.shares)
    if not namespace or pod_milli == 0:
        return
    try:
        limit = quotas(namespace)
    except QuotaLookupError as error:
        result.warnings.append(f"GPUQuota of namespace {namespace} not checked: {error}")
        return
    if limit is None:
        return
    if Decimal(pod_milli) > limit.max_gpus * contract.MILLI_PER_GPU:
        raise _Denied(
            f"a pod of this {request.kind} asks for {format_gpus(Decimal(pod_milli) / contract.MILLI_PER_GPU)} GPUs, "
            f"more than the per-pod maximum of {format_gpus(limit.max_gpus)} in {contract.QUOTA_KIND} "
            f"{namespace}/{limit.quota_name}; it could never be scheduled",
            code=403, reason="Forbidden")


def bad_request_review(message: str, uid: str = "", *, code: int = 400, reason: str = "BadRequest") -> dict[str, Any]:
    """An AdmissionReview-shaped body for non-200 answers (the API server shows the message)."""
    return {"apiVersion": ADMISSION_API_VERSION, "kind": ADMISSION_KIND,
            "response": {"uid": uid, "allowed": False,
                         "status": {"status": "Failure", "code": code, "reason": reason, "message": message}}}
