"""Helpers the kernel tests and the worker's self-checks share: fresh seeds and dtype-aware tolerances.

Inputs are random on every run (a fixed seed would test one input forever); the seed is printed so
a failure can be replayed with TENSORAI_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import secrets

import numpy as np


def fresh_rng() -> tuple[np.random.Generator, int]:
    """A generator with a new seed (or TENSORAI_TEST_SEED to replay one) and that seed."""
    seed = int(os.environ.get("TENSORAI_TEST_SEED") or secrets.randbits(32))
    print(f"kernel test seed: {seed} (replay with TENSORAI_TEST_SEED={seed})")
    return np.random.default_rng(seed), seed


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """Standard-normal values in `dtype`, C-contiguous (0-d arrays included)."""
    return np.ascontiguousarray(np.asarray(rng.standard_normal(shape)).astype(dtype))


def tolerances(dtype: np.dtype | type, terms: int = 1) -> dict[str, float]:
    """rtol/atol for comparing a `dtype` result of sums of `terms` products with a float64 reference."""
    scale = float(np.sqrt(max(terms, 1)))
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-5 * scale, "atol": 2e-6 * scale}
    return {"rtol": 1e-11 * scale, "atol": 1e-13 * scale}


def assert_matches(got: np.ndarray, reference: np.ndarray, dtype: np.dtype | type, terms: int = 1) -> None:
    """Shape, dtype and values of a kernel result against a float64 reference; no NaN poison left."""
    got = np.asarray(got)
    assert got.shape == reference.shape, f"shape {got.shape} != reference {reference.shape}"
    assert got.dtype == np.dtype(dtype), f"dtype {got.dtype} != {np.dtype(dtype)}"
    finite_reference = np.isfinite(reference)
    assert not np.isnan(got[finite_reference]).any(), "an output element was never written (NaN poison left)"
    np.testing.assert_allclose(got, reference, **tolerances(dtype, terms))
