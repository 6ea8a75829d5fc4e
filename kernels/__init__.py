"""Numba CUDA tensor kernels and the tensor worker that runs them inside a GPU share.

Public API (NumPy arrays in -> NumPy arrays out, copied; Numba device arrays in -> device arrays
out): `matmul`, `einsum`, `softmax`, `layernorm`, `sum`, `max`, `tensor_dot_fusion`. Every device
buffer these allocate is charged to the process memory budget (`tensorai.kernels.budget`).
"""

from __future__ import annotations

from tensorai.kernels.budget import MemoryBudget, OutOfBudget, current_budget, install_budget, set_budget
from tensorai.kernels.contraction import einsum, matmul
from tensorai.kernels.errors import DTypeError, LayoutError, ShapeMismatchError, TensorError, UnsupportedSpecError
from tensorai.kernels.fused import tensor_dot_fusion
from tensorai.kernels.reduce import max, sum
from tensorai.kernels.rows import layernorm, softmax

__all__ = [
    "DTypeError",
    "LayoutError",
    "MemoryBudget",
    "OutOfBudget",
    "ShapeMismatchError",
    "TensorError",
    "UnsupportedSpecError",
    "current_budget",
    "einsum",
    "install_budget",
    "layernorm",
    "matmul",
    "max",
    "set_budget",
    "softmax",
    "sum",
    "tensor_dot_fusion",
]
