"""`tensorai-worker`: the process a pod runs inside its GPU share.

Reads the share the device plugin granted from the environment, installs the memory budget
(Numba EMM plugin on a GPU; the kernels' allocation path on the simulator), optionally throttles
launches to the compute share, runs a job (or the built-in demo job) once or in a loop, exports
Prometheus metrics and writes a JSON summary. Exit codes: 0 done, 1 unexpected error, 2 bad
flags/env/job file, 3 out of memory budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tensorai.proto import cliutil, contract

LOG = logging.getLogger("tensorai.worker")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_OUT_OF_BUDGET = 3
DEFAULT_METRICS_PORT = 9500


@dataclass(frozen=True)
class WorkerEnv:
    """The share the device plugin granted this container (None where the variable is unset)."""

    share_milli: int | None
    memory_mib: int | None
    visible_devices: str | None

    @property
    def share(self) -> float | None:
        """Fraction of one GPU; None when unknown; 1.0 for a whole GPU or more."""
        return None if self.share_milli is None else min(1.0, self.share_milli / contract.MILLI_PER_GPU)


def read_env(environ: dict[str, str] | os._Environ[str] | None = None) -> WorkerEnv:
    """Parse the device plugin's variables; ValueError naming the variable when one is malformed."""
    environ = os.environ if environ is None else environ

    def whole_number(name: str, low: int) -> int | None:
        raw = environ.get(name, "").strip()
        if not raw:
            return None
        if not raw.isdigit() or int(raw) < low:
            raise ValueError(f"{name}={raw!r} must be a whole number >= {low}")
        return int(raw)

    share_milli = whole_number(contract.ENV_VGPU_MILLI, 1)
    memory_mib = whole_number(contract.ENV_VGPU_MEMORY_MIB, 0)
    visible = environ.get(contract.ENV_VISIBLE_DEVICES, "").strip() or None
    return WorkerEnv(share_milli, memory_mib, visible)


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.ArgumentParser(
        prog="tensorai-worker",
        description=(
            "Run Numba CUDA tensor kernels inside a tensor.ai GPU share. The share comes from "
            f"{contract.ENV_VGPU_MILLI}, {contract.ENV_VGPU_MEMORY_MIB} and {contract.ENV_VISIBLE_DEVICES} "
            "(set by the device plugin). Exit codes: 0 done, 1 error, 2 bad input, 3 out of memory budget."
        ),
    )
    parser.add_argument("--job", type=Path, help="YAML job file (see docs/kernels.md); default: built-in demo job")
    parser.add_argument("--loop", action="store_true", help="repeat the job until SIGTERM/SIGINT (or --duration-s)")
    parser.add_argument("--iterations", type=int, help="run every operation N times (overrides the job file)")
    parser.add_argument("--duration-s", type=float, help="with --loop: stop after this many seconds")
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus /metrics and /healthz port; 0 = off"
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server binds (default 0.0.0.0)")
    parser.add_argument(
        "--throttle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep measured GPU time near the share (default: on when the share is below one GPU)",
    )
    parser.add_argument("--report-json", type=Path, help="write a JSON summary (peak memory vs budget, timings) here")
    parser.add_argument("--seed", type=int, help="seed for the random inputs (default: fresh each run)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity"
    )
    cliutil.add_log_format_flag(parser)
    cliutil.add_version_flag(parser)
    return parser


@dataclass
class OperationReport:
    op: str
    label: str
    dtype: str
    shapes: list[list[int]]
    iterations_run: int = 0
    busy_seconds: float = 0.0
    flops_per_run: int = 0
    verified: bool | None = None
    max_abs_error: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean_seconds"] = self.busy_seconds / self.iterations_run if self.iterations_run else None
        data["gflops_per_second"] = (
            self.flops_per_run * self.iterations_run / self.busy_seconds / 1e9 if self.busy_seconds > 0 else None
        )
        return data


@dataclass
class RunState:
    outcome: str = "running"
    error: str | None = None
    passes: int = 0
    operations: dict[str, OperationReport] = field(default_factory=dict)


def _reference(operation: Any, inputs: list[np.ndarray]) -> np.ndarray:
    """NumPy float64 answer for one operation (the worker's `verify: true` check)."""
    from tensorai.kernels.activations import reference_activation

    wide = [array.astype(np.float64) for array in inputs]
    if operation.op in ("matmul", "einsum"):
        return np.einsum(operation.contraction_spec, wide[0], wide[1])
    if operation.op == "fused":
        result = np.einsum(operation.contraction_spec, wide[0], wide[1])
        if operation.bias:
            result = result + wide[2]
        return reference_activation(result, operation.activation)
    if operation.op == "softmax":
        exps = np.exp(wide[0] - wide[0].max(axis=operation.axis, keepdims=True))
        return exps / exps.sum(axis=operation.axis, keepdims=True)
    if operation.op == "layernorm":
        x = wide[0]
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + operation.eps)
    if operation.op == "sum":
        return np.asarray(wide[0].sum(axis=operation.axis))
    return np.asarray(wide[0].max(axis=operation.axis))


class Runner:
    """Runs a job's operations with metrics, throttle and budget; stops between runs when told.

    Each operation's inputs are built, uploaded, run once untimed (compiling its kernels and giving
    the result `verify` checks) and then kept on the device for every later pass: the timed loop is
    launch + synchronize only, so the throttle acts on GPU time rather than on host-side input
    generation, copies and JIT compilation. Kept inputs stay charged to the memory budget; if the
    inputs of all operations do not fit together, the worker falls back to uploading per pass.
    """

    def __init__(self, job: Any, metrics: Any, throttle: Any, stop: threading.Event, seed: int | None) -> None:
        self.job = job
        self.metrics = metrics
        self.throttle = throttle
        self.stop = stop
        self.rng = np.random.default_rng(seed)
        self.state = RunState()
        self.keep_inputs = True
        self._prepared: dict[int, list[Any]] = {}
        self._warmed: set[int] = set()

    def _inputs(self, operation: Any) -> list[np.ndarray]:
        dtype = np.dtype(operation.dtype)
        arrays = [self.rng.standard_normal(shape).astype(dtype) for shape in operation.shapes]
        if operation.op == "fused" and operation.bias:
            arrays.append(self.rng.standard_normal(self._output_last(operation)).astype(dtype))
        return [np.ascontiguousarray(array) for array in arrays]

    @staticmethod
    def _check_inputs_fit(operation: Any) -> None:
        """Refuse inputs larger than the whole budget before building them in host memory."""
        from tensorai.kernels.budget import OutOfBudget, current_budget

        budget = current_budget()
        itemsize = np.dtype(operation.dtype).itemsize
        needed = sum(int(np.prod(shape, dtype=np.float64)) * itemsize for shape in operation.shapes)
        if budget.limit_bytes is not None and needed > budget.limit_bytes:
            raise OutOfBudget(needed, budget.used_bytes, budget.limit_bytes, f"the inputs of {operation.label}")

    @staticmethod
    def _output_last(operation: Any) -> int:
        from tensorai.kernels.contraction import plan_contraction

        plan = plan_contraction(operation.contraction_spec, operation.shapes[0], operation.shapes[1])
        return plan.sizes[plan.out_labels[-1]]

    @staticmethod
    def _launch(operation: Any, device_inputs: list[Any]) -> Any:
        import tensorai.kernels as K

        if operation.op == "matmul":
            return K.matmul(device_inputs[0], device_inputs[1])
        if operation.op == "einsum":
            return K.einsum(operation.spec, device_inputs[0], device_inputs[1])
        if operation.op == "fused":
            bias = device_inputs[2] if operation.bias else None
            return K.tensor_dot_fusion(device_inputs[0], device_inputs[1], bias, operation.activation, operation.spec)
        if operation.op == "softmax":
            return K.softmax(device_inputs[0], axis=operation.axis)
        if operation.op == "layernorm":
            return K.layernorm(device_inputs[0], eps=operation.eps)
        if operation.op == "sum":
            return K.sum(device_inputs[0], axis=operation.axis)
        return K.max(device_inputs[0], axis=operation.axis)

    def _launch_and_wait(self, operation: Any, device_inputs: list[Any]) -> Any:
        from numba import cuda

        try:
            result = self._launch(operation, device_inputs)
            cuda.synchronize()
        except Exception:
            self.metrics.failures.labels(op=operation.op).inc()
            raise
        return result

    def _prepare(self, key: str, index: int, operation: Any, report: OperationReport) -> list[Any]:
        """The operation's device inputs: uploaded and warmed up (compiled, verified) on first use."""
        from tensorai.kernels.budget import OutOfBudget

        if index in self._prepared:
            return self._prepared[index]
        try:
            return self._upload_and_warm_up(key, index, operation, report)
        except OutOfBudget:
            if not self._prepared:
                raise
        # Outside the except block, so the failed attempt's buffers are no longer referenced.
        LOG.warning(
            "the inputs of every operation do not fit the memory budget together; "
            "uploading each operation's inputs every pass instead (the loop becomes host-bound)"
        )
        self.release_inputs()
        self.keep_inputs = False
        return self._upload_and_warm_up(key, index, operation, report)

    def _upload_and_warm_up(self, key: str, index: int, operation: Any, report: OperationReport) -> list[Any]:
        from tensorai.kernels import memory

        self._check_inputs_fit(operation)
        host_inputs = self._inputs(operation)
        device_inputs = [memory.to_device(array, what=f"{operation.label} input") for array in host_inputs]
        if index not in self._warmed:
            result = self._launch_and_wait(operation, device_inputs)  # untimed: pays JIT compilation
            if self.job.verify and report.verified is None:
                self._verify(key, operation, host_inputs, result, report)
            del result
            self._warmed.add(index)
        if self.keep_inputs:
            self._prepared[index] = device_inputs
        return device_inputs

    @staticmethod
    def _verify(key: str, operation: Any, host_inputs: list[np.ndarray], result: Any, report: OperationReport) -> None:
        from tensorai.kernels.testing import tolerances

        reference = _reference(operation, host_inputs)
        got = result.copy_to_host()
        terms = max(1, operation.flops // max(1, reference.size))
        report.verified = bool(np.allclose(got, reference, **tolerances(operation.dtype, terms)))
        report.max_abs_error = float(np.max(np.abs(got - reference))) if reference.size else 0.0
        if not report.verified:
            LOG.error("verification failed for %s: max abs error %.3g", key, report.max_abs_error)

    def release_inputs(self) -> None:
        """Drop the kept device inputs (their bytes return to the budget once collected)."""
        self._prepared.clear()

    def run_operation(self, index: int, operation: Any) -> bool:
        """Run one operation's iterations; False when told to stop before they were all done."""
        key = f"{index}:{operation.label}"
        report = self.state.operations.setdefault(
            key,
            OperationReport(
                operation.op, operation.label, operation.dtype, [list(s) for s in operation.shapes],
                flops_per_run=operation.flops,
            ),
        )  # fmt: skip
        device_inputs = self._prepare(key, index, operation, report)
        for _ in range(operation.iterations):
            if self.stop.is_set():
                return False
            started = time.perf_counter()
            result = self._launch_and_wait(operation, device_inputs)
            busy = time.perf_counter() - started
            del result
            report.iterations_run += 1
            report.busy_seconds += busy
            self.metrics.record(operation.op, busy)
            if self.throttle is not None:
                slept = self.throttle.charge(busy, self.stop)
                if slept:
                    self.metrics.throttle_seconds.inc(slept)
        return True

    def run(self, loop: bool, deadline: float | None) -> None:
        """One pass over the job, or passes until stopped / past `deadline`; inputs are freed after."""
        self.keep_inputs = loop
        try:
            while True:
                for index, operation in enumerate(self.job.operations):
                    if self.stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        return
                    if not self.run_operation(index, operation):
                        return  # a pass cut short is not counted
                self.state.passes += 1
                if not loop:
                    return
        finally:
            self.release_inputs()


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tensorai-worker`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cliutil.setup_logging(args.log_level, args.log_format)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.duration_s is not None and not args.duration_s > 0:
        parser.error("--duration-s must be > 0")
    if not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be 0..65535")
    try:
        env = read_env()
    except ValueError as error:
        LOG.error("bad environment: %s", error)
        return EXIT_USAGE

    # Budget first: on a GPU the EMM plugin must be in place before the first CUDA allocation.
    from tensorai.kernels.budget import MIB, MemoryBudget, OutOfBudget, install_budget, is_simulator
    from tensorai.kernels.jobs import JobSpecError, demo_job, load_job
    from tensorai.kernels.metrics import MetricsServer, WorkerMetrics
    from tensorai.kernels.throttle import LaunchThrottle

    budget = MemoryBudget(None if env.memory_mib is None else env.memory_mib * MIB)
    enforced_by = install_budget(budget)
    try:
        job = load_job(args.job, args.iterations) if args.job else demo_job(is_simulator(), args.iterations)
    except JobSpecError as error:
        LOG.error("bad job: %s", error)
        return EXIT_USAGE

    throttle_on = args.throttle if args.throttle is not None else (env.share is not None and env.share < 1)
    if throttle_on and env.share is None:
        LOG.error("--throttle needs %s (the compute share) in the environment", contract.ENV_VGPU_MILLI)
        return EXIT_USAGE
    throttle = LaunchThrottle(env.share) if throttle_on and env.share is not None else None
    metrics = WorkerMetrics(budget, env.share_milli)
    server = None
    if args.metrics_port:
        try:
            server = MetricsServer(metrics, args.metrics_host, args.metrics_port).start()
        except OSError as error:
            LOG.error("cannot serve metrics on %s:%d: %s", args.metrics_host, args.metrics_port, error)
            return EXIT_USAGE
        LOG.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    LOG.info(
        "worker starting: job=%s share_milli=%s memory_budget=%s visible=%s throttle=%s budget_enforced_by=%s",
        job.name, env.share_milli, budget.limit_bytes, env.visible_devices, bool(throttle), enforced_by,
    )  # fmt: skip
    runner = Runner(job, metrics, throttle, stop, args.seed)
    started = time.monotonic()
    deadline = started + args.duration_s if args.loop and args.duration_s else None
    exit_code = EXIT_OK
    try:
        runner.run(args.loop, deadline)
        runner.state.outcome = "stopped" if stop.is_set() else "completed"
    except OutOfBudget as error:
        runner.state.outcome, runner.state.error = "out_of_budget", str(error)
        LOG.error("%s", error)
        exit_code = EXIT_OUT_OF_BUDGET
    except Exception as error:  # the report must still say what happened
        runner.state.outcome, runner.state.error = "error", f"{type(error).__name__}: {error}"
        LOG.exception("worker failed")
        exit_code = EXIT_ERROR
    wall_seconds = time.monotonic() - started
    if server is not None:
        if exit_code:
            server.healthy.clear()
        server.stop()
    snapshot = budget.snapshot()
    busy_seconds = sum(report.busy_seconds for report in runner.state.operations.values())
    report = {
        "outcome": runner.state.outcome,
        "error": runner.state.error,
        "job": job.name,
        "passes": runner.state.passes,
        "share_milli": env.share_milli,
        "visible_devices": env.visible_devices,
        "simulator": is_simulator(),
        "memory_budget_bytes": snapshot.limit_bytes,
        "peak_memory_used_bytes": snapshot.peak_bytes,
        "memory_used_bytes_at_exit": snapshot.used_bytes,
        "allocations_refused": snapshot.refused,
        "budget_enforced_by": enforced_by,
        "throttle": {
            "enabled": throttle is not None,
            "share": throttle.share if throttle else None,
            "throttled_seconds": throttle.throttled_seconds if throttle else 0.0,
        },
        "busy_seconds": busy_seconds,
        "wall_seconds": wall_seconds,
        "busy_fraction": busy_seconds / wall_seconds if wall_seconds > 0 else None,
        "operations": [report.as_dict() for report in runner.state.operations.values()],
    }
    if args.report_json:
        try:
            _write_report(args.report_json, report)
        except OSError as error:
            LOG.error("cannot write report %s: %s", args.report_json, error)
            exit_code = exit_code or EXIT_ERROR
    if any(operation.verified is False for operation in runner.state.operations.values()):
        exit_code = exit_code or EXIT_ERROR
    LOG.info(
        "worker done: outcome=%s passes=%d busy=%.3fs wall=%.3fs peak_memory=%d bytes",
        report["outcome"], report["passes"], busy_seconds, wall_seconds, snapshot.peak_bytes,
    )  # fmt: skip
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
