"""Who talks to the end-to-end API server, and as whom: static tokens and one kubeconfig each.

kube-apiserver's `--token-auth-file` maps a bearer token to a user and groups. A user named
`system:serviceaccount:NS:NAME` in the groups `system:serviceaccounts[:NS]` is what RBAC sees for
that ServiceAccount, so our programs run under exactly the permissions manifests/ grants them -
nothing in the suite runs them as cluster-admin. kubelet is `system:node:<node>` in `system:nodes`
(the Node authorizer), the default kube-scheduler `system:kube-scheduler`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

NAMESPACE = "tensorai-system"


@dataclass(frozen=True)
class Identity:
    """One client of the API server: its user, groups and the token that authenticates it."""

    name: str
    user: str
    groups: tuple[str, ...]
    token: str

    @staticmethod
    def service_account(name: str, namespace: str = NAMESPACE) -> Identity:
        return Identity(name, f"system:serviceaccount:{namespace}:{name}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
                        secrets.token_hex(16))


def cluster_identities(node_names: list[str]) -> dict[str, Identity]:
    """Every identity the suite uses, by a short name."""
    identities = {
        "admin": Identity("admin", "e2e-admin", ("system:masters",), secrets.token_hex(16)),
        "kube-scheduler": Identity("kube-scheduler", "system:kube-scheduler", (), secrets.token_hex(16)),
        "tensorai-scheduler": Identity.service_account("tensorai-scheduler"),
        "tensorai-webhook": Identity.service_account("tensorai-webhook"),
        "tensorai-device-plugin": Identity.service_account("tensorai-device-plugin"),
        "tenant": Identity.service_account("default", "e2e"),
    }
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
        "users": [{"name": identity.name, "user": {"token": identity.token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": identity.name}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
