"""Prometheus metrics scraped over real HTTP, and the pid -> pod mapping they rely on (fake /proc trees)."""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tensorai.deviceplugin.backends import parse_sim_gpus
from tensorai.deviceplugin.gpus import BackendError, ContainerShare
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.metrics import PluginMetrics
from tensorai.deviceplugin.podmap import CgroupPodRef, parse_cgroup, pod_of_pid
from tensorai.deviceplugin.simulated import SimulatedBackend

MIB = 1 << 20
POD_UID = "8d2e4f9c-1b2a-4c3d-9e8f-0a1b2c3d4e5f"
OTHER_POD_UID = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
CONTAINER_ID = "ab" * 32


# --- pid -> pod --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cgroup_text",
    [
        # cgroup v2, systemd driver, containerd
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
        f"cri-containerd-{CONTAINER_ID}.scope\n",
        # cgroup v2, cgroupfs driver
        f"0::/kubepods/besteffort/pod{POD_UID}/{CONTAINER_ID}\n",
        # cgroup v2, Guaranteed QoS (no QoS level in the path), systemd, CRI-O
        f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CONTAINER_ID}.scope\n",
        # cgroup v1, cgroupfs driver, one line per controller
        f"12:pids:/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n"
        f"11:memory:/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n"
        f"1:name=systemd:/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n",
        # cgroup v1, systemd driver, docker
        f"4:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID.replace('-', '_')}"
        f".slice/docker-{CONTAINER_ID}.scope\n",
        # a kind node: the node's own cgroup prefixes the kubelet's path
        f"0::/system.slice/docker-{'cd' * 32}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/"
        f"cri-containerd-{CONTAINER_ID}.scope\n",
        # cgroup v2 read from a plugin in its own (private) cgroup namespace: paths are relative to ours
        f"0::/../../kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER_ID}.scope\n",
    ],
    ids=[
        "v2-systemd",
        "v2-cgroupfs",
        "v2-guaranteed-crio",
        "v1-cgroupfs",
        "v1-systemd-docker",
        "kind-node",
        "v2-private-cgroupns",
    ],
)
def test_pod_uid_and_container_id_are_found_in_every_cgroup_layout(cgroup_text: str) -> None:
    assert parse_cgroup(cgroup_text) == CgroupPodRef(pod_uid=POD_UID, container_id=CONTAINER_ID)


def test_pod_sandbox_level_cgroup_has_no_container_id() -> None:
    assert parse_cgroup(f"0::/kubepods/pod{POD_UID}\n") == CgroupPodRef(pod_uid=POD_UID, container_id=None)


@pytest.mark.parametrize(
    "cgroup_text",
    [
        "0::/init.scope\n",
        "0::/system.slice/containerd.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/kubepods/burstable/podnot-a-uid/abc\n",
        "garbage without colons\n",
        "",
    ],
)
def test_processes_outside_pods_map_to_no_pod(cgroup_text: str) -> None:
    assert parse_cgroup(cgroup_text) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_cgroup_text_parses_without_crashing(text: str) -> None:
    result = parse_cgroup(text)
    assert result is None or len(result.pod_uid) == 36


def write_proc(proc_root: Path, pid: int, cgroup_text: str) -> None:
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc_root / str(pid) / "cgroup").write_text(cgroup_text)


def test_pod_of_pid_reads_the_fake_proc_tree(tmp_path: Path) -> None:
    write_proc(tmp_path, 4242, f"0::/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n")
    write_proc(tmp_path, 1, "0::/init.scope\n")
    assert pod_of_pid(4242, str(tmp_path)) == CgroupPodRef(POD_UID, CONTAINER_ID)
    assert pod_of_pid(1, str(tmp_path)) is None
    assert pod_of_pid(9999, str(tmp_path)) is None  # exited (or not visible without hostPID)
    assert pod_of_pid(-1, str(tmp_path)) is None


# --- metrics over HTTP ---------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples, name: str, **labels: str) -> float:
    matches = [
        v for sample_labels, v in samples.get(name, []) if all(sample_labels.get(k) == x for k, x in labels.items())
    ]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {samples.get(name)}"
    return matches[0]


@pytest.fixture
def node(tmp_path: Path):
    backend = SimulatedBackend(parse_sim_gpus("2xH100:81559"), node_name="gpu-node-1")
    gpu0, gpu1 = (gpu.uuid for gpu in backend.gpus())
    tracker = HealthTracker([gpu0, gpu1])
    shares = [
        ContainerShare("team-a", "trainer", POD_UID, "main", gpu0, 250, 20000),
        ContainerShare("team-b", "notebook", OTHER_POD_UID, "lab", gpu0, 500, 40000),
        ContainerShare("team-b", "notebook", OTHER_POD_UID, "sidecar", gpu0, 100, 1000),
    ]
    proc_root = tmp_path / "proc"
    write_proc(proc_root, 100, f"0::/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n")
    write_proc(proc_root, 101, f"0::/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n")
    write_proc(proc_root, 200, f"0::/kubepods/besteffort/pod{OTHER_POD_UID}/{'ef' * 32}\n")
    write_proc(proc_root, 300, "0::/system.slice/some-daemon.service\n")
    backend.add_process(gpu0, 100, 3000)
    backend.add_process(gpu0, 101, 1000)
    backend.add_process(gpu0, 200, 512)
    backend.add_process(gpu0, 300, 64)
    backend.set_usage(gpu0, memory_used_mib=4600, utilization_pct=42)
    metrics = PluginMetrics(backend, tracker, lambda: list(shares), node_name="gpu-node-1", proc_root=str(proc_root))
    port = metrics.serve(0, addr="127.0.0.1")
    yield backend, tracker, metrics, port, (gpu0, gpu1), shares
    metrics.stop()


def test_per_gpu_metrics_report_memory_utilisation_allocation_and_health(node) -> None:
    backend, tracker, _, port, (gpu0, gpu1), _ = node
    tracker.record_xid(gpu1, 48)
    samples = scrape(port)
    labels0 = {"node": "gpu-node-1", "gpu": gpu0, "index": "0", "model": "H100"}
    assert value(samples, "tensorai_gpu_memory_total_bytes", **labels0) == 81559 * MIB
    assert value(samples, "tensorai_gpu_memory_reserved_bytes", **labels0) == backend.gpus()[0].reserved_mib * MIB
    assert value(samples, "tensorai_gpu_memory_used_bytes", **labels0) == 4600 * MIB
    assert value(samples, "tensorai_gpu_utilization_ratio", **labels0) == pytest.approx(0.42)
    assert value(samples, "tensorai_gpu_allocated_milli", **labels0) == 850
    assert value(samples, "tensorai_gpu_healthy", **labels0) == 1
    assert value(samples, "tensorai_gpu_allocated_milli", gpu=gpu1) == 0
    assert value(samples, "tensorai_gpu_healthy", gpu=gpu1) == 0


def test_container_metrics_map_nvml_processes_to_pods_through_cgroups(node) -> None:
    _, _, _, port, (gpu0, _), _ = node
    samples = scrape(port)
    trainer = {"namespace": "team-a", "pod": "trainer", "container": "main", "gpu": gpu0}
    assert value(samples, "tensorai_container_allocated_milli", **trainer) == 250
    assert value(samples, "tensorai_container_memory_allocated_bytes", **trainer) == 20000 * MIB
    # PIDs 100 and 101 are in the trainer pod; 300 is a host daemon and belongs to no one.
    assert value(samples, "tensorai_container_memory_used_bytes", **trainer) == 4000 * MIB


def test_pod_with_two_containers_on_one_gpu_reports_its_usage_once_without_guessing(node) -> None:
    _, _, _, port, (gpu0, _), _ = node
    samples = scrape(port)
    assert value(samples, "tensorai_container_allocated_milli", pod="notebook", container="lab") == 500
    assert value(samples, "tensorai_container_allocated_milli", pod="notebook", container="sidecar") == 100
    used = [labels for labels, _ in samples["tensorai_container_memory_used_bytes"] if labels["pod"] == "notebook"]
    assert [labels["container"] for labels in used] == [""]
    assert value(samples, "tensorai_container_memory_used_bytes", pod="notebook", gpu=gpu0) == 512 * MIB


def test_backend_errors_during_a_scrape_keep_the_rest_and_count_the_error(node) -> None:
    backend, _, _, port, (gpu0, gpu1), _ = node
    before = value(scrape(port), "tensorai_gpu_scrape_errors_total", node="gpu-node-1")
    backend.fail_next("usage", BackendError("nvmlDeviceGetUtilizationRates on GPU x failed: Unknown Error"))
    samples = scrape(port)
    assert value(samples, "tensorai_gpu_scrape_errors_total", node="gpu-node-1") == before + 1
    used_gpus = {labels["gpu"] for labels, _ in samples["tensorai_gpu_memory_used_bytes"]}
    assert used_gpus == {gpu1}  # GPU 0's usage failed; GPU 1 still reported
    assert value(samples, "tensorai_gpu_memory_total_bytes", gpu=gpu0) == 81559 * MIB
    assert value(samples, "tensorai_container_allocated_milli", container="main") == 250


def test_lost_gpu_still_scrapes_as_unhealthy(node) -> None:
    backend, tracker, _, port, (gpu0, _), _ = node
    backend.lose_gpu(gpu0)
    tracker.record_lost(gpu0)
    samples = scrape(port)
    assert value(samples, "tensorai_gpu_healthy", gpu=gpu0) == 0
    assert value(samples, "tensorai_gpu_scrape_errors_total", node="gpu-node-1") >= 2  # usage + processes
    assert value(samples, "tensorai_container_memory_used_bytes", container="main") == 0


def test_failing_allocation_source_does_not_break_the_scrape(tmp_path: Path) -> None:
    backend = SimulatedBackend(parse_sim_gpus("1xA100:40960"), node_name="n")
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])

    def broken() -> list[ContainerShare]:
        raise RuntimeError("allocation store unavailable")

    metrics = PluginMetrics(backend, tracker, broken, node_name="n", proc_root=str(tmp_path))
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        samples = scrape(port)
        assert value(samples, "tensorai_gpu_allocated_milli", node="n") == 0
        assert value(samples, "tensorai_gpu_scrape_errors_total", node="n") == 1
    finally:
        metrics.stop()


def test_healthz_answers_ok_and_concurrent_scrapes_all_succeed(node) -> None:
    _, _, _, port, _, _ = node
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ok\n")
    failures: list[BaseException] = []

    def scrape_many() -> None:
        try:
            for _ in range(5):
                scrape(port)
        except BaseException as error:  # collected and asserted below
            failures.append(error)

    threads = [threading.Thread(target=scrape_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures


def test_stop_releases_the_port(tmp_path: Path) -> None:
    backend = SimulatedBackend(parse_sim_gpus("1xA100:40960"))
    metrics = PluginMetrics(backend, HealthTracker([]), list, node_name="n", proc_root=str(tmp_path))
    port = metrics.serve(0, addr="127.0.0.1")
    metrics.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert metrics.port == 0


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory):
    backend = SimulatedBackend(parse_sim_gpus("1xA100:40960"), node_name="fuzz")
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    metrics = PluginMetrics(backend, tracker, list, node_name="fuzz", proc_root=str(tmp_path_factory.mktemp("proc")))
    port = metrics.serve(0, addr="127.0.0.1")
    yield port
    metrics.stop()


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "BREW"]),
    path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
    body=st.binary(max_size=256),
)
def test_hostile_http_requests_never_break_the_metrics_server(fuzz_server, method: str, path: str, body: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", fuzz_server, timeout=5)
    try:
        connection.request(method, "/" + path.lstrip("/"), body=body)
        response = connection.getresponse()
        response.read()
        assert response.status < 500
    finally:
        connection.close()
    # Whatever was sent, the next scrape still works.
    assert value(scrape(fuzz_server), "tensorai_gpu_healthy", node="fuzz") == 1
