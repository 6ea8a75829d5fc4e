#!/usr/bin/env python3
"""Benchmark tensor.ai's Numba CUDA kernels and print a Markdown table with each case's floor.

    python tests/benchmarks/bench_kernels.py            # on a machine with an NVIDIA GPU
    python tests/benchmarks/bench_kernels.py --sim      # tiny sizes on the CUDA simulator (checks the script)

Cases: matmul float32 (vs CuPy/cuBLAS SGEMM with TF32 off, when CuPy is importable), batched
contraction 'bhqd,bhkd->bhqk' (vs cupy.einsum), the fused GEMM + bias + GELU, row softmax and
layernorm (vs a device-to-device copy of the same bytes), and a full sum. Each row states its
floor: FLOPs over the FP32 peak, or bytes moved over the memory bandwidth (peak from the device's
SM count, clock and bus width unless --peak-tflops / --bandwidth-gbs are given). Kernel rows time
launches into preallocated outputs (allocation is not what is measured); times are medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", action="store_true", help="run tiny sizes on the CUDA simulator")
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="square matmul sizes (GPU)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per case (median reported)")
    parser.add_argument("--peak-tflops", type=float, help="FP32 (non-tensor-core) peak, TFLOP/s")
    parser.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth, GB/s")
    parser.add_argument("--no-cupy", action="store_true", help="skip the CuPy comparisons")
    parser.add_argument(
        "--gemm-configs",
        default="",
        help="GEMM configs to compare, ';'-separated 'threads_x,threads_y,rows,cols,k_tile,vector[,max_registers]'"
        " (each checked on ragged sizes in both operand layouts, then timed at --variant-size)",
    )
    parser.add_argument("--variant-size", type=int, default=4096, help="square size for --gemm-configs")
    return parser.parse_args(argv)


@dataclass
class Row:
    case: str
    shape: str
    ms: float
    rate: str
    floor_ms: float | None
    reference: str
    ratio: str


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sim:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    os.environ.setdefault("CUPY_TF32", "0")  # cuBLAS SGEMM proper, no TF32 tensor cores
    import numpy as np
    from numba import cuda

    from tensorai.kernels import memory
    from tensorai.kernels.activations import activation_code
    from tensorai.kernels.budget import MemoryBudget, set_budget
    from tensorai.kernels.contraction import einsum
    from tensorai.kernels.gemm import StridedOperand, default_config, launch_gemm
    from tensorai.kernels.reduce import sum as kernel_sum
    from tensorai.kernels.rows import launch_layernorm, launch_softmax

    set_budget(MemoryBudget(None))
    cupy = None
    if not args.no_cupy and not args.sim:
        try:
            import cupy  # type: ignore[import-not-found, no-redef]
        except Exception as error:
            print(f"(CuPy not importable: {type(error).__name__}; reference columns left empty)")

    device_name, peak_flops, bandwidth = describe_device(cuda, args)
    repeat = 1 if args.sim else args.repeat
    rng = np.random.default_rng()

    def timed(fn: Callable[[], object]) -> float:
        fn()  # compile / warm up
        cuda.synchronize()
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            cuda.synchronize()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1e3

    def cupy_timed(fn: Callable[[], object]) -> float | None:
        if cupy is None:
            return None
        fn()
        cupy.cuda.runtime.deviceSynchronize()
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            cupy.cuda.runtime.deviceSynchronize()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1e3

    def device(shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
        return memory.to_device(rng.standard_normal(shape).astype(np.float32))

    rows: list[Row] = []
    sizes = [16, 24] if args.sim else [int(size) for size in args.sizes.split(",")]

    for n in sizes:
        a, b = device((n, n)), device((n, n))
        c = memory.device_empty((n, n), np.float32)
        flat = (StridedOperand(a.reshape(-1), 0, n, 1), StridedOperand(b.reshape(-1), 0, n, 1))
        out = StridedOperand(c.reshape(-1), 0, n, 1)
        ms = timed(lambda: launch_gemm(flat[0], flat[1], out, 1, n, n, n))  # noqa: B023 - called at once
        if n == sizes[0]:
            check(c.copy_to_host(), a.copy_to_host().astype(np.float64) @ b.copy_to_host().astype(np.float64), n)
        flops = 2.0 * n**3
        reference_ms = None
        if cupy is not None:
            ca, cb = cupy.asarray(a.copy_to_host()), cupy.asarray(b.copy_to_host())
            reference_ms = cupy_timed(lambda: cupy.matmul(ca, cb))  # noqa: B023
        rows.append(row("matmul f32", f"{n}x{n}x{n}", ms, flops / ms / 1e6, "GFLOP/s", flops, peak_flops, None,
                        reference_ms, "cuBLAS SGEMM"))  # fmt: skip

    n = sizes[-1] if args.sim else 4096
    a, b = device((n, n)), device((n, n))
    bias = device((n,))
    c = memory.device_empty((n, n), np.float32)
    ops = (StridedOperand(a.reshape(-1), 0, n, 1), StridedOperand(b.reshape(-1), 0, n, 1))
    out = StridedOperand(c.reshape(-1), 0, n, 1)
    gelu = activation_code("gelu")
    ms = timed(lambda: launch_gemm(ops[0], ops[1], out, 1, n, n, n, bias.reshape(-1), gelu))
    flops = 2.0 * n**3
    rows.append(row("fused gemm+bias+gelu f32", f"{n}x{n}x{n}", ms, flops / ms / 1e6, "GFLOP/s", flops, peak_flops,
                    None, None, ""))  # fmt: skip

    batch, heads, seq, dim = (1, 2, 8, 4) if args.sim else (8, 16, 512, 64)
    q, k = device((batch, heads, seq, dim)), device((batch, heads, seq, dim))
    ms = timed(lambda: einsum("bhqd,bhkd->bhqk", q, k))
    flops = 2.0 * batch * heads * seq * seq * dim
    reference_ms = None
    if cupy is not None:
        cq, ck = cupy.asarray(q.copy_to_host()), cupy.asarray(k.copy_to_host())
        reference_ms = cupy_timed(lambda: cupy.einsum("bhqd,bhkd->bhqk", cq, ck))
    rows.append(row("einsum bhqd,bhkd->bhqk f32", f"{batch}x{heads}x{seq}x{dim}", ms, flops / ms / 1e6, "GFLOP/s",
                    flops, peak_flops, None, reference_ms, "cupy.einsum"))  # fmt: skip

    n_rows, n_cols = (8, 40) if args.sim else (16384, 4096)
    x = device((n_rows, n_cols))
    y = memory.device_empty((n_rows, n_cols), np.float32)
    moved = 2.0 * n_rows * n_cols * 4  # read once + write once: the floor for any softmax
    copy_ms = timed(lambda: y.copy_to_device(x))
    rows.append(row("device-to-device copy", f"{n_rows}x{n_cols}", copy_ms, moved / copy_ms / 1e6, "GB/s", None, None,
                    (moved, bandwidth), None, ""))  # fmt: skip
    ms = timed(lambda: launch_softmax(x, y, 1))
    host = x.copy_to_host().astype(np.float64)
    exps = np.exp(host - host.max(axis=1, keepdims=True))
    check(y.copy_to_host(), exps / exps.sum(axis=1, keepdims=True), 1)
    rows.append(row("softmax rows f32", f"{n_rows}x{n_cols}", ms, moved / ms / 1e6, "GB/s", None, None,
                    (moved, bandwidth), copy_ms, "d2d copy"))  # fmt: skip
    ms = timed(lambda: launch_layernorm(x, y, 1e-5))
    rows.append(row("layernorm rows f32", f"{n_rows}x{n_cols}", ms, moved / ms / 1e6, "GB/s", None, None,
                    (moved, bandwidth), copy_ms, "d2d copy"))  # fmt: skip
    read = float(n_rows * n_cols * 4)
    ms = timed(lambda: kernel_sum(x))
    rows.append(row("sum (all elements) f32", f"{n_rows * n_cols}", ms, read / ms / 1e6, "GB/s", None, None,
                    (read, bandwidth), None, ""))  # fmt: skip

    print_table(rows, device_name, peak_flops, bandwidth, args.sim)
    if not args.sim:
        print_resources(default_config(), np.float32)
    if args.gemm_configs:
        compare_gemm_configs(args.gemm_configs, 24 if args.sim else args.variant_size, timed, device)
    return 0


def print_resources(config, dtype) -> None:  # type: ignore[no-untyped-def]
    """Registers and local memory (spills show up there) of the GEMM as the device compiled it."""
    import numpy as np

    from tensorai.kernels.gemm import build_gemm_kernel

    kernel = build_gemm_kernel(np.dtype(dtype), config)
    registers, local, shared = (
        kernel.get_regs_per_thread(), kernel.get_local_mem_per_thread(), kernel.get_shared_mem_per_block()
    )  # each {signature: value} over the signatures compiled so far
    for signature in registers:
        print(
            f"GEMM {config}: {registers[signature]} registers, {local[signature]} bytes local memory "
            f"per thread, {shared[signature]} bytes shared memory per block"
        )


def compare_gemm_configs(text: str, n: int, timed, device) -> None:  # type: ignore[no-untyped-def]
    """Check, then time, each GEMM config at n x n x n: the table used to pick the default."""
    import numpy as np

    from tensorai.kernels import memory
    from tensorai.kernels.gemm import GemmConfig, StridedOperand, build_gemm_kernel, default_config, launch_gemm

    print(f"\n| GEMM config (threads_x, threads_y, rows, cols, k_tile, vector, max_registers) | registers | "
          f"local bytes | {n}^3 time (ms) | GFLOP/s | vs default |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    configs = [default_config()] + [GemmConfig(*(int(v) for v in item.split(","))) for item in text.split(";") if item]
    m_check, k_check, n_check = (19, 9, 33) if n < 100 else (1000, 777, 1100)
    a_check, b_check = device((m_check, k_check)), device((k_check, n_check))
    bt_check = memory.to_device(np.ascontiguousarray(b_check.copy_to_host().T))
    expected = a_check.copy_to_host().astype(np.float64) @ b_check.copy_to_host().astype(np.float64)
    a, b = device((n, n)), device((n, n))
    c = memory.device_empty((n, n), np.float32)
    baseline = None
    for config in configs:
        for b_operand in (
            StridedOperand(b_check.reshape(-1), 0, n_check, 1),
            StridedOperand(bt_check.reshape(-1), 0, 1, k_check),
        ):
            out = memory.device_empty((m_check, n_check), np.float32)
            a_operand = StridedOperand(a_check.reshape(-1), 0, k_check, 1)
            out_check = StridedOperand(out.reshape(-1), 0, n_check, 1)
            launch_gemm(a_operand, b_operand, out_check, 1, m_check, n_check, k_check, config=config)
            check(out.copy_to_host(), expected, k_check)
        ops = (StridedOperand(a.reshape(-1), 0, n, 1), StridedOperand(b.reshape(-1), 0, n, 1))
        out_operand = StridedOperand(c.reshape(-1), 0, n, 1)
        ms = timed(lambda: launch_gemm(ops[0], ops[1], out_operand, 1, n, n, n, config=config))  # noqa: B023
        baseline = baseline or ms
        fields = ", ".join(str(value) for value in config.__dict__.values())
        kernel = build_gemm_kernel(np.dtype(np.float32), config)
        registers = local = "—"
        if hasattr(kernel, "get_regs_per_thread"):  # not on the simulator
            registers = str(max(kernel.get_regs_per_thread().values()))
            local = str(max(kernel.get_local_mem_per_thread().values()))
        print(f"| {fields} | {registers} | {local} | {ms:.3f} | {2.0 * n**3 / ms / 1e6:,.0f} | {baseline / ms:.2f}x |")


def check(got, reference, terms: int) -> None:  # type: ignore[no-untyped-def]
    """Refuse to report speed for a wrong answer."""
    import numpy as np

    tolerance = 3e-5 * max(1.0, terms**0.5)
    if not np.allclose(got, reference, rtol=tolerance, atol=tolerance):
        raise SystemExit(f"benchmark result is wrong: max abs error {np.max(np.abs(got - reference)):.3g}")


def row(
    case: str, shape: str, ms: float, rate: float, unit: str, flops: float | None, peak_flops: float | None,
    memory_floor: tuple[float, float | None] | None, reference_ms: float | None, reference_name: str,
) -> Row:  # fmt: skip
    floor_ms = None
    if flops is not None and peak_flops:
        floor_ms = flops / peak_flops * 1e3
    if memory_floor is not None and memory_floor[1]:
        floor_ms = memory_floor[0] / memory_floor[1] * 1e3
    reference = f"{reference_name} {reference_ms:.3f} ms" if reference_ms is not None else "—"
    ratio = f"{reference_ms / ms * 100:.0f} % of {reference_name}" if reference_ms is not None else "—"
    return Row(case, shape, ms, f"{rate:,.1f} {unit}", floor_ms, reference, ratio)


def describe_device(cuda, args: argparse.Namespace) -> tuple[str, float | None, float | None]:  # type: ignore[no-untyped-def]
    """Device name, FP32 peak (FLOP/s) and bandwidth (bytes/s), from attributes or the flags."""
    if args.sim:
        return "CUDA simulator (CPU; numbers are not GPU performance)", None, None
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else None
    try:
        lanes = FP32_LANES_PER_SM.get(tuple(device.compute_capability), 128)
        if peak is None:
            peak = device.MULTIPROCESSOR_COUNT * lanes * 2 * device.CLOCK_RATE * 1e3
        if bandwidth is None:
            bandwidth = 2 * device.MEMORY_CLOCK_RATE * 1e3 * device.GLOBAL_MEMORY_BUS_WIDTH / 8
    except Exception as error:
        print(f"(cannot derive peaks from device attributes: {error}; pass --peak-tflops/--bandwidth-gbs)")
    return f"{name} (CC {device.compute_capability[0]}.{device.compute_capability[1]})", peak, bandwidth


def print_table(rows: list[Row], device_name: str, peak: float | None, bandwidth: float | None, sim: bool) -> None:
    print(f"\nDevice: {device_name}")
    print(f"FP32 peak: {peak / 1e12:.1f} TFLOP/s" if peak else "FP32 peak: n/a", end="; ")
    print(f"memory bandwidth: {bandwidth / 1e9:.0f} GB/s" if bandwidth else "memory bandwidth: n/a")
    print()
    print("| case | shape | time (ms) | rate | floor (ms) | % of floor | reference | ours vs reference |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for item in rows:
        floor = f"{item.floor_ms:.3f}" if item.floor_ms else "—"
        efficiency = f"{item.floor_ms / item.ms * 100:.0f} %" if item.floor_ms else "—"
        print(
            f"| {item.case} | {item.shape} | {item.ms:.3f} | {item.rate} | {floor} | {efficiency} | "
            f"{item.reference} | {item.ratio} |"
        )
    if sim:
        print("\n(simulator run: checks the script end to end; times are Python interpreter times)")


if __name__ == "__main__":
    sys.exit(main())
