"""Prometheus metrics of the device plugin, computed at scrape time.

Per GPU (labels node, gpu = UUID, index, model):
  tensorai_gpu_memory_total_bytes, tensorai_gpu_memory_reserved_bytes, tensorai_gpu_memory_used_bytes,
  tensorai_gpu_utilization_ratio (0..1), tensorai_gpu_allocated_milli, tensorai_gpu_healthy (1/0)
Per container share (labels node, namespace, pod, container, gpu):
  tensorai_container_allocated_milli, tensorai_container_memory_allocated_bytes,
  tensorai_container_memory_used_bytes (NVML processes mapped to pods through /proc/<pid>/cgroup)
Per node: tensorai_gpu_scrape_errors_total (backend calls that failed during scrapes).

A failing backend call never fails the scrape: the figures that could be read are exported and the
error counter grows. Process memory of a pod with several containers on one GPU cannot be split by
container from NVML alone; it is exported with container="" for that pod.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from tensorai.deviceplugin import gpus
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.podmap import pod_of_pid

log = logging.getLogger(__name__)

MIB = 1 << 20
GPU_LABELS = ("node", "gpu", "index", "model")
CONTAINER_LABELS = ("node", "namespace", "pod", "container", "gpu")
GAUGES = (  # (name, help, labels), in the order they are exported
    ("tensorai_gpu_memory_total_bytes", "Total device memory.", GPU_LABELS),
    ("tensorai_gpu_memory_reserved_bytes", "Device memory taken by the driver that no pod can use.", GPU_LABELS),
    ("tensorai_gpu_memory_used_bytes", "Device memory in use.", GPU_LABELS),
    ("tensorai_gpu_utilization_ratio", "Fraction of the last sample period in which a kernel ran (0..1).", GPU_LABELS),
    ("tensorai_gpu_allocated_milli", "Thousandths of the GPU allocated to containers.", GPU_LABELS),
    ("tensorai_gpu_healthy", "1 if the GPU is in service, else 0.", GPU_LABELS),
    ("tensorai_container_allocated_milli", "Thousandths of a GPU allocated to a container.", CONTAINER_LABELS),
    ("tensorai_container_memory_allocated_bytes", "Device memory allocated to a container on a GPU.", CONTAINER_LABELS),
    (
        "tensorai_container_memory_used_bytes",
        "Device memory used by a container's processes on a GPU (from NVML process list).",
        CONTAINER_LABELS,
    ),
)


class _PluginCollector(Collector):
    """Reads backend, tracker and allocations on every collect(); holds only the error count."""

    def __init__(
        self,
        backend: gpus.GPUBackend,
        tracker: HealthTracker,
        allocations: Callable[[], Iterable[gpus.ContainerShare]],
        node_name: str,
        proc_root: str,
    ) -> None:
        self.backend = backend
        self.tracker = tracker
        self.allocations = allocations
        self.node_name = node_name
        self.proc_root = proc_root
        self._errors_lock = threading.Lock()
        self.scrape_errors = 0

    def _error(self, what: str, error: Exception) -> None:
        log.warning("metrics scrape: %s failed: %s", what, error)
        with self._errors_lock:
            self.scrape_errors += 1

    def describe(self) -> Iterator[Metric]:
        # Registering must not touch the backend (it may be failing at that moment).
        return iter(())

    def collect(self) -> Iterator[Metric]:
        node = self.node_name
        families = {name: GaugeMetricFamily(name, text, labels=labels) for name, text, labels in GAUGES}
        try:
            gpu_list = self.backend.gpus()
        except gpus.BackendError as error:
            self._error("listing GPUs", error)
            gpu_list = []
        try:
            shares = list(self.allocations())
        except Exception as error:  # the allocation source belongs to another part; never fail a scrape
            self._error("reading allocations", error)
            shares = []
        used_by_pod_gpu = self._collect_gpus(families, gpu_list, shares)
        self._collect_containers(families, shares, used_by_pod_gpu)
        errors = CounterMetricFamily(
            "tensorai_gpu_scrape_errors", "Backend calls that failed while serving scrapes.", labels=("node",)
        )
        with self._errors_lock:
            errors.add_metric([node], self.scrape_errors)
        yield from families.values()
        yield errors

    def _collect_gpus(
        self, families: dict[str, GaugeMetricFamily], gpu_list: list[gpus.GPUInfo], shares: list[gpus.ContainerShare]
    ) -> dict[tuple[str, str], int]:
        """Per-GPU families; returns process memory MiB by (pod uid, GPU), read only for GPUs with shares."""
        milli_by_gpu: dict[str, int] = defaultdict(int)
        for share in shares:
            milli_by_gpu[share.gpu_uuid] += share.milli
        used_by_pod_gpu: dict[tuple[str, str], int] = defaultdict(int)
        for gpu in gpu_list:
            labels = [self.node_name, gpu.uuid, str(gpu.index), gpu.model]
            families["tensorai_gpu_memory_total_bytes"].add_metric(labels, gpu.memory_mib * MIB)
            families["tensorai_gpu_memory_reserved_bytes"].add_metric(labels, gpu.reserved_mib * MIB)
            families["tensorai_gpu_allocated_milli"].add_metric(labels, milli_by_gpu.get(gpu.uuid, 0))
            families["tensorai_gpu_healthy"].add_metric(labels, 1 if self.tracker.is_healthy(gpu.uuid) else 0)
            try:
                sample = self.backend.usage(gpu.uuid)
            except gpus.BackendError as error:
                self._error(f"usage of GPU {gpu.uuid}", error)
            else:
                families["tensorai_gpu_memory_used_bytes"].add_metric(labels, sample.memory_used_mib * MIB)
                families["tensorai_gpu_utilization_ratio"].add_metric(labels, sample.utilization_pct / 100.0)
            if gpu.uuid not in milli_by_gpu:
                continue
            try:
                processes = self.backend.processes(gpu.uuid)
            except gpus.BackendError as error:
                self._error(f"processes of GPU {gpu.uuid}", error)
                continue
            for process in processes:
                ref = pod_of_pid(process.pid, self.proc_root)
                if ref is not None:
                    used_by_pod_gpu[(ref.pod_uid, gpu.uuid)] += process.memory_used_mib
        return used_by_pod_gpu

    def _collect_containers(
        self,
        families: dict[str, GaugeMetricFamily],
        shares: list[gpus.ContainerShare],
        used_by_pod_gpu: dict[tuple[str, str], int],
    ) -> None:
        """Per-container families. Containers of one pod sharing one GPU cannot be told apart by PID
        alone: their process memory goes out once, with container=""."""
        containers_per_pod_gpu: dict[tuple[str, str], int] = defaultdict(int)
        for share in shares:
            containers_per_pod_gpu[(share.pod_uid, share.gpu_uuid)] += 1
        used = families["tensorai_container_memory_used_bytes"]
        ambiguous_done: set[tuple[str, str]] = set()
        for share in shares:
            labels = [self.node_name, share.namespace, share.pod_name, share.container_name, share.gpu_uuid]
            families["tensorai_container_allocated_milli"].add_metric(labels, share.milli)
            families["tensorai_container_memory_allocated_bytes"].add_metric(labels, share.memory_mib * MIB)
            key = (share.pod_uid, share.gpu_uuid)
            if containers_per_pod_gpu[key] == 1:
                used.add_metric(labels, used_by_pod_gpu.get(key, 0) * MIB)
            elif key not in ambiguous_done:
                ambiguous_done.add(key)
                pod_labels = [self.node_name, share.namespace, share.pod_name, "", share.gpu_uuid]
                used.add_metric(pod_labels, used_by_pod_gpu.get(key, 0) * MIB)


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood the plugin's log."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper cannot block /healthz."""

    daemon_threads = True


class PluginMetrics:
    """The plugin's Prometheus metrics: a registry holding one scrape-time collector, and its HTTP server."""

    def __init__(
        self,
        backend: gpus.GPUBackend,
        tracker: HealthTracker,
        allocations: Callable[[], Iterable[gpus.ContainerShare]],
        *,
        node_name: str,
        registry: CollectorRegistry | None = None,
        proc_root: str = "/proc",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = _PluginCollector(backend, tracker, allocations, node_name, proc_root)
        self.registry.register(self.collector)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics (any path but /healthz) and /healthz on addr:port in a thread; return the bound port.

        /healthz answers 200 "ok" while the server runs: liveness of the plugin process, not GPU
        health (that is tensorai_gpu_healthy).
        """
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            if environ.get("PATH_INFO") == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"ok\n"]
            return metrics_app(environ, start_response)

        self._server = make_server(addr, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="tensorai-metrics", daemon=True)
        self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); 0 when not serving."""
        return self._server.server_port if self._server is not None else 0

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(2.0)
        self._server = None
        self._thread = None
