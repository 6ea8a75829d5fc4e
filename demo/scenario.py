"""The demo scenario: YAML in, validated typed nodes, quotas and pods out (errors name the field).

A scenario is what a newcomer edits to try the system: which simulated nodes exist, which GPUQuotas
hold which namespaces, and the stream of pods with the outcome each is expected to have. Pods are
written compactly (`vgpu: "0.25"`) and expanded here into the v1 Pod a user would `kubectl apply`,
so the webhook sees exactly what it sees in a cluster.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensorai.proto import contract
from tensorai.proto.quantity import QuantityError, bytes_to_mib

DEFAULT_SCENARIO = Path(__file__).with_name("scenario.yaml")
EXPECT_RUNS = "runs"
EXPECT_DENIED = "denied"
EXPECT_QUOTA_WAIT = "quota-wait"
EXPECTATIONS = (EXPECT_RUNS, EXPECT_DENIED, EXPECT_QUOTA_WAIT)
SCHEDULER_NAME = "tensorai-scheduler"  # what the demo's scheduler loop answers for (as in manifests/examples)
_SIM_GPUS = re.compile(r"^\d+x[A-Za-z0-9_.-]+:\d+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD_KEYS = {"name", "namespace", "vgpu", "memory", "annotations", "job", "expect", "short"}


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: its name and the `--sim-gpus` value of its device plugin."""

    name: str
    sim_gpus: str


@dataclass(frozen=True)
class QuotaSpec:
    """One GPUQuota object to create before any pod arrives."""

    namespace: str
    name: str
    hard: dict[str, Any]

    def to_object(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}",
            "kind": contract.QUOTA_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"hard": self.hard},
        }


@dataclass(frozen=True)
class PodSpec:
    """One pod of the stream, with the outcome the demo expects for it."""

    name: str
    namespace: str
    vgpu: str
    job: Path
    memory: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    expect: str = EXPECT_RUNS
    short: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_pod(self) -> dict[str, Any]:
        """The Pod a user would write: `tensor.ai/vgpu` in limits, the webhook does the rest."""
        limits: dict[str, str] = {contract.RESOURCE_VGPU: self.vgpu}
        if self.memory is not None:
            limits[contract.RESOURCE_VGPU_MEMORY] = self.memory
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/component": "tensor-worker", "tensor.ai/demo": "true"},
                "annotations": dict(self.annotations),
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "worker",
                        "image": "ghcr.io/tensorai/vgpu:0.1.0",
                        "command": ["tensorai-worker"],
                        "args": [f"--job={self.job.name}"],
                        "resources": {"limits": limits},
                    }
                ],
            },
        }


@dataclass(frozen=True)
class Scenario:
    """A validated scenario."""

    name: str
    interval_s: float
    nodes: tuple[NodeSpec, ...]
    quotas: tuple[QuotaSpec, ...]
    pods: tuple[PodSpec, ...]

    def shortened(self) -> Scenario:
        """Only the pods marked `short: true` (the test's and `--short`'s run)."""
        return Scenario(self.name, self.interval_s, self.nodes, self.quotas, tuple(p for p in self.pods if p.short))


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ScenarioError(f"{where}: {message}")


def _name(value: object, where: str) -> str:
    _require(isinstance(value, str) and bool(_NAME.match(value)), where, f"must be a DNS label, got {value!r}")
    return str(value)


def _job(value: object, base: Path, where: str) -> Path:
    _require(isinstance(value, str) and bool(value) and "\0" not in str(value), where,
             f"must be a job file path, got {value!r}")
    try:
        path = (base / str(value)).resolve()
        exists = path.is_file()
    except (OSError, ValueError) as error:  # a name too long, a loop of links, ...
        raise ScenarioError(f"{where}: job file {value!r} cannot be read: {error}") from error
    _require(exists, where, f"job file {path} does not exist")
    return path


def _positive_number(value: object) -> bool:
    """A finite count above 0 (the webhook judges the rest: whole above 1, at most 3 decimals)."""
    try:
        number = float(str(value))
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def _pod(raw: object, position: int, base: Path, default_job: Path) -> PodSpec:
    where = f"pods[{position}]"
    _require(isinstance(raw, dict), where, "must be a mapping")
    assert isinstance(raw, dict)
    unknown = sorted(set(raw) - _POD_KEYS)
    _require(not unknown, where, f"unknown keys {unknown}; known: {sorted(_POD_KEYS)}")
    vgpu = raw.get("vgpu")
    _require(isinstance(vgpu, str | int | float) and not isinstance(vgpu, bool) and _positive_number(vgpu),
             f"{where}.vgpu", f"must be a GPU count such as \"0.25\" or \"2\", got {vgpu!r}")
    memory = raw.get("memory")
    if memory is not None:
        try:
            _require(bytes_to_mib(str(memory)) > 0, f"{where}.memory", "must be positive")
        except QuantityError as error:
            raise ScenarioError(f"{where}.memory: {error}") from error
    annotations = raw.get("annotations") or {}
    _require(isinstance(annotations, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in annotations.items()),
             f"{where}.annotations", "must map strings to strings (quote \"true\")")
    expect = raw.get("expect", EXPECT_RUNS)
    _require(expect in EXPECTATIONS, f"{where}.expect", f"must be one of {list(EXPECTATIONS)}, got {expect!r}")
    short = raw.get("short", False)
    _require(isinstance(short, bool), f"{where}.short", "must be true or false")
    return PodSpec(
        name=_name(raw.get("name"), f"{where}.name"),
        namespace=_name(raw.get("namespace", "default"), f"{where}.namespace"),
        vgpu=str(vgpu),
        job=_job(raw["job"], base, f"{where}.job") if "job" in raw else default_job,
        memory=None if memory is None else str(memory),
        annotations=dict(annotations),
        expect=expect,
        short=short,
    )


def parse_scenario(text: str, source: str, base: Path) -> Scenario:
    """Validate a scenario document; `base` resolves relative job paths."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ScenarioError(f"{source}: not YAML: {error}") from error
    _require(isinstance(document, dict), source, "must be a mapping with nodes, quotas and pods")
    interval_s = document.get("interval_s", 0.4)
    number = isinstance(interval_s, int | float) and not isinstance(interval_s, bool)
    _require(number and 0 <= interval_s <= 60, f"{source} interval_s", "must be 0..60 seconds")
    nodes_raw = document.get("nodes")
    _require(isinstance(nodes_raw, list) and bool(nodes_raw), f"{source} nodes", "must be a non-empty list")
    nodes = []
    for position, raw in enumerate(nodes_raw):
        where = f"{source} nodes[{position}]"
        _require(isinstance(raw, dict), where, "must be a mapping with name and gpus")
        gpus = raw.get("gpus")
        _require(isinstance(gpus, str) and all(_SIM_GPUS.match(part.strip()) for part in gpus.split(",")),
                 f"{where}.gpus", f"must be COUNTxMODEL:MEMORY_MIB[,...] such as 2xH100:81559, got {gpus!r}")
        nodes.append(NodeSpec(_name(raw.get("name"), f"{where}.name"), gpus))
    _require(len({n.name for n in nodes}) == len(nodes), f"{source} nodes", "node names must be unique")
    default_job = _job(document.get("job", "jobs/small.yaml"), base, f"{source} job")
    quotas_raw = document.get("quotas") or []
    _require(isinstance(quotas_raw, list), f"{source} quotas", "must be a list of GPUQuotas")
    quotas = []
    for position, raw in enumerate(quotas_raw):
        where = f"{source} quotas[{position}]"
        _require(isinstance(raw, dict) and isinstance(raw.get("hard"), dict), where, "needs a hard mapping")
        quotas.append(QuotaSpec(_name(raw.get("namespace"), f"{where}.namespace"),
                                _name(raw.get("name"), f"{where}.name"), dict(raw["hard"])))
    pods_raw = document.get("pods")
    _require(isinstance(pods_raw, list) and bool(pods_raw), f"{source} pods", "must be a non-empty list")
    pods = tuple(_pod(raw, position, base, default_job) for position, raw in enumerate(pods_raw))
    keys = [pod.key for pod in pods]
    _require(len(set(keys)) == len(keys), f"{source} pods", "namespace/name pairs must be unique")
    return Scenario(str(document.get("name", "scenario")), float(interval_s), tuple(nodes), tuple(quotas), pods)


def load_scenario(path: Path | None = None) -> Scenario:
    """Read and validate a scenario file (default: the one shipped with the demo)."""
    path = path or DEFAULT_SCENARIO
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"cannot read scenario {path}: {error}") from error
    return parse_scenario(text, str(path), path.parent)
