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
from tensorai.kernels.budget import is_simulator
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

    @property
    def block_rows(self) -> int:
        return self.threads_y * self.rows_per_thread

    @property
    def block_cols(self) -> int:
        return self.threads_x * self.cols_per_thread


# 128x128 tiles, 8x8 outputs per thread, 8-deep: the classic SGEMM shape for big GPUs.
GPU_CONFIG = GemmConfig(threads_x=16, threads_y=16, rows_per_thread=8, cols_per_thread=8, k_tile=8)
# The simulator runs one Python thread per CUDA thread: tiny blocks keep tests fast while still
# covering multi-block grids, multi-tile K loops and ragged edges on small matrices.
SIM_CONFIG = GemmConfig(threads_x=4, threads_y=4, rows_per_thread=2, cols_per_thread=2, k_tile=4)


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

    @cuda.jit
    def gemm(  # type: ignore[no-untyped-def]
        a, b, c, bias, batches, m_size, n_size, k_size,
        a_batch_stride, a_row_stride, a_k_stride,
        b_batch_stride, b_k_stride, b_col_stride,
        c_batch_stride, c_row_stride, c_col_stride,
        bias_length, activation,
    ):  # fmt: skip
        a_tile = cuda.shared.array((k_tile, block_rows), numba_type)
        b_tile = cuda.shared.array((k_tile, block_cols), numba_type)
        accumulator = cuda.local.array((rows_per_thread, cols_per_thread), numba_type)
        a_fragment = cuda.local.array(rows_per_thread, numba_type)
        b_fragment = cuda.local.array(cols_per_thread, numba_type)
        thread_x = cuda.threadIdx.x
        thread_y = cuda.threadIdx.y
        thread = thread_y * threads_x + thread_x
        row_origin = cuda.blockIdx.y * block_rows
        col_origin = cuda.blockIdx.x * block_cols
        for batch in range(cuda.blockIdx.z, batches, cuda.gridDim.z):
            a_base = batch * a_batch_stride
            b_base = batch * b_batch_stride
            for i in range(rows_per_thread):
                for j in range(cols_per_thread):
                    accumulator[i, j] = 0
            for k_origin in range(0, k_size, k_tile):
                for load in range(a_loads):
                    element_index = thread + load * threads
                    if element_index < a_tile_elements:
                        tile_row = element_index // k_tile
                        tile_k = element_index % k_tile
                        row = row_origin + tile_row
                        k = k_origin + tile_k
                        if row < m_size and k < k_size:
                            a_tile[tile_k, tile_row] = a[a_base + row * a_row_stride + k * a_k_stride]
                        else:
                            a_tile[tile_k, tile_row] = 0
                for load in range(b_loads):
                    element_index = thread + load * threads
                    if element_index < b_tile_elements:
                        tile_k = element_index // block_cols
                        tile_col = element_index % block_cols
                        k = k_origin + tile_k
                        col = col_origin + tile_col
                        if k < k_size and col < n_size:
                            b_tile[tile_k, tile_col] = b[b_base + k * b_k_stride + col * b_col_stride]
                        else:
                            b_tile[tile_k, tile_col] = 0
                cuda.syncthreads()
                for tile_k in range(k_tile):
                    for i in range(rows_per_thread):
                        a_fragment[i] = a_tile[tile_k, thread_y + i * threads_y]
                    for j in range(cols_per_thread):
                        b_fragment[j] = b_tile[tile_k, thread_x + j * threads_x]
                    for i in range(rows_per_thread):
                        for j in range(cols_per_thread):
                            accumulator[i, j] += a_fragment[i] * b_fragment[j]
                cuda.syncthreads()
            c_base = batch * c_batch_stride
            for i in range(rows_per_thread):
                row = row_origin + thread_y + i * threads_y
                if row < m_size:
                    for j in range(cols_per_thread):
                        col = col_origin + thread_x + j * threads_x
                        if col < n_size:
                            value = accumulator[i, j]
                            if bias_length > 0:
                                value += bias[col % bias_length]
                            c[c_base + row * c_row_stride + col * c_col_stride] = apply_activation(
                                value, activation
                            )

    return gemm


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
