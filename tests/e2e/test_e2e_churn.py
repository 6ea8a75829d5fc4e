"""On the real kubelet: every GPU container runs exactly where its pod's Assignment says, under churn.

Kubelet's device manager picks device IDs, calls our GetPreferredAllocation and Allocate, and builds
the container's env from our answer; the container prints that env. These tests hold the printed
env to the pod's final `tensor.ai/assignment`, sample kubelet's own checkpoint while pods come and
go, and fail on any admission error.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tensorai.proto import contract

from .pods import Placement, PodClient, assignment_of, env_from_log, gpu_pod

CHURN_PODS = int(os.environ.get("TENSORAI_E2E_CHURN_PODS", "200"))
ROUND_SIZE = 20
SIZES = ("0.1", "0.2", "0.25", "0.3", "0.5", "0.5", "0.75", "1")


def _gpu_containers(pod: dict[str, Any]) -> list[str]:
    spec = pod["spec"]
    names = []
    for item in [*(spec.get("initContainers") or []), *spec["containers"]]:
        if contract.RESOURCE_VGPU_MILLI in ((item.get("resources") or {}).get("limits") or {}):
            names.append(item["name"])
    return names


def misplaced_containers(e2e: Any, pods: list[dict[str, Any]]) -> list[str]:
    """Containers whose printed GPU env differs from their pod's Assignment (or that printed none)."""
    problems = []
    for pod in pods:
        meta = pod["metadata"]
        assigned = assignment_of(pod)
        for name in _gpu_containers(pod):
            text = e2e.cluster.container_log(meta["namespace"], meta["name"], meta["uid"], name)
            ran = Placement.from_env(env_from_log(text))
            if ran != assigned.get(name):
                problems.append(f"{meta['name']}/{name}: ran on {ran}, Assignment says {assigned.get(name)}")
    return problems


class CheckpointSampler:
    """Samples kubelet's checkpoint against the live pods: IDs off the Assignment's GPU, or a GPU over 1000."""

    def __init__(self, e2e: Any, pods: PodClient) -> None:
        self.e2e, self.pods = e2e, pods
        self.problems: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CheckpointSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        entries = self.e2e.cluster.checkpoint().get("PodDeviceEntries") or []
        live = {p["metadata"]["uid"]: p for p in self.pods.list()
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")}
        # Distinct IDs: kubelet lists an init container's IDs again under the container it handed them to.
        per_gpu: dict[str, set[str]] = defaultdict(set)
        for entry in entries:
            pod = live.get(entry["PodUID"])
            if pod is None or entry["ResourceName"] != contract.RESOURCE_VGPU_MILLI:
                continue
            ids = [i for group in entry["DeviceIDs"].values() for i in group]
            gpus = {contract.gpu_of_device_id(i) for i in ids}
            for device in ids:
                per_gpu[contract.gpu_of_device_id(device)].add(device)
            assigned = assignment_of(pod).get(entry["ContainerName"])
            # A container's IDs on a GPU its Assignment does not name: the scheduler counted it elsewhere.
            # (Transient while the plugin rewrites a swap: re-read the pod once before calling it a problem.)
            if assigned is not None and not gpus <= set(assigned.uuids):
                again = self.pods.get(pod["metadata"]["name"])
                assigned = assignment_of(again).get(entry["ContainerName"]) if again else None
                if assigned is not None and not gpus <= set(assigned.uuids):
                    self.problems.append(f"{pod['metadata']['name']}/{entry['ContainerName']} holds IDs on "
                                         f"{sorted(gpus)}, Assignment {assigned.uuids}")
        self.problems.extend(f"GPU {gpu} holds {len(ids)} slices" for gpu, ids in per_gpu.items() if len(ids) > 1000)
        self.samples += 1


def failed_admissions(pods: list[dict[str, Any]]) -> list[str]:
    return [f"{p['metadata']['name']}: {p['status'].get('reason')} {p['status'].get('message', '')}"
            for p in pods if p["status"].get("phase") == "Failed"]


def test_a_fractional_pod_runs_with_the_env_of_its_assignment(e2e: Any, pods: PodClient) -> None:
    pods.create(gpu_pod("quarter", "0.25", seconds=0.5))
    done = pods.wait_phase(["quarter"], timeout_s=90)
    pod = done["quarter"]
    assert pod["status"]["phase"] == "Succeeded", pods.events_for("quarter")
    assignment = assignment_of(pod)
    assert assignment["main"].milli == 250
    assert pod["spec"]["schedulerName"] == "tensorai-scheduler"
    assert pod["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] == "250"
    meta = pod["metadata"]
    env = env_from_log(e2e.cluster.container_log(meta["namespace"], meta["name"], meta["uid"], "main"))
    assert Placement.from_env(env) == assignment["main"]
    assert int(env["TENSORAI_VGPU_MEMORY_MIB"]) > 0
    assert assignment_of(pods.get("quarter"), contract.ANNOTATION_ALLOCATED) == assignment


def _churn_pod(index: int, rng: random.Random, size: str) -> dict[str, Any]:
    seconds = rng.choice((1, 2, 3, 4, 6))
    kind = rng.random()
    annotations: dict[str, str] = {}
    init = sidecar = None
    if kind < 0.1:
        init = size  # a GPU init container of the same size: kubelet hands its IDs on to main
    elif kind < 0.15:
        sidecar = "0.1"
    elif kind < 0.25:
        annotations[contract.ANNOTATION_ANTI_AFFINITY_GROUP] = f"group-{index % 3}"
    elif kind < 0.3:
        annotations[contract.ANNOTATION_GPU_MODEL] = "H100"
    return gpu_pod(f"churn-{index:03d}", size, seconds=seconds, annotations=annotations, init_vgpu=init,
                   sidecar_vgpu=sidecar, labels={"e2e": "churn"})


def run_churn(e2e: Any, pods: PodClient, count: int, seed: int, *, before_round: Any = None,
              during: Any = None) -> tuple[list[dict[str, Any]], CheckpointSampler]:
    """`count` pods in rounds of ROUND_SIZE created at one instant (half of each round one size), each
    round's finished pods deleted before the next. `before_round(i)` runs before round i is created,
    `during(i)` right after (its pods then wait for scheduling and admission)."""
    rng = random.Random(seed)
    finished: list[dict[str, Any]] = []
    with CheckpointSampler(e2e, pods) as sampler, ThreadPoolExecutor(ROUND_SIZE) as pool:
        index = 0
        for round_index in range((count + ROUND_SIZE - 1) // ROUND_SIZE):
            same = rng.choice(SIZES)
            batch = []
            for slot in range(min(ROUND_SIZE, count - index)):
                size = same if slot % 2 == 0 else rng.choice(SIZES)
                batch.append(_churn_pod(index, rng, size))
                index += 1
            if before_round is not None:
                before_round(round_index)
            list(pool.map(pods.create, batch))
            if during is not None:
                during(round_index)
            names = [p["metadata"]["name"] for p in batch]
            done = pods.wait_phase(names, timeout_s=240)
            # Sidecar pods end when main ends; logs read before deletion removes the files.
            for name in names:
                pod = done[name]
                pod["_misplaced"] = misplaced_containers(e2e, [pod])
                finished.append(pod)
            for name in names:
                pods.delete(name)
        time.sleep(1.0)
    return finished, sampler


def assert_churn_clean(finished: list[dict[str, Any]], sampler: CheckpointSampler) -> None:
    misplaced = [problem for pod in finished for problem in pod["_misplaced"]]
    assert not misplaced, f"{len(misplaced)} container(s) ran off their Assignment:\n" + "\n".join(misplaced[:20])
    failed = failed_admissions(finished)
    assert not failed, f"{len(failed)} pod(s) failed:\n" + "\n".join(failed[:20])
    assert sampler.samples > 5
    assert not sampler.problems, "checkpoint against live pods:\n" + "\n".join(sampler.problems[:20])


def test_churn_every_container_runs_where_its_assignment_says(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("reading kubelet's checkpoint")
    finished, sampler = run_churn(e2e, pods, CHURN_PODS, seed=12)
    assert len(finished) == CHURN_PODS
    assert_churn_clean(finished, sampler)
