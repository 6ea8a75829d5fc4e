"""The end-to-end suite's cluster: one per test session, real Kubernetes, started here or given.

- `TENSORAI_E2E_KUBECONFIG=<file>`: use that existing cluster (tensor.ai installed, see existing.py).
- otherwise, as root with ../shared/k8s/bin (or $TENSORAI_K8S_BIN) and the Debian packages present:
  a LocalCluster on 127.0.0.1 (cluster.py), stopped at the end of the session.
- otherwise every e2e test skips with one line saying what is missing.
`TENSORAI_E2E=0` skips the suite on purpose (a quick `make test`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tensorai.proto.kubeclient import kube_api_client

from . import binaries
from .pods import NAMESPACE, PodClient

E2E_TEST_TIMEOUT_S = 1200  # a churn of 200 real pods on 2 cores takes minutes; the suite-wide 300 s is too short


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(E2E_TEST_TIMEOUT_S))
    # Only one cluster with a kubelet can run per machine (the node lock), and the session's cluster holds
    # it from its first test to the end of the session: a test that starts its own node cluster must run
    # before that one starts, or it waits for the lock until it times out.
    items.sort(key=lambda item: item.get_closest_marker("own_node") is None)  # stable: nothing else moves


@dataclass
class E2E:
    """What a test gets: the cluster, an admin API client and the test namespace's pods."""

    cluster: Any
    api: Any
    pods: PodClient

    @property
    def local(self) -> bool:
        return getattr(self.cluster, "local", True)

    def require_local(self, what: str) -> None:
        if not self.local:
            pytest.skip(f"{what} needs the suite's own local cluster")


def _why_not() -> str | None:
    if os.environ.get("TENSORAI_E2E", "1") == "0":
        return "TENSORAI_E2E=0"
    if os.environ.get("TENSORAI_E2E_KUBECONFIG"):
        return None
    return binaries.missing_for_local_cluster()


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    reason = _why_not()
    if reason:
        pytest.skip(f"end-to-end suite skipped: {reason}")
    given = os.environ.get("TENSORAI_E2E_KUBECONFIG")
    if given:
        from .existing import ExistingCluster

        cluster: Any = ExistingCluster(Path(given))
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    else:
        from .cluster import LocalCluster

        cluster = LocalCluster().start()
    try:
        api = kube_api_client(cluster.kubeconfig("admin"))
        yield E2E(cluster, api, PodClient(api))
    finally:
        cluster.stop()


@pytest.fixture
def pods(e2e: E2E) -> Iterator[PodClient]:
    """The test namespace, emptied after each test so one test's pods never hold another's GPUs."""
    yield e2e.pods
    e2e.pods.delete_all()
