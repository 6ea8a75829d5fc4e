"""`tensor_dot_fusion`: contraction + bias + activation in one kernel (the GEMM's epilogue).

Fusing saves two full passes over the output compared with matmul, then add, then activation:
for the memory-bound shapes of inference layers that is most of the time.
"""

from __future__ import annotations

import string
from typing import Any

from tensorai.kernels.activations import activation_code
from tensorai.kernels.contraction import execute_contraction, plan_contraction
from tensorai.kernels.errors import ShapeMismatchError, UnsupportedSpecError
from tensorai.kernels.validate import check_array


def default_spec(a_ndim: int, b_ndim: int) -> str:
    """The matmul-like spec for a (..., K) and b (K, N): 'abK,KN->abN'."""
    if a_ndim < 1 or b_ndim != 2:
        raise ShapeMismatchError(
            f"tensor_dot_fusion without a spec needs a of shape (..., K) and b of shape (K, N); "
            f"got {a_ndim} and {b_ndim} dimensions (pass spec= for other contractions)"
        )
    leading = string.ascii_lowercase[: a_ndim - 1]
    return f"{leading}K,KN->{leading}N"


def tensor_dot_fusion(
    a: Any, b: Any, bias: Any = None, activation: str | None = "relu", spec: str | None = None
) -> Any:
    """`activation(einsum(spec, a, b) + bias)` in one kernel.

    `spec` defaults to a (..., K) @ b (K, N). `bias` is optional and 1-D with the length of the
    output's last axis, which must be an index of `b` only (a column of the GEMM). Activations:
    none, relu, gelu (tanh approximation), sigmoid, tanh, silu.
    """
    check_array(a, "a")
    check_array(b, "b")
    code = activation_code(activation)
    plan = plan_contraction(spec or default_spec(a.ndim, b.ndim), tuple(a.shape), tuple(b.shape))
    if bias is not None:
        check_array(bias, "bias")
        if not plan.out_labels or plan.out_labels[-1] not in plan.free_b:
            raise UnsupportedSpecError(
                f"bias needs the output's last index to belong to b only; spec {plan.spec!r} ends with "
                f"{plan.out_labels[-1:]!r}"
            )
        last = plan.sizes[plan.out_labels[-1]]
        if tuple(bias.shape) != (last,):
            raise ShapeMismatchError(
                f"bias must have shape ({last},) (the output's last axis), got {tuple(bias.shape)}"
            )
    return execute_contraction(plan, a, b, bias=bias, activation=code)
