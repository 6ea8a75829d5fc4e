"""The matchConditions CEL expression the MutatingWebhookConfiguration ships, evaluated with cel-python.

It decides which objects the API server sends to the webhook at all, so a webhook outage blocks
only vGPU objects. cel-python implements the CEL language (has(), exists(), `in` on maps) that the
API server evaluates; Kubernetes-specific CEL libraries are not used by the expression.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tensorai.proto import contract
from tensorai.scheduler.webhook import MATCH_CONDITION_EXPRESSION, MATCH_CONDITION_NAME, TEMPLATE_LOCATIONS

celpy = pytest.importorskip("celpy", reason="cel-python is a dev dependency (pip install -e '.[dev]')")

GOLDEN_DIR = Path(__file__).parent / "golden" / "webhook"
VGPU = contract.RESOURCE_VGPU


@pytest.fixture(scope="module")
def condition() -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(MATCH_CONDITION_EXPRESSION))


def matches(condition: Any, obj: Any, old: Any = None) -> bool:
    result = condition.evaluate({"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old)})
    assert isinstance(result, celpy.celtypes.BoolType), f"evaluation did not yield a bool: {result!r}"
    return bool(result)


def golden_objects() -> list[tuple[str, dict[str, Any], tuple[str, ...]]]:
    cases = []
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        golden = json.loads(path.read_text())
        cases.append((path.stem, golden["review"]["request"]["object"], tuple(golden["template_location"])))
    return cases


def without_vgpu(obj: dict[str, Any], location: tuple[str, ...]) -> dict[str, Any]:
    copied = copy.deepcopy(obj)
    template = copied
    for key in location:
        template = template[key]
    for group in ("containers", "initContainers"):
        for container in template["spec"].get(group, []):
            for section in container.get("resources", {}).values():
                section.pop(VGPU, None)
    return copied


def test_condition_has_a_valid_kubernetes_name_and_names_the_contract_keys() -> None:
    assert MATCH_CONDITION_NAME.replace("-", "").isalnum()
    assert f"'{VGPU}'" in MATCH_CONDITION_EXPRESSION
    assert f"'{contract.ANNOTATION_VGPU_REQUESTED}'" in MATCH_CONDITION_EXPRESSION


@pytest.mark.parametrize(("name", "obj", "location"), golden_objects(), ids=lambda value: str(value)[:30])
def test_every_kind_naming_vgpu_is_sent_to_the_webhook(condition: Any, name: str, obj: dict[str, Any],
                                                      location: tuple[str, ...]) -> None:
    assert matches(condition, obj), name


@pytest.mark.parametrize(("name", "obj", "location"), golden_objects(), ids=lambda value: str(value)[:30])
def test_the_same_objects_without_vgpu_are_not_sent(condition: Any, name: str, obj: dict[str, Any],
                                                   location: tuple[str, ...]) -> None:
    assert not matches(condition, without_vgpu(obj, location)), name


def test_vgpu_only_in_requests_or_only_in_an_init_container_is_sent(condition: Any) -> None:
    requests_only = {"spec": {"containers": [{"name": "a", "resources": {"requests": {VGPU: "1"}}}]}}
    init_container = {"name": "i", "resources": {"limits": {VGPU: "1"}}}
    init_only = {"spec": {"template": {"spec": {"containers": [{"name": "a"}], "initContainers": [init_container]}}}}
    assert matches(condition, requests_only)
    assert matches(condition, init_only)


def test_objects_carrying_the_webhooks_annotation_are_sent_so_removal_is_seen(condition: Any) -> None:
    annotations = {contract.ANNOTATION_VGPU_REQUESTED: '{"containers":{"main":"0.5"}}'}
    container = {"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: "500"}}}
    template = {"metadata": {"annotations": annotations}, "spec": {"containers": [container]}}
    for location in set(TEMPLATE_LOCATIONS.values()):
        obj: dict[str, Any] = {"metadata": {"name": "x"}}
        if not location:
            obj.update(copy.deepcopy(template))
        else:
            node = obj
            for key in location[:-1]:
                node = node.setdefault(key, {})
            node[location[-1]] = copy.deepcopy(template)
        assert matches(condition, obj), location


def test_gpu_objects_of_other_kinds_are_not_sent(condition: Any) -> None:
    nvidia = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    assert not matches(condition, nvidia)


@pytest.mark.parametrize("resource", [contract.RESOURCE_VGPU_MILLI, contract.RESOURCE_VGPU_MEMORY])
@pytest.mark.parametrize("section", ["limits", "requests"])
@pytest.mark.parametrize("group", ["containers", "initContainers"])
def test_objects_naming_our_other_resources_are_sent_for_the_isolation_check(
    condition: Any, resource: str, section: str, group: str,
) -> None:
    # A privileged pod writing tensor.ai/vgpu-milli directly must not bypass the webhook.
    container = {"name": "a", "resources": {section: {resource: "250"}}}
    assert matches(condition, {"spec": {group: [container]}})
    assert matches(condition, {"spec": {"template": {"spec": {group: [container]}}}})
    assert matches(condition, {"spec": {"jobTemplate": {"spec": {"template": {"spec": {group: [container]}}}}}})


@pytest.mark.parametrize("obj", [
    {},
    {"metadata": {}},
    {"spec": {}},
    {"spec": {"containers": []}},
    {"spec": {"containers": [{"name": "a"}]}},
    {"spec": {"containers": [{"name": "a", "resources": {}}]}},
    {"spec": {"template": {}}},
    {"spec": {"template": {"metadata": {}}}},
    {"spec": {"jobTemplate": {"spec": {}}}},
    {"template": {"spec": {}}},
    {"data": {"key": "value"}},
])
def test_objects_of_any_shape_evaluate_to_false_without_an_error(condition: Any, obj: dict[str, Any]) -> None:
    # An evaluation error with failurePolicy Fail would reject the object: every access is guarded.
    assert not matches(condition, obj)
