"""Worker metrics scraped over real HTTP: the exporter alone, and a running worker in --loop mode."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import tensorai.kernels as K
from tensorai.kernels.budget import MemoryBudget
from tensorai.kernels.metrics import MetricsServer, WorkerMetrics
from tensorai.proto import contract


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_exporter_serves_operation_memory_and_throttle_metrics() -> None:
    budget = MemoryBudget(4096)
    metrics = WorkerMetrics(budget, share_milli=250)
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    try:
        budget.reserve(1000)
        metrics.record("matmul", 0.002)
        metrics.record("matmul", 0.004)
        metrics.throttle_seconds.inc(0.5)
        response = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
        assert response.status_code == 200
        values = samples(response.text)
        assert values[("tensorai_tensor_operations_total", (("op", "matmul"),))] == 2
        assert values[("tensorai_tensor_operation_duration_seconds_count", (("op", "matmul"),))] == 2
        assert values[("tensorai_tensor_operation_duration_seconds_sum", (("op", "matmul"),))] == 0.006
        assert values[("tensorai_tensor_memory_used_bytes", ())] == 1000
        assert values[("tensorai_tensor_memory_budget_bytes", ())] == 4096
        assert values[("tensorai_tensor_throttle_seconds_total", ())] == 0.5
        assert values[("tensorai_tensor_share_milli", ())] == 250
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).text == "ok\n"
        assert requests.get(f"http://127.0.0.1:{server.port}/nope", timeout=10).status_code == 404
        server.healthy.clear()
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).status_code == 503
    finally:
        server.stop()


def test_unlimited_budget_is_exported_as_infinity() -> None:
    metrics = WorkerMetrics(MemoryBudget(None), share_milli=None)
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    try:
        text = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
        assert samples(text)[("tensorai_tensor_memory_budget_bytes", ())] == float("inf")
    finally:
        server.stop()


def test_malformed_requests_do_not_take_the_exporter_down() -> None:
    server = MetricsServer(WorkerMetrics(MemoryBudget(1), None), "127.0.0.1", 0).start()
    try:
        garbage_requests = (
            b"\x00\xff garbage\r\n\r\n",
            b"GET " + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
        )
        for garbage in garbage_requests:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
                connection.sendall(garbage)
                connection.recv(1024)
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[MetricsServer]:
    server = MetricsServer(WorkerMetrics(MemoryBudget(1), None), "127.0.0.1", 0).start()
    yield server
    server.stop()


@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60))
@settings(max_examples=60, deadline=None)
def test_any_request_path_gets_an_answer_and_the_exporter_stays_up(fuzz_server, path) -> None:
    server = fuzz_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(f"GET /{path} HTTP/1.0\r\n\r\n".encode())
        status_line = connection.recv(64).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"200", b"400", b"404"), status_line
    assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).status_code == 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_running_worker_exports_metrics_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    report_path = tmp_path / "report.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", contract.ENV_VGPU_MILLI: "500", contract.ENV_VGPU_MEMORY_MIB: "8"}
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "tensorai.kernels.worker", "--loop", "--metrics-host", "127.0.0.1",
            "--metrics-port", str(port), "--report-json", str(report_path), "--duration-s", "120",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        values: dict = {}
        while time.monotonic() < deadline:
            try:
                values = samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            except requests.ConnectionError:
                values = {}
            if values.get(("tensorai_tensor_operations_total", (("op", "softmax"),)), 0) >= 1:
                break
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            time.sleep(0.2)
        assert values.get(("tensorai_tensor_operations_total", (("op", "softmax"),)), 0) >= 1, "no operations seen"
        assert values[("tensorai_tensor_memory_budget_bytes", ())] == 8 * 1024 * 1024
        assert values[("tensorai_tensor_share_milli", ())] == 500
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "stopped"
    assert report["throttle"]["enabled"] and report["throttle"]["share"] == 0.5


def test_in_process_kernels_leave_the_budget_where_they_found_it() -> None:
    budget = K.current_budget()
    before = budget.used_bytes
    K.softmax(np.ones((2, 3), np.float32))
    assert budget.used_bytes == before
