"""einsum and tensor_dot_fusion on the CUDA simulator against NumPy float64; spec validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorai.kernels as K
from tensorai.kernels import memory
from tensorai.kernels.activations import ACTIVATION_CODES, reference_activation
from tensorai.kernels.contraction import plan_contraction
from tensorai.kernels.gemm import SIM_CONFIG
from tensorai.kernels.testing import assert_matches, fresh_rng, random_array


@pytest.fixture
def rng() -> np.random.Generator:
    return fresh_rng()[0]


SPECS = [
    ("ij,jk->ik", (5, 7), (7, 3)),
    ("bij,bjk->bik", (2, 3, 6), (2, 6, 5)),
    ("ijk,kl->ijl", (2, 3, 4), (4, 5)),
    ("bhqd,bhkd->bhqk", (1, 2, 3, 4), (1, 2, 5, 4)),
    ("ij,jk->ki", (3, 4), (4, 5)),  # transposed output: computed in GEMM order, permuted once
    ("ij,kj->ikj", (2, 3), (4, 3)),  # batch index last in the output
    ("ji,jk->ik", (4, 3), (4, 5)),  # transposed A read through strides, no copy
    ("i,i->", (6,), (6,)),  # dot product to a 0-d result
    ("i,j->ij", (3,), (4,)),  # outer product, K = 1
    ("ab,cd->acbd", (2, 3), (2, 2)),
    ("ij,jk", (3, 4), (4, 2)),  # implicit output, NumPy's rule
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("spec", "a_shape", "b_shape"), SPECS)
def test_einsum_matches_numpy(rng, dtype, spec, a_shape, b_shape) -> None:
    a = random_array(rng, a_shape, dtype)
    b = random_array(rng, b_shape, dtype)
    plan = plan_contraction(spec, a_shape, b_shape)
    with memory.poisoned_allocations():
        got = K.einsum(spec, a, b)
    reference = np.einsum(spec, a.astype(np.float64), b.astype(np.float64))
    assert_matches(got, reference, dtype, plan.size_of(plan.contracted))


@pytest.mark.parametrize(("spec", "a_shape", "b_shape"), [SPECS[1], SPECS[4], SPECS[5]])
def test_einsum_on_device_arrays_stays_on_the_device(rng, spec, a_shape, b_shape) -> None:
    a = random_array(rng, a_shape, np.float64)
    b = random_array(rng, b_shape, np.float64)
    with memory.poisoned_allocations():
        got = K.einsum(spec, memory.to_device(a), memory.to_device(b))
    assert hasattr(got, "copy_to_host")
    assert_matches(got.copy_to_host(), np.einsum(spec, a, b), np.float64, 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ["ij,jk->ik", "ji,jk->ik", "ij,kj->ik", "ji,kj->ik"])
def test_every_operand_layout_across_several_blocks_and_k_slices(rng, dtype, spec) -> None:
    # The GEMM fetches an operand along K when K is its unit stride and along rows / columns
    # otherwise; ragged sizes spanning several blocks and K slices exercise both ways at every edge.
    m, k, n = SIM_CONFIG.block_rows + 3, 2 * SIM_CONFIG.k_tile + 1, 2 * SIM_CONFIG.block_cols + 1
    sizes = {"i": m, "j": k, "k": n}
    a_labels, b_labels = spec.split("->")[0].split(",")
    a = random_array(rng, tuple(sizes[label] for label in a_labels), dtype)
    b = random_array(rng, tuple(sizes[label] for label in b_labels), dtype)
    with memory.poisoned_allocations():
        got = K.einsum(spec, a, b)
    assert_matches(got, np.einsum(spec, a.astype(np.float64), b.astype(np.float64)), dtype, k)


def test_einsum_with_an_empty_batch_gives_an_empty_result() -> None:
    got = K.einsum("bij,bjk->bik", np.ones((0, 2, 3)), np.ones((0, 3, 4)))
    assert got.shape == (0, 2, 4)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("ii,ij->j", K.UnsupportedSpecError, "diagonals"),
        ("ij,jk,kl->il", K.UnsupportedSpecError, "exactly two operands"),
        ("...ij,jk->...ik", K.UnsupportedSpecError, "ellipsis"),
        ("ij,kl->i", K.UnsupportedSpecError, "summed inside one operand"),
        ("ij,jk->iz", K.UnsupportedSpecError, "appears in no operand"),
        ("i1,1k->ik", K.UnsupportedSpecError, "invalid characters"),
        ("ijk,jk->ik", K.ShapeMismatchError, "has 2 dimensions"),
    ],
)
def test_unsupported_specs_get_an_error_that_says_why(spec, error, message) -> None:
    with pytest.raises(error, match=message):
        K.einsum(spec, np.ones((2, 2)), np.ones((2, 2)))


def test_einsum_index_size_mismatch_names_the_index() -> None:
    with pytest.raises(K.ShapeMismatchError, match="index 'j' is 3 in the first operand but 4"):
        K.einsum("ij,jk->ik", np.ones((2, 3)), np.ones((4, 5)))


@given(
    spec=st.text(alphabet="ijk,->.bA1 ", max_size=14),
    a_shape=st.lists(st.integers(0, 4), max_size=4).map(tuple),
    b_shape=st.lists(st.integers(0, 4), max_size=4).map(tuple),
)
@settings(max_examples=300, deadline=None)
def test_any_spec_string_is_planned_or_refused_with_a_tensor_error(spec, a_shape, b_shape) -> None:
    try:
        plan = plan_contraction(spec, a_shape, b_shape)
    except K.TensorError:
        return
    # A plan that was accepted must describe the same output shape NumPy computes.
    expected = np.einsum(plan.spec, np.zeros(a_shape), np.zeros(b_shape)).shape
    assert plan.out_shape == expected


@pytest.mark.parametrize("activation", sorted(ACTIVATION_CODES))
def test_fused_contraction_applies_bias_then_activation(rng, activation) -> None:
    a = random_array(rng, (2, 3, 5), np.float64)
    b = random_array(rng, (5, 6), np.float64)
    bias = random_array(rng, (6,), np.float64)
    with memory.poisoned_allocations():
        got = K.tensor_dot_fusion(a, b, bias, activation)
    assert_matches(got, reference_activation(a @ b + bias, activation), np.float64, 5)


def test_fused_contraction_with_a_spec_and_float32(rng) -> None:
    a = random_array(rng, (2, 3, 4), np.float32)
    b = random_array(rng, (2, 4, 5), np.float32)
    bias = random_array(rng, (5,), np.float32)
    with memory.poisoned_allocations():
        got = K.tensor_dot_fusion(a, b, bias, "gelu", spec="bij,bjk->bik")
    reference = reference_activation(np.matmul(a.astype(np.float64), b.astype(np.float64)) + bias, "gelu")
    assert_matches(got, reference, np.float32, 4)


def test_fused_contraction_without_bias(rng) -> None:
    a = random_array(rng, (4, 3), np.float64)
    b = random_array(rng, (3, 2), np.float64)
    assert_matches(K.tensor_dot_fusion(a, b, None, "relu"), np.maximum(a @ b, 0), np.float64, 3)


def test_fused_contraction_refuses_a_bias_of_the_wrong_length() -> None:
    with pytest.raises(K.ShapeMismatchError, match=r"bias must have shape \(4,\)"):
        K.tensor_dot_fusion(np.ones((2, 3)), np.ones((3, 4)), np.ones(3), "relu")


def test_fused_contraction_refuses_an_unknown_activation() -> None:
    with pytest.raises(K.UnsupportedSpecError, match=r"unknown activation 'swish2'.*relu"):
        K.tensor_dot_fusion(np.ones((2, 3)), np.ones((3, 4)), None, "swish2")
