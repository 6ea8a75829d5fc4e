"""Tiled, register-blocked batched GEMM with a fused bias + activation epilogue.

One kernel serves `matmul`, every `einsum` contraction and `tensor_dot_fusion`: each operand is
addressed through (batch, row, column) element strides, so transposed or permuted operands need
no copy when their axes can be merged. A block computes a BM x BN tile of C from BK-deep slices of
A and B staged in shared memory; each thread accumulates TM x TN outputs in registers, reading its
rows and columns with a stride of the block's thread extent so shared-memory reads do not conflict
and global stores coalesce. Edges (sizes not divisible by the tile, K = 0) are handled by guarded
loads that fill zeros and guarded stores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda

from tensorai.kernels import memory
from tensorai.kernels.activations import apply_activation
from tensorai.kernels.budget import inlined_device_function, is_simulator
from tensorai.kernels.errors import TensorError

MAX_GRID_Z = 65535


@dataclass(frozen=True)
class GemmConfig:
    """Block shape (threads_x x threads_y) and per-thread register tile (rows x cols); k_tile deep."""

    threads_x: int
    threads_y: int
    rows_per_thread: int
    cols_per_thread: int
    k_tile: int
    vector: int = 1  # a thread's rows (and columns) come in runs of this many adjacent ones
    max_registers: int | None = None  # per-thread register cap on a GPU (more blocks per SM, may spill)

    def __post_init__(self) -> None:
        if self.rows_per_thread % self.vector or self.cols_per_thread % self.vector:
            raise ValueError(f"rows and columns per thread must be multiples of vector={self.vector}")
        threads = self.threads_x * self.threads_y
        if threads % self.k_tile or threads % self.block_rows or threads % self.block_cols:
            raise ValueError(f"{threads} threads must be a multiple of k_tile and of the block's rows and columns")

    @property
    def block_rows(self) -> int:
        return self.threads_y * self.rows_per_thread

    @property
    def block_cols(self) -> int:
        return self.threads_x * self.cols_per_thread


# 128x128 tiles, 8x8 outputs per thread in runs of 4, 8-deep: the classic SGEMM shape for big GPUs.
# At most 128 registers per thread, so two 256-thread blocks share an SM and one computes while the
# other waits at its barrier (ptxas for sm_90 needs 121, no spills; the 8x8 accumulator goes through
# a 256-byte stack frame for the write-out to C only, never in the K loop; on the H100 the cap alone
# was worth 1.2x when the kernel needed 166).
GPU_CONFIG = GemmConfig(
    threads_x=16, threads_y=16, rows_per_thread=8, cols_per_thread=8, k_tile=8, vector=4, max_registers=128
)
# The simulator runs one Python thread per CUDA thread: tiny blocks keep tests fast while still
# covering multi-block grids, multi-tile K loops and ragged edges on small matrices.
SIM_CONFIG = GemmConfig(threads_x=4, threads_y=4, rows_per_thread=4, cols_per_thread=4, k_tile=4, vector=2)


def default_config() -> GemmConfig:
    return SIM_CONFIG if is_simulator() else GPU_CONFIG


@functools.cache
def build_gemm_kernel(dtype: np.dtype, config: GemmConfig) -> Any:
    """Compile (once per dtype and config) the batched strided GEMM kernel."""
    element = np.dtype(dtype)
    numba_type = cuda.float32 if element == np.float32 else cuda.float64
    threads_x, threads_y = config.threads_x, config.threads_y
    rows_per_thread, cols_per_thread = config.rows_per_thread, config.cols_per_thread
    k_tile = config.k_tile
    block_rows, block_cols = config.block_rows, config.block_cols
    threads = threads_x * threads_y
    a_tile_elements = block_rows * k_tile
    b_tile_elements = k_tile * block_cols
    a_loads = (a_tile_elements + threads - 1) // threads
    b_loads = (b_tile_elements + threads - 1) // threads
    # Both tiles are stored k-major, so a thread's rows (columns) sit side by side; padding each
    # k-row by 4 elements sends one warp's transposing stores (operands fetched along K) to
    # different banks.
    a_pitch = block_rows + 4
    b_pitch = block_cols + 4  # the same for B when it is fetched along K
    a_stage, b_stage = k_tile * a_pitch, k_tile * b_pitch
    a_shared, b_shared = 2 * a_stage, 2 * b_stage  # shared-array sizes must be compile-time constants
    # Shared-memory offsets are unsigned: Numba wraps negative signed indexes, which costs a compare
    # and a select per access in the innermost loop; unsigned indexes are used as they are.
    u = np.uint64
    a_pitch_u, b_pitch_u = u(a_pitch), u(b_pitch)
    # Thread (x, y) owns rows y*vector + r + g*a_run (r < vector, g < rows_per_thread / vector) and
    # likewise columns: runs of `vector` adjacent values that a GPU reads from shared memory with one
    # wide load, while a warp's runs together still cover adjacent addresses.
    vector = config.vector
    a_run, b_run = threads_y * vector, threads_x * vector
    vector_u, a_run_u, b_run_u = u(vector), u(a_run), u(b_run)
    k_tile_u, block_rows_u, block_cols_u = u(k_tile), u(block_rows), u(block_cols)
    alignment = None if is_simulator() else 16  # the simulator refuses an alignment argument

    @inlined_device_function
    def store_tile(tile, staged, thread, offset, k_fast, loads, elements, extent_u, pitch_u):
        """Store a thread's staged fetches into a k-major shared tile (rows/columns along `extent`)."""
        for load in range(loads):
            element_index = u(thread + load * threads)
            if element_index < elements:
                if k_fast:
                    tile_k, tile_x = element_index % k_tile_u, element_index // k_tile_u
                else:
                    tile_k, tile_x = element_index // extent_u, element_index % extent_u
                tile[offset + tile_k * pitch_u + tile_x] = staged[load]

    def gemm(  # type: ignore[no-untyped-def]
        a, b, c, bias, batches, m_size, n_size, k_size,
        a_batch_stride, a_row_stride, a_k_stride,
        b_batch_stride, b_k_stride, b_col_stride,
        c_batch_stride, c_row_stride, c_col_stride,
        bias_length, activation,
    ):  # fmt: skip
        # Two stages: while the block computes from one, the next K slice (already fetched into
        # registers during that computation) is stored into the other; one barrier per K slice.
        a_tile = cuda.shared.array(a_shared, numba_type, alignment=alignment)
        b_tile = cuda.shared.array(b_shared, numba_type, alignment=alignment)
        accumulator = cuda.local.array((rows_per_thread, cols_per_thread), numba_type)
        a_fragment = cuda.local.array(rows_per_thread, numba_type)
        b_fragment = cuda.local.array(cols_per_thread, numba_type)
        a_staged = cuda.local.array(a_loads, numba_type)
        b_staged = cuda.local.array(b_loads, numba_type)
        thread_x = cuda.threadIdx.x
        thread_y = cuda.threadIdx.y
        thread = thread_y * threads_x + thread_x
        row_origin = cuda.blockIdx.y * block_rows
        col_origin = cuda.blockIdx.x * block_cols
        k_slices = (k_size + k_tile - 1) // k_tile
        # Adjacent threads fetch adjacent addresses: along K when that is an operand's unit stride
        # (e.g. B in 'bhqd,bhkd->bhqk' or A in 'ik,jk'), else along its rows / columns.
        a_k_fast = a_k_stride == 1 and a_row_stride != 1
        b_k_fast = b_k_stride == 1 and b_col_stride != 1
        # Thread t's fetches are elements t, t + threads, ... of a tile. As the thread count is a
        # multiple of the tile's K depth, rows and columns (GemmConfig checks), fetch f sits at a
        # fixed (row, k) step from fetch 0, the same for every thread: one base index per operand
        # and per thread, plus uniform steps, instead of an index register per fetch.
        if a_k_fast:
            a_row0, a_k0, a_row_step, a_k_step = thread // k_tile, thread % k_tile, threads // k_tile, 0
        else:
            a_row0, a_k0, a_row_step, a_k_step = thread % block_rows, thread // block_rows, 0, threads // block_rows
        if b_k_fast:
            b_col0, b_k0, b_col_step, b_k_step = thread // k_tile, thread % k_tile, threads // k_tile, 0
        else:
            b_col0, b_k0, b_col_step, b_k_step = thread % block_cols, thread // block_cols, 0, threads // block_cols
        a_row0 += row_origin
        b_col0 += col_origin
        a_fetch_step = a_row_step * a_row_stride + a_k_step * a_k_stride
        b_fetch_step = b_k_step * b_k_stride + b_col_step * b_col_stride
        for batch in range(cuda.blockIdx.z, batches, cuda.gridDim.z):
            for i in range(rows_per_thread):
                for j in range(cols_per_thread):
                    accumulator[i, j] = 0
            # Advanced by one K slice per step; out-of-range fetches are skipped by the guards
            # below, so these may point past the operand.
            a_index = batch * a_batch_stride + a_row0 * a_row_stride + a_k0 * a_k_stride
            b_index = batch * b_batch_stride + b_k0 * b_k_stride + b_col0 * b_col_stride
            for k_slice in range(k_slices + 1):
                # Fetch slice k_slice into registers (global loads stay in flight during the
                # computation below); compute slice k_slice - 1 from shared memory; store.
                k_origin = k_slice * k_tile
                if k_slice < k_slices:
                    for load in range(a_loads):
                        row = a_row0 + load * a_row_step
                        k = k_origin + a_k0 + load * a_k_step
                        if thread + load * threads < a_tile_elements and row < m_size and k < k_size:
                            a_staged[load] = a[u(a_index + load * a_fetch_step)]
                        else:
                            a_staged[load] = 0
                    for load in range(b_loads):
                        k = k_origin + b_k0 + load * b_k_step
                        col = b_col0 + load * b_col_step
                        if thread + load * threads < b_tile_elements and k < k_size and col < n_size:
                            b_staged[load] = b[u(b_index + load * b_fetch_step)]
                        else:
                            b_staged[load] = 0
                    a_index += k_tile * a_k_stride
                    b_index += k_tile * b_k_stride
                if k_slice > 0:
                    stage = u((k_slice - 1) % 2)
                    a_read = stage * u(a_stage) + u(thread_y) * vector_u
                    b_read = stage * u(b_stage) + u(thread_x) * vector_u
                    for _ in range(k_tile):
                        for i in range(rows_per_thread):
                            a_fragment[i] = a_tile[a_read + u(i // vector) * a_run_u + u(i % vector)]
                        for j in range(cols_per_thread):
                            b_fragment[j] = b_tile[b_read + u(j // vector) * b_run_u + u(j % vector)]
                        for i in range(rows_per_thread):
                            for j in range(cols_per_thread):
                                accumulator[i, j] += a_fragment[i] * b_fragment[j]
                        a_read += a_pitch_u
                        b_read += b_pitch_u
                if k_slice < k_slices:
                    stage = u(k_slice % 2)
                    store_tile(a_tile, a_staged, thread, stage * u(a_stage), a_k_fast, a_loads, a_tile_elements,
                               block_rows_u, a_pitch_u)
                    store_tile(b_tile, b_staged, thread, stage * u(b_stage), b_k_fast, b_loads, b_tile_elements,
                               block_cols_u, b_pitch_u)
                cuda.syncthreads()
            c_base = batch * c_batch_stride
            for i in range(rows_per_thread):
                row = row_origin + (i // vector) * a_run + thread_y * vector + i % vector
                if row < m_size:
                    for j in range(cols_per_thread):
                        col = col_origin + (j // vector) * b_run + thread_x * vector + j % vector
                        if col < n_size:
                            value = accumulator[i, j]
                            if bias_length > 0:
                                value += bias[col % bias_length]
                            c[c_base + row * c_row_stride + col * c_col_stride] = apply_activation(
                                value, activation
                            )

    options = {} if is_simulator() or config.max_registers is None else {"max_registers": config.max_registers}
    return cuda.jit(**options)(gemm)


@dataclass(frozen=True)
class StridedOperand:
    """A flat device array plus the element strides of its three logical axes."""

    flat: Any
    batch_stride: int
    outer_stride: int
    inner_stride: int


def launch_gemm(
    a: StridedOperand,
    b: StridedOperand,
    c: StridedOperand,
    batches: int,
    m_size: int,
    n_size: int,
    k_size: int,
    bias: Any | None = None,
    activation: int = 0,
    config: GemmConfig | None = None,
) -> None:
    """Run C[batch] = act(A[batch] @ B[batch] + bias) over strided operands (all on the device).

    `a`: (batch, M, K) strides; `b`: (batch, K, N); `c`: (batch, M, N). `bias` (1-D, length
    dividing N, indexed by column modulo its length) is optional. Empty outputs launch nothing.
    """
    if batches == 0 or m_size == 0 or n_size == 0:
        return
    config = config or default_config()
    dtype = np.dtype(c.flat.dtype)
    a_flat, b_flat = a.flat, b.flat
    if k_size == 0:
        # Nothing is read from A or B, and an empty operand cannot be flattened (it arrives with its
        # own rank): pass 1-D stand-ins so the kernel is typed as always, and it writes act(0 + bias).
        a_flat = b_flat = memory.placeholder(dtype)
    if bias is None:
        bias_flat, bias_length = memory.placeholder(dtype), 0
    else:
        bias_flat, bias_length = bias, int(bias.shape[0])
    for name, operand in (("a", a_flat), ("b", b_flat), ("c", c.flat), ("bias", bias_flat)):
        # The real CUDA target types the kernel for 1-D arrays only (the simulator types nothing), so
        # any other rank is a planning bug that must fail here, on the simulator too.
        if operand.ndim != 1:
            raise TensorError(f"GEMM operand {name} must be a flat 1-D device array, got {operand.ndim}-D")
    kernel = build_gemm_kernel(dtype, config)
    grid = (
        -(-n_size // config.block_cols),
        -(-m_size // config.block_rows),
        min(batches, MAX_GRID_Z),
    )
    kernel[grid, (config.threads_x, config.threads_y)](
        a_flat, b_flat, c.flat, bias_flat, batches, m_size, n_size, k_size,
        a.batch_stride, a.outer_stride, a.inner_stride,
        b.batch_stride, b.outer_stride, b.inner_stride,
        c.batch_stride, c.outer_stride, c.inner_stride,
        bias_length, activation,
    )  # fmt: skip
