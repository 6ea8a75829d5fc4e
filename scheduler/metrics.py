"""Prometheus metrics of the extender (prefix `tensorai_extender_` / `tensorai_`), on their own registry.

Counters and histograms are updated by the verbs; per-GPU allocation and quota figures are read
from the view at scrape time by a collector, so the hot path never updates 40,000 gauges.
Filter failures are labelled by a small, fixed set of reason kinds (not the free-text reason) to
keep the label cardinality bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tensorai.scheduler.view import ClusterView

VERBS = ("filter", "prioritize", "bind", "preempt")
# Sub-millisecond resolution: the target is p99 <= 10 ms per verb.
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REASON_QUOTA = "quota"
REASON_UNKNOWN_NODE = "unknown_node"
REASON_NODE_UNUSABLE = "node_unusable"
REASON_GPU_FIT = "gpu_fit"
REASON_BAD_POD = "bad_pod"
REASON_AWAITING_ALLOCATE = "awaiting_allocate"  # the device plugin's bind rule holds the pod for now


class _ViewCollector(Collector):
    """Per-GPU allocation and per-quota used/hard, read from the view when Prometheus scrapes."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        milli = GaugeMetricFamily(
            "tensorai_gpu_allocated_milli",
            "Milli-GPU allocated on a GPU by the extender",
            labels=["node", "gpu", "model"],
        )
        memory = GaugeMetricFamily(
            "tensorai_gpu_allocated_memory_mib", "GPU memory (MiB) allocated on a GPU", labels=["node", "gpu", "model"]
        )
        for node, uuid, model, allocated_milli, allocated_mib in self.view.gpu_allocations():
            milli.add_metric([node, uuid, model], allocated_milli)
            memory.add_metric([node, uuid, model], allocated_mib)
        yield milli
        yield memory
        heartbeat = GaugeMetricFamily(
            "tensorai_node_inventory_heartbeat_timestamp_seconds",
            "Unix time of the node's last tensor.ai/inventory heartbeat (stale after 120 s: no new pods)",
            labels=["node"],
        )
        for node, seconds in self.view.inventory_heartbeats():
            heartbeat.add_metric([node], seconds)
        yield heartbeat
        used = GaugeMetricFamily(
            "tensorai_quota_used",
            "GPUQuota usage (gpus in GPUs, memory in MiB)",
            labels=["namespace", "quota", "resource"],
        )
        hard = GaugeMetricFamily(
            "tensorai_quota_hard",
            "GPUQuota hard limit (gpus in GPUs, memory in MiB)",
            labels=["namespace", "quota", "resource"],
        )
        for limits in self.view.all_quotas():
            usage = self.view.used(limits.namespace)
            labels = [limits.namespace, limits.name]
            if limits.gpus_milli is not None:
                used.add_metric([*labels, "gpus"], usage.gpus_milli / 1000)
                hard.add_metric([*labels, "gpus"], limits.gpus_milli / 1000)
            if limits.memory_mib is not None:
                used.add_metric([*labels, "memory_mib"], usage.memory_mib)
                hard.add_metric([*labels, "memory_mib"], limits.memory_mib)
            for model, hard_milli in limits.models_milli.items():
                used.add_metric([*labels, f"gpus/{model}"], usage.model_milli(model) / 1000)  # names it matches
                hard.add_metric([*labels, f"gpus/{model}"], hard_milli / 1000)
        yield used
        yield hard
        waiting = GaugeMetricFamily("tensorai_quota_waiting_pods", "Pods waiting for GPUQuota", labels=["namespace"])
        for namespace in self.view.waiting_namespaces():
            waiting.add_metric([namespace], len(self.view.waiting(namespace)))
        yield waiting
        distrusted = CounterMetricFamily(
            "tensorai_extender_assignments_distrusted",
            "tensor.ai/assignment annotations not counted as written: contradicting the pod's own requests "
            "(counted as the pod asks) or rewriting a bound pod's accepted one beyond a GPU move (kept)",
            labels=["reason"],
        )
        for reason, count in self.view.distrusted_assignments.items():
            distrusted.add_metric([reason], count)
        yield distrusted


class ExtenderMetrics:
    """All extender metrics on one registry (tests create as many as they like)."""

    def __init__(self, view: ClusterView | None = None) -> None:
        self.registry = CollectorRegistry()
        self.verb_latency_s = Histogram(
            "tensorai_extender_request_seconds",
            "Latency of extender verbs, from request read to response written",
            ["verb"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.verb_errors = Counter(
            "tensorai_extender_errors", "Extender calls answered with an error", ["verb"], registry=self.registry
        )
        self.filter_failures = Counter(
            "tensorai_extender_filter_failures",
            "Nodes rejected by filter, by reason kind",
            ["reason"],
            registry=self.registry,
        )
        self.binds = Counter("tensorai_extender_binds", "Bind outcomes", ["result"], registry=self.registry)
        self.binds_in_flight = Gauge(
            "tensorai_extender_binds_in_flight", "Binds between fit check and Binding", registry=self.registry
        )
        self.requeues = Counter(
            "tensorai_extender_quota_requeues", "Waiting pods re-activated after quota freed", registry=self.registry
        )
        self.requeue_delay_s = Histogram(
            "tensorai_extender_quota_requeue_delay_seconds",
            "From quota freeing to the waiting pod being re-activated",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        # per-verb children looked up once: labels() costs a lock and a dict lookup on every request
        self.verb_latency_by_verb = {verb: self.verb_latency_s.labels(verb) for verb in VERBS}
        if view is not None:
            self.registry.register(_ViewCollector(view))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
