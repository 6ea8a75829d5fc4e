"""How every tensor.ai program reaches the Kubernetes API: one rule, one place.

--kubeconfig when given; otherwise the in-cluster service account; otherwise the default kubeconfig
($KUBECONFIG or ~/.kube/config). The client is built on its own Configuration, so no global state of
the `kubernetes` package is touched (several clients can live in one process, as in the tests).
Only the client's low-level layer is imported, which keeps the device plugin's memory small.
"""

from __future__ import annotations

import os
from typing import Any


def kube_api_client(kubeconfig: str | os.PathLike[str] | None) -> Any:
    """A `kubernetes.client.ApiClient` for the given kubeconfig, in-cluster config, or the default kubeconfig."""
    from kubernetes import client, config

    if kubeconfig is not None and str(kubeconfig):
        return config.new_client_from_config(config_file=str(kubeconfig))
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException:
        return config.new_client_from_config()
