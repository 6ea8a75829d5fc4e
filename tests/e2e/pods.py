"""Pods for the end-to-end tests and what a test reads back from the real cluster.

Test pods are hostNetwork busybox pods (the node has no pod network) that print their environment
and sleep: the container's log file then shows exactly the env kubelet built from our Allocate
answer, which a test compares with the pod's `tensor.ai/assignment`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.proto import contract

from .images import WORKLOAD_IMAGE

NAMESPACE = "e2e"
ENV_LINE = re.compile(r"^\S+ stdout [FP] (NVIDIA_VISIBLE_DEVICES|TENSORAI_[A-Z_]+)=(.*)$")
TERMINAL = ("Succeeded", "Failed")


def container(name: str, vgpu: str | None, seconds: float, *, restart_always: bool = False) -> dict[str, Any]:
    """A busybox container that prints its env, then sleeps `seconds` (a sidecar sleeps until killed)."""
    spec: dict[str, Any] = {
        "name": name, "image": WORKLOAD_IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", f"env; sleep {seconds}"],
        "resources": {"limits": {contract.RESOURCE_VGPU: vgpu}} if vgpu else {},
    }
    if restart_always:
        spec["restartPolicy"] = "Always"
    return spec


def gpu_pod(name: str, vgpu: str | None = "0.25", *, seconds: float = 2.0, annotations: dict[str, str] | None = None,
            init_vgpu: str | None = None, sidecar_vgpu: str | None = None, namespace: str = NAMESPACE,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod asking for `vgpu` GPUs (as a user writes it; the webhook rewrites it), optionally with a GPU
    init container before it and a GPU sidecar (restartable init container) beside it."""
    init: list[dict[str, Any]] = []
    if init_vgpu:
        init.append(container("init", init_vgpu, 0.5))
    if sidecar_vgpu:
        init.append(container("sidecar", sidecar_vgpu, 3600, restart_always=True))
    spec: dict[str, Any] = {
        "hostNetwork": True, "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
        "containers": [container("main", vgpu, seconds)],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
    }
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {},
                         "labels": labels or {}},
            "spec": spec}


def env_from_log(text: str) -> dict[str, str]:
    """The NVIDIA_/TENSORAI_ variables a container printed (CRI log format: `time stream tag line`)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        match = ENV_LINE.match(line)
        if match:
            env[match[1]] = match[2]
    return env


@dataclass(frozen=True)
class Placement:
    """Where one container's GPU share is: GPU uuids and milli per GPU."""

    uuids: tuple[str, ...]
    milli: int

    @staticmethod
    def from_env(env: dict[str, str]) -> Placement | None:
        if "NVIDIA_VISIBLE_DEVICES" not in env:
            return None
        uuids = tuple(sorted(env["NVIDIA_VISIBLE_DEVICES"].split(",")))
        return Placement(uuids, int(env.get("TENSORAI_VGPU_MILLI", 0)))


def assignment_of(pod: dict[str, Any], annotation: str = contract.ANNOTATION_ASSIGNMENT) -> dict[str, Placement]:
    """Per container, where the pod's Assignment (or `allocated`) annotation puts it."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(annotation)
    if not text:
        return {}
    assignment = contract.decode_assignment(text)
    return {c.name: Placement(tuple(sorted(g.uuid for g in c.gpus)), sum(g.milli for g in c.gpus))
            for c in assignment.containers}


class PodClient:
    """Raw-JSON pod calls through the official client (no model objects: tests compare plain dicts)."""

    def __init__(self, api_client: Any, namespace: str = NAMESPACE) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        response = self.core.create_namespaced_pod(manifest["metadata"].get("namespace", self.namespace), manifest,
                                                   _preload_content=False)
        return json.loads(response.data)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.core.read_namespaced_pod(name, self.namespace, _preload_content=False).data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, label_selector: str = "") -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(self.namespace, label_selector=label_selector,
                                                 _preload_content=False)
        return json.loads(response.data)["items"]

    def delete(self, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise

    def delete_all(self, timeout_s: float = 60.0) -> None:
        self.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)
        deadline = time.monotonic() + timeout_s
        while self.list() and time.monotonic() < deadline:
            time.sleep(0.3)

    def wait_phase(self, names: Iterable[str], phases: tuple[str, ...] = TERMINAL,
                   timeout_s: float = 120.0) -> dict[str, dict[str, Any]]:
        """Every named pod once its phase is one of `phases`; AssertionError naming the stragglers."""
        waiting = set(names)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while waiting:
            for pod in self.list():
                name = pod["metadata"]["name"]
                if name in waiting and (pod.get("status") or {}).get("phase") in phases:
                    done[name] = pod
                    waiting.discard(name)
            if not waiting:
                break
            if time.monotonic() > deadline:
                states = {n: ((self.get(n) or {}).get("status") or {}).get("phase") for n in sorted(waiting)[:10]}
                raise AssertionError(f"{len(waiting)} pod(s) not in {phases} after {timeout_s:.0f} s: {states}")
            time.sleep(0.3)
        return done

    def events_for(self, name: str) -> list[str]:
        response = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}",
                                                   _preload_content=False)
        return [f"{e.get('reason')}: {e.get('message')}" for e in json.loads(response.data)["items"]]
