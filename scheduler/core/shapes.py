"""Task shapes and the target workload that fragmentation-aware policies optimise for.

FGD measures a node's fragmentation against the shapes the cluster expects to receive. The target
workload is either known offline (the shape mix of a trace) or learned online from the pods seen
so far (`OnlineWorkload`, what the real extender can honestly do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.proto.gpumodels import matches_any
from tensorai.scheduler.core.types import PodDemand

FGD_COVERAGE = 0.95  # FGD keeps the most frequent shapes until they cover 95 % of pods


@dataclass(frozen=True, slots=True)
class Shape:
    """What fragmentation depends on: CPU, per-GPU milli, GPU count and the allowed models.

    `models` and `excluded_models` are the pod's lists as written; a reported model is allowed when
    it matches one of `models` (any, if None) and none of `excluded_models` (proto/gpumodels.py).
    """

    cpu_milli: int
    gpu_milli: int
    gpu_count: int
    models: frozenset[str] | None = None  # None = any model
    excluded_models: frozenset[str] = frozenset()

    def allows(self, model: str) -> bool:
        """True when a task of this shape may use a GPU that reports `model`."""
        return (self.models is None or matches_any(self.models, model)) and not (
            self.excluded_models and matches_any(self.excluded_models, model)
        )

    @property
    def total_gpu_milli(self) -> int:
        return self.gpu_milli * self.gpu_count


def shape_of(demand: PodDemand) -> Shape:
    """The shape of a pod; several GPU containers count as whole GPUs or, if fractional, the largest share."""
    app = [c for c in demand.containers if not c.init]
    models, excluded = demand.allowed_models, demand.excluded_models
    if not app:
        return Shape(demand.cpu_milli, 0, 0, models, excluded)
    whole = sum(c.gpu_count for c in app if c.milli >= MILLI_PER_GPU)
    if whole:
        return Shape(demand.cpu_milli, MILLI_PER_GPU, whole, models, excluded)
    return Shape(demand.cpu_milli, max(c.milli for c in app), 1, models, excluded)


@dataclass(slots=True)
class ShapeArrays:
    """A workload as arrays over one cluster's model ids, ready for the fragmentation kernel."""

    cpu_milli: np.ndarray  # (M,) int64
    gpu_milli: np.ndarray  # (M,) int64
    gpu_count: np.ndarray  # (M,) int64
    model_ok: np.ndarray  # (M, models) bool
    probability: np.ndarray  # (M,) float64


@dataclass(slots=True)
class TargetWorkload:
    """Shapes with probabilities p_m (sum 1)."""

    shapes: tuple[Shape, ...]
    probability: np.ndarray
    _arrays: dict[tuple[str, ...], ShapeArrays] = field(default_factory=dict, repr=False)
    _sharing: list[TargetWorkload | None] = field(default_factory=list, repr=False)
    # whole_gpu_demand_share / constrained_share, computed once: scoring asks on every call (~60 us)
    _shares: dict[str, float] = field(default_factory=dict, repr=False)

    @classmethod
    def from_shapes(cls, shapes: Iterable[Shape], coverage: float = FGD_COVERAGE) -> TargetWorkload:
        """FGD's rule: most frequent shapes first until `coverage` of pods, renormalised."""
        counts = Counter(shapes)
        total = sum(counts.values())
        if total == 0:
            raise ValueError("a target workload needs at least one shape")
        ordered = sorted(counts.items(), key=lambda item: -item[1])  # stable: first seen wins ties
        kept: list[tuple[Shape, int]] = []
        covered = 0
        for shape, count in ordered:
            kept.append((shape, count))
            covered += count
            if covered >= coverage * total:
                break
        weights = np.array([count for _, count in kept], dtype=np.float64)
        return cls(tuple(shape for shape, _ in kept), weights / weights.sum())

    @classmethod
    def from_demands(cls, demands: Iterable[PodDemand], coverage: float = FGD_COVERAGE) -> TargetWorkload:
        return cls.from_shapes((shape_of(d) for d in demands), coverage)

    def whole_gpu_demand_share(self) -> float:
        """Share of the expected GPU demand that asks for whole GPUs (0..1)."""
        share = self._shares.get("whole")
        if share is None:
            demand = np.array([s.total_gpu_milli for s in self.shapes], dtype=np.float64) * self.probability
            whole = np.array([s.gpu_milli >= MILLI_PER_GPU for s in self.shapes], dtype=bool)
            total = demand.sum()
            share = self._shares["whole"] = float(demand[whole].sum() / total) if total > 0 else 0.0
        return share

    def constrained_share(self) -> float:
        """Probability that a task is restricted to some GPU models."""
        share = self._shares.get("constrained")
        if share is None:
            constrained = np.array([s.models is not None for s in self.shapes], dtype=bool)
            share = self._shares["constrained"] = float(np.asarray(self.probability)[constrained].sum())
        return share

    def sharing_only(self) -> TargetWorkload | None:
        """The same workload restricted to sharing shapes (0 < milli < 1000), renormalised; None if none."""
        if not self._sharing:
            keep = [i for i, shape in enumerate(self.shapes) if 0 < shape.gpu_milli < MILLI_PER_GPU]
            weights = np.asarray(self.probability, dtype=np.float64)[keep]
            self._sharing.append(
                TargetWorkload(tuple(self.shapes[i] for i in keep), weights / weights.sum()) if keep else None
            )
        return self._sharing[0]

    def arrays(self, models: list[str]) -> ShapeArrays:
        """The workload over a cluster's model ids (cached per model list)."""
        key = tuple(models)
        cached = self._arrays.get(key)
        if cached is None:
            model_ok = np.array(
                [[shape.allows(model) for model in models] for shape in self.shapes],
                dtype=bool,
            ).reshape(len(self.shapes), len(models))
            cached = ShapeArrays(
                cpu_milli=np.array([s.cpu_milli for s in self.shapes], dtype=np.int64),
                gpu_milli=np.array([s.gpu_milli for s in self.shapes], dtype=np.int64),
                gpu_count=np.array([s.gpu_count for s in self.shapes], dtype=np.int64),
                model_ok=model_ok,
                probability=np.asarray(self.probability, dtype=np.float64),
            )
            self._arrays[key] = cached
        return cached


@dataclass(slots=True)
class OnlineWorkload:
    """The target workload learned from the pods seen so far: the honest variant for a live cluster.

    The learned distribution is republished on a doubling schedule (after 1,000, 2,000, 4,000, ...
    pods; gaps capped at `refresh_every`), not after every pod. On the openb trace, frequent or early
    refits (every 128-512 pods, or a first refit after 64-256 pods) made decisions unstable and cost
    up to 0.8 points on some seeds, while a first refit after 1,000 pods matched FGD with the true
    distribution. Before the first refit the target is `prior` if given, else the shape of the first
    pod seen.
    """

    prior: TargetWorkload | None = None
    coverage: float = FGD_COVERAGE
    first_refresh: int = 1000
    refresh_every: int = 1 << 30
    # Distinct shapes kept: past twice this many, only the most common `max_shapes` stay. Shapes come
    # from pods (cpu, GPU share, model lists): a flood of made-up ones must not grow the counts forever,
    # and the target workload needs only the shapes that cover `coverage` of the pods.
    max_shapes: int = 4096
    counts: Counter = field(default_factory=Counter)
    seen: int = 0
    _next_refresh: int = 0
    _current: TargetWorkload | None = None

    def __post_init__(self) -> None:
        self._next_refresh = self.first_refresh
        self._current = self.prior

    def observe(self, demand: PodDemand) -> None:
        """Count one arriving pod (call before scheduling it: its shape is known at arrival)."""
        self.counts[shape_of(demand)] += 1
        self.seen += 1
        if len(self.counts) > 2 * self.max_shapes:
            self.counts = Counter(dict(self.counts.most_common(self.max_shapes)))
        due = self.seen >= self._next_refresh
        if due or self._current is None:
            self._current = TargetWorkload.from_shapes(self.counts.elements(), self.coverage)
        if due:  # doubling gaps until refresh_every, then a fixed gap
            self._next_refresh += min(self._next_refresh, self.refresh_every)

    def current(self) -> TargetWorkload | None:
        return self._current


# Shape mix of the openb default trace (Alibaba cluster-trace-gpu-v2023, Weng et al. ATC'23): the 34
# most frequent (cpu_milli, gpu_milli, gpu_count) shapes plus every multi-GPU shape, with the median
# memory MiB and the pod count of each. Statistics only (the trace itself is never bundled). Used as
# the target workload before anything is learned, and by the simulator's built-in synthetic workload.
OPENB_SHAPE_MIX: tuple[tuple[int, int, int, int, int], ...] = (
    (3152, 810, 1, 5600, 1047), (11300, 1000, 1, 49152, 874), (11400, 1000, 1, 48128, 599),
    (3152, 1000, 1, 5600, 470), (11908, 470, 1, 47104, 388), (12500, 0, 0, 57344, 366),
    (8000, 470, 1, 30517, 360), (12000, 1000, 1, 24576, 326), (32000, 0, 0, 49152, 290),
    (18708, 1000, 1, 64512, 255), (11908, 650, 1, 47104, 237), (4000, 320, 1, 22888, 232),
    (9810, 1000, 1, 41560, 195), (8000, 0, 0, 30517, 185), (8000, 1000, 1, 16384, 164),
    (4000, 1000, 1, 24576, 159), (15700, 1000, 1, 58368, 158), (11908, 1000, 1, 47104, 153),
    (16000, 1000, 1, 32768, 150), (4000, 230, 1, 30517, 122), (6000, 460, 1, 10240, 120),
    (15400, 0, 0, 51200, 120), (16500, 0, 0, 51200, 95), (14200, 1000, 1, 58368, 93),
    (24200, 1000, 1, 93184, 84), (3152, 590, 1, 5600, 75), (8000, 320, 1, 30517, 72),
    (4152, 550, 1, 10600, 72), (11900, 1000, 1, 77824, 55), (4000, 160, 1, 15258, 54),
    (4152, 370, 1, 10600, 45), (4000, 220, 1, 15258, 43), (8200, 1000, 1, 33792, 41),
    (15200, 1000, 1, 80896, 36), (88000, 1000, 8, 327680, 18), (64200, 1000, 8, 263168, 18),
    (32200, 1000, 4, 132096, 9), (16200, 1000, 2, 66560, 7), (120000, 1000, 8, 737280, 3),
    (6000, 1000, 2, 65536, 3), (64000, 1000, 8, 262144, 3), (32000, 1000, 4, 131072, 3),
    (30200, 1000, 2, 160768, 3), (60200, 1000, 4, 320512, 3), (17400, 1000, 2, 43008, 2),
    (120200, 1000, 8, 640000, 2), (14000, 1000, 2, 60000, 1),
)


def default_workload() -> TargetWorkload:
    """The openb default shape mix, used until a workload is known or learned."""
    shapes = [Shape(cpu, milli, count) for cpu, milli, count, _memory, _pods in OPENB_SHAPE_MIX]
    weights = np.array([pods for *_rest, pods in OPENB_SHAPE_MIX], dtype=np.float64)
    return TargetWorkload(tuple(shapes), weights / weights.sum())
