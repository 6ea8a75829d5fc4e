"""The skip rule of tests that start a control plane of their own (LocalCluster(with_node=False))."""

from __future__ import annotations

import os

import pytest

from . import binaries


def skip_unless_own_control_plane(why_not_an_existing_cluster: str) -> None:
    """Skip with one line unless this machine can start its own control plane for the test.

    Such tests need what only the suite's own API server allows (minting tokens as its admin, a known
    host for kube-scheduler, ...): `why_not_an_existing_cluster` says what, for TENSORAI_E2E_KUBECONFIG."""
    if os.environ.get("TENSORAI_E2E", "1") == "0":
        pytest.skip("end-to-end suite skipped: TENSORAI_E2E=0")
    if os.environ.get("TENSORAI_E2E_KUBECONFIG"):
        pytest.skip(f"needs the suite's own control plane: {why_not_an_existing_cluster}")
    missing = binaries.missing_for_local_cluster()
    if missing:
        pytest.skip(f"end-to-end suite skipped: {missing}")
