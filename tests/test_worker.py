"""tensorai-worker end to end on the CUDA simulator: env share, job, budget, report, exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tensorai.kernels.budget import MemoryBudget
from tensorai.kernels.jobs import parse_job
from tensorai.kernels.metrics import WorkerMetrics
from tensorai.kernels.worker import Runner, WorkerEnv, build_parser, read_env
from tensorai.proto import contract

JOB = """
name: check
verify: true
operations:
  - {op: matmul, shapes: [[5, 6], [6, 3]], iterations: 2}
  - {op: einsum, spec: "bij,bjk->bik", shapes: [[2, 3, 4], [2, 4, 5]]}
  - {op: fused, shapes: [[3, 4], [4, 5]], activation: silu, bias: true, dtype: float64}
  - {op: softmax, shapes: [[3, 9]]}
  - {op: layernorm, shapes: [[2, 9]]}
  - {op: sum, shapes: [[20]]}
  - {op: max, shapes: [[3, 4]], axis: 0}
"""


def run_worker(args: list[str], env_extra: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", **env_extra}
    for name in (contract.ENV_VGPU_MILLI, contract.ENV_VGPU_MEMORY_MIB, contract.ENV_VISIBLE_DEVICES):
        if name not in env_extra:
            env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "tensorai.kernels.worker", "--metrics-port", "0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_worker_runs_a_job_correctly_inside_its_memory_budget(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    report_path = tmp_path / "report.json"
    done = run_worker(
        ["--job", str(job), "--report-json", str(report_path)],
        {contract.ENV_VGPU_MILLI: "1000", contract.ENV_VGPU_MEMORY_MIB: "16", contract.ENV_VISIBLE_DEVICES: "GPU-x"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "completed" and report["passes"] == 1
    assert report["share_milli"] == 1000 and report["visible_devices"] == "GPU-x"
    assert report["memory_budget_bytes"] == 16 * 1024 * 1024
    assert 0 < report["peak_memory_used_bytes"] <= report["memory_budget_bytes"]
    assert report["memory_used_bytes_at_exit"] == 0
    assert not report["throttle"]["enabled"], "a whole GPU is not throttled by default"
    assert [operation["verified"] for operation in report["operations"]] == [True] * 7
    assert report["operations"][0]["iterations_run"] == 2


def test_worker_over_its_memory_budget_exits_3_and_reports_the_budget(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    # The two 1 MiB inputs fill the 2 MiB budget exactly; the 2 MiB output cannot be allocated.
    job.write_text("- {op: matmul, shapes: [[512, 256], [256, 512]], dtype: float64}\n")
    report_path = tmp_path / "report.json"
    done = run_worker(["--job", str(job), "--report-json", str(report_path)], {contract.ENV_VGPU_MEMORY_MIB: "2"})
    assert done.returncode == 3, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "out_of_budget"
    assert "2097152-byte budget" in report["error"] and "2097152-byte budget" in done.stderr
    assert report["peak_memory_used_bytes"] <= 2 * 1024 * 1024
    assert report["allocations_refused"] == 1


def test_worker_refuses_a_bad_job_file_with_exit_2(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("- {op: matmul, shapes: [[2, 3], [4, 5]]}\n")
    done = run_worker(["--job", str(job)], {})
    assert done.returncode == 2
    assert "operations[0]" in done.stderr and "index 'K'" in done.stderr


def test_worker_refuses_a_malformed_share_variable_with_exit_2() -> None:
    done = run_worker([], {contract.ENV_VGPU_MILLI: "quarter"})
    assert done.returncode == 2
    assert f"{contract.ENV_VGPU_MILLI}='quarter'" in done.stderr


def test_worker_throttles_a_fractional_share_by_default(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = run_worker(["--iterations", "1", "--report-json", str(report_path)], {contract.ENV_VGPU_MILLI: "250"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["throttle"]["enabled"] and report["throttle"]["share"] == 0.25
    assert report["throttle"]["throttled_seconds"] > 0


def test_help_lists_every_flag_the_demo_and_manifests_use() -> None:
    text = build_parser().format_help()
    for flag in (
        "--job", "--loop", "--iterations", "--metrics-port", "--throttle", "--no-throttle", "--report-json",
        "--log-level", "--duration-s",
    ):  # fmt: skip
        assert flag in text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, WorkerEnv(None, None, None)),
        ({contract.ENV_VGPU_MILLI: "250", contract.ENV_VGPU_MEMORY_MIB: "4096"}, WorkerEnv(250, 4096, None)),
        (
            {contract.ENV_VGPU_MILLI: "2000", contract.ENV_VISIBLE_DEVICES: "GPU-a,GPU-b"},
            WorkerEnv(2000, None, "GPU-a,GPU-b"),
        ),
    ],
)
def test_share_is_read_from_the_device_plugins_variables(environ, expected) -> None:
    assert read_env(environ) == expected


def test_share_fraction_caps_at_one_gpu() -> None:
    assert WorkerEnv(250, None, None).share == 0.25
    assert WorkerEnv(2000, None, None).share == 1.0


@pytest.mark.parametrize("raw", ["0", "-5", "0.25", "abc"])
def test_malformed_share_is_a_clear_error(raw) -> None:
    with pytest.raises(ValueError, match=contract.ENV_VGPU_MILLI):
        read_env({contract.ENV_VGPU_MILLI: raw})


def test_worker_refuses_inputs_larger_than_the_budget_before_building_them(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    # 80 GB of inputs: building them in host memory first would hang or crash the test machine.
    job.write_text("- {op: matmul, shapes: [[100000, 100000], [100000, 100000]]}\n")
    done = run_worker(["--job", str(job)], {contract.ENV_VGPU_MEMORY_MIB: "64"}, timeout=120)
    assert done.returncode == 3
    assert "the inputs of matmul needs 80000000000 bytes" in done.stderr


def loop_for(job_text: str, budget: MemoryBudget, passes: int = 3) -> Runner:
    """Run a job in --loop mode in this process until at least `passes` passes are done."""
    stop = threading.Event()
    runner = Runner(parse_job(job_text), WorkerMetrics(budget, None), None, stop, seed=None)

    def stop_after_enough_passes() -> None:
        while not stop.is_set() and runner.state.passes < passes:
            time.sleep(0.005)
        stop.set()

    watcher = threading.Thread(target=stop_after_enough_passes, daemon=True)
    watcher.start()
    try:
        runner.run(loop=True, deadline=time.monotonic() + 120)
    finally:
        stop.set()
        watcher.join()
    return runner


MATMUL_4X4 = "  - {op: matmul, shapes: [[4, 4], [4, 4]], dtype: float64, iterations: 2}\n"
BYTES_4X4 = 4 * 4 * 8


def test_loop_uploads_inputs_once_and_warms_up_untimed(budget_bytes) -> None:
    budget = budget_bytes(None)
    runner = loop_for("verify: true\noperations:\n" + MATMUL_4X4, budget)
    report = runner.state.operations["0:matmul"]
    assert runner.state.passes >= 3 and report.iterations_run >= 2 * runner.state.passes
    assert report.verified is True
    snapshot = budget.snapshot()
    # Inputs once (2), then one output per launch: the untimed warm-up plus every timed iteration.
    assert snapshot.allocations == 2 + 1 + report.iterations_run
    assert snapshot.peak_bytes == 3 * BYTES_4X4, "one output alive at a time next to the kept inputs"
    assert snapshot.used_bytes == 0, "kept inputs are released when the loop ends"


def test_loop_falls_back_to_uploading_per_pass_when_kept_inputs_do_not_fit(budget_bytes, caplog) -> None:
    # Each operation needs two inputs + one output: alone it fits, with another's inputs kept it does not.
    budget = budget_bytes(3 * BYTES_4X4 + 8)
    with caplog.at_level(logging.WARNING, logger="tensorai.worker"):
        runner = loop_for("operations:\n" + MATMUL_4X4 * 2, budget)
    assert runner.state.passes >= 3 and not runner.keep_inputs
    assert all(report.iterations_run >= 2 * 3 for report in runner.state.operations.values())
    assert "do not fit the memory budget together" in caplog.text
    snapshot = budget.snapshot()
    # Uploads every pass after the first: two inputs per operation per pass, warm-up only once each.
    launches = sum(report.iterations_run for report in runner.state.operations.values())
    assert snapshot.allocations >= 2 * 2 * runner.state.passes + launches
    assert snapshot.peak_bytes <= budget.limit_bytes and snapshot.used_bytes == 0
