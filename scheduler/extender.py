"""The kube-scheduler extender v1 service: the verbs filter, prioritize, bind and preempt (HTTP: extender_http).

Wire format: ../shared/reference/extender-api.md - capitalised Go field names, `null` for absent
lists, a bare JSON array for prioritize. Works with `nodeCacheCapable` true (`NodeNames`) and
false (`Nodes` NodeList, answered with the kept Node objects).

Handlers are thin: `ExtenderService` validates the body into typed values, runs the pure core on
the view under its lock (short, in-memory) and shapes the answer. Bad input never crashes the
server or touches the view: an undecodable or mistyped body gets HTTP 400 with `{"Error": ...}`,
a pod the core cannot read gets 200 with `Error` (filter/bind) or 422 (prioritize, which has no
error field).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import operator
import time
from collections.abc import Callable

import numpy as np

from tensorai.proto import contract
from tensorai.scheduler import metrics as metric_names
from tensorai.scheduler.argsdecode import ArgsDecoder
from tensorai.scheduler.bind import Binder, BindError, BindRequest, blocking_pods, waiting_reason
from tensorai.scheduler.core.cluster import cluster_from_nodes, cluster_rows
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import OK, REASON_TEXT, RESOLVABLE, UNSCHEDULABLE, evaluate
from tensorai.scheduler.core.placement import (
    POLICIES,
    ScoreCache,
    choose_placement,
    resolve_policy,
    score_nodes,
)
from tensorai.scheduler.core.preemption import Release, fits_after_release
from tensorai.scheduler.core.quota import estimate_usage, never_fits, quota_violations
from tensorai.scheduler.core.ranking import node_order_key, rank_extender_scores, stable_node_order
from tensorai.scheduler.core.types import ClusterArrays, ContainerDemand, PodDemand
from tensorai.scheduler.events import REASON_QUOTA_WAIT, EventRecorder, PodEvent
from tensorai.scheduler.metrics import ExtenderMetrics
from tensorai.scheduler.view import ClusterView, PendingPod, PodRecord, assignment_from_placement

log = logging.getLogger(__name__)

# The largest request body read (413 above it). kube-scheduler sends (nodeCacheCapable: true, as our
# manifests set) one Pod - the API server stores none over etcd's 1.5 MiB request limit and reads no
# body over 3 MiB (MaxRequestBodyBytes) - plus NodeNames (5,000 names ~100 KiB; 15,000 names ~1 MiB,
# ~4 MiB at the longest, 253 characters); /preempt adds MetaVictims UIDs (~50 bytes each). 8 MiB
# holds the worst of those (a 3 MiB Pod and 4 MiB of names), typical bodies 50 times over. Decoded,
# a body costs up to ~27x its size in Python objects (16 MiB of `[{},...]` took 420 MiB,
# tests/benchmarks/bench_soak.py), so this also bounds one request's memory (~210 MiB). Bodies that
# do not fit: nodeCacheCapable: false at scale (a NodeList of full Node objects, ~5-10 KiB each,
# passes 8 MiB near 1,000 nodes).
MAX_BODY_BYTES = 8 << 20


class BadRequest(ValueError):
    """A body that is not shaped like the extender protocol says (HTTP 400)."""


# Kubernetes' own bounds on a pod's identity: a UID is a 36-character UUID (128 leaves room for any
# format), a name a DNS subdomain (253), a namespace a DNS label (63), a resourceVersion an etcd revision
# (20 digits). The API server sends nothing longer; refusing longer ones keeps request text out of what
# the view and the workload remember per pod.
_IDENTITY_LIMITS = (("uid", 128), ("name", 253), ("namespace", 63), ("resourceVersion", 64))


def _check_identity(pod: dict) -> None:
    """BadRequest if the pod's uid, name or namespace is longer than Kubernetes allows."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        return  # remember_pending says what is wrong
    for field, limit in _IDENTITY_LIMITS:
        value = metadata.get(field)
        if isinstance(value, str) and len(value) > limit:
            raise BadRequest(f"ExtenderArgs.Pod metadata.{field} has {len(value)} characters; at most {limit}")


class PodError(ValueError):
    """A well-formed request whose pod the core cannot read (filter/bind: `Error`; prioritize: 422)."""


def _parse_args(
    body: object, trusted: Callable[[object], bool] | None = None
) -> tuple[dict, list[str], list[dict] | None]:
    """ExtenderArgs -> (pod, node names, Node objects or None when node-cache-capable).

    `trusted(names)` says the list was checked already (`ArgsDecoder.known`: a reused list)."""
    if not isinstance(body, dict):
        raise BadRequest(f"ExtenderArgs must be a JSON object, got {type(body).__name__}")
    pod = body.get("Pod")
    if not isinstance(pod, dict):
        raise BadRequest("ExtenderArgs.Pod must be a v1.Pod object")
    names = body.get("NodeNames")
    nodes = body.get("Nodes")
    if names is not None:
        if (trusted is None or not trusted(names)) and (
            not isinstance(names, list) or not set(map(type, names)) <= {str}  # C-speed check of 5,000 names
        ):
            raise BadRequest("ExtenderArgs.NodeNames must be a list of node names or null")
        return pod, names, None
    if nodes is None:
        raise BadRequest("ExtenderArgs needs NodeNames (nodeCacheCapable: true) or Nodes (nodeCacheCapable: false)")
    items = nodes.get("items") if isinstance(nodes, dict) else None
    if items is None and isinstance(nodes, dict):
        items = []
    if not isinstance(items, list):
        raise BadRequest("ExtenderArgs.Nodes must be a v1.NodeList with an items list")
    node_names = []
    for position, node in enumerate(items):
        name = (node.get("metadata") or {}).get("name") if isinstance(node, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"ExtenderArgs.Nodes.items[{position}] has no metadata.name")
        node_names.append(name)
    return pod, node_names, items


def _host_prefix(name: str) -> str:
    """A HostPriority's JSON up to its score: `{"Host":"<name>","Score":`."""
    return '{"Host":' + json.dumps(name) + ',"Score":'


# Bytes one cache of JSON literals may hold (text, literal and ~160 bytes of object and dict overhead per
# entry): 5,000 node names take ~1.1 MB. Past it the cache starts over, so request strings can never grow it.
LITERAL_CACHE_BYTES = 16 << 20
_ENTRY_OVERHEAD_BYTES = 160


class _Literals(dict):
    """text -> `encode(text)`, computed on first use (node names and reasons repeat on every pod).

    Texts come from requests, so the cache is bounded by bytes (`max_bytes`, counted as
    `LITERAL_CACHE_BYTES` describes; it starts over when full) and keeps only the texts `keep`
    accepts: node names the view does not know are encoded every time, never kept.
    """

    def __init__(
        self,
        encode: Callable[[str], str],
        keep: Callable[[str], bool] | None = None,
        max_bytes: int = LITERAL_CACHE_BYTES,
    ) -> None:
        super().__init__()
        self._encode = encode
        self._keep = keep
        self._max_bytes = max_bytes
        self.bytes = 0  # what the kept entries cost, approximately (threads may race on it; a clear resets it)

    def __missing__(self, text: str) -> str:
        literal = self._encode(text)
        if self._keep is None or self._keep(text):
            cost = len(text) + len(literal) + _ENTRY_OVERHEAD_BYTES
            if self.bytes + cost > self._max_bytes:
                self.clear()
                self.bytes = 0
            if cost <= self._max_bytes:
                self[text] = literal
                self.bytes += cost
        return literal


_SCORE_SUFFIX = {score: f"{score}}}" for score in range(11)}


def _row_ranks(names: list[str]) -> np.ndarray:
    """Each row's place in the stable node order of all rows (`core.ranking.stable_node_order`)."""
    ranks = np.empty(len(names), dtype=np.int64)
    ranks[stable_node_order(names)] = np.arange(len(names))
    return ranks


def encode_priorities(names: list[str], scores: list[int], prefixes: dict[str, str] | None = None) -> str:
    """A HostPriorityList `[{"Host":..,"Score":..},..]` (scores 0..10), as json.dumps(separators=(",", ":")).

    Each name's `{"Host":"<name>","Score":` prefix comes from `prefixes` (`_Literals(_host_prefix)` kept by
    the caller; names repeat on every pod); the loops run in C (map/join). Measured against encoding
    the names as one list with the C encoder and splitting it: this is ~25 % faster.
    """
    prefixes = _Literals(_host_prefix) if prefixes is None else prefixes
    parts = map(operator.add, map(prefixes.__getitem__, names), map(_SCORE_SUFFIX.__getitem__, scores))
    return "[" + ",".join(parts) + "]"


# /preempt works through its candidates this many at a time: the view lock is held only to copy
# their rows and look up their victims, and between chunks the thread sleeps(0) - gives up the GIL -
# so a filter waiting for it runs then instead of after Python's 5 ms switch interval, again and
# again, while a preempt of thousands of candidates computes (16 candidates: ~0.2-0.5 ms of work).
_PREEMPT_CHUNK = 16

# Filter's answer keeps at most this many of the nodes that fit (`ExtenderService._best_of`): the
# winner is always among them, and a few runners-up leave room for what changes between filter and
# prioritize (binds of earlier pods landing) without kube-scheduler scoring every node of a big cluster.
DEFAULT_MAX_FEASIBLE_NODES = 32


class ExtenderService:
    """The four verbs over one ClusterView; thread-safe, called concurrently by the HTTP server."""

    def __init__(
        self,
        view: ClusterView,
        *,
        policy: str = "tensorai",
        api_client: object | None = None,
        events: EventRecorder | None = None,
        metrics: ExtenderMetrics | None = None,
        context: PolicyContext | None = None,
        scheduler_name: str = contract.SCHEDULER_NAME,
        max_feasible_nodes: int = DEFAULT_MAX_FEASIBLE_NODES,
    ) -> None:
        self.view = view
        self.max_feasible_nodes = max_feasible_nodes  # filter keeps at most this many nodes (0 = all)
        self.policy = policy
        self.events = events or EventRecorder()
        self.metrics = metrics or ExtenderMetrics(view)
        self.context = context or PolicyContext(rng=np.random.default_rng(0))  # rng: the "random" policy
        if self.context.cluster_version is None:  # the view's version lets the score cache skip re-comparing
            self.context.cluster_version = lambda: view.version
            self.context.placement_rows_since = view.placement_rows_since  # ... or re-check only bound rows
        self._names_cache: list[tuple[int, list[str], np.ndarray, np.ndarray]] = []
        self._kept_candidates: tuple[int, list[str], np.ndarray, np.ndarray] | None = None  # filter's last answer
        known = self._is_view_node  # node names the view knows; other request names are never cached
        self._host_prefixes = _Literals(_host_prefix, known)
        self._quoted = _Literals(json.dumps, known)  # a node name's JSON string literal
        # a FailedNodes entry's value half; 4 MiB: real reasons are a few per node, but each unknown node
        # requested brings its own ("node 'x' is unknown ..."), so a flood of them only churns this one
        self._reason_values = _Literals(lambda reason: ":" + json.dumps(reason), max_bytes=4 << 20)
        self._order_cache: tuple[list[str], np.ndarray] | None = None
        # per-row tables of the view's nodes ("names", "literals", "order keys", "ranks", "entries"), each with the node
        # generation it was built for (see `_per_row`)
        self._row_tables: dict[str, tuple[int, np.ndarray]] = {}
        self._kept_rows: tuple[list[str], np.ndarray] | None = None  # filter's last kept names and their rows
        self._last_scores: tuple | None = None  # (view version, policy, pod shape, target, scores, reasons, demand)
        self.binder = Binder(
            view,
            policy=policy,
            context=lambda: self.context,
            api_client=api_client,
            events=self.events,
            metrics=self.metrics,
            scheduler_name=scheduler_name,
        )
        self._observed: dict[int, None] = {}  # hashes of the uids the online workload counted (bounded, FIFO)
        self.args_decoder = ArgsDecoder()  # filter/prioritize bodies: repeated NodeNames lists decoded once

    # ------------------------------------------------------------------ helpers
    def _is_view_node(self, name: str) -> bool:
        """Whether the view knows a node of this name (only those names' literals are cached)."""
        return name in self.view.row_of

    def warm_up(self) -> float:
        """Run every policy once on a tiny private cluster so JIT-compiled scoring code is ready
        before kube-scheduler's first call (a first-call compile could outlast its httpTimeout).
        Returns the seconds it took."""
        started = time.perf_counter()
        cluster = cluster_from_nodes([("warm-up", 4000, 16384, 2, "warm", 16384, 0)])
        for milli, count in ((250, 1), (1000, 2)):
            demand = PodDemand("warm-up", "warm-up", "warm-up", (ContainerDemand("c", milli, count),))
            for policy in POLICIES:
                context = PolicyContext(rng=np.random.default_rng(0))
                score_nodes(cluster, demand, policy, None, context=context)
                choose_placement(cluster, demand, policy, 0, context=context)
                ScoreCache().node_scores(cluster, demand, policy, context)  # the compiled one-GPU path too
        return time.perf_counter() - started

    def _demand(self, pod: dict) -> tuple[PodRecord | PendingPod, PodDemand]:
        """The body's pod demand for scoring this request: the watch's record when it holds this very
        version, else the view's bounded, expiring `PendingPod` entry. Neither is created from the body
        as a PodRecord, so nothing posted here changes what bind reserves (it reads the API's pod)."""
        _check_identity(pod)
        record = self.view.remember_pending(pod)
        if record is None:
            raise BadRequest("ExtenderArgs.Pod needs metadata.name (and metadata.uid)")
        if record.demand is None:
            raise PodError(f"pod {record.namespace}/{record.name}: {record.demand_error}")
        seen = hash(record.uid)  # a fixed-size key: 100,000 of them cost ~8 MB whatever the uids
        if self.context.online is not None and seen not in self._observed:
            with self.view.lock:
                self.context.online.observe(record.demand)
                self._observed[seen] = None
                if len(self._observed) > 100_000:
                    self._observed.pop(next(iter(self._observed)))
        return record, record.demand

    def _candidates(self, node_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(known node rows, row per requested name with -1 for unknown); call under the view lock.

        kube-scheduler sends the same node list again and again, so the name -> row mapping of the
        last list is reused while the view's node set is unchanged (one C-level list compare).
        """
        generation = self.view.node_generation
        for cached in (self._kept_candidates, *self._names_cache):
            if cached is not None and cached[0] == generation and (cached[1] is node_names or cached[1] == node_names):
                return cached[2], cached[3]
        row_of = self.view.row_of
        rows = map(row_of.get, node_names, itertools.repeat(-1))  # a C loop, no per-name Python frame
        positions = np.fromiter(rows, dtype=np.int64, count=len(node_names))
        known = positions[positions >= 0]
        # filter sends all nodes, prioritize the feasible ones: keep a few lists, newest first; only lists
        # no longer than the view's node set (kube-scheduler names each node once), so requests cannot
        # make the kept lists outgrow the cluster
        if len(node_names) <= len(self.view.row_of):
            self._names_cache = [(generation, node_names, known, positions), *self._names_cache[:3]]
        return known, positions

    def _remember_kept(self, kept: list[str]) -> None:
        """Offer filter's answer to `_candidates` (under the view lock): prioritize asks about exactly
        these nodes next, and their rows are known here without looking a name up."""
        last, self._kept_rows = self._kept_rows, None
        if kept and last is not None and last[0] is kept:  # no quota or bind-rule step changed the list
            self._kept_candidates = (self.view.node_generation, kept, last[1], last[1])  # its own slot: the
            # request lists (filter's all nodes) must not be pushed out of _names_cache by one per pod

    def _node_order(self, node_names: list[str], positions: np.ndarray) -> np.ndarray:
        """The fixed tie-break order of the requested nodes (`core.ranking`), reused for a repeated list.

        When the view knows every name, the order is the rows' places in the stable order of ALL the
        view's nodes (a per-row rank kept while the node set is unchanged): restricted to a subset,
        sorting by (key, name) gives the subset's own stable_node_order, for one integer sort
        (prioritize's list - the feasible nodes - differs on every pod). Call under the view lock.
        """
        cached = self._order_cache
        if cached is not None and cached[0] == node_names:
            return cached[1]
        if len(positions) and positions.min() >= 0:
            order = np.argsort(self._per_row("ranks", _row_ranks)[positions], kind="stable")
        else:
            row_keys = self._per_row(
                "order keys", lambda names: np.fromiter(map(node_order_key, names), dtype=np.uint64, count=len(names))
            )
            keys = row_keys[np.maximum(positions, 0)]
            for position in np.flatnonzero(positions < 0).tolist():  # names the view does not know
                keys[position] = node_order_key(node_names[position])
            order = stable_node_order(node_names, keys)
        self._order_cache = (node_names, order)
        return order

    def _node_scores(self, demand: PodDemand) -> tuple[np.ndarray, np.ndarray | None]:
        """((N,) policy scores, -inf where the pod does not fit; (N,) fit reason codes or None); under the view lock.

        Uses the core's ScoreCache (per pod shape, recomputing only nodes whose arrays changed since
        the last call), exactly as the simulator does; policies it cannot cache are scored afresh
        (then no reasons: filter evaluates the rejected nodes itself).
        """
        context = self.context
        policy = resolve_policy(demand, self.policy)
        cluster = self.view.cluster
        # prioritize usually follows filter for the same pod (the same demand object) with nothing
        # changed in between; another pod of the same shape may reuse the scores too
        target = context.target()
        last = self._last_scores
        shape = None
        if last is not None and policy != "random" and last[0] == self.view.version and last[1] == policy:
            if last[3] is target and last[6] is demand:
                return last[4], last[5]
            shape = dataclasses.replace(demand, namespace="", name="", uid="", policy=None)
            if last[3] is target and last[2] == shape:
                return last[4], last[5]
        if shape is None:
            shape = dataclasses.replace(demand, namespace="", name="", uid="", policy=None)
        reasons = None
        if context.use_cache and policy != "random" and demand.anti_affinity_group is None:
            if not isinstance(context.cache, ScoreCache):
                context.cache = ScoreCache()
            scores = context.cache.node_scores(cluster, demand, policy, context).copy()
            if context.cache.reasons is not None:
                reasons = context.cache.reasons.copy()
        else:
            scores, _ = score_nodes(cluster, demand, policy, None, context=context)
        self._last_scores = (self.view.version, policy, shape, target, scores, reasons, demand)
        return scores, reasons

    # ------------------------------------------------------------------ filter
    def filter(self, body: object) -> dict:
        """ExtenderArgs -> ExtenderFilterResult."""
        pod, node_names, node_items = _parse_args(body, self.args_decoder.known)
        try:
            record, demand = self._demand(pod)
        except PodError as error:
            self.metrics.filter_failures.labels(metric_names.REASON_BAD_POD).inc(len(node_names))
            return {
                "Nodes": None,
                "NodeNames": None,
                "FailedNodes": {},
                "FailedAndUnresolvableNodes": {},
                "Error": str(error),
            }
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        kept: list[str] = []
        quota_reasons: list[str] = []
        if not demand.containers:
            kept = list(node_names)  # no GPU asked: nothing for us to decide
        else:
            view = self.view
            with view.lock:
                view.refresh_schedulable()
                _, positions = self._candidates(node_names)
                limits = view.quotas(record.namespace)
                used = view.used(record.namespace)
                if limits:
                    pod_usage = estimate_usage(demand, None, None)
                    quota_reasons = quota_violations(limits, used, pod_usage)
                if quota_reasons:
                    reason = "; ".join(quota_reasons)
                    target = unresolvable if never_fits(limits, pod_usage) else failed
                    for name in node_names:
                        target[name] = reason
                else:
                    kept = self._filter_nodes(
                        demand, node_names, positions, limits, used, failed, unresolvable, quota_reasons
                    )
                    if kept:
                        kept = self._hold_for_allocate(record, pod, demand, kept, failed)
                    kept = self._best_of(kept, demand)
                    self._remember_kept(kept)
            if quota_reasons and not kept:
                reason = "; ".join(dict.fromkeys(quota_reasons))
                if self.view.note_waiting(record, reason):
                    self.events.record(
                        PodEvent(
                            record.namespace,
                            record.name,
                            record.uid,
                            REASON_QUOTA_WAIT,
                            f"waiting for GPU quota: {reason}",
                            True,
                        )
                    )
        self._count_failures(failed, unresolvable, bool(quota_reasons))
        if node_items is not None:
            keep = set(kept)
            items = [node for node in node_items if node["metadata"]["name"] in keep]
            return {
                "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items},
                "NodeNames": None,
                "FailedNodes": failed,
                "FailedAndUnresolvableNodes": unresolvable,
                "Error": "",
            }
        return {
            "Nodes": None,
            "NodeNames": kept,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": "",
        }

    def encode_filter(self, answer: dict) -> bytes:
        """A `filter` answer encoded, byte for byte what json.dumps(separators=(",", ":")) gives.

        The answer names every requested node once (kept, or failed with a reason): json.dumps of
        1,000 of them costs ~0.2 ms, a third of filter's own compute. Here each name's and each
        reason's JSON literal is encoded once and reused (bounded caches) and the joins run in C.
        Answers with Node objects (nodeCacheCapable: false) or an Error go through json.dumps.
        """
        if answer["Nodes"] is not None or answer["Error"]:
            return json.dumps(answer, separators=(",", ":")).encode()
        quoted = self._quoted
        kept = answer["NodeNames"]
        listed = self._kept_literals(kept)
        if listed is None:
            listed = ",".join(map(quoted.__getitem__, kept))
        if kept:  # prioritize's NodeNames will be these bytes: let its body skip decoding them
            self.args_decoder.remember(kept, ("[" + listed + "]}").encode())
        return "".join(
            (
                '{"Nodes":null,"NodeNames":[',
                listed,
                '],"FailedNodes":{',
                self._encode_reasons(answer["FailedNodes"]),
                '},"FailedAndUnresolvableNodes":{',
                self._encode_reasons(answer["FailedAndUnresolvableNodes"]),
                '},"Error":""}',
            )
        ).encode()

    def _kept_literals(self, kept: list[str]) -> str | None:
        """filter's kept names as `"a","b",..` from a per-row table of JSON literals, when `kept` is the
        list filter just answered (its rows are known) and the node set is unchanged; else None."""
        candidates = self._kept_candidates
        if candidates is None or candidates[1] is not kept:
            return None
        with self.view.lock:
            if candidates[0] != self.view.node_generation:
                return None
            table = self._per_row("literals", lambda names: np.array(list(map(json.dumps, names)), dtype=object))
            return ",".join(table[candidates[2]].tolist())

    def _encode_reasons(self, failures: dict[str, str]) -> str:
        """`"<node>":"<reason>",...` of a FailedNodes map, from the cached literals."""
        names = map(self._quoted.__getitem__, failures)
        reasons = set(failures.values())
        if len(reasons) == 1:  # the usual answer, one fit reason for all: one join, no per-entry strings
            value = self._reason_values[reasons.pop()]
            return (value + ",").join(names) + value
        return ",".join(map(operator.add, names, map(self._reason_values.__getitem__, failures.values())))

    def _filter_nodes(
        self,
        demand: PodDemand,
        node_names: list[str],
        positions: np.ndarray,
        limits: list,
        used: object,
        failed: dict[str, str],
        unresolvable: dict[str, str],
        quota_reasons: list[str],
    ) -> list[str]:
        """Split the requested nodes into kept / failed / unresolvable (under the view lock).

        Feasibility comes from the cached scores (-inf = does not fit); the core's reasons are
        computed only for the nodes that do not fit, and a node the scores rejected but the fit
        check accepts is kept, so the answer is always the fit rules' answer.
        """
        view = self.view
        # Known nodes are named with the view's own strings (equal to the requested ones): their hashes
        # are cached, so building the answer's maps and encoding them hashes no fresh request strings.
        view_names = self._row_names()
        scores, reasons = self._node_scores(demand)
        known = positions >= 0
        fits = np.zeros(len(node_names), dtype=bool)
        fits[known] = scores[positions[known]] > -np.inf
        rejected = np.flatnonzero(known & ~fits)
        if rejected.size:
            if reasons is not None:  # the codes of the evaluations behind the scores: no second evaluation
                codes_all = reasons[positions[rejected]]
                fits[rejected[codes_all == OK]] = True
                bad = codes_all != OK
                bad_positions, codes = rejected[bad], codes_all[bad]
            else:
                evaluation = evaluate(view.cluster, demand, positions[rejected])  # keeps the order of its input
                fits[rejected[evaluation.feasible]] = True
                bad = ~evaluation.feasible
                bad_positions, codes = rejected[bad], evaluation.reason[bad]
            for code in np.unique(codes).tolist():  # one reason text per code: no per-node Python work
                names = view_names[positions[bad_positions[codes == code]]].tolist()
                if code == UNSCHEDULABLE:  # say which problem: stale heartbeat, bad inventory, cordoned
                    for name in names:
                        unresolvable[name] = view.node_problem(name) or REASON_TEXT[code]
                    continue
                target = failed if code in RESOLVABLE else unresolvable
                target.update(dict.fromkeys(names, REASON_TEXT.get(code, "does not fit")))
        for position in np.flatnonzero(~known).tolist():
            name = node_names[position]
            unresolvable[name] = view.node_problem(name) or "unknown node"
        kept_rows = positions[fits]
        kept_names = view_names[kept_rows].tolist()
        self._kept_rows = (kept_names, kept_rows)
        if not limits:
            return kept_names
        kept = []
        for name in kept_names:  # per-model and memory quotas depend on the node's GPUs
            node = view.node_record(name)
            estimate = estimate_usage(demand, node.model, node.usable_memory_mib) if node else None
            model_reasons = quota_violations(limits, used, estimate) if estimate else []
            if model_reasons:
                failed[name] = "; ".join(model_reasons)
                quota_reasons.extend(model_reasons)
            else:
                kept.append(name)
        return kept

    def _best_of(self, kept: list[str], demand: PodDemand) -> list[str]:
        """The `max_feasible_nodes` kept nodes prioritize will rank first, in request order (under the lock).

        kube-scheduler scores every node filter keeps, with its own plugins and our prioritize, then
        binds the best; prioritize gives `place()`'s node the only 10, which in-tree scores cannot
        outweigh (weight 100, docs/extender.md), so nodes ranked below the first few never win.
        Returning 1,000 of them cost kube-scheduler its score plugins on each and both sides a
        1,000-entry JSON list twice per pod: a third of the CPU per pod at 1,000 nodes. A node left
        out is not failed (no FailedNodes entry): kube-scheduler drops it for this pod only.
        """
        limit = self.max_feasible_nodes
        if not limit or len(kept) <= limit:
            return kept
        last = self._kept_rows
        if last is not None and last[0] is kept:
            rows = last[1]
        else:
            rows = np.fromiter(map(self.view.row_of.__getitem__, kept), dtype=np.int64, count=len(kept))
        scores, _ = self._node_scores(demand)  # filter's own scores (cached): the ranking prioritize uses
        ranks = self._per_row("ranks", _row_ranks)
        best = np.sort(np.lexsort((ranks[rows], -scores[rows]))[:limit])  # (score desc, stable order)
        chosen = rows[best]
        names = self._row_names()[chosen].tolist()
        self._kept_rows = (names, chosen)
        return names

    def _hold_for_allocate(
        self, record: PodRecord | PendingPod, pod: dict, demand: PodDemand, kept: list[str], failed: dict[str, str]
    ) -> list[str]:
        """Fail (resolvable) the kept nodes where the device plugin's bind rule says wait (under the lock).

        Only nodes with a bound pod still awaiting Allocate and of one of this pod's sizes are looked
        at; for those the GPUs bind would choose are computed, because the rule compares Assignments.
        """
        view = self.view
        waiting_nodes = view.nodes_awaiting_allocate()
        if not waiting_nodes:
            return kept
        sizes = {c.milli * c.gpu_count for c in demand.containers}
        policy = resolve_policy(demand, self.policy)
        held: set[str] = set()
        for name in waiting_nodes.intersection(kept):
            if all(sizes.isdisjoint(other_sizes) for _, other_sizes in view.awaiting_allocate(name)):
                continue
            index = view.node_index(name)
            placement = choose_placement(view.cluster, demand, policy, index, context=self.context)
            if placement is None:
                continue
            text = contract.encode_assignment(assignment_from_placement(placement, record.uid))
            blockers = blocking_pods(view, record.uid, pod, demand, placement, text)
            if blockers:
                failed[name] = waiting_reason(name, blockers)
                held.add(name)
        return [name for name in kept if name not in held] if held else kept

    def _count_failures(self, failed: dict[str, str], unresolvable: dict[str, str], quota: bool) -> None:
        counts = collections.Counter(failed.values())  # counts in C: a filter fails hundreds of nodes
        counts.update(unresolvable.values())
        by_kind: dict[str, int] = {}
        for reason, count in counts.items():  # classify each distinct reason once
            if quota and "GPUQuota" in reason:
                kind = metric_names.REASON_QUOTA
            elif "to be allocated by the device plugin" in reason:
                kind = metric_names.REASON_AWAITING_ALLOCATE
            elif "unknown" in reason or "has no tensor.ai" in reason:
                kind = metric_names.REASON_UNKNOWN_NODE
            elif "inventory" in reason or "cordoned" in reason or "heartbeat" in reason:
                kind = metric_names.REASON_NODE_UNUSABLE
            else:
                kind = metric_names.REASON_GPU_FIT
            by_kind[kind] = by_kind.get(kind, 0) + count
        for kind, count in by_kind.items():
            self.metrics.filter_failures.labels(kind).inc(count)

    # ------------------------------------------------------------------ prioritize
    def _priorities(self, body: object, encode: bool = False) -> tuple[list[str], np.ndarray, list[str] | None]:
        """(requested names, their 0..10 scores, with `encode` and a view that knows every name: the
        answer's entries `{"Host":..,"Score":..}`, else None)."""
        pod, node_names, _ = _parse_args(body, self.args_decoder.known)
        _, demand = self._demand(pod)
        if not demand.containers:
            return node_names, np.zeros(len(node_names), dtype=np.int64), None
        view = self.view
        with view.lock:
            view.refresh_schedulable()
            _, positions = self._candidates(node_names)
            scores, _ = self._node_scores(demand)
            requested = np.full(len(node_names), -np.inf)
            known = positions >= 0
            requested[known] = scores[positions[known]]
            order = self._node_order(node_names, positions)
            # the node place() would choose among THESE nodes gets the only 10, the rest 9..0 by rank
            ranked = rank_extender_scores(requested, order)
            entries = self._row_entries(positions, ranked) if encode and known.all() else None
        return node_names, ranked, entries

    def _row_entries(self, rows: np.ndarray, scores: np.ndarray) -> list[str]:
        """Each requested row's `{"Host":"<name>","Score":<score>}` (under the view lock).

        Kept per cluster row and score (11 per node) while the node set is unchanged: one
        fancy-indexing call instead of a name lookup and a string concatenation per node.
        """
        table = self._per_row(
            "entries",
            lambda names: np.array(
                [_host_prefix(name) + _SCORE_SUFFIX[score] for name in names for score in range(11)], dtype=object
            ),
        )
        return table[rows * 11 + scores].tolist()

    def _row_names(self) -> np.ndarray:
        """The view's node names as an object array (under the view lock), rebuilt when the node set
        changes, so filter picks hundreds of names per pod with one fancy-indexing call."""
        return self._per_row("names", lambda names: np.array(names, dtype=object))

    def _per_row(self, table: str, build: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """`build(view's node names)`, kept while the node set is unchanged (under the view lock)."""
        generation = self.view.node_generation
        cached = self._row_tables.get(table)
        if cached is None or cached[0] != generation:
            cached = self._row_tables[table] = (generation, build(self.view.cluster.node_names))
        return cached[1]

    def prioritize(self, body: object) -> list[dict]:
        """ExtenderArgs -> HostPriorityList (0..10; 0 for nodes that cannot take the pod)."""
        node_names, scores, _ = self._priorities(body)
        return [{"Host": name, "Score": score} for name, score in zip(node_names, scores.tolist(), strict=True)]

    def prioritize_json(self, body: object) -> bytes:
        """`prioritize` already encoded (`encode_priorities`): json.dumps of 5,000 small dicts costs ~3 ms."""
        node_names, scores, entries = self._priorities(body, encode=True)
        if entries is not None:
            return ("[" + ",".join(entries) + "]").encode()
        return encode_priorities(node_names, scores.tolist(), self._host_prefixes).encode()

    # ------------------------------------------------------------------ bind
    def bind(self, body: object) -> dict:
        """ExtenderBindingArgs -> ExtenderBindingResult."""
        try:
            request = BindRequest.from_json(body)
        except BindError as error:
            raise BadRequest(str(error)) from error
        return {"Error": self.binder.bind(request)}

    # ------------------------------------------------------------------ preempt
    def preempt(self, body: object) -> dict:
        """ExtenderPreemptionArgs -> ExtenderPreemptionResult.

        Honest minimal behaviour: on each candidate node keep only the victims that hold GPU shares
        there (evicting anything else frees no GPU capacity), and keep the node only if releasing
        those victims lets the pod fit. Nodes left without victims are dropped (kube-scheduler treats
        a returned node with no victims as an error). NumPDBViolations is passed through unchanged:
        the extender does not see PodDisruptionBudgets, so it can only be an upper bound.

        Per candidate only that node's rows are copied and checked (`core.preemption`). The copies and
        the victims' placements are taken under the view lock a chunk of candidates at a time, and the
        fit is computed outside it, so a preempt of thousands of candidates never holds up filter.
        """
        if not isinstance(body, dict) or not isinstance(body.get("Pod"), dict):
            raise BadRequest("ExtenderPreemptionArgs needs a Pod object")
        candidates = self._preempt_candidates(body)
        try:
            _, demand = self._demand(body["Pod"])
        except PodError:
            return {"NodeNameToMetaVictims": {}}
        result: dict[str, dict] = {}
        if not demand.containers:  # no GPU asked: no eviction of ours can matter
            return {"NodeNameToMetaVictims": result}
        names = list(candidates)
        for start in range(0, len(names), _PREEMPT_CHUNK):
            kept, rows, releases = self._preempt_snapshot(names[start : start + _PREEMPT_CHUNK], candidates, start)
            if not kept:
                continue
            fits = fits_after_release(rows, demand, releases)  # outside the lock: the rows are a copy
            for (node_name, victims), fit in zip(kept, fits.tolist(), strict=True):
                if fit:
                    result[node_name] = {
                        "Pods": [{"UID": uid} for uid in victims],
                        "NumPDBViolations": candidates[node_name][1],
                    }
            time.sleep(0)  # let a waiting filter have the GIL now (see _PREEMPT_CHUNK)
        return {"NodeNameToMetaVictims": result}

    def _preempt_snapshot(
        self, names: list[str], candidates: dict[str, tuple[list[str], int]], start: int
    ) -> tuple[list[tuple[str, list[str]]], ClusterArrays, list[Release]]:
        """Under the view lock, for candidate nodes `names`: ([(node, GPU-holding victims)] of the nodes
        worth checking, a copy of those nodes' rows, and each victim's release on its row of the copy)."""
        view = self.view
        kept: list[tuple[str, list[str]]] = []
        indexes: list[int] = []
        releases: list[Release] = []
        with view.lock:
            if start == 0:
                view.refresh_schedulable()
            for node_name in names:
                index = view.node_index(node_name)
                if index is None:
                    continue
                victims = []
                for uid in dict.fromkeys(candidates[node_name][0]):  # a uid listed twice is evicted once
                    record = view.pod(uid)
                    if record is None or record.node_name != node_name or record.applied is None or not record.shares:
                        continue  # not on this node in the view, or holds no GPU share: evicting it frees no GPU
                    victims.append(uid)
                    releases.append((len(indexes), view.demand_for_arrays(record), record.applied[1]))
                if victims:
                    kept.append((node_name, victims))
                    indexes.append(index)
            rows = cluster_rows(view.cluster, np.array(indexes, dtype=np.int64))
        return kept, rows, releases

    @staticmethod
    def _preempt_candidates(body: dict) -> dict[str, tuple[list[str], int]]:
        """{node: (victim UIDs, NumPDBViolations)} from NodeNameToMetaVictims, else NodeNameToVictims."""
        meta = body.get("NodeNameToMetaVictims")
        full = body.get("NodeNameToVictims")
        source = meta if meta is not None else full
        if source is None:
            return {}
        if not isinstance(source, dict):
            raise BadRequest("NodeNameToMetaVictims / NodeNameToVictims must be an object or null")
        field = "NodeNameToMetaVictims" if meta is not None else "NodeNameToVictims"
        out: dict[str, tuple[list[str], int]] = {}
        for node_name, victims in source.items():
            if not isinstance(victims, dict):
                raise BadRequest(f"{field}[{node_name!r}] must be an object with Pods and NumPDBViolations")
            pods = victims.get("Pods") or []
            pdb = victims.get("NumPDBViolations") or 0
            if not isinstance(pods, list) or not isinstance(pdb, int) or isinstance(pdb, bool):
                raise BadRequest(f"{field}[{node_name!r}]: Pods must be a list, NumPDBViolations an integer")
            uids = []
            for position, pod in enumerate(pods):
                if meta is not None:  # MetaPod: {"UID": ...}
                    uid = pod.get("UID") if isinstance(pod, dict) else None
                else:  # a whole v1.Pod
                    metadata = pod.get("metadata") if isinstance(pod, dict) else None
                    uid = metadata.get("uid") if isinstance(metadata, dict) else None
                if not isinstance(uid, str):
                    where = "UID" if meta is not None else "metadata.uid"
                    raise BadRequest(f"{field}[{node_name!r}].Pods[{position}] needs a string {where}")
                uids.append(uid)
            out[node_name] = (uids, pdb)
        return out


# ---------------------------------------------------------------------- HTTP
# The HTTP listeners live in extender_http (which imports this module); these names stay importable
# from here, resolved on first use so neither module imports the other at load time.
_HTTP_NAMES = frozenset({"ROUTES", "ExtenderHTTPServer", "serve", "serve_metrics"})


def __getattr__(name: str) -> object:
    if name in _HTTP_NAMES:
        from tensorai.scheduler import extender_http

        return getattr(extender_http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
