"""`tensorai-webhook`: parse flags, set up TLS and the kubernetes client, serve until SIGTERM.

Only wiring lives here; the admission logic is `tensorai.scheduler.webhook`, the server
`tensorai.scheduler.webhook_server`, certificates `tensorai.scheduler.certs`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tensorai.proto import cliutil, glibc
from tensorai.proto.kubeclient import kube_api_client
from tensorai.scheduler import certs
from tensorai.scheduler.webhook import WebhookConfig
from tensorai.scheduler.webhook_server import KubeQuotaSource, WebhookMetrics, WebhookServer

log = logging.getLogger("tensorai.webhook")

MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's initial value
CA_PATCH_RETRY_SECONDS = (1, 2, 5, 10, 30)  # then every 30 s: the configuration may be applied after us


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.ArgumentParser(
        prog="tensorai-webhook",
        description="Mutating admission webhook of tensor.ai vGPU: rewrites tensor.ai/vgpu (GPUs, e.g. 0.25) "
        "into the integer tensor.ai/vgpu-milli (e.g. 250) in Pods and workload templates. Serves HTTPS only.",
    )
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (default %(default)s)")
    parser.add_argument("--tls-cert", type=Path, help="PEM serving certificate (chain) file, e.g. from cert-manager")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--self-signed", action="store_true",
                        help="generate a CA and a serving certificate for <service-name>.<namespace>.svc at start "
                        "(single replica; combine with --patch-ca-bundle)")
    parser.add_argument("--service-name", default="tensorai-webhook",
                        help="Service name the API server dials (default %(default)s)")
    parser.add_argument("--namespace", default="tensorai-system",
                        help="namespace of that Service (default %(default)s)")
    parser.add_argument("--webhook-config-name", default="tensorai-vgpu",
                        help="MutatingWebhookConfiguration whose caBundle --patch-ca-bundle sets (default %(default)s)")
    parser.add_argument("--patch-ca-bundle", action="store_true",
                        help="with --self-signed: write the generated CA into --webhook-config-name (retried until it "
                        "exists)")
    parser.add_argument("--scheduler-name", default="",
                        help="set spec.schedulerName of vGPU pods and templates that name none or default-scheduler "
                        "(default: empty, no injection)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig file (default: in-cluster service account, then ~/.kube/config)")
    parser.add_argument("--no-kube", action="store_true",
                        help="no Kubernetes API access: no GPUQuota lookups, no caBundle patching")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default %(default)s)")
    cliutil.add_log_format_flag(parser)
    cliutil.add_version_flag(parser)
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.self_signed and (args.tls_cert or args.tls_key):
        parser.error("use either --self-signed or --tls-cert/--tls-key, not both")
    if not args.self_signed and not (args.tls_cert and args.tls_key):
        parser.error("TLS is required: give --tls-cert and --tls-key, or --self-signed")
    if args.patch_ca_bundle and not args.self_signed:
        parser.error("--patch-ca-bundle needs --self-signed (with --tls-cert the CA is managed elsewhere, "
                     "e.g. cert-manager's cainjector)")
    if args.patch_ca_bundle and args.no_kube:
        parser.error("--patch-ca-bundle needs the Kubernetes API; drop --no-kube")
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be 0..65535 (0 = any free port), got {args.port}")
    for flag in ("tls_cert", "tls_key", "kubeconfig"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')}: no such file {path}")


def _patch_ca_bundle_until_done(api_client: Any, name: str, ca_pem: bytes, server: WebhookServer,
                                stop: threading.Event) -> None:
    """Retry until the configuration holds our CA; only then report ready (the API server cannot
    verify us before, and an unready pod makes a missing configuration or RBAC rule visible)."""
    attempt = 0
    while not stop.is_set():
        try:
            certs.patch_ca_bundle(api_client, name, ca_pem)
            server.metrics.ca_bundle_patched.set(1)
            server.ready.set()
            return
        except certs.CaBundlePatchError as error:
            delay = CA_PATCH_RETRY_SECONDS[min(attempt, len(CA_PATCH_RETRY_SECONDS) - 1)]
            server.not_ready_reason = f"caBundle not patched yet: {error}"
            log.warning("%s; retrying in %d s", error, delay)
            attempt += 1
            stop.wait(delay)


def return_large_buffers_to_the_os() -> bool:
    """Make glibc hand every buffer over 128 KiB back to the kernel when freed; True if it could.

    A review body (up to 7 MiB) is one malloc'd buffer. glibc raises its mmap threshold after the
    first such buffer is freed, so later bodies come from the heap of whichever thread read them,
    and each connection thread's heap keeps its freed megabytes: 24 concurrent 6.9 MiB reviews
    peaked at 199 MiB RSS that way, 121 MiB with the threshold fixed (docs/webhook.md). Setting it
    explicitly (M_MMAP_THRESHOLD, as MALLOC_MMAP_THRESHOLD_ would) turns the adjustment off; an
    operator's own MALLOC_MMAP_THRESHOLD_ wins."""
    return glibc.mallopt((glibc.ENV_MALLOC_MMAP_THRESHOLD,), (glibc.M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    cliutil.setup_logging(args.log_level, args.log_format)
    if not return_large_buffers_to_the_os():
        log.info("malloc's mmap threshold not fixed (not glibc, or MALLOC_MMAP_THRESHOLD_ set): "
                 "peak memory may be higher under large reviews")

    bundle: certs.CertBundle | None = None
    if args.self_signed:
        bundle = certs.generate_self_signed(args.service_name, args.namespace, extra_names=("localhost", "127.0.0.1"))
        cert_path, key_path = certs.write_temporary(bundle)
        log.info("generated a self-signed CA and certificate for %s.%s.svc", args.service_name, args.namespace)
    else:
        cert_path, key_path = args.tls_cert, args.tls_key

    api_client = None
    if not args.no_kube:
        try:
            api_client = kube_api_client(args.kubeconfig)
        except Exception as error:  # the kubernetes loader raises several unrelated types
            print(f"tensorai-webhook: {cliutil.kube_client_problem(error, args.kubeconfig)}; "
                  "or run without GPUQuota lookups with --no-kube", file=sys.stderr)
            if bundle is not None:
                shutil.rmtree(cert_path.parent, ignore_errors=True)  # the generated private key leaves with us
            return 2

    metrics = WebhookMetrics()
    quotas = KubeQuotaSource(api_client, metrics=metrics) if api_client is not None else None
    try:
        server = WebhookServer((args.address, args.port), cert_path=cert_path, key_path=key_path,
                               config=WebhookConfig(scheduler_name=args.scheduler_name), quotas=quotas,
                               metrics=metrics)
    except (OSError, ValueError) as error:
        log.error("cannot start the HTTPS server on %s:%d: %s", args.address, args.port, error)
        return 1

    stop = threading.Event()
    if args.patch_ca_bundle and bundle is not None and api_client is not None:
        server.ready.clear()
        server.not_ready_reason = "caBundle not patched yet"
        threading.Thread(target=_patch_ca_bundle_until_done, name="ca-bundle",
                         args=(api_client, args.webhook_config_name, bundle.ca_pem, server, stop),
                         daemon=True).start()

    def _shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    log.info("serving https://%s:%d/mutate (scheduler name injection: %s)", args.address, server.port,
             args.scheduler_name or "off")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        server.server_close()
        if bundle is not None:
            shutil.rmtree(cert_path.parent, ignore_errors=True)  # the generated private key leaves with us
    return 0


if __name__ == "__main__":
    sys.exit(main())
