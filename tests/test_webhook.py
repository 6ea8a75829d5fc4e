"""The admission logic of tensorai-webhook, as a specification: golden AdmissionReviews for every kind
the API server sends, patches applied with the `jsonpatch` library and re-validated, idempotency,
denials, and the UPDATE / drift cases observed on a real kube-apiserver."""

from __future__ import annotations

import base64
import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorai.proto import contract
from tensorai.proto.quantity import parse_quantity
from tensorai.scheduler.webhook import (
    LAST_APPLIED_ANNOTATION,
    TEMPLATE_LOCATIONS,
    Decision,
    ReviewError,
    WebhookConfig,
    admit,
    format_gpus,
    pointer,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "webhook"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.json"))
KUBERNETES_SCHEMA_VERSION = "1.33"
VGPU, MILLI, RECORD = contract.RESOURCE_VGPU, contract.RESOURCE_VGPU_MILLI, contract.ANNOTATION_VGPU_REQUESTED


# --- helpers -----------------------------------------------------------------------------------


def load_golden(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def decoded_patch(decision: Decision) -> list[dict[str, Any]]:
    """The patch exactly as the API server would decode it from the response."""
    response = decision.to_review()["response"]
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def applied(review: dict[str, Any], decision: Decision) -> dict[str, Any]:
    return jsonpatch.apply_patch(review["request"]["object"], decoded_patch(decision))


def at(document: dict[str, Any], location: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for key in location:
        document = document[key]
    return document


def all_containers(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = template.get("spec", {})
    return [(group, c) for group in ("containers", "initContainers") for c in spec.get(group, [])]


def assert_api_server_would_accept(obj: dict[str, Any], template: dict[str, Any]) -> None:
    """The rules the API server applies after mutation (admission-and-resources.md (a)) plus the schema."""
    for group, container in all_containers(template):
        resources = container.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        for section in (limits, requests):
            for name, value in section.items():
                if "/" in name and not name.endswith("kubernetes.io"):
                    number = parse_quantity(value)
                    assert number == number.to_integral_value() and number >= 0, (group, name, value)
        for name in set(limits) | set(requests):
            if "/" in name and name in requests:
                assert name in limits, f"{group}/{container['name']}: request {name} without a limit"
                assert parse_quantity(requests[name]) == parse_quantity(limits[name]), (container["name"], name)
        assert VGPU not in limits and VGPU not in requests
    try:
        kubernetes_validate.validate(obj, KUBERNETES_SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"patched object breaks the Kubernetes schema: {str(error).splitlines()[0]}")


def make_review(obj: dict[str, Any], *, kind: str = "Pod", group: str = "", operation: str = "CREATE",
                old: dict[str, Any] | None = None, uid: str = "uid-1", namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": group, "version": "v1", "kind": kind},
                        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
                        "namespace": namespace, "operation": operation, "object": obj, "oldObject": old,
                        "dryRun": False}}


def pod(limits: dict[str, Any] | None = None, *, defaulted: bool = True, name: str = "main",
        security: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "trainer:1"}
    if limits is not None:
        container["resources"] = {"limits": dict(limits)}
        if defaulted:
            container["resources"]["requests"] = dict(limits)
    if security is not None:
        container["securityContext"] = security
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"containers": [container]}}


def deployment(limits: dict[str, Any] | None, *, annotations: dict[str, str] | None = None,
               template_annotations: dict[str, str] | None = None,
               managed_fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "trainer:1"}
    if limits is not None:
        container["resources"] = {"limits": dict(limits)}
    template_meta: dict[str, Any] = {"labels": {"app": "svc"}}
    if template_annotations is not None:
        template_meta["annotations"] = dict(template_annotations)
    meta: dict[str, Any] = {"name": "svc", "namespace": "team-a"}
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    if managed_fields is not None:
        meta["managedFields"] = managed_fields
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app": "svc"}},
                     "template": {"metadata": template_meta, "spec": {"containers": [container]}}}}


def admit_deployment(obj: dict[str, Any], old: dict[str, Any] | None = None, operation: str = "UPDATE") -> Decision:
    return admit(make_review(obj, kind="Deployment", group="apps", operation=operation, old=old))


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]


def limits_of(template: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return template["spec"]["containers"][index].get("resources", {}).get("limits", {})


def last_applied(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, separators=(",", ":"))


def ssa_entry(manager: str, owns_vgpu: bool) -> dict[str, Any]:
    limits = {f"f:{VGPU}": {}} if owns_vgpu else {"f:cpu": {}}
    return {"manager": manager, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                'k:{"name":"main"}': {".": {}, "f:name": {}, "f:resources": {"f:limits": limits}}}}}}}}


# --- golden reviews for every kind -----------------------------------------------------------


def test_golden_files_cover_every_rewritten_kind() -> None:
    kinds = {load_golden(path)["review"]["request"]["kind"]["kind"] for path in GOLDEN_FILES}
    assert kinds == {kind for _, kind in TEMPLATE_LOCATIONS}


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: path.stem)
def test_golden_review_is_rewritten_into_integer_milli_with_requests_equal_limits(path: Path) -> None:
    golden = load_golden(path)
    review = golden["review"]
    decision = admit(review)
    response = decision.to_review()
    assert response["apiVersion"] == "admission.k8s.io/v1" and response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == review["request"]["uid"]
    assert response["response"]["allowed"] is True

    patched = applied(review, decision)
    template = at(patched, golden["template_location"])
    assert_api_server_would_accept(patched, template)
    expected_record: dict[str, dict[str, str]] = {}
    for group, container in all_containers(template):
        expected = golden["expected_milli"].get(group, {}).get(container["name"])
        resources = container.get("resources", {})
        if expected is None:
            assert MILLI not in resources.get("limits", {}), container["name"]
            continue
        assert resources["limits"][MILLI] == str(expected)
        assert resources["requests"][MILLI] == str(expected)  # templates get requests too
        expected_record.setdefault(group, {})[container["name"]] = format_gpus(Decimal(expected) / 1000)
    assert json.loads(template["metadata"]["annotations"][RECORD]) == expected_record
    # everything else in the object is untouched
    untouched = copy.deepcopy(patched)
    original = copy.deepcopy(review["request"]["object"])
    for snapshot in (untouched, original):
        for _, container in all_containers(at(snapshot, golden["template_location"])):
            container.pop("resources", None)
        at(snapshot, golden["template_location"]).get("metadata", {}).pop("annotations", None)
        at(snapshot, golden["template_location"]).setdefault("metadata", {})
        if golden["template_location"]:
            at(snapshot, golden["template_location"]).get("metadata", {}).clear()
    assert untouched == original


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: path.stem)
def test_golden_review_sent_again_after_its_patch_needs_no_patch(path: Path) -> None:
    golden = load_golden(path)
    review = golden["review"]
    once = applied(review, admit(review))
    again = copy.deepcopy(review)
    again["request"]["object"] = once
    assert admit(again).to_review()["response"] == {"uid": review["request"]["uid"], "allowed": True}
    # reinvocation as UPDATE of the same object is a no-op too
    again["request"]["operation"], again["request"]["oldObject"] = "UPDATE", copy.deepcopy(once)
    assert decoded_patch(admit(again)) == []


def test_pod_annotation_keeps_users_other_annotations() -> None:
    review = load_golden(GOLDEN_DIR / "pod-init-containers.json")["review"]
    patched = applied(review, admit(review))
    assert patched["metadata"]["annotations"]["team"] == "vision"
    assert json.loads(patched["metadata"]["annotations"][RECORD]) == {
        "containers": {"main": "0.25"}, "initContainers": {"warmup": "1"}}


# --- the response on the wire ----------------------------------------------------------------


def test_object_without_vgpu_is_allowed_with_no_patch_and_no_patch_type() -> None:
    review = make_review(pod({"cpu": "1", "nvidia.com/gpu": "1"}), uid="abc-123")
    assert admit(review).to_review() == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                         "response": {"uid": "abc-123", "allowed": True}}


def test_patch_paths_escape_slash_and_tilde_in_keys() -> None:
    assert pointer("spec", "containers", 0, "resources", "limits", VGPU) == \
        "/spec/containers/0/resources/limits/tensor.ai~1vgpu"
    assert pointer("a~b/c") == "/a~0b~1c"


@pytest.mark.parametrize(("quantity", "milli"), [("250m", 250), ("0.25", 250), ("1", 1000), ("2", 2000),
                                                 ("2000m", 2000), ("1m", 1), ("0.0005", 1), ("1e0", 1000),
                                                 (0.5, 500), ("3k", None)])
def test_canonical_and_raw_quantities_become_milli(quantity: Any, milli: int | None) -> None:
    decision = admit(make_review(pod({VGPU: quantity})))
    if milli is None:
        assert not decision.allowed and "more GPUs than any node" in decision.message
        return
    patched = applied(make_review(pod({VGPU: quantity})), decision)
    assert patched["spec"]["containers"][0]["resources"]["limits"] == {MILLI: str(milli)}
    assert patched["spec"]["containers"][0]["resources"]["requests"] == {MILLI: str(milli)}


def test_request_only_share_also_gets_the_limit_the_api_server_requires() -> None:
    obj = pod(None)
    obj["spec"]["containers"][0]["resources"] = {"requests": {VGPU: "500m"}}
    review = make_review(obj)
    resources = applied(review, admit(review))["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {MILLI: "500"}, "limits": {MILLI: "500"}}


def test_vgpu_overrides_a_different_vgpu_milli_written_by_the_user_with_a_warning() -> None:
    review = make_review(pod({VGPU: "500m", MILLI: "250"}))
    decision = admit(review)
    assert applied(review, decision)["spec"]["containers"][0]["resources"]["limits"] == {MILLI: "500"}
    assert any("replaces" in warning for warning in decision.warnings)


def test_scheduler_name_is_injected_only_for_vgpu_pods_without_a_custom_scheduler() -> None:
    config = WebhookConfig(scheduler_name="tensorai-scheduler")
    gpu_review = make_review(pod({VGPU: "250m"}))
    assert applied(gpu_review, admit(gpu_review, config))["spec"]["schedulerName"] == "tensorai-scheduler"
    custom = pod({VGPU: "250m"})
    custom["spec"]["schedulerName"] = "volcano"
    custom_review = make_review(custom)
    assert applied(custom_review, admit(custom_review, config))["spec"]["schedulerName"] == "volcano"
    plain = make_review(pod({"cpu": "1"}))
    assert decoded_patch(admit(plain, config)) == []
    no_injection = admit(gpu_review, WebhookConfig())
    assert "schedulerName" not in applied(gpu_review, no_injection)["spec"]


# --- denials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "fragment"), [
    ("1500m", "must be a whole number of GPUs"),
    ("1.5", "must be a whole number of GPUs"),
    ("-250m", "negative"),
    ("quarter", "invalid quantity"),
    ("1e99", "out of range"),
    (True, "boolean"),
])
def test_what_can_never_run_is_denied_with_a_clear_message(quantity: Any, fragment: str) -> None:
    review = make_review(pod({VGPU: quantity}), uid="deny-1")
    response = admit(review).to_review()["response"]
    assert response["allowed"] is False and response["uid"] == "deny-1"
    assert "patch" not in response and "patchType" not in response
    assert fragment in response["status"]["message"]
    assert "spec.containers[0] (main)" in response["status"]["message"]
    assert response["status"]["code"] in (400, 422)


def test_request_different_from_limit_is_denied() -> None:
    obj = pod({VGPU: "500m"})
    obj["spec"]["containers"][0]["resources"]["requests"] = {VGPU: "250m"}
    decision = admit(make_review(obj))
    assert not decision.allowed and "must equal its limit" in decision.message


def test_privileged_container_is_denied_for_shares_and_whole_gpus_alike() -> None:
    # A privileged container sees every GPU of its node, not only its own whole GPUs either.
    for share in ("250m", "1"):
        decision = admit(make_review(pod({VGPU: share}, security={"privileged": True})))
        assert not decision.allowed and decision.status_code == 403, share
        assert "spec.containers[0] (main): securityContext.privileged" in decision.message


# --- isolation escapes ------------------------------------------------------------------------

MILLI = "tensor.ai/vgpu-milli"
MEMORY = "tensor.ai/vgpu-memory"


def _escape(obj: dict[str, Any], how: str) -> dict[str, Any]:
    """`obj` (a Pod) with one isolation escape added to its first container or its spec."""
    spec = obj["spec"]
    container = spec["containers"][0]
    if how == "privileged":
        container["securityContext"] = {"privileged": True}
    elif how == "sys_admin":
        container["securityContext"] = {"capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}}
    elif how == "cap_sys_admin":
        container["securityContext"] = {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}
    elif how == "all_capabilities":
        container["securityContext"] = {"capabilities": {"add": ["all"]}}
    elif how in ("hostPID", "hostIPC"):
        spec[how] = True
    elif how.startswith("hostPath:"):
        spec["volumes"] = [{"name": "host", "hostPath": {"path": how.removeprefix("hostPath:")}}]
    elif how.startswith("env:"):
        container["env"] = [{"name": "LANG", "value": "C"}, {"name": how.removeprefix("env:"), "value": "all"}]
    else:
        raise AssertionError(how)
    return obj


ESCAPES = [
    ("privileged", "securityContext.privileged"),
    ("sys_admin", "capabilities.add has SYS_ADMIN"),
    ("cap_sys_admin", "capabilities.add has CAP_SYS_ADMIN"),
    ("all_capabilities", "capabilities.add has all"),
    ("hostPID", "spec.hostPID is true"),
    ("hostIPC", "spec.hostIPC is true"),
    ("hostPath:/dev", "hostPath /dev exposes"),
    ("hostPath:/dev/nvidia0", "hostPath /dev/nvidia0"),
    ("hostPath:/dev/../dev/nvidiactl", "hostPath /dev/../dev/nvidiactl"),
    ("hostPath://dev/", "hostPath //dev/"),
    ("hostPath:/", "hostPath / exposes"),
    ("env:NVIDIA_VISIBLE_DEVICES", "env NVIDIA_VISIBLE_DEVICES is set by the device plugin"),
    ("env:TENSORAI_VGPU_MEMORY_MIB", "env TENSORAI_VGPU_MEMORY_MIB"),
    ("env:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
]


@pytest.mark.parametrize("resource", [VGPU, MILLI, MEMORY])
@pytest.mark.parametrize(("how", "reason"), ESCAPES)
def test_a_pod_naming_any_vgpu_resource_may_not_escape_its_gpus(resource: str, how: str, reason: str) -> None:
    value = "1Gi" if resource == MEMORY else "250" if resource == MILLI else "250m"
    decision = admit(make_review(_escape(pod({resource: value}), how), uid="escape"))
    assert not decision.allowed, (resource, how)
    assert decision.status_code == 403 and decision.reason == "Forbidden"
    assert reason in decision.message and "Pod" in decision.message


@pytest.mark.parametrize(("how", "_reason"), ESCAPES)
def test_pods_without_vgpu_resources_are_not_this_webhooks_business(how: str, _reason: str) -> None:
    decision = admit(make_review(_escape(pod({"nvidia.com/gpu": "1"}), how)))
    assert decision.allowed and not decision.patch


def test_harmless_neighbours_of_the_escapes_are_admitted() -> None:
    obj = pod({VGPU: "500m"})
    spec, container = obj["spec"], obj["spec"]["containers"][0]
    spec.update(hostPID=False, hostIPC=False, volumes=[
        {"name": "data", "hostPath": {"path": "/data/devices"}}, {"name": "devx", "hostPath": {"path": "/devx"}},
        {"name": "scratch", "emptyDir": {}}])
    container["securityContext"] = {"privileged": False, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}
    container["env"] = [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
                        {"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]
    decision = admit(make_review(obj))
    assert decision.allowed, decision.message


def test_every_violation_is_named_once_with_where_it_is() -> None:
    obj = pod({VGPU: "1"}, security={"privileged": True})
    obj["spec"]["hostPID"] = True
    obj["spec"]["initContainers"] = [{"name": "setup", "image": "x", "env": [{"name": "NVIDIA_VISIBLE_DEVICES",
                                                                            "value": "void"}]}]
    message = admit(make_review(obj)).message
    assert "Pod.spec.hostPID" in message
    assert "Pod.spec.containers[0] (main): securityContext.privileged" in message
    assert "Pod.spec.initContainers[0] (setup): env NVIDIA_VISIBLE_DEVICES" in message


def test_a_workload_template_with_an_escape_is_denied_at_the_template() -> None:
    obj = deployment({VGPU: "250m"})
    template_of(obj)["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    decision = admit_deployment(obj, operation="CREATE")
    assert not decision.allowed
    assert "Deployment.spec.template.spec.containers[0] (main): securityContext.capabilities.add" in decision.message


def test_an_ephemeral_debug_container_may_not_escape_a_vgpu_pod() -> None:
    obj = pod({MILLI: "250"})
    obj["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox",
                                           "securityContext": {"privileged": True}}]
    review = make_review(obj, operation="UPDATE", old=pod({MILLI: "250"}))
    review["request"]["subResource"] = "ephemeralcontainers"
    decision = admit(review)
    assert not decision.allowed and "ephemeralContainers[0] (debugger): securityContext.privileged" in decision.message
    review["request"]["subResource"] = ""  # any other Pod update passes untouched, as before
    assert admit(review).allowed


@pytest.mark.parametrize("quantity", [" 0.5 ", "0.5 ", "0.5\n", "０.５", "0.５", "٠.5", "1 Gi"])
def test_quantities_with_whitespace_or_non_ascii_digits_are_denied(quantity: str) -> None:
    # Kubernetes' quantity grammar is ASCII-only without whitespace; Python's \d and Decimal() are not.
    decision = admit(make_review(pod({VGPU: quantity})))
    assert not decision.allowed and decision.status_code == 422
    assert "invalid quantity" in decision.message
    assert ("no spaces" in decision.message) or ("only ASCII digits" in decision.message)


def test_zero_gpus_is_removed_with_a_warning_not_recorded() -> None:
    review = make_review(pod({VGPU: "0", "cpu": "1"}))
    decision = admit(review)
    patched = applied(review, decision)
    assert patched["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "1"}
    assert RECORD not in patched["metadata"].get("annotations", {})
    assert any("no GPU" in warning for warning in decision.warnings)


def test_malformed_reviews_get_a_clear_error_never_an_exception() -> None:
    with pytest.raises(ReviewError, match="AdmissionReview"):
        admit([1, 2])
    with pytest.raises(ReviewError, match="uid"):
        admit({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}})
    with pytest.raises(ReviewError, match="admissionReviewVersions"):
        admit({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}})
    bad_object = make_review(pod({VGPU: "1"}))
    bad_object["request"]["object"] = ["not", "a", "pod"]
    decision = admit(bad_object)
    assert not decision.allowed and decision.status_code == 400 and "request.object" in decision.message
    bad_containers = make_review(pod({VGPU: "1"}))
    bad_containers["request"]["object"]["spec"]["containers"] = {"main": {}}
    decision = admit(bad_containers)
    assert not decision.allowed and "spec.containers must be a list" in decision.message
    bad_limits = make_review(pod({VGPU: "1"}))
    bad_limits["request"]["object"]["spec"]["containers"][0]["resources"]["limits"] = "0.5"
    decision = admit(bad_limits)
    assert not decision.allowed and "resources.limits must be an object" in decision.message


def test_delete_and_unknown_kinds_are_allowed_untouched() -> None:
    delete = make_review(pod({VGPU: "250m"}), operation="DELETE")
    assert admit(delete).to_review()["response"] == {"uid": "uid-1", "allowed": True}
    unknown = make_review({"spec": {"containers": [{"name": "a", "resources": {"limits": {VGPU: "1500m"}}}]}},
                          kind="Notebook", group="kubeflow.org")
    assert admit(unknown).allowed


# --- UPDATE: re-apply and drift --------------------------------------------------------------


LIVE_RECORD = {RECORD: '{"containers":{"main":"0.5"}}'}


def live_deployment(**kwargs: Any) -> dict[str, Any]:
    """What is stored after the webhook rewrote `tensor.ai/vgpu: 0.5`."""
    obj = deployment({MILLI: "500"}, template_annotations=LIVE_RECORD, **kwargs)
    template_of(obj)["spec"]["containers"][0]["resources"]["requests"] = {MILLI: "500"}
    return obj


def test_reapplying_an_unchanged_manifest_leaves_the_live_object_as_it_is() -> None:
    manifest = deployment({VGPU: "500m"})
    live = live_deployment(annotations={LAST_APPLIED_ANNOTATION: last_applied(manifest)})
    incoming = copy.deepcopy(live)  # client-side apply re-adds the user's vgpu next to the live vgpu-milli
    template_of(incoming)["spec"]["containers"][0]["resources"]["limits"][VGPU] = "500m"
    decision = admit_deployment(incoming, old=live)
    assert applied(make_review(incoming), decision) == live
    assert decision.warnings == []


def test_changing_the_share_in_the_manifest_overrides_the_live_milli() -> None:
    manifest = deployment({VGPU: "750m"})
    live = live_deployment(annotations={LAST_APPLIED_ANNOTATION: last_applied(deployment({VGPU: "500m"}))})
    incoming = copy.deepcopy(live)
    incoming["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = last_applied(manifest)
    template_of(incoming)["spec"]["containers"][0]["resources"]["limits"][VGPU] = "750m"
    result = template_of(applied(make_review(incoming), admit_deployment(incoming, old=live)))
    assert limits_of(result) == {MILLI: "750"}
    assert result["spec"]["containers"][0]["resources"]["requests"] == {MILLI: "750"}
    assert json.loads(result["metadata"]["annotations"][RECORD]) == {"containers": {"main": "0.75"}}


def test_removing_vgpu_from_an_applied_manifest_removes_the_share_client_side_apply() -> None:
    old_manifest = deployment({VGPU: "500m", "cpu": "1"})
    new_manifest = deployment({"cpu": "1"})
    live = live_deployment(annotations={LAST_APPLIED_ANNOTATION: last_applied(old_manifest)})
    limits_of(template_of(live))["cpu"] = "1"
    incoming = copy.deepcopy(live)  # kubectl's patch deletes vgpu (absent) and updates last-applied
    incoming["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = last_applied(new_manifest)
    decision = admit_deployment(incoming, old=live)
    result = template_of(applied(make_review(incoming), decision))
    assert limits_of(result) == {"cpu": "1"}
    assert MILLI not in result["spec"]["containers"][0]["resources"].get("requests", {})
    assert RECORD not in result["metadata"].get("annotations", {})
    assert any("removed" in warning for warning in decision.warnings)


def test_removing_vgpu_from_a_server_side_applied_manifest_removes_the_share() -> None:
    live = live_deployment(managed_fields=[ssa_entry("kubectl", owns_vgpu=True)])
    incoming = copy.deepcopy(live)
    incoming["metadata"]["managedFields"] = [ssa_entry("kubectl", owns_vgpu=False)]
    result = template_of(applied(make_review(incoming), admit_deployment(incoming, old=live)))
    assert MILLI not in limits_of(result)
    assert RECORD not in result["metadata"].get("annotations", {})


def test_an_update_that_never_mentioned_vgpu_keeps_the_share() -> None:
    """`kubectl label`, `kubectl scale`, controllers: no signal of removal, so nothing changes."""
    manifest = deployment({VGPU: "500m"})
    live = live_deployment(annotations={LAST_APPLIED_ANNOTATION: last_applied(manifest)},
                           managed_fields=[ssa_entry("other", owns_vgpu=False)])
    incoming = copy.deepcopy(live)
    incoming["metadata"].setdefault("labels", {})["team"] = "vision"
    assert decoded_patch(admit_deployment(incoming, old=live)) == []
    bare = live_deployment()
    assert decoded_patch(admit_deployment(copy.deepcopy(bare), old=bare)) == []


def test_still_owned_by_a_server_side_apply_manager_keeps_the_share() -> None:
    live = live_deployment(managed_fields=[ssa_entry("kubectl", owns_vgpu=True)])
    incoming = copy.deepcopy(live)
    assert decoded_patch(admit_deployment(incoming, old=live)) == []


def test_removing_the_whole_resources_block_also_drops_the_left_over_annotation() -> None:
    live = live_deployment()
    incoming = copy.deepcopy(live)
    del template_of(incoming)["spec"]["containers"][0]["resources"]
    result = template_of(applied(make_review(incoming), admit_deployment(incoming, old=live)))
    assert RECORD not in result["metadata"]["annotations"]


def test_a_pod_update_never_touches_the_immutable_resources() -> None:
    stored = pod({VGPU: "2"})  # a whole-GPU pod admitted while the webhook was down
    stored["metadata"]["annotations"] = {RECORD: '{"containers":{"main":"2"}}'}
    incoming = copy.deepcopy(stored)
    incoming["metadata"]["labels"] = {"x": "y"}
    decision = admit(make_review(incoming, operation="UPDATE", old=stored), WebhookConfig(scheduler_name="s"))
    assert decision.allowed and decoded_patch(decision) == []


# --- invariants over random inputs -----------------------------------------------------------

_share = st.one_of(st.integers(1, 1000).map(lambda milli: f"{milli}m"), st.integers(1, 8).map(str))
_location_kinds = sorted({location: kind for (group, kind), location in TEMPLATE_LOCATIONS.items()}.items())


@st.composite
def vgpu_objects(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, tuple[str, ...]]:
    (group, kind) = draw(st.sampled_from(sorted(TEMPLATE_LOCATIONS)))
    location = TEMPLATE_LOCATIONS[(group, kind)]
    containers = {}
    for group_name in ("containers", "initContainers"):
        count = draw(st.integers(1 if group_name == "containers" else 0, 3))
        containers[group_name] = []
        for index in range(count):
            container: dict[str, Any] = {"name": f"{group_name[:4]}-{index}", "image": "x"}
            if draw(st.booleans()):
                share = draw(_share)
                container["resources"] = {"limits": {VGPU: share, "cpu": "1"}}
                if kind == "Pod":
                    container["resources"]["requests"] = {VGPU: share, "cpu": "1"}
            containers[group_name].append(container)
    template: dict[str, Any] = {"spec": {key: value for key, value in containers.items() if value}}
    if draw(st.booleans()):
        template["metadata"] = {} if draw(st.booleans()) else {"annotations": {"a": "b"}}
    obj: dict[str, Any] = {"metadata": {"name": "o"}}
    if location:
        node = obj
        for key in location[:-1]:
            node = node.setdefault(key, {})
        node[location[-1]] = template
    else:
        obj.update(template)
    return obj, group, kind, location


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vgpu_objects())
def test_any_valid_share_becomes_integer_milli_and_a_second_pass_is_a_no_op(case: Any) -> None:
    obj, group, kind, location = case
    review = make_review(obj, kind=kind, group=group)
    decision = admit(review)
    assert decision.allowed, decision.message
    patched = applied(review, decision)
    template = at(patched, location)
    for _, container in all_containers(template):
        for section in container.get("resources", {}).values():
            assert VGPU not in section
            if MILLI in section:
                assert section[MILLI].isdigit() and 1 <= int(section[MILLI]) <= 8000
    review["request"]["object"] = patched
    assert decoded_patch(admit(review)) == []


@pytest.mark.parametrize("garbage", ["not json", "[1]", '{"containers": 5}', "[" * 5000])
def test_a_malformed_webhook_annotation_is_dropped_with_a_warning(garbage: str) -> None:
    live = live_deployment(annotations={LAST_APPLIED_ANNOTATION: "[" * 5000})
    incoming = copy.deepcopy(live)
    template_of(incoming)["metadata"]["annotations"][RECORD] = garbage
    decision = admit_deployment(incoming, old=None, operation="CREATE")
    result = template_of(applied(make_review(incoming), decision))
    assert RECORD not in result["metadata"]["annotations"]
    assert limits_of(result) == {MILLI: "500"}  # a share written as vgpu-milli is the user's own
    assert any("malformed" in warning for warning in decision.warnings)
