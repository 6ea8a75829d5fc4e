"""`tensorai-extender`: parse flags, wire the view, its source, the HTTP server and the quota controller.

Two modes:
- API mode (default): list+watch Nodes, Pods and GPUQuotas (kubeconfig from --kubeconfig, else
  in-cluster config, else ~/.kube/config), bind through the API, write Events and quota status.
- `--cluster-file F`: a static `kubectl get nodes,pods -o yaml` List; binds only update memory.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading

import numpy as np

from tensorai.proto import cliutil, contract
from tensorai.proto.kubeclient import kube_api_client, share_tls_context
from tensorai.scheduler.core.policies import DEFAULT_POLICY, POLICY_NAMES
from tensorai.scheduler.leader import parse_lease_ref

log = logging.getLogger("tensorai.extender")

# kube-scheduler runs every bind in its own goroutine, so dozens of binds (two API writes each) can be
# in flight; with the client's default pool (5 per CPU) each call over it paid a new TLS connection.
API_POOL_SIZE = 64
# the HTTP defaults, here so --help needs no import of the service (numpy, kubernetes)
VERBS_MAX_CONNECTIONS = 512
REQUEST_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    """The flags (the manifests rely on these exact names)."""
    parser = cliutil.ArgumentParser(
        prog="tensorai-extender",
        description="kube-scheduler extender for tensor.ai fractional GPUs: POST /filter, /prioritize, /bind, "
        "/preempt and GET /healthz, /readyz on the verbs listener; GET /metrics, /healthz, /readyz on the metrics "
        "listener.",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="verbs listen address (default 127.0.0.1: kube-scheduler is a sidecar in the same pod; anything that "
        "reaches this port can bind pods)",
    )
    parser.add_argument("--port", type=int, default=8888, help="verbs listen port, 0 = any free port (default 8888)")
    parser.add_argument(
        "--metrics-address", default="0.0.0.0", help="listen address of /metrics and the probes (default 0.0.0.0)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics and the probes, 0 = any free port (default: --port + 1, so 8889; 0 with --port 0)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=VERBS_MAX_CONNECTIONS,
        help=f"connections the verbs listener serves at once; more get 503 (default {VERBS_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--request-timeout-seconds",
        type=float,
        default=REQUEST_TIMEOUT_S,
        help=f"a request (line, headers, body) must arrive within this, and its answer be sent within it "
        f"(default {REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--idle-timeout-seconds",
        type=float,
        default=IDLE_TIMEOUT_S,
        help=f"a kept-alive connection with no request for this long is closed (default {IDLE_TIMEOUT_S:g}; keep it "
        "above the client's own idle timeout, 90 s for Go clients)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    parser.add_argument(
        "--cluster-file",
        help="read Nodes/Pods/GPUQuotas from a static `kubectl get nodes,pods -o yaml` List instead of the API; "
        "binds then only update the in-memory view",
    )
    parser.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        choices=POLICY_NAMES,
        help=f"cluster scoring policy (default {DEFAULT_POLICY})",
    )
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    parser.add_argument(
        "--node-stale-seconds",
        type=cliutil.seconds(allow_zero=True),
        default=None,
        help="a node whose inventory heartbeat is older gets no new pods; 0 disables "
        "(default 120; with --cluster-file the check is off unless this flag is given)",
    )
    parser.add_argument(
        "--requeue-interval-seconds",
        type=cliutil.seconds(allow_zero=False),
        default=5.0,
        help="safety-net period of the quota requeue and status loop; quota frees trigger it at once (default 5)",
    )
    parser.add_argument(
        "--scheduler-name",
        default=contract.SCHEDULER_NAME,
        help="the kube-scheduler profile that calls this extender: bind refuses pods whose spec.schedulerName "
        f"differs (default {contract.SCHEDULER_NAME})",
    )
    parser.add_argument(
        "--leader-lease",
        type=parse_lease_ref,
        default=None,
        help="NAMESPACE/NAME of the Lease this pod's kube-scheduler elects its leader with: quota status, requeue "
        "patches and their Events are written only while it holds it (default: tensorai-scheduler in this pod's "
        "namespace; tensorai-system/tensorai-scheduler with --kubeconfig or outside a pod)",
    )
    parser.add_argument(
        "--no-leader-lease",
        action="store_true",
        help="always write (one replica whose kube-scheduler runs without leader election); implied by --cluster-file",
    )
    parser.add_argument(
        "--max-feasible-nodes",
        type=int,
        default=None,
        help="filter keeps at most this many of the nodes that fit, the ones prioritize ranks first; "
        "0 keeps all (default 32: kube-scheduler then scores 32 nodes, not the whole cluster)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    cliutil.add_log_format_flag(parser)
    cliutil.add_version_flag(parser)
    return parser


def _http_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the listener flags, or None (one clear line instead of a traceback at start)."""
    for flag in ("port", "metrics_port"):
        if not 0 <= getattr(args, flag) < 65536:
            return f"--{flag.replace('_', '-')} must be 0..65535 (0 = any free port), got {getattr(args, flag)}"
    if args.metrics_port and args.metrics_port == args.port:
        return f"--metrics-port must differ from --port (both {args.port}): /metrics has its own listener"
    if args.max_connections < 1:
        return f"--max-connections must be at least 1, got {args.max_connections}"
    for flag in ("request_timeout_seconds", "idle_timeout_seconds"):
        if not getattr(args, flag) > 0:
            return f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the extender until SIGTERM/SIGINT; returns the exit status."""
    args = build_parser().parse_args(argv)
    cliutil.setup_logging(args.log_level, args.log_format)
    if args.max_feasible_nodes is not None and args.max_feasible_nodes < 0:
        print("tensorai-extender: --max-feasible-nodes must be 0 (all) or more", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("tensorai-extender: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.metrics_port is None:
        args.metrics_port = args.port + 1 if args.port else 0
    problem = _http_flag_problem(args)
    if problem:
        print(f"tensorai-extender: {problem}", file=sys.stderr)
        return 2

    from tensorai.scheduler.bind import AssumedReconciler
    from tensorai.scheduler.core.context import PolicyContext
    from tensorai.scheduler.core.shapes import OnlineWorkload, default_workload
    from tensorai.scheduler.events import EventRecorder
    from tensorai.scheduler.extender import DEFAULT_MAX_FEASIBLE_NODES, ExtenderService
    from tensorai.scheduler.extender_http import metrics_limits, serve, serve_metrics, verbs_limits
    from tensorai.scheduler.metrics import ExtenderMetrics
    from tensorai.scheduler.quota_controller import QuotaController
    from tensorai.scheduler.view import ClusterFileError, ClusterView, KubeSource, load_cluster_file

    stale_s = args.node_stale_seconds
    if stale_s is None:
        stale_s = 0.0 if args.cluster_file else 120.0
    view = ClusterView(stale_seconds=stale_s)
    api_client = None
    source = None
    reconciler = None
    if args.cluster_file:
        try:
            counts = load_cluster_file(view, args.cluster_file)
        except ClusterFileError as error:
            print(f"tensorai-extender: {error}", file=sys.stderr)
            return 2
        log.info("loaded %s from %s", counts, args.cluster_file)
    else:
        try:
            api_client = share_tls_context(kube_api_client(args.kubeconfig, pool_size=API_POOL_SIZE))
        except Exception as error:  # the kubernetes loader raises several unrelated types
            print(f"tensorai-extender: {cliutil.kube_client_problem(error, args.kubeconfig)}; "
                  "or read a static cluster with --cluster-file", file=sys.stderr)
            return 2
        if not api_client.configuration.verify_ssl:  # say it once, not in a warning per API call
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("the kubeconfig turns TLS verification of the API server off (insecure-skip-tls-verify)")
        source = KubeSource(view, api_client).start()
        reconciler = AssumedReconciler(view, api_client).start()
    # The view's long-lived objects (tens of thousands of pod and node records) need no cyclic GC
    # scans: freezing them keeps full collections - and the latency spikes they cause - short.
    gc.freeze()
    metrics = ExtenderMetrics(view)
    events = EventRecorder(api_client).start()
    # Until the first refit (1,000 pods) the learned mix would be the first pod's shape alone, which
    # scored 0.8 points worse than FGD on a small synthetic cluster; the openb mix is a saner prior.
    context = PolicyContext(online=OnlineWorkload(prior=default_workload()), rng=np.random.default_rng(0))
    service = ExtenderService(
        view, policy=args.policy, api_client=api_client, events=events, metrics=metrics, context=context,
        scheduler_name=args.scheduler_name,
        max_feasible_nodes=DEFAULT_MAX_FEASIBLE_NODES if args.max_feasible_nodes is None else args.max_feasible_nodes,
    )
    log.info("scoring code warmed up in %.1fs", service.warm_up())
    from tensorai.scheduler.leader import POD_NAMESPACE_FILE, AlwaysLeader, LeaseLeader, default_lease_ref

    leader: AlwaysLeader | LeaseLeader = AlwaysLeader()
    if api_client is not None and not args.no_leader_lease:
        in_pod = None if args.kubeconfig else POD_NAMESPACE_FILE  # a kubeconfig is not the pod's identity
        lease_namespace, lease_name = args.leader_lease or default_lease_ref(in_pod)
        leader = LeaseLeader(api_client, namespace=lease_namespace, name=lease_name).start()
    controller = QuotaController(
        view, api_client=api_client, interval_s=args.requeue_interval_seconds, metrics=metrics, events=events,
        leader=leader,
    ).start()
    tls = {"tls_cert": args.tls_cert, "tls_key": args.tls_key}
    timeouts = {"request_timeout_s": args.request_timeout_seconds, "idle_timeout_s": args.idle_timeout_seconds}
    try:
        server, _ = serve(
            service,
            args.address,
            args.port,
            limits=verbs_limits(args.max_connections, **timeouts),
            with_metrics=False,
            **tls,
        )
    except (OSError, ValueError) as error:
        print(f"tensorai-extender: cannot serve the verbs on {args.address}:{args.port}: {error}", file=sys.stderr)
        return 1
    try:
        metrics_server, _ = serve_metrics(
            service, args.metrics_address, args.metrics_port, limits=metrics_limits(**timeouts), **tls
        )
    except (OSError, ValueError) as error:
        server.shutdown()
        server.server_close()
        print(
            f"tensorai-extender: cannot serve /metrics on {args.metrics_address}:{args.metrics_port}: {error}",
            file=sys.stderr,
        )
        return 1
    scheme = "https" if args.tls_cert else "http"
    # the first line is what scripts wait for (its last word is the verbs' URL)
    print(f"tensorai-extender serving on {scheme}://{args.address}:{server.port}", flush=True)
    print(f"tensorai-extender /metrics at {scheme}://{args.metrics_address}:{metrics_server.port}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    for listener in (server, metrics_server):
        listener.shutdown()
        listener.server_close()
    controller.stop()
    events.stop()
    if source is not None:
        source.stop()
    if reconciler is not None:
        reconciler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
