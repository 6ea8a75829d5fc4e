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
        total = GaugeMetricFamily("tensorai_gpu_memory_total_bytes", "Total device memory.", labels=GPU_LABELS)
        reserved = GaugeMetricFamily(
            "tensorai_gpu_memory_reserved_bytes",
            "Device memory taken by the driver that no pod can use.",
            labels=GPU_LABELS,
        )
        used = GaugeMetricFamily("tensorai_gpu_memory_used_bytes", "Device memory in use.", labels=GPU_LABELS)
        utilization = GaugeMetricFamily(
            "tensorai_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran (0..1).",
            labels=GPU_LABELS,
        )
        allocated = GaugeMetricFamily(
            "tensorai_gpu_allocated_milli", "Thousandths of the GPU allocated to containers.", labels=GPU_LABELS
        )
        healthy = GaugeMetricFamily("tensorai_gpu_healthy", "1 if the GPU is in service, else 0.", labels=GPU_LABELS)
        container_milli = GaugeMetricFamily(
            "tensorai_container_allocated_milli",
            "Thousandths of a GPU allocated to a container.",
            labels=CONTAINER_LABELS,
        )
        container_memory = GaugeMetricFamily(
            "tensorai_container_memory_allocated_bytes",
            "Device memory allocated to a container on a GPU.",
            labels=CONTAINER_LABELS,
        )
        container_used = GaugeMetricFamily(
            "tensorai_container_memory_used_bytes",
            "Device memory used by a container's processes on a GPU (from NVML process list).",
            labels=CONTAINER_LABELS,
        )

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

        milli_by_gpu: dict[str, int] = defaultdict(int)
        for share in shares:
            milli_by_gpu[share.gpu_uuid] += share.milli

        # (pod uid, gpu) -> process memory MiB, only for GPUs that have shares.
        used_by_pod_gpu: dict[tuple[str, str], int] = defaultdict(int)
        gpus_with_shares = {share.gpu_uuid for share in shares}
        for gpu in gpu_list:
            labels = [node, gpu.uuid, str(gpu.index), gpu.model]
            total.add_metric(labels, gpu.memory_mib * MIB)
            reserved.add_metric(labels, gpu.reserved_mib * MIB)
            allocated.add_metric(labels, milli_by_gpu.get(gpu.uuid, 0))
            healthy.add_metric(labels, 1 if self.tracker.is_healthy(gpu.uuid) else 0)
            try:
                sample = self.backend.usage(gpu.uuid)
            except gpus.BackendError as error:
                self._error(f"usage of GPU {gpu.uuid}", error)
            else:
                used.add_metric(labels, sample.memory_used_mib * MIB)
                utilization.add_metric(labels, sample.utilization_pct / 100.0)
            if gpu.uuid not in gpus_with_shares:
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

        # Containers of one pod sharing one GPU cannot be told apart by PID alone.
        containers_per_pod_gpu: dict[tuple[str, str], int] = defaultdict(int)
        for share in shares:
            containers_per_pod_gpu[(share.pod_uid, share.gpu_uuid)] += 1
        ambiguous_done: set[tuple[str, str]] = set()
        for share in shares:
            labels = [node, share.namespace, share.pod_name, share.container_name, share.gpu_uuid]
            container_milli.add_metric(labels, share.milli)
            container_memory.add_metric(labels, share.memory_mib * MIB)
            key = (share.pod_uid, share.gpu_uuid)
            if containers_per_pod_gpu[key] == 1:
                container_used.add_metric(labels, used_by_pod_gpu.get(key, 0) * MIB)
            elif key not in ambiguous_done:
                ambiguous_done.add(key)
                pod_labels = [node, share.namespace, share.pod_name, "", share.gpu_uuid]
                container_used.add_metric(pod_labels, used_by_pod_gpu.get(key, 0) * MIB)

        errors = CounterMetricFamily(
            "tensorai_gpu_scrape_errors", "Backend calls that failed while serving scrapes.", labels=("node",)
        )
        with self._errors_lock:
            errors.add_metric([node], self.scrape_errors)
        yield from (
            total,
            reserved,
            used,
            utilization,
            allocated,
            healthy,
            container_milli,
            container_memory,
            container_used,
            errors,
        )


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
