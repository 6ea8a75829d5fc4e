"""TLS for the webhook without a manual step: a self-signed CA, a serving certificate for the
webhook Service's DNS names, and the caBundle patch that makes the API server trust it.

The API server only calls admission webhooks over HTTPS and verifies the serving certificate
against `clientConfig.caBundle` for `<service>.<namespace>.svc`. With `--self-signed` the webhook
makes both at start (kept in memory and in a temporary folder for the ssl module) and, with
`--patch-ca-bundle`, writes the CA into every entry of its MutatingWebhookConfiguration.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_VALID_DAYS = 3650
SERVING_VALID_DAYS = 825  # within the 825-day limit many TLS clients enforce for leaf certificates


@dataclass(frozen=True, slots=True)
class CertBundle:
    """PEM-encoded CA certificate, serving certificate (leaf) and the leaf's private key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write cert and key (key readable by the owner only); returns (cert path, key path)."""
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / "tls.crt", folder / "tls.key"
        cert_path.write_bytes(self.cert_pem + self.ca_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)
        return cert_path, key_path


def service_dns_names(service: str, namespace: str) -> list[str]:
    """Every name the API server may use for the Service (it dials `<svc>.<ns>.svc`)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def generate_self_signed(service: str, namespace: str, *, extra_names: tuple[str, ...] = (),
                         now: dt.datetime | None = None) -> CertBundle:
    """A fresh CA and a leaf for the Service's DNS names (plus `extra_names`: DNS names or IP addresses)."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tensorai-webhook-ca {namespace}/{service}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in service_dns_names(service, namespace)]
    for extra in extra_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(extra)))
        except ValueError:
            names.append(x509.DNSName(extra))
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVING_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf_cert.public_bytes(serialization.Encoding.PEM),
        key_pem=leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
    )


def write_temporary(bundle: CertBundle) -> tuple[Path, Path]:
    """Write a generated bundle to a fresh private temporary folder (the ssl module reads files)."""
    folder = Path(tempfile.mkdtemp(prefix="tensorai-webhook-tls-"))
    return bundle.write(folder)


class CaBundlePatchError(RuntimeError):
    """The MutatingWebhookConfiguration could not be read or patched."""


def patch_ca_bundle(api_client: Any, webhook_config_name: str, ca_pem: bytes) -> int:
    """Put `ca_pem` into clientConfig.caBundle of every webhook of the named configuration.

    Returns how many entries changed (0 when all already held this CA). Uses a JSON patch with a
    `test` of each entry's name so a concurrent edit of the list fails instead of patching the wrong
    entry.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.AdmissionregistrationV1Api(api_client)
    encoded = base64.b64encode(ca_pem).decode()
    try:
        # Raw JSON keeps caBundle as the base64 text the API sends (the model would decode it).
        response = api.read_mutating_webhook_configuration(webhook_config_name, _preload_content=False,
                                                           _request_timeout=10)
        config = json.loads(response.data)
    except ApiException as error:
        raise CaBundlePatchError(f"cannot read MutatingWebhookConfiguration {webhook_config_name!r}: "
                                 f"{error.status} {error.reason}") from error
    except (OSError, ValueError) as error:
        raise CaBundlePatchError(
            f"cannot read MutatingWebhookConfiguration {webhook_config_name!r}: {error}") from error
    webhooks = config.get("webhooks") or []
    operations: list[dict[str, Any]] = []
    for index, webhook in enumerate(webhooks):
        client_config = webhook.get("clientConfig") or {}
        if client_config.get("caBundle") == encoded:
            continue
        operations.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
    if not operations:
        return 0
    try:
        api.patch_mutating_webhook_configuration(webhook_config_name, operations, _request_timeout=10,
                                                 _content_type="application/json-patch+json")
    except ApiException as error:
        raise CaBundlePatchError(f"cannot patch caBundle of MutatingWebhookConfiguration {webhook_config_name!r}: "
                                 f"{error.status} {error.reason}") from error
    except (OSError, ValueError) as error:
        raise CaBundlePatchError(
            f"cannot patch MutatingWebhookConfiguration {webhook_config_name!r}: {error}") from error
    changed = len(operations) // 2
    log.info("patched caBundle of %d webhook(s) in MutatingWebhookConfiguration %s", changed, webhook_config_name)
    return changed
