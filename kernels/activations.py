"""Element-wise activations applied in kernel epilogues, selected by a small integer code.

Kernels take the code as a runtime argument (one compiled kernel serves every activation); the
host-side names and their NumPy references live here too so tests and kernels cannot disagree.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from tensorai.kernels.errors import UnsupportedSpecError

ACTIVATION_CODES = {"none": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4, "silu": 5}
_GELU_SCALE = math.sqrt(2.0 / math.pi)


def activation_code(name: str | None) -> int:
    """The kernel code of an activation name; UnsupportedSpecError listing the known names."""
    key = "none" if name is None else str(name).lower()
    if key not in ACTIVATION_CODES:
        raise UnsupportedSpecError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATION_CODES)}")
    return ACTIVATION_CODES[key]


@cuda.jit(device=True)
def apply_activation(value, code):  # type: ignore[no-untyped-def]
    """`value` through activation `code` (gelu is the tanh approximation, as in PyTorch's approximate='tanh')."""
    if code == 1:
        return value if value > 0 else value * 0
    if code == 2:
        inner = 0.7978845608028654 * (value + 0.044715 * value * value * value)
        return 0.5 * value * (1.0 + math.tanh(inner))
    if code == 3:
        return 1.0 / (1.0 + math.exp(-value))
    if code == 4:
        return math.tanh(value)
    if code == 5:
        return value / (1.0 + math.exp(-value))
    return value


def reference_activation(values: np.ndarray, name: str | None) -> np.ndarray:
    """NumPy version of `apply_activation`, used by tests and the worker's optional checks."""
    code = activation_code(name)
    if code == 1:
        return np.maximum(values, 0)
    if code == 2:
        return 0.5 * values * (1.0 + np.tanh(_GELU_SCALE * (values + 0.044715 * values**3)))
    if code == 3:
        return 1.0 / (1.0 + np.exp(-values))
    if code == 4:
        return np.tanh(values)
    if code == 5:
        return values / (1.0 + np.exp(-values))
    return values
