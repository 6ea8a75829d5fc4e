"""Who talks to the end-to-end API server, and as whom: static tokens and one kubeconfig each.

kube-apiserver's `--token-auth-file` maps a bearer token to a user and groups. A user named
`system:serviceaccount:NS:NAME` in the groups `system:serviceaccounts[:NS]` is what RBAC sees for
that ServiceAccount, so our programs run under exactly the permissions manifests/ grants them -
nothing in the suite runs them as cluster-admin. kubelet is `system:node:<node>` in `system:nodes`
(the Node authorizer), the default kube-scheduler `system:kube-scheduler`.

One exception: the device plugin's identity is a real ServiceAccount token from the TokenRequest API,
bound to its Node (`boundObjectRef` kind Node, GA in v1.33). Only such a token carries the node
claim (`authentication.kubernetes.io/node-name` in the user's extra) that the install's policy
(manifests/base/policies/device-plugin-own-node.yaml) confines the plugin with - a DaemonSet pod's
projected token, bound to the pod, carries the same claim. It is minted when its kubeconfig is first
written (the API server, the ServiceAccount and the Node must exist by then), as the admin.
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

NAMESPACE = "tensorai-system"


@dataclass(frozen=True)
class Identity:
    """One client of the API server: its user, groups and the token that authenticates it."""

    name: str
    user: str
    groups: tuple[str, ...]
    token: str
    # server URL -> a token to use instead of `token` (a minted, bound one); None: the static token
    mint: Callable[[str], str] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def service_account(name: str, namespace: str = NAMESPACE) -> Identity:
        return Identity(name, f"system:serviceaccount:{namespace}:{name}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
                        secrets.token_hex(16))

    @staticmethod
    def node_bound_service_account(name: str, node: str, minter: Identity, namespace: str = NAMESPACE) -> Identity:
        """The ServiceAccount `name`, authenticated by a TokenRequest token bound to Node `node` (made with
        `minter`'s token when its kubeconfig is written). Its static token stays in the token file: a
        token without a node claim, for tests that show what such a token may not do."""
        static = Identity.service_account(name, namespace)
        return Identity(static.name, static.user, static.groups, static.token,
                        mint=lambda server: request_bound_token(server, minter.token, namespace, name, "Node", node))

    def token_for(self, server: str) -> str:
        """The bearer token this identity uses on `server`."""
        return self.mint(server) if self.mint is not None else self.token


def _api(server: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the API server's own self-signed certificate on 127.0.0.1
    request = urllib.request.Request(server + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return json.loads(response.read())


def request_bound_token(server: str, minter_token: str, namespace: str, service_account: str, kind: str,
                        name: str, *, expiration_s: int = 24 * 3600) -> str:
    """A token for `service_account` from the TokenRequest API, bound to the Node or Pod `name` (a Pod in
    `namespace`): valid only while that object exists, and carrying its node in the user's extra."""
    if kind not in ("Node", "Pod"):
        raise ValueError(f"a token binds to a Node or a Pod here, not {kind!r}")
    object_path = f"/api/v1/nodes/{quote(name)}" if kind == "Node" else \
        f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    uid = _api(server, minter_token, "GET", object_path)["metadata"]["uid"]
    review = _api(server, minter_token, "POST",
                  f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(service_account)}/token",
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": expiration_s,
                            "boundObjectRef": {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid}}})
    return str(review["status"]["token"])


def cluster_identities(node_names: list[str]) -> dict[str, Identity]:
    """Every identity the suite uses, by a short name."""
    identities = {
        "admin": Identity("admin", "e2e-admin", ("system:masters",), secrets.token_hex(16)),
        "kube-scheduler": Identity("kube-scheduler", "system:kube-scheduler", (), secrets.token_hex(16)),
        "tensorai-scheduler": Identity.service_account("tensorai-scheduler"),
        "tensorai-webhook": Identity.service_account("tensorai-webhook"),
        "tenant": Identity.service_account("default", "e2e"),
    }
    # The plugin runs on the (first) node: its token is bound to that Node, like a DaemonSet pod's.
    identities["tensorai-device-plugin"] = (
        Identity.node_bound_service_account("tensorai-device-plugin", node_names[0], identities["admin"])
        if node_names else Identity.service_account("tensorai-device-plugin"))
    for node in node_names:
        identities[f"node:{node}"] = Identity(f"node:{node}", f"system:node:{node}", ("system:nodes",),
                                              secrets.token_hex(16))
    return identities


def write_token_file(path: Path, identities: dict[str, Identity]) -> None:
    """kube-apiserver's --token-auth-file: `token,user,uid,"group1,group2"` per line."""
    lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in identities.values()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, identity: Identity) -> Path:
    """A kubeconfig for `identity` on `server`; the API server's self-signed certificate is not verified
    (it is on 127.0.0.1 and made by the API server itself at start)."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": identity.name, "user": {"token": identity.token_for(server)}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": identity.name}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
