"""Shared pytest setup: the CUDA simulator for kernel tests and the path to the openb trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Kernels run on Numba's CUDA simulator in tests; must be set before numba is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
OPENB_DIR = Path(os.environ.get("TENSORAI_OPENB_DIR", REPO_ROOT.parent / "shared" / "data" / "openb"))


@pytest.fixture(scope="session")
def openb_dir() -> Path:
    """The openb trace folder; tests that need it skip with the reason when it is absent."""
    if not (OPENB_DIR / "openb_node_list_gpu_node.csv").exists():
        pytest.skip(f"openb trace not found at {OPENB_DIR} (set TENSORAI_OPENB_DIR)")
    return OPENB_DIR
