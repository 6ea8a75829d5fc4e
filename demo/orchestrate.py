"""The demo run from start to finish: cluster up, pods streamed through admission, scheduling and kubelet, checks.

`run_demo` returns a DemoResult whose `problems` are the outcome checks that failed (empty = the run
did what the scenario expects); it raises StepError when a step cannot be carried out at all. Either
way every process it started is stopped before it returns. The files it writes under `out_dir`:
summary.json (the run and its checks), standin-{pods,nodes,events}.json (those objects as the API
stand-in holds them at the end), kubelet-allocations.json (what each stub kubelet allocated and Allocate returned),
workers/*.json (each worker's own report), logs/*.log (every process's output), allocation.png.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from tensorai.demo.admission import Admission
from tensorai.demo.cluster import DemoCluster, read_json, start_cluster
from tensorai.demo.kubelet_runner import KubeletRunner
from tensorai.demo.processes import StepError
from tensorai.demo.scenario import EXPECT_DENIED, EXPECT_QUOTA_WAIT, Scenario
from tensorai.demo.scheduler_loop import SchedulerLoop
from tensorai.demo.state import DENIED, PENDING, SUCCEEDED, DemoState, GpuInfo, PodRun
from tensorai.proto import contract
from tensorai.proto.quantity import QuantityError, quantity_to_int

DEFAULT_RUN_TIMEOUT_S = 150.0


@dataclass
class DemoResult:
    """What the run produced: the state, the checks that failed, and where the files are."""

    state: DemoState
    problems: list[str] = field(default_factory=list)
    summary_path: Path | None = None
    plot_path: Path | None = None
    duration_s: float = 0.0


def _read_gpus(cluster: DemoCluster) -> list[GpuInfo]:
    gpus = []
    for name in cluster.nodes:
        node = read_json(client.CoreV1Api(cluster.api_client).read_node, name)
        text = ((node.get("metadata") or {}).get("annotations") or {}).get(contract.ANNOTATION_INVENTORY, "")
        try:
            inventory = contract.decode_inventory(text)
        except contract.ContractError as error:
            raise StepError(f"read inventory of {name}", str(error)) from error
        for gpu in sorted(inventory.gpus, key=lambda g: g.index):
            gpus.append(GpuInfo(name, gpu.uuid, gpu.index, gpu.model, gpu.memory_mib,
                                gpu.memory_mib - gpu.reserved_mib))
    return gpus


def _refresh_quotas(cluster: DemoCluster, state: DemoState) -> None:
    quotas = {}
    listing = read_json(client.CustomObjectsApi(cluster.api_client).list_cluster_custom_object,
                        contract.QUOTA_GROUP, contract.QUOTA_VERSION, contract.QUOTA_PLURAL)
    for obj in listing.get("items") or []:
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        quotas[f"{metadata.get('namespace')}/{metadata.get('name')}"] = {
            "hard": (obj.get("spec") or {}).get("hard") or {},
            "used": status.get("used") or {},
            "waitingPods": status.get("waitingPods", 0),
        }
    with state.lock:
        state.quotas = quotas


def _vgpu_milli(pod: dict[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        value = ((container.get("resources") or {}).get("limits") or {}).get(contract.RESOURCE_VGPU_MILLI)
        with contextlib.suppress(QuantityError):
            total += quantity_to_int(value) if value is not None else 0
    return total


def _stream_pods(scenario: Scenario, admission: Admission, loop: SchedulerLoop, cluster: DemoCluster,
                 state: DemoState, deadline: float) -> None:
    for spec in scenario.pods:
        if time.monotonic() > deadline:
            raise StepError("stream pods", "ran out of time before every pod arrived")
        run = PodRun(spec)
        with state.lock:
            state.pods[spec.key] = run
        result = admission.review(spec.to_pod())
        if not result.allowed:
            with state.lock:
                run.phase = DENIED
                run.reason = result.message
                run.finished_s = state.now()
            state.log(f"{spec.key} denied by the webhook: {result.message}", "fail")
        else:
            assert result.pod is not None
            created = admission.create(result.pod)
            with state.lock:
                run.webhook_patch = result.patch
                run.vgpu_milli = _vgpu_milli(created)
                run.uid = created["metadata"].get("uid", "")
                run.created_s = state.now()
                run.phase = PENDING
            state.log(f"{spec.key} admitted: {contract.RESOURCE_VGPU} {spec.vgpu} -> "
                      f"{contract.RESOURCE_VGPU_MILLI} {run.vgpu_milli}; created")
            loop.wake()
        _refresh_quotas(cluster, state)
        time.sleep(scenario.interval_s)


def _wait_for_pods(cluster: DemoCluster, loop: SchedulerLoop, state: DemoState, deadline: float) -> None:
    while state.unfinished():
        if loop.error is not None:
            raise StepError("schedule pods", f"{type(loop.error).__name__}: {loop.error}")
        if time.monotonic() > deadline:
            stuck = ", ".join(f"{run.key} ({run.phase}: {run.reason or 'no reason'})" for run in state.unfinished())
            raise StepError("run pods", f"not finished in time: {stuck}")
        _refresh_quotas(cluster, state)
        time.sleep(0.25)
    _refresh_quotas(cluster, state)


def check_outcome(state: DemoState) -> list[str]:
    """The run's invariants; each failed one is a sentence naming the pod or GPU."""
    problems: list[str] = []
    usable = {gpu.uuid: gpu.usable_mib for gpu in state.gpus}
    for run in state.pods.values():
        expected = {EXPECT_DENIED: DENIED}.get(run.spec.expect, SUCCEEDED)
        if run.phase != expected:
            problems.append(f"{run.key}: expected {expected}, ended {run.phase} ({run.reason})")
            continue
        if run.spec.expect == EXPECT_QUOTA_WAIT and not run.waited_for_quota:
            problems.append(f"{run.key}: expected to wait for GPU quota, but was placed at once")
        if run.phase != SUCCEEDED:
            continue
        assigned = sorted(share.uuid for share in run.shares)
        visible = sorted(run.allocate_env.get(contract.ENV_VISIBLE_DEVICES, "").split(","))
        if assigned != visible:
            problems.append(f"{run.key}: Allocate's {contract.ENV_VISIBLE_DEVICES}={visible} but the Assignment "
                            f"names {assigned}")
        slice_gpus = sorted({contract.gpu_of_device_id(d) for d in run.device_ids})
        if slice_gpus != assigned or len(run.device_ids) != sum(share.milli for share in run.shares):
            problems.append(f"{run.key}: kubelet allocated {len(run.device_ids)} slices on {slice_gpus}, the "
                            f"Assignment has {sum(s.milli for s in run.shares)} milli on {assigned}")
        report = run.worker_report or {}
        peak, budget = report.get("peak_memory_used_bytes"), report.get("memory_budget_bytes")
        if not isinstance(peak, int) or not isinstance(budget, int) or peak > budget:
            problems.append(f"{run.key}: worker peak memory {peak} B is not within its budget {budget} B")
    problems.extend(overcommit_problems(state.pods.values(), usable))
    return problems


def overcommit_problems(runs: Any, usable_mib: dict[str, int]) -> list[str]:
    """Every instant at which a GPU held more than 1000 milli or more than its usable memory."""
    problems = []
    intervals: dict[str, list[tuple[float, float, int, int]]] = {}
    for run in runs:
        if run.bound_s is None:
            continue
        end = run.finished_s if run.finished_s is not None else float("inf")
        for share in run.shares:
            intervals.setdefault(share.uuid, []).append((run.bound_s, end, share.milli, share.memory_mib))
    for uuid, spans in intervals.items():
        for start, _, _, _ in spans:  # the load is highest right after some share starts
            milli = sum(m for s, e, m, _ in spans if s <= start < e)
            memory = sum(mem for s, e, _, mem in spans if s <= start < e)
            if milli > contract.MILLI_PER_GPU or memory > usable_mib.get(uuid, 0):
                problems.append(f"GPU {uuid} over-committed at {start:.1f} s: {milli} milli, {memory} MiB "
                                f"of {usable_mib.get(uuid)} MiB usable")
    return problems


def _write_outputs(cluster: DemoCluster, runner: KubeletRunner, state: DemoState, out_dir: Path,
                   scenario: Scenario, problems: list[str]) -> Path:
    core = client.CoreV1Api(cluster.api_client)
    pods = json.loads(core.list_pod_for_all_namespaces(_preload_content=False).data).get("items") or []
    (out_dir / "standin-pods.json").write_text(json.dumps(pods, indent=1, sort_keys=True))
    nodes = read_json(core.list_node).get("items") or []
    (out_dir / "standin-nodes.json").write_text(json.dumps(nodes, indent=1, sort_keys=True))
    events = read_json(core.list_event_for_all_namespaces).get("items") or []
    (out_dir / "standin-events.json").write_text(json.dumps(events, indent=1, sort_keys=True))
    (out_dir / "kubelet-allocations.json").write_text(json.dumps(runner.admissions, indent=1, sort_keys=True))
    summary = {
        "scenario": scenario.name,
        "duration_s": round(state.now(), 2),
        "ok": not problems,
        "problems": problems,
        "nodes": [{"name": spec.name, "gpus": spec.sim_gpus} for spec in scenario.nodes],
        "gpus": [gpu.__dict__ for gpu in state.gpus],
        "quotas": state.quotas,
        "pods": [run.to_json() for run in state.pods.values()],
        "events": [{"t_s": round(t, 2), "kind": kind, "message": message} for t, kind, message in state.events],
    }
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path


def run_demo(scenario: Scenario, out_dir: Path, state: DemoState, *,
             timeout_s: float = DEFAULT_RUN_TIMEOUT_S) -> DemoResult:
    """Run the scenario end to end; see the module docstring for what it writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    result = DemoResult(state)
    state.set_step("starting the API stand-in, 4 device plugins, the webhook and the extender")
    cluster = start_cluster(scenario, out_dir, state.log)
    loop: SchedulerLoop | None = None
    runner: KubeletRunner | None = None
    try:
        with state.lock:
            state.gpus = _read_gpus(cluster)
        assert cluster.webhook_ca_path is not None
        admission = Admission(cluster.webhook_port, cluster.webhook_ca_path, cluster.api_client)
        kubelets = {name: node.kubelet for name, node in cluster.nodes.items()}
        wake: list[SchedulerLoop] = []
        runner = KubeletRunner(kubelets, cluster.api_client, cluster.processes, state, out_dir,
                               on_finished=lambda: wake[0].wake())
        loop = SchedulerLoop(cluster.extender_url, cluster.api_client, state, runner.pod_bound).start()
        wake.append(loop)
        state.set_step(f"streaming {len(scenario.pods)} pods through webhook -> extender -> kubelet -> worker")
        _stream_pods(scenario, admission, loop, cluster, state, deadline)
        state.set_step("waiting for every pod to finish")
        _wait_for_pods(cluster, loop, state, deadline)
        loop.stop()
        result.problems = check_outcome(state)
        result.summary_path = _write_outputs(cluster, runner, state, out_dir, scenario, result.problems)
        state.set_step("drawing the per-GPU allocation")
        from tensorai.demo.plot import plot_allocation  # matplotlib import is slow: only when needed

        result.plot_path = plot_allocation(state, out_dir / "allocation.png")
        result.duration_s = state.now()
        state.set_step("done" if not result.problems else "done, with failed checks")
    finally:
        if loop is not None:
            loop.stop()
        if runner is not None:
            runner.stop()
        cluster.stop()
    return result
