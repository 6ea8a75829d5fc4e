"""The Helm chart `charts/tensorai-vgpu` is the manifests, in lockstep (charts/generate.py makes it).

- the committed chart is what the generator makes of the current manifests and pyproject version;
- `helm template` with default values is `kubectl kustomize manifests/base`, object by object (the
  chart's own labels and the CRD's keep annotation aside), each component's value is that component's
  render, and the dev, production and cert-manager values are those overlays;
- `helm lint --strict` passes for default values and several combinations;
- what it renders for Kubernetes 1.30, 1.33 and 1.36 validates strictly against that version's schemas;
- the values schema refuses wrong types, unknown keys and unknown modes; the templates refuse
  combinations that cannot work (self-signed TLS with two webhook replicas, Kubernetes < 1.30).

The helm CLI comes from the e2e binaries folder (tests/e2e/binaries.py); without it those tests skip
with one line.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from e2e import binaries

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "charts" / "tensorai-vgpu"
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0", "1.36.0")
# No schema for these offline (as in tests/test_manifests.py); their kustomize twins are compared instead.
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"}


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("chart_generate", REPO_ROOT / "charts" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_generate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


generate = _load_generator()

# value sets and the kustomize render each must equal: (components, overlay)
ALL_ON = {"monitoring": {"enabled": True}, "tls": {"mode": "cert-manager"}, "sharing": {"mode": "mps"},
          "devicePlugin": {"runtimeClassName": "nvidia", "hostPID": True}}
DEV = {"image": {"tag": "dev"},
       "devicePlugin": {"backend": "sim", "logLevel": "DEBUG", "priorityClassName": ""},
       "scheduler": {"replicas": 1, "kubeScheduler": {"verbosity": 4}, "extender": {"logLevel": "DEBUG"}},
       "webhook": {"logLevel": "DEBUG"}}
LOCKSTEP = {
    "base": ({}, (), None),
    "monitoring": ({"monitoring": {"enabled": True}}, ("monitoring",), None),
    "cert-manager": ({"tls": {"mode": "cert-manager"}}, ("cert-manager",), None),
    "mps": ({"sharing": {"mode": "mps"}}, ("mps",), None),
    "nvidia-runtime": ({"devicePlugin": {"runtimeClassName": "nvidia"}}, ("nvidia-runtime",), None),
    "device-plugin-host-pid": ({"devicePlugin": {"hostPID": True}}, ("device-plugin-host-pid",), None),
    "all-components": (ALL_ON, generate.COMPONENTS, None),
    "overlay-production": ({"monitoring": {"enabled": True}}, (), "production"),
    "overlay-cert-manager": ({"monitoring": {"enabled": True}, "tls": {"mode": "cert-manager"}}, (), "cert-manager"),
    "overlay-dev": (DEV, (), "dev"),
}


@pytest.fixture(scope="module")
def helm() -> str:
    reason = binaries.missing_helm()
    if reason:
        pytest.skip(f"helm chart checks skipped: {reason}")
    return str(binaries.helm_program())


def run_helm(helm: str, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if values:
        assert tmp is not None
        path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    result = subprocess.run([helm, *args, *extra], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template(helm: str, tmp: Path, values: dict[str, Any] | None = None,
             kube_version: str = "1.33.0") -> list[dict[str, Any]]:
    """helm template's objects; a Kubernetes version always (without one helm assumes 1.20, which the chart refuses)."""
    args = ["template", "tensorai-vgpu", str(CHART), "--kube-version", kube_version]
    output = run_helm(helm, *args, values=values, tmp=tmp).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def lint_args(values: dict[str, Any]) -> list[str]:
    """`helm lint` takes no -f here: each value as --set-json."""
    args: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                args.extend(["--set-json", f"{prefix}{key}={json.dumps(value)}"])

    walk(values, "")
    return args


@pytest.fixture(scope="module")
def pinned_kube_version() -> str:
    """The kube-scheduler version the manifests pin (the chart follows the cluster's instead)."""
    scheduler = generate.find(generate.render(), "Deployment", "tensorai-scheduler")
    image = generate.container(scheduler, "kube-scheduler")["image"]
    return image.rpartition(":")[2].lstrip("v")


# --- comparing -----------------------------------------------------------------------------------


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """What kustomize would have rendered: the chart's labels and keep annotation removed, the
    scheduler ConfigMap's content hash (kustomize's and the chart's differ in algorithm) replaced."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for label in generate.HELM_LABELS:
        (meta.get("labels") or {}).pop(label, None)
    for annotation in generate.HELM_ANNOTATIONS:
        (meta.get("annotations") or {}).pop(annotation, None)
    for key in ("labels", "annotations"):
        if key in meta and not meta[key]:
            del meta[key]
    text = re.sub(rf"{generate.SCHEDULER_CONFIG}-[a-z0-9]+", f"{generate.SCHEDULER_CONFIG}-HASH", json.dumps(obj))
    return json.loads(text)


def differences(left: Any, right: Any, path: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        found = []
        for key in sorted(set(left) | set(right)):
            if key not in right:
                found.append(f"{path}/{key}: only in the chart")
            elif key not in left:
                found.append(f"{path}/{key}: only in kustomize")
            else:
                found.extend(differences(left[key], right[key], f"{path}/{key}"))
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [d for i, (a, b) in enumerate(zip(left, right, strict=True)) for d in differences(a, b, f"{path}/{i}")]
    return [] if left == right else [f"{path}: chart {json.dumps(left)[:200]} != kustomize {json.dumps(right)[:200]}"]


def assert_same_objects(chart: list[dict[str, Any]], kustomize: list[dict[str, Any]]) -> None:
    ours = {generate.key_of(obj): normalised(obj) for obj in chart}
    theirs = {generate.key_of(obj): normalised(obj) for obj in kustomize}
    problems = [f"{key}: only in the chart" for key in sorted(set(ours) - set(theirs))]
    problems += [f"{key}: only in kustomize" for key in sorted(set(theirs) - set(ours))]
    for key in sorted(set(ours) & set(theirs)):
        problems += [f"{key}{d}" for d in differences(ours[key], theirs[key])]
    assert not problems, "helm template differs from kubectl kustomize:\n" + "\n".join(problems)


# --- the chart is generated ---------------------------------------------------------------------


def test_committed_chart_is_what_the_generator_makes_of_the_manifests() -> None:
    stale = generate.differences()
    assert not stale, ("run `.venv/bin/python charts/generate.py` (the manifests or the generator changed); "
                       f"these differ: {stale}")


def test_chart_version_and_app_version_are_the_projects() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == chart["appVersion"] == project


def test_generator_refuses_a_component_patch_it_does_not_map() -> None:
    base = generate.render()
    parts = {name: generate.render((name,)) for name in generate.COMPONENTS}
    dev = generate.render(overlay="dev")
    generate.chart_from(base, parts, dev)  # the real renders are understood
    daemonset = generate.find(parts["mps"], "DaemonSet", "tensorai-device-plugin")
    daemonset["spec"]["template"]["spec"]["hostNetwork"] = True  # a patch the chart has no value for
    with pytest.raises(generate.GenerateError, match="components/mps"):
        generate.chart_from(base, parts, dev)


def test_escaped_template_braces_survive_rendering(helm: str, tmp_path: Path) -> None:
    """The alerts' `{{ $labels.gpu }}` are Prometheus templates, not Helm's: they reach the cluster as written."""
    objects = template(helm, tmp_path, {"monitoring": {"enabled": True}})
    rule = next(obj for obj in objects if obj["kind"] == "PrometheusRule")
    summaries = [r["annotations"]["summary"] for g in rule["spec"]["groups"] for r in g["rules"]
                 if "summary" in r.get("annotations", {})]
    assert any("{{ $labels." in summary for summary in summaries), summaries


# --- lockstep with kustomize ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LOCKSTEP))
def test_helm_template_equals_kustomize(helm: str, tmp_path: Path, pinned_kube_version: str, case: str) -> None:
    values, components, overlay = LOCKSTEP[case]
    chart = template(helm, tmp_path, values, kube_version=pinned_kube_version)
    kustomize = generate.render(overlay=overlay) if overlay else generate.render(components)
    assert_same_objects(chart, kustomize)


def test_lockstep_check_would_catch_a_drifted_value(helm: str, tmp_path: Path, pinned_kube_version: str) -> None:
    chart = template(helm, tmp_path, {"devicePlugin": {"logLevel": "DEBUG"}}, kube_version=pinned_kube_version)
    with pytest.raises(AssertionError, match="--log-level=DEBUG"):
        assert_same_objects(chart, generate.render())


def test_kube_scheduler_image_follows_the_cluster_unless_set(helm: str, tmp_path: Path) -> None:
    def kube_scheduler_image(values: dict[str, Any] | None, kube_version: str) -> str:
        objects = template(helm, tmp_path, values, kube_version=kube_version)
        scheduler = generate.find(objects, "Deployment", "tensorai-scheduler")
        return generate.container(scheduler, "kube-scheduler")["image"]

    assert kube_scheduler_image(None, "1.33.0") == "registry.k8s.io/kube-scheduler:v1.33.0"
    assert kube_scheduler_image(None, "v1.34.2-eks-3025e55") == "registry.k8s.io/kube-scheduler:v1.34.2"
    pinned = {"scheduler": {"kubeScheduler": {"image": {"tag": "v1.32.9"}}}}
    assert kube_scheduler_image(pinned, "1.33.0") == "registry.k8s.io/kube-scheduler:v1.32.9"


def test_scheduler_name_is_one_value_and_a_new_configuration_rolls_the_pods(helm: str, tmp_path: Path) -> None:
    def scheduler_parts(name: str | None) -> tuple[str, str, str]:
        objects = template(helm, tmp_path, {"schedulerName": name} if name else None, kube_version="1.33.0")
        config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(
            generate.SCHEDULER_CONFIG))
        profile = yaml.safe_load(next(iter(config_map["data"].values())))["profiles"][0]["schedulerName"]
        scheduler = generate.find(objects, "Deployment", "tensorai-scheduler")
        volume = next(v["configMap"]["name"] for v in scheduler["spec"]["template"]["spec"]["volumes"]
                      if "configMap" in v)
        assert volume == config_map["metadata"]["name"]
        webhook = generate.container(generate.find(objects, "Deployment", "tensorai-webhook"), "webhook")
        return profile, generate.flag(webhook["args"], "--scheduler-name="), volume

    default, renamed = scheduler_parts(None), scheduler_parts("gpu-scheduler")
    assert default[:2] == ("tensorai-scheduler", "tensorai-scheduler")
    assert renamed[:2] == ("gpu-scheduler", "gpu-scheduler")
    assert default[2] != renamed[2], "the ConfigMap name must change with its content, or the pods keep the old one"


def test_namespace_is_one_value(helm: str, tmp_path: Path) -> None:
    objects = template(helm, tmp_path, {"namespace": {"name": "gpu-system"}}, kube_version="1.33.0")
    text = yaml.safe_dump_all(objects)
    assert generate.NAMESPACE not in text
    # kube-system: the RoleBinding to extension-apiserver-authentication-reader lives there
    assert {o["metadata"].get("namespace") for o in objects} - {None, "kube-system"} == {"gpu-system"}
    policy = next(o for o in objects if o["metadata"]["name"] == "tensorai-accounting-annotations"
                  and o["kind"] == "ValidatingAdmissionPolicy")
    assert "system:serviceaccount:gpu-system:tensorai-scheduler" in json.dumps(policy)


def test_placement_values_reach_every_workload(helm: str, tmp_path: Path) -> None:
    toleration = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    values = {part: {"nodeSelector": {"pool": part}, "tolerations": toleration,
                     "resources": {"requests": {"cpu": "7m"}}}
              for part in ("devicePlugin", "webhook")}
    values["scheduler"] = {"nodeSelector": {"pool": "scheduler"}, "tolerations": toleration,
                           "extender": {"resources": {"requests": {"cpu": "7m"}}}}
    objects = template(helm, tmp_path, values, kube_version="1.33.0")
    for kind, name, pool, container_name in (("DaemonSet", "tensorai-device-plugin", "devicePlugin", "device-plugin"),
                                             ("Deployment", "tensorai-scheduler", "scheduler", "extender"),
                                             ("Deployment", "tensorai-webhook", "webhook", "webhook")):
        obj = generate.find(objects, kind, name)
        spec = obj["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"pool": pool}
        assert spec["tolerations"] == toleration
        # Helm merges a map given in values into the default one (null removes a key)
        assert generate.container(obj, container_name)["resources"]["requests"]["cpu"] == "7m"


def test_image_pull_secrets_extra_args_and_scrapers_reach_their_fields(helm: str, tmp_path: Path) -> None:
    values = {"image": {"repository": "registry.example.com/vgpu", "tag": "9.9.9", "pullPolicy": "Always"},
              "imagePullSecrets": [{"name": "pull"}], "monitoring": {"prometheusNamespace": "observability"},
              "devicePlugin": {"extraArgs": ["--health-interval=5"]},
              "scheduler": {"extender": {"extraArgs": ["--quota-resync=60"]}},
              "webhook": {"extraArgs": ["--max-body-bytes=1024"]}}
    objects = template(helm, tmp_path, values)
    for kind, name, container_name, extra in (
            ("DaemonSet", "tensorai-device-plugin", "device-plugin", "--health-interval=5"),
            ("Deployment", "tensorai-scheduler", "extender", "--quota-resync=60"),
            ("Deployment", "tensorai-webhook", "webhook", "--max-body-bytes=1024")):
        obj = generate.find(objects, kind, name)
        ours = generate.container(obj, container_name)
        assert (ours["image"], ours["imagePullPolicy"]) == ("registry.example.com/vgpu:9.9.9", "Always")
        assert ours["args"][-1] == extra
        assert obj["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    policy = generate.find(objects, "NetworkPolicy", "tensorai-metrics-from-monitoring")
    peers = [peer["namespaceSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"kubernetes.io/metadata.name": "observability"} in peers


# --- helm lint, schemas --------------------------------------------------------------------------

LINT_CASES = {
    "defaults": {},
    "all-components": ALL_ON,
    "dev": DEV,
    "cert-manager-three-webhooks": {"tls": {"mode": "cert-manager"}, "webhook": {"replicas": 3}},
    "one-scheduler-no-namespace": {"scheduler": {"replicas": 1}, "namespace": {"create": False},
                                   "crds": {"keep": False}},
}


@pytest.mark.parametrize("case", list(LINT_CASES))
def test_helm_lint_strict(helm: str, case: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *lint_args(LINT_CASES[case]), check=False)
    assert result.returncode == 0, f"helm lint --strict ({case}) failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", ["defaults", "all-components", "dev"])
def test_rendered_chart_validates_against_kubernetes_schemas(helm: str, tmp_path: Path, case: str,
                                                             kube_version: str) -> None:
    objects = template(helm, tmp_path, LINT_CASES[case], kube_version=kube_version)
    problems = []
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {'/'.join(map(str, error.path))}: "
                            f"{error.message}")
    assert not problems, f"{case} on Kubernetes {kube_version}:\n" + "\n".join(problems)
    scheduler = generate.find(objects, "Deployment", "tensorai-scheduler")
    assert generate.container(scheduler, "kube-scheduler")["image"].endswith(f":v{kube_version}")


@pytest.mark.parametrize(("values", "complaint"), [
    ({"scheduler": {"replicas": "two"}}, "/scheduler/replicas"),
    ({"scheduler": {"replicas": 0}}, "/scheduler/replicas"),
    ({"sharing": {"mode": "vram"}}, "/sharing/mode"),
    ({"tls": {"mode": "manual"}}, "/tls/mode"),
    ({"devicePlugin": {"resource": {"limits": {"cpu": 1}}}}, "resource"),
    ({"devicePlugin": {"logLevel": "TRACE"}}, "/devicePlugin/logLevel"),
    ({"namespace": {"name": "Tensor_AI"}}, "/namespace/name"),
])
def test_values_schema_refuses_bad_values(helm: str, tmp_path: Path, values: dict[str, Any], complaint: str) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--kube-version", "1.33.0", values=values, tmp=tmp_path,
                      check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_self_signed_webhook_refuses_a_second_replica(helm: str, tmp_path: Path) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--kube-version", "1.33.0",
                      values={"webhook": {"replicas": 2}}, tmp=tmp_path, check=False)
    assert result.returncode != 0
    assert "needs tls.mode=cert-manager" in result.stderr, result.stderr


def test_chart_refuses_kubernetes_older_than_1_30(helm: str) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--kube-version", "1.29.9", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "not compatible" in result.stderr, result.stderr
