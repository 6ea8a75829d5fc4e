"""Two-operand einsum contractions, planned onto the batched GEMM kernel.

Every index of a supported spec is one of: batch (both operands and the output), free in A (A and
output), free in B (B and output), or contracted (both operands, not the output). Each group
becomes one strided axis of the GEMM: C[batch, M, N] = sum_K A[batch, M, K] * B[batch, K, N].
Unsupported (clear error): ellipsis, an index repeated within one operand (diagonals), and an index
summed away inside a single operand.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from tensorai.kernels import memory
from tensorai.kernels.errors import ShapeMismatchError, TensorError, UnsupportedSpecError
from tensorai.kernels.gemm import StridedOperand, launch_gemm
from tensorai.kernels.layout import element_strides, merged_stride, permute_on_device
from tensorai.kernels.validate import check_array, check_same_dtype, check_same_side

_LABELS = set(string.ascii_letters)


@dataclass(frozen=True)
class ContractionPlan:
    """How one spec maps onto (batch, M, N, K); labels of each group in the order they are merged."""

    spec: str
    a_labels: str
    b_labels: str
    out_labels: str
    batch: str
    free_a: str
    free_b: str
    contracted: str
    sizes: dict[str, int]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.sizes[label] for label in self.out_labels)

    def size_of(self, labels: str) -> int:
        return int(np.prod([self.sizes[label] for label in labels], dtype=np.int64)) if labels else 1


def plan_contraction(spec: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> ContractionPlan:
    """Parse and check `spec` against the operand shapes; raise a TensorError subclass saying why not."""
    if not isinstance(spec, str):
        raise UnsupportedSpecError(f"einsum spec must be a string like 'ij,jk->ik', got {type(spec).__name__}")
    text = spec.replace(" ", "")
    if "." in text:
        raise UnsupportedSpecError(f"einsum spec {spec!r}: ellipsis ('...') is not supported; name every index")
    inputs, arrow, out_labels = text.partition("->")
    operands = inputs.split(",")
    if len(operands) != 2:
        raise UnsupportedSpecError(f"einsum spec {spec!r}: exactly two operands are supported, got {len(operands)}")
    a_labels, b_labels = operands
    for where, labels in (("first operand", a_labels), ("second operand", b_labels), ("output", out_labels)):
        bad = set(labels) - _LABELS
        if bad:
            raise UnsupportedSpecError(f"einsum spec {spec!r}: {where} has invalid characters {sorted(bad)}")
        if len(set(labels)) != len(labels):
            raise UnsupportedSpecError(
                f"einsum spec {spec!r}: {where} repeats an index ({labels!r}); diagonals are not supported"
            )
    if not arrow:
        # NumPy's implicit output: the indices that appear once, in alphabetical order.
        every = a_labels + b_labels
        out_labels = "".join(sorted(label for label in set(every) if every.count(label) == 1))
    for name, labels, shape in (("first", a_labels, a_shape), ("second", b_labels, b_shape)):
        if len(labels) != len(shape):
            raise ShapeMismatchError(
                f"einsum spec {spec!r}: the {name} operand has {len(shape)} dimensions {tuple(shape)} "
                f"but the spec names {len(labels)} ({labels!r})"
            )
    sizes: dict[str, int] = {}
    for labels, shape, name in ((a_labels, a_shape, "first"), (b_labels, b_shape, "second")):
        for label, extent in zip(labels, shape, strict=True):
            if sizes.setdefault(label, int(extent)) != int(extent):
                raise ShapeMismatchError(
                    f"einsum spec {spec!r}: index {label!r} is {sizes[label]} in the first operand but "
                    f"{extent} in the {name}; sizes of a shared index must match"
                )
    for label in out_labels:
        if label not in sizes:
            raise UnsupportedSpecError(f"einsum spec {spec!r}: output index {label!r} appears in no operand")
    for label in a_labels + b_labels:
        if label not in out_labels and not (label in a_labels and label in b_labels):
            raise UnsupportedSpecError(
                f"einsum spec {spec!r}: index {label!r} is summed inside one operand only; reduce it first "
                "with tensorai.kernels.sum"
            )
    return ContractionPlan(
        spec=spec,
        a_labels=a_labels,
        b_labels=b_labels,
        out_labels=out_labels,
        batch="".join(label for label in out_labels if label in a_labels and label in b_labels),
        free_a="".join(label for label in out_labels if label in a_labels and label not in b_labels),
        free_b="".join(label for label in out_labels if label in b_labels and label not in a_labels),
        contracted="".join(label for label in a_labels if label not in out_labels),
        sizes=sizes,
    )


def _group_strides(labels: str, shape: tuple[int, ...], groups: tuple[str, ...]) -> list[tuple[int, int]] | None:
    strides = element_strides(shape)
    merged = []
    for group in groups:
        result = merged_stride(shape, strides, [labels.index(label) for label in group])
        if result is None:
            return None
        merged.append(result)
    return merged


def _operand_for(
    array: Any, labels: str, groups: tuple[str, str, str], on_device: bool, what: str
) -> tuple[StridedOperand, Any]:
    """The operand as (batch, outer, inner) strides, permuting it once if its groups cannot merge."""
    merged = _group_strides(labels, tuple(array.shape), groups)
    if merged is None:
        order = [labels.index(label) for label in "".join(groups)]
        if on_device:
            array = permute_on_device(array, order, what=f"{what} permuted to {''.join(groups)!r}")
        else:
            array = np.ascontiguousarray(np.transpose(array, order))
        labels = "".join(groups)
        merged = _group_strides(labels, tuple(array.shape), groups)
        assert merged is not None  # a contiguous array in group order always merges
    device = array if on_device else memory.to_device(array, what=what)
    flat = device.reshape(-1) if device.size else device
    (_, batch_stride), (_, outer_stride), (_, inner_stride) = merged
    return StridedOperand(flat, batch_stride, outer_stride, inner_stride), device


def execute_contraction(
    plan: ContractionPlan, a: Any, b: Any, bias: Any = None, activation: int = 0
) -> Any:
    """Run a planned contraction; host inputs give a host result, device inputs a device result."""
    named = [("a", a), ("b", b)] + ([("bias", bias)] if bias is not None else [])
    on_device = check_same_side(*named)
    dtype = check_same_dtype(*named)
    batches = plan.size_of(plan.batch)
    m_size, n_size, k_size = plan.size_of(plan.free_a), plan.size_of(plan.free_b), plan.size_of(plan.contracted)
    a_groups = (plan.batch, plan.free_a, plan.contracted)
    b_groups = (plan.batch, plan.contracted, plan.free_b)
    a_operand, _a_alive = _operand_for(a, plan.a_labels, a_groups, on_device, "operand a")
    b_operand, _b_alive = _operand_for(b, plan.b_labels, b_groups, on_device, "operand b")
    bias_device = None
    if bias is not None:
        bias_device = bias if on_device else memory.to_device(bias, what="bias")
    # Write straight into the output when its groups merge; otherwise into (batch, M, N) order and
    # permute once afterwards.
    out_groups = (plan.batch, plan.free_a, plan.free_b)
    natural_labels = "".join(out_groups)
    out_labels = plan.out_labels if _group_strides(plan.out_labels, plan.out_shape, out_groups) else natural_labels
    out_shape = tuple(plan.sizes[label] for label in out_labels)
    merged = _group_strides(out_labels, out_shape, out_groups)
    assert merged is not None  # the natural order always merges
    out = memory.device_empty(out_shape, dtype, what="the contraction output")
    (_, c_batch), (_, c_rows), (_, c_cols) = merged
    c_operand = StridedOperand(out.reshape(-1) if out.size else out, c_batch, c_rows, c_cols)
    launch_gemm(a_operand, b_operand, c_operand, batches, m_size, n_size, k_size, bias_device, activation)
    if out_labels != plan.out_labels:
        order = [out_labels.index(label) for label in plan.out_labels]
        if on_device:
            return permute_on_device(out, order, what="the contraction output")
        return np.ascontiguousarray(np.transpose(out.copy_to_host(), order))
    return out if on_device else out.copy_to_host()


def einsum(spec: str, a: Any, b: Any) -> Any:
    """Two-operand contraction `np.einsum(spec, a, b)` on the GPU (float32/float64, C-contiguous).

    Examples: 'ij,jk->ik', 'bij,bjk->bik', 'ijk,kl->ijl', 'bhqd,bhkd->bhqk', 'i,i->'. NumPy arrays
    in give a NumPy array out; device arrays in give a device array out.
    """
    check_array(a, "a")
    check_array(b, "b")
    plan = plan_contraction(spec, tuple(a.shape), tuple(b.shape))
    return execute_contraction(plan, a, b)


def matmul(a: Any, b: Any) -> Any:
    """`a @ b` for (M, K) @ (K, N), or batched (..., M, K) @ (..., K, N) with equal leading dimensions."""
    check_array(a, "a")
    check_array(b, "b")
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)  # device shapes refuse negative indexes
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ShapeMismatchError(f"matmul needs arrays of at least 2 dimensions, got {a.ndim} and {b.ndim}")
    if len(a_shape) != len(b_shape) or a_shape[:-2] != b_shape[:-2]:
        raise ShapeMismatchError(
            f"matmul batch dimensions differ: a {a_shape} vs b {b_shape} "
            "(broadcasting is not supported; the leading dimensions must be equal)"
        )
    if a_shape[-1] != b_shape[-2]:
        raise ShapeMismatchError(
            f"matmul inner dimensions differ: a {a_shape} has K={a_shape[-1]} but b {b_shape} has K={b_shape[-2]}"
        )
    batch = string.ascii_lowercase[: a.ndim - 2]
    plan = plan_contraction(f"{batch}MK,{batch}KN->{batch}MN", tuple(a.shape), tuple(b.shape))
    return execute_contraction(plan, a, b)


def einsum_reference(spec: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy's answer in float64 (what tests and the worker's checks compare against)."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        raise TensorError("einsum_reference takes NumPy arrays")
    return np.einsum(spec, a.astype(np.float64), b.astype(np.float64))
