"""`tensorai-demo` end to end: the shortened scenario through every real program, checked from the outside.

The demo runs once per module as a subprocess (the console script's entry point). Its own verdict
(summary.json) is asserted, and then each claim is re-derived independently from what the API
stand-in held at the end (pods with their Assignment annotations, nodes with their Inventory,
events), what the stub kubelets allocated (device IDs and Allocate's env) and the workers' own
reports - so a demo that merely wrote "ok" would still fail here.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorai.demo.orchestrate import overcommit_problems
from tensorai.demo.scenario import DEFAULT_SCENARIO, ScenarioError, load_scenario, parse_scenario
from tensorai.demo.state import GpuShare, PodRun
from tensorai.proto import contract
from tensorai.proto.quantity import quantity_to_int
from tensorai.scheduler.events import REASON_QUOTA_WAIT

RUN_TIMEOUT_S = 200


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (every demo child names its out dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _run_demo(out: Path, *extra: str, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tensorai.demo.cli", "--out", str(out), "--no-live", *extra],
        capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
    )


class DemoRun:
    """The files one demo run left behind, parsed."""

    def __init__(self, out: Path, completed: subprocess.CompletedProcess[str]) -> None:
        self.out = out
        self.completed = completed
        self.summary = json.loads((out / "summary.json").read_text())
        self.pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
                     for p in json.loads((out / "standin-pods.json").read_text())}
        self.nodes = {n["metadata"]["name"]: n for n in json.loads((out / "standin-nodes.json").read_text())}
        self.events = json.loads((out / "standin-events.json").read_text())
        self.allocations = {f"{a['namespace']}/{a['pod']}": a
                            for a in json.loads((out / "kubelet-allocations.json").read_text())}
        self.by_key = {f"{p['namespace']}/{p['name']}": p for p in self.summary["pods"]}

    def assignment(self, key: str) -> Any:
        annotations = self.pods[key]["metadata"].get("annotations") or {}
        return contract.decode_assignment(annotations[contract.ANNOTATION_ASSIGNMENT])

    def gpu_models(self) -> dict[str, tuple[str, int]]:
        """uuid -> (model, usable MiB), from the Inventory annotations the device plugins published."""
        models = {}
        for node in self.nodes.values():
            inventory = contract.decode_inventory(node["metadata"]["annotations"][contract.ANNOTATION_INVENTORY])
            for gpu in inventory.gpus:
                models[gpu.uuid] = (gpu.model, gpu.memory_mib - gpu.reserved_mib)
        return models

    def ran(self) -> list[str]:
        return [key for key, pod in self.by_key.items() if pod["phase"] == "succeeded"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo-out")
    completed = _run_demo(out, "--short")
    assert completed.returncode == 0, f"demo failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    return DemoRun(out, completed)


def test_short_demo_exits_zero_with_every_expected_outcome(demo: DemoRun) -> None:
    assert demo.summary["ok"] is True and demo.summary["problems"] == []
    expected = {pod.key: pod.expect for pod in load_scenario(DEFAULT_SCENARIO).shortened().pods}
    assert set(demo.by_key) == set(expected)
    for key, expect in expected.items():
        assert demo.by_key[key]["phase"] == ("denied" if expect == "denied" else "succeeded"), key
    assert (demo.out / "allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "summary" in demo.completed.stdout


def test_every_pod_runs_where_the_extender_placed_it(demo: DemoRun) -> None:
    assert demo.ran(), "no pod ran"
    for key in demo.ran():
        pod = demo.pods[key]
        assignment = demo.assignment(key)
        allocation = demo.allocations[key]
        assert pod["spec"]["nodeName"] == assignment.node_name == allocation["node"], key
        assert pod["status"]["phase"] == "Succeeded", key
        assigned = sorted(share.uuid for c in assignment.containers for share in c.gpus)
        assert sorted(allocation["envs"][contract.ENV_VISIBLE_DEVICES].split(",")) == assigned, key
        assert sorted({contract.gpu_of_device_id(d) for d in allocation["device_ids"]}) == assigned, key
        milli = sum(share.milli for c in assignment.containers for share in c.gpus)
        assert len(allocation["device_ids"]) == milli == int(allocation["envs"][contract.ENV_VGPU_MILLI]), key
        memory_mib = sum(share.memory_mib for c in assignment.containers for share in c.gpus)
        assert int(allocation["envs"][contract.ENV_VGPU_MEMORY_MIB]) == memory_mib, key


def test_webhook_rewrote_every_created_pod_and_denied_pods_never_exist(demo: DemoRun) -> None:
    for key, summary in demo.by_key.items():
        if summary["phase"] == "denied":
            assert key not in demo.pods
            assert summary["reason"]
            continue
        container = demo.pods[key]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert contract.RESOURCE_VGPU not in limits
        wanted_milli = round(float(summary["vgpu"]) * contract.MILLI_PER_GPU)
        assert quantity_to_int(limits[contract.RESOURCE_VGPU_MILLI]) == wanted_milli
        requested = json.loads(demo.pods[key]["metadata"]["annotations"][contract.ANNOTATION_VGPU_REQUESTED])
        assert requested == {"containers": {"worker": summary["vgpu"]}}


def test_fractional_pods_never_span_gpus_and_whole_gpu_pods_get_whole_gpus(demo: DemoRun) -> None:
    for key in demo.ran():
        shares = [share for c in demo.assignment(key).containers for share in c.gpus]
        requested_milli = round(float(demo.by_key[key]["vgpu"]) * contract.MILLI_PER_GPU)
        if requested_milli < contract.MILLI_PER_GPU:
            assert len(shares) == 1 and shares[0].milli == requested_milli, key
        else:
            assert len(shares) == requested_milli // contract.MILLI_PER_GPU, key
            assert all(share.milli == contract.MILLI_PER_GPU for share in shares), key


def test_no_gpu_is_over_committed_at_any_moment(demo: DemoRun) -> None:
    models = demo.gpu_models()
    runs = []
    for key in demo.ran():
        summary = demo.by_key[key]
        run = PodRun(spec=None)  # type: ignore[arg-type]  # only times and shares are read
        run.bound_s, run.finished_s = summary["bound_s"], summary["finished_s"]
        run.shares = [GpuShare(share.uuid, share.milli, share.memory_mib)
                      for c in demo.assignment(key).containers for share in c.gpus]
        runs.append(run)
    assert overcommit_problems(runs, {uuid: usable for uuid, (_, usable) in models.items()}) == []
    sharing = {}
    for run in runs:
        for share in run.shares:
            sharing.setdefault(share.uuid, []).append(run)
    assert any(len(holders) > 1 for holders in sharing.values()), "the demo should show GPUs being shared"


def test_workers_peak_memory_stays_within_the_allocated_budget(demo: DemoRun) -> None:
    for key in demo.ran():
        namespace, name = key.split("/")
        report = json.loads((demo.out / "workers" / f"{namespace}-{name}.json").read_text())
        envs = demo.allocations[key]["envs"]
        assert report["outcome"] == "completed", key
        assert report["simulator"] is True
        assert report["visible_devices"] == envs[contract.ENV_VISIBLE_DEVICES]
        assert report["memory_budget_bytes"] == int(envs[contract.ENV_VGPU_MEMORY_MIB]) << 20, key
        assert 0 < report["peak_memory_used_bytes"] <= report["memory_budget_bytes"], key


def test_quota_limited_pod_waits_then_runs_after_quota_frees(demo: DemoRun) -> None:
    waiting = [key for key, pod in demo.by_key.items() if pod["expect"] == "quota-wait"]
    assert waiting
    for key in waiting:
        summary = demo.by_key[key]
        namespace = key.split("/")[0]
        assert summary["phase"] == "succeeded" and summary["waited_for_quota"] is True
        earlier_finishes = [pod["finished_s"] for other, pod in demo.by_key.items()
                            if other != key and other.startswith(f"{namespace}/") and pod["finished_s"] is not None
                            and pod["phase"] == "succeeded"]
        assert earlier_finishes and min(earlier_finishes) <= summary["bound_s"], "bound before any quota freed"
        assert summary["wait_s"] > 0
        reasons = [e["reason"] for e in demo.events if e["involvedObject"].get("name") == key.split("/")[1]]
        assert REASON_QUOTA_WAIT in reasons, f"no {REASON_QUOTA_WAIT} event for {key}: {reasons}"
    # The namespace never held more than its quota: 1 GPU = 1000 milli at any moment.
    team = [demo.by_key[key] for key in demo.ran() if key.startswith("team-a/")]
    for pod in team:
        held = sum(other["vgpu_milli"] for other in team if other["bound_s"] <= pod["bound_s"] < other["finished_s"])
        assert held <= contract.MILLI_PER_GPU


def test_gpu_model_affinity_is_honoured(demo: DemoRun) -> None:
    models = demo.gpu_models()
    for key in demo.ran():
        wanted = demo.by_key[key]["annotations"].get(contract.ANNOTATION_GPU_MODEL)
        if wanted:
            for container in demo.assignment(key).containers:
                for share in container.gpus:
                    assert models[share.uuid][0] in wanted.split(","), key


def test_demo_leaves_no_process_behind(demo: DemoRun) -> None:
    assert _processes_mentioning(str(demo.out)) == []


def test_a_failing_step_is_named_and_every_started_process_is_stopped(tmp_path: Path) -> None:
    jobs = DEFAULT_SCENARIO.parent / "jobs"
    scenario = DEFAULT_SCENARIO.read_text().replace('"1xL4:23034"', '"1xL4:0"')  # the plugin refuses 0 MiB
    path = tmp_path / "broken.yaml"
    path.write_text(scenario.replace("jobs/", f"{jobs}/"))
    completed = _run_demo(tmp_path / "out", "--scenario", str(path), "--short", timeout_s=120)
    assert completed.returncode == 1, completed.stdout[-2000:]
    assert "step 'register device plugin of gpu-l4' failed" in completed.stdout
    assert "MEMORY_MIB must be at least 1" in completed.stdout
    assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run_stops_every_process_and_exits_130(tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "tensorai.demo.cli", "--out", str(tmp_path), "--no-live", "--short"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen = []
    try:
        deadline = time.monotonic() + 120
        while not any(" admitted on " in line for line in seen):  # a worker process is running now
            assert time.monotonic() < deadline, "the demo never admitted a pod:\n" + "".join(seen)
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    time.sleep(0.5)
    while not lines.empty():
        seen.append(lines.get())
    assert "interrupted" in "".join(seen)
    assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"vgpu": None}, "pods[0].vgpu"),
        ({"expect": "maybe"}, "pods[0].expect"),
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"job": "jobs/missing.yaml"}, "pods[0].job"),
        ({"memory": "lots"}, "pods[0].memory"),
        ({"name": "Not_A_Name"}, "pods[0].name"),
    ],
)
def test_bad_scenario_pod_is_refused_naming_the_field(edit: dict[str, Any], message: str) -> None:
    pod = {"name": "p", "vgpu": "0.25", **edit}
    pod = {key: value for key, value in pod.items() if value is not None}
    text = json.dumps({"nodes": [{"name": "n", "gpus": "1xT4:15360"}], "pods": [pod]})
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(text, "test.yaml", DEFAULT_SCENARIO.parent)


def test_bad_sim_gpus_is_refused_before_anything_starts() -> None:
    text = json.dumps({"nodes": [{"name": "n", "gpus": "two T4"}], "pods": [{"name": "p", "vgpu": "1"}]})
    with pytest.raises(ScenarioError, match=r"nodes\[0\]\.gpus"):
        parse_scenario(text, "test.yaml", DEFAULT_SCENARIO.parent)


def test_bad_scenario_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("nodes: []\npods: []\n")
    completed = _run_demo(tmp_path / "out", "--scenario", str(path), timeout_s=60)
    assert completed.returncode == 2
    assert "nodes" in completed.stdout and "non-empty" in completed.stdout


def test_overcommit_check_catches_a_gpu_held_twice() -> None:
    first, second = PodRun(spec=None), PodRun(spec=None)  # type: ignore[arg-type]
    first.bound_s, first.finished_s, first.shares = 0.0, 10.0, [GpuShare("GPU-a", 600, 100)]
    second.bound_s, second.finished_s, second.shares = 5.0, 15.0, [GpuShare("GPU-a", 600, 100)]
    assert overcommit_problems([first, second], {"GPU-a": 1000})
    second.bound_s = 10.0  # starts exactly when the first ends: fine
    assert overcommit_problems([first, second], {"GPU-a": 1000}) == []


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_hostile = _json_values | st.sampled_from(["\0", "", "-1", "inf", "nan", "1e999", "../../etc/passwd", "x" * 300])
_VALID = {
    "name": "fuzz",
    "interval_s": 0.1,
    "job": "jobs/small.yaml",
    "nodes": [{"name": "n", "gpus": "1xT4:15360"}],
    "quotas": [{"namespace": "team", "name": "q", "hard": {"gpus": "1"}}],
    "pods": [{"name": "p", "namespace": "team", "vgpu": "0.25", "memory": "1Gi", "annotations": {"a": "b"},
              "job": "jobs/medium.yaml", "expect": "runs", "short": True}],
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_scenario_document_is_a_scenario_or_a_scenario_error(data: st.DataObject) -> None:
    """A valid document with one to three fields (top level, node, quota or pod) replaced by hostile values."""
    document = json.loads(json.dumps(_VALID))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["top", "nodes", "quotas", "pods"]))
        if where == "top":
            document[data.draw(st.sampled_from(sorted(_VALID)))] = data.draw(_hostile)
        elif isinstance(document.get(where), list) and document[where] and isinstance(document[where][0], dict):
            target = document[where][0]
            target[data.draw(st.sampled_from([*sorted(target), "extra"]))] = data.draw(_hostile)
    try:
        scenario = parse_scenario(json.dumps(document), "fuzz.yaml", DEFAULT_SCENARIO.parent)
    except ScenarioError as error:
        assert str(error)
        return
    assert scenario.nodes and scenario.pods
    for pod in scenario.pods:
        assert pod.job.is_file()
        assert pod.to_pod()["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU] == pod.vgpu
