"""`tensorai-device-plugin`: parse flags, wire the parts together, run until SIGTERM.

Precedence: command-line flag > environment (`TENSORAI_DEVICE_PLUGIN_<FLAG>`, e.g.
`TENSORAI_DEVICE_PLUGIN_SHARING=mps`; the node name also from `NODE_NAME`) > default.
An environment value is checked like the flag's own (booleans only true/false/1/0/yes/no, numbers
must parse and be in range, choices must be one of them): a DaemonSet's typo exits 2 naming the
variable instead of being read as false or raising a traceback. Paths must be absolute: they are
kubelet's and the host's directories, and a relative one would depend on the plugin's working
directory (grpc's bind failed on it with a traceback).
`Plugin` is the assembled program; tests and the demo start it in-process with a `PluginConfig`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tensorai.deviceplugin import backends, footprint, gpus
from tensorai.deviceplugin.allocations import AllocationBook, AllocationRecord
from tensorai.deviceplugin.health import DEFAULT_IGNORED_XIDS, HealthMonitor, HealthTracker, parse_xid_list
from tensorai.deviceplugin.identity import AllocatedAnnotationWriter, PodIdentity, PodWatch
from tensorai.deviceplugin.podresources import (
    DEFAULT_POD_RESOURCES_SOCKET,
    PodResourcesClient,
    Reconciler,
    admitting_pod,
)
from tensorai.deviceplugin.registration import DEFAULT_PLUGIN_DIR, DEFAULT_SOCKET_NAME, PluginDirLocked, PluginRunner
from tensorai.deviceplugin.service import DevicePluginServicer, VGPUManager
from tensorai.deviceplugin.sharing import DEFAULT_MPS_PIPE_DIR, SharingPolicy
from tensorai.deviceplugin.slices import SliceTable
from tensorai.proto import cliutil, contract
from tensorai.proto.kubeclient import RawCoreApi, kube_api_client

log = logging.getLogger("tensorai.deviceplugin")

ENV_PREFIX = contract.ENV_DEVICE_PLUGIN_PREFIX
ENV_NODE_NAME = contract.ENV_NODE_NAME
PLUGIN_VERSION = cliutil.version()  # reported in the Inventory annotation


@dataclass
class PluginConfig:
    """Everything the plugin needs; defaults are the DaemonSet's."""

    backend: str = "nvml"
    sim_gpus: str | None = None
    sharing: str = "timeslice"
    device_plugin_dir: str = DEFAULT_PLUGIN_DIR
    socket_name: str = DEFAULT_SOCKET_NAME
    pod_resources_socket: str = DEFAULT_POD_RESOURCES_SOCKET
    node_name: str = ""
    kubeconfig: str | None = None
    no_kube: bool = False
    metrics_port: int = 9400
    inventory_interval_s: float = 30.0
    ignored_xids: frozenset[int] = field(default_factory=lambda: DEFAULT_IGNORED_XIDS)
    recovery_quiet_s: float = 300.0
    recovery_probes: int = 3
    mps_pipe_dir: str = DEFAULT_MPS_PIPE_DIR
    log_level: str = "INFO"
    log_format: str = "text"
    probe_interval_s: float = 5.0
    catch_up_s: float = 3.0
    reconcile_interval_s: float = 10.0
    registration_poll_s: float = 0.5


class Plugin:
    """The device plugin assembled from its parts; `start()` serves and registers, `stop()` cleans up."""

    def __init__(self, config: PluginConfig, *, backend: gpus.GPUBackend | None = None,
                 api_client: Any = None) -> None:
        if not config.node_name:
            raise ValueError(f"node name is empty: pass --node-name or set {ENV_NODE_NAME}")
        self.config = config
        self.backend = backend or backends.open_backend(config.backend, sim_gpus=config.sim_gpus,
                                                        node_name=config.node_name)
        self.table = SliceTable(self.backend.gpus())
        self.tracker = HealthTracker(
            self.table.uuids,
            ignored_xids=config.ignored_xids,
            recovery_quiet_s=config.recovery_quiet_s,
            recovery_probes=config.recovery_probes,
        )
        self.monitor = HealthMonitor(self.backend, self.tracker, probe_interval_s=config.probe_interval_s)
        self.book = AllocationBook()
        self.sharing = SharingPolicy(config.sharing, config.mps_pipe_dir)
        self.core_v1: RawCoreApi | None = None
        self.identity: PodIdentity | None = None
        self.watch: PodWatch | None = None
        self.writer: AllocatedAnnotationWriter | None = None
        self.inventory: Any = None
        if not config.no_kube:
            # Raw JSON over the official ApiClient, not CoreV1Api: its ~250 generated models cost 21.6 MiB.
            self.core_v1 = RawCoreApi(api_client or kube_api_client(config.kubeconfig))
            self.identity = PodIdentity(config.node_name, self.book, catch_up_s=config.catch_up_s)
            self.watch = PodWatch(self.core_v1, self.identity)
        self.podresources = PodResourcesClient(config.pod_resources_socket)
        self.manager = VGPUManager(self.table, self.tracker, self.sharing, self.book, self.identity,
                                   on_allocated=self._allocated,
                                   admitting=functools.partial(admitting_pod, self.podresources),
                                   on_moved=self._annotations_changed,
                                   kubelet_listing=self.podresources.list_resource)
        if self.identity is not None and self.core_v1 is not None:
            self.writer = AllocatedAnnotationWriter(self.core_v1, config.node_name, self.book, self.identity,
                                                    calls=self.manager.calls)
        self.servicer = DevicePluginServicer(self.manager)
        self.reconciler = Reconciler(self.podresources, self.manager.reconcile, self._annotations_changed,
                                     interval_s=config.reconcile_interval_s, calls=self.manager.calls)
        self.runner = PluginRunner(self.servicer, config.device_plugin_dir, socket_name=config.socket_name,
                                   poll_interval_s=config.registration_poll_s)
        self.metrics: Any = None
        self.metrics_port: int | None = None

    def _allocated(self, record: AllocationRecord) -> None:
        # With kubelet's listing available, `allocated` is written once kubelet lists the IDs under
        # the pod (a confirmed fact the scheduler can wait on); without it, at once from our choice.
        if self.writer is not None and not self.reconciler.working:
            self.writer.enqueue(record.owner.pod_uid)
        self.reconciler.kick()

    def _annotations_changed(self, pod_uids: list[str]) -> None:
        if self.writer is not None:
            for uid in pod_uids:
                self.writer.enqueue(uid)

    def start(self, *, sync_timeout_s: float = 10.0) -> Plugin:
        self.runner.take_lock()  # before anything else: a second plugin must not publish or watch either
        self.monitor.start()
        if self.watch is not None and self.identity is not None and self.writer is not None:
            self.watch.start()
            self.writer.start()
            if not self.identity.synced.wait(sync_timeout_s):
                log.warning("pod watch has not listed pods within %.0f s; Allocate waits for it", sync_timeout_s)
        self.reconciler.start()
        self.runner.start()
        if self.core_v1 is not None:
            from tensorai.deviceplugin.inventory import InventoryPublisher

            self.inventory = InventoryPublisher(
                self.core_v1, self.backend, self.tracker, node_name=self.config.node_name,
                sharing_mode=self.config.sharing, plugin_version=PLUGIN_VERSION,
                interval_s=self.config.inventory_interval_s,
            )
            self.inventory.start()
        if self.config.metrics_port > 0:
            from tensorai.deviceplugin.metrics import PluginMetrics

            self.metrics = PluginMetrics(self.backend, self.tracker, self.book.shares, node_name=self.config.node_name)
            self.metrics_port = self.metrics.serve(self.config.metrics_port)
        log.info("serving %s on %s: %d GPU(s), sharing %s, %s", contract.RESOURCE_VGPU_MILLI, self.runner.socket_path,
                 len(self.table.uuids), self.config.sharing, "standalone" if self.config.no_kube else "with API")
        return self

    def stop(self) -> None:
        """Unregister by removing our socket, then stop every thread."""
        self.runner.stop()
        for part in (self.inventory, self.metrics, self.reconciler, self.watch, self.writer):
            if part is not None:
                try:
                    part.stop()
                except Exception as error:  # shutdown must finish removing what it can
                    log.warning("stopping %s: %s", type(part).__name__, error)
        self.monitor.stop()
        self.podresources.close()
        self.backend.close()

    def __enter__(self) -> Plugin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EnvValueError(ValueError):
    """A TENSORAI_DEVICE_PLUGIN_* variable whose value its flag would refuse."""


def _env(name: str, default: Any, parse: Callable[[str], Any] | None = None) -> Any:
    """The flag's value from its environment variable, checked by `parse` as the flag's type would be."""
    key = ENV_PREFIX + name.upper().replace("-", "_")
    raw = os.environ.get(key)
    if raw is None:
        return default
    if parse is None:
        return raw
    try:
        return parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise EnvValueError(f"{key}: {error}") from None


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def absolute_path(text: str) -> str:
    """An absolute path (argparse type): kubelet's directories and sockets, the host's MPS pipes."""
    if not os.path.isabs(text):
        raise argparse.ArgumentTypeError(f"expected an absolute path, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.ArgumentParser(
        prog="tensorai-device-plugin",
        description=f"Advertise fractional GPUs to kubelet as {contract.RESOURCE_VGPU_MILLI} (1000 per GPU). "
        f"Every flag can also be set as {ENV_PREFIX}<FLAG> (flags win).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    port, probes = cliutil.port, cliutil.int_at_least(1)
    interval, quiet = cliutil.seconds(allow_zero=False), cliutil.seconds(allow_zero=True)
    backend_names, sharing_names = list(backends.BACKEND_NAMES), sorted(contract.SHARING_MODE_NAMES)
    log_levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    cliutil.add_version_flag(parser)
    add("--backend", choices=backend_names, default=_env("backend", "nvml", _one_of(backend_names)),
        help="GPU source: real GPUs through NVML, or simulated GPUs")
    add("--sim-gpus", default=_env("sim_gpus", None),
        help="simulated GPUs for --backend sim, COUNTxMODEL:MEMORY_MIB[,...], e.g. 2xH100:81559")
    add("--sharing", choices=sharing_names, default=_env("sharing", "timeslice", _one_of(sharing_names)),
        help="how containers share a GPU (see docs/deviceplugin.md for what each mode enforces)")
    add("--device-plugin-dir", type=absolute_path, default=_env("device_plugin_dir", DEFAULT_PLUGIN_DIR, absolute_path),
        help="kubelet's device-plugin directory (holds kubelet.sock and our socket); absolute")
    add("--pod-resources-socket", type=absolute_path,
        default=_env("pod_resources_socket", DEFAULT_POD_RESOURCES_SOCKET, absolute_path),
        help="kubelet's pod-resources v1 socket, read to reconcile allocations; absolute")
    add("--node-name", default=os.environ.get(ENV_PREFIX + "NODE_NAME", os.environ.get(ENV_NODE_NAME, "")),
        help=f"this node's name (default: ${ENV_NODE_NAME})")
    add("--kubeconfig", default=_env("kubeconfig", None),
        help="kubeconfig file (default: in-cluster config, else ~/.kube/config)")
    add("--no-kube", action="store_true", default=_env("no_kube", False, cliutil.parse_bool),
        help="standalone: no API server, no inventory, no pod identity; binpack choice "
        "(environment: true/false, 1/0, yes/no)")
    add("--metrics-port", type=port, default=_env("metrics_port", 9400, port),
        help="Prometheus /metrics port; 0 disables")
    add("--inventory-interval", type=interval, default=_env("inventory_interval", 30.0, interval),
        help="seconds between Inventory annotation heartbeats")
    add("--ignored-xids", default=_env("ignored_xids", ",".join(map(str, sorted(DEFAULT_IGNORED_XIDS)))),
        help="comma list of application XIDs that never mark a GPU unhealthy")
    add("--recovery-quiet-seconds", type=quiet, default=_env("recovery_quiet_seconds", 300.0, quiet),
        help="an unhealthy GPU may recover only after this long without a critical event")
    add("--recovery-probes", type=probes, default=_env("recovery_probes", 3, probes),
        help="... and this many consecutive clean probes")
    add("--mps-pipe-dir", type=absolute_path, default=_env("mps_pipe_dir", DEFAULT_MPS_PIPE_DIR, absolute_path),
        help="host directory of the MPS control daemon's pipes, mounted into containers with --sharing mps; absolute")
    add("--log-level", default=_env("log_level", "INFO", _one_of(log_levels)), choices=log_levels,
        help="log verbosity")
    cliutil.add_log_format_flag(parser, default=_env("log_format", "text", _one_of(cliutil.LOG_FORMATS)))
    return parser


def config_from_args(args: argparse.Namespace) -> PluginConfig:
    return PluginConfig(
        backend=args.backend, sim_gpus=args.sim_gpus, sharing=args.sharing,
        device_plugin_dir=args.device_plugin_dir, pod_resources_socket=args.pod_resources_socket,
        node_name=args.node_name, kubeconfig=args.kubeconfig, no_kube=args.no_kube,
        metrics_port=args.metrics_port, inventory_interval_s=args.inventory_interval,
        ignored_xids=parse_xid_list(args.ignored_xids), recovery_quiet_s=args.recovery_quiet_seconds,
        recovery_probes=args.recovery_probes, mps_pipe_dir=args.mps_pipe_dir, log_level=args.log_level,
        log_format=args.log_format,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plugin until SIGTERM/SIGINT; 2 for bad flags or a backend that cannot start."""
    try:
        parser = build_parser()
    except EnvValueError as error:
        print(f"tensorai-device-plugin: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    cliutil.setup_logging(config.log_level, config.log_format)
    if not config.node_name:
        parser.error(f"node name is empty: pass --node-name or set {ENV_NODE_NAME}")
    footprint.limit_malloc_arenas()  # before any thread starts: the cap applies to arenas made later
    footprint.keep_freed_buffers()
    api_client = None
    if not config.no_kube:
        try:
            api_client = kube_api_client(config.kubeconfig)
        except Exception as error:  # the kubernetes loader raises several unrelated types
            print(f"tensorai-device-plugin: {cliutil.kube_client_problem(error, config.kubeconfig)}; "
                  "or run standalone with --no-kube", file=sys.stderr)
            return 2
    try:
        plugin = Plugin(config, api_client=api_client)
    except gpus.BackendUnavailableError as error:
        print(f"tensorai-device-plugin: {error}", file=sys.stderr)
        return 2
    except (ValueError, gpus.BackendError) as error:
        print(f"tensorai-device-plugin: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        plugin.start()
    except PluginDirLocked as error:
        print(f"tensorai-device-plugin: {error}", file=sys.stderr)
        plugin.backend.close()
        return 2
    except OSError as error:
        print(f"tensorai-device-plugin: cannot serve in {config.device_plugin_dir}: {error}", file=sys.stderr)
        plugin.stop()
        return 1
    log.debug("froze %d start-up objects out of the garbage collector", footprint.freeze_startup_objects())
    stop.wait()
    log.info("stopping: removing %s", plugin.runner.socket_path)
    plugin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
