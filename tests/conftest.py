"""Shared pytest setup: the CUDA simulator for kernel tests and the path to the openb trace."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def budget_bytes() -> Iterator[Callable[[int | None], Any]]:
    """Install a fresh process memory budget (kernels) for one test; restore the previous one after."""
    from tensorai.kernels.budget import MemoryBudget, set_budget  # numba loads only for tests that ask

    previous: list[MemoryBudget] = []

    def install(limit_bytes: int | None) -> MemoryBudget:
        budget = MemoryBudget(limit_bytes)
        previous.append(set_budget(budget))
        return budget

    yield install
    if previous:
        set_budget(previous[0])


@pytest.fixture
def workdir() -> Iterator[str]:
    """A fresh short directory under /tmp for unix sockets (their paths may hold at most 107 characters)."""
    path = tempfile.mkdtemp(prefix="tai", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
