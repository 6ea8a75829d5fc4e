"""Errors the kernels raise on bad input, so callers can tell what was wrong without reading tracebacks."""

from __future__ import annotations


class TensorError(ValueError):
    """Base class: an input the kernels cannot run on (the message says what and what would be right)."""


class ShapeMismatchError(TensorError):
    """Operand shapes that do not fit together (e.g. inner dimensions of a matmul differ)."""


class DTypeError(TensorError):
    """An unsupported dtype, or operands whose dtypes differ."""


class LayoutError(TensorError):
    """A non-contiguous array; the kernels address memory by C-contiguous strides."""


class UnsupportedSpecError(TensorError):
    """An einsum specification or option the kernels do not implement."""
