"""An existing cluster given by `TENSORAI_E2E_KUBECONFIG` (e.g. kind on a laptop) with tensor.ai installed.

The suite then only creates and reads objects: install first (`kubectl apply -k manifests/overlays/dev`,
which runs the simulated backend), label a node `tensor.ai/gpu-node=true`, and the tests that must
restart kubelet or our programs, or read kubelet's checkpoint file, skip with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import binaries


class ExistingCluster:
    """The same reading surface as LocalCluster for what a remote cluster allows."""

    local = False

    def __init__(self, kubeconfig: Path) -> None:
        self.admin_kubeconfig = kubeconfig
        nodes = json.loads(self.kubectl("get", "nodes", "-l", "tensor.ai/gpu-node=true", "-o", "json"))["items"]
        if not nodes:
            raise RuntimeError(f"no node labelled tensor.ai/gpu-node=true in the cluster of {kubeconfig}")
        self.node_name = nodes[0]["metadata"]["name"]

    def kubeconfig(self, who: str) -> Path:
        if who != "admin":
            raise LookupError(f"an existing cluster has no kubeconfig for {who!r} here")
        return self.admin_kubeconfig

    def kubectl(self, *args: str, who: str = "admin", stdin: str | None = None, timeout: float = 60,
                check: bool = True) -> str:
        return binaries.run_kubectl(self.kubeconfig(who), *args, stdin=stdin, timeout=timeout, check=check)

    def container_log(self, namespace: str, pod: str, uid: str, container: str) -> str:
        del uid  # the API server finds the pod by name
        return self.kubectl("logs", "-n", namespace, pod, "-c", container, "--timestamps", check=False)

    def checkpoint(self) -> dict[str, Any]:
        raise LookupError("kubelet's checkpoint is on the node's disk")

    def stop(self) -> None:
        """Nothing to stop: the cluster is not ours."""
