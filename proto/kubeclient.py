"""How every tensor.ai program reaches the Kubernetes API: one rule, one place.

--kubeconfig when given; otherwise the in-cluster service account; otherwise the default kubeconfig
($KUBECONFIG or ~/.kube/config). The client is built on its own Configuration, so no global state of
the `kubernetes` package is touched (several clients can live in one process, as in the tests).
Only the client's low-level layer is imported, which keeps the device plugin's memory small.
"""

from __future__ import annotations

import os
from typing import Any


def kube_api_client(kubeconfig: str | os.PathLike[str] | None, *, pool_size: int | None = None) -> Any:
    """A `kubernetes.client.ApiClient` for the given kubeconfig, in-cluster config, or the default kubeconfig.

    `pool_size`: connections kept open to the API server (the client's default is 5 per CPU). A
    program with more calls in flight than that opens - and TLS-handshakes - a new connection for
    each call over it and drops it afterwards."""
    from kubernetes import client, config

    def configuration() -> Any:
        made = client.Configuration()
        if pool_size is not None:
            made.connection_pool_maxsize = pool_size
        return made

    if kubeconfig is not None and str(kubeconfig):
        return config.new_client_from_config(config_file=str(kubeconfig), client_configuration=configuration())
    try:
        in_cluster = configuration()
        config.load_incluster_config(client_configuration=in_cluster)
        return client.ApiClient(in_cluster)
    except config.ConfigException:
        return config.new_client_from_config(client_configuration=configuration())


def share_tls_context(api_client: Any) -> Any:
    """Let every new connection of `api_client` reuse one TLS context; returns the client.

    urllib3 otherwise builds a context per connection - and, with no CA configured (a kubeconfig
    with insecure-skip-tls-verify, or a system CA store), loads the whole system CA store into it:
    ~10 ms of CPU holding the GIL for every connection a busy client opens."""
    import ssl

    from urllib3.util.ssl_ import create_urllib3_context

    settings = api_client.rest_client.pool_manager.connection_pool_kw
    cert_reqs = settings.get("cert_reqs", ssl.CERT_REQUIRED)
    context = create_urllib3_context(cert_reqs=cert_reqs)
    if cert_reqs != ssl.CERT_NONE and not (settings.get("ca_certs") or settings.get("ca_cert_data")):
        context.load_default_certs()  # what urllib3 would do per connection, once
    settings["ssl_context"] = context
    return api_client
