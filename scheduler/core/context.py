"""What a policy may know beyond the cluster arrays: the target workload, an rng, a score cache.

The core stays pure: everything stateful a policy uses is handed in here by the caller (the
extender keeps one context per process, the simulator one per run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tensorai.scheduler.core.shapes import OnlineWorkload, TargetWorkload


@dataclass(slots=True)
class PolicyContext:
    """Inputs of stateful policies.

    - `workload`: the target workload known offline (e.g. a trace's shape mix), or
    - `online`: a workload learned from the pods seen so far (the extender calls `online.observe`);
      it wins over `workload` once it has seen pods;
    - `rng`: the only randomness the `random` policy may use;
    - `use_cache`: memoise per-(pod shape, node) scores between calls and recompute only nodes whose
      arrays changed (see `placement.ScoreCache`); results are identical with or without it;
    - `cluster_version`: optional; returns a value the caller changes whenever the cluster arrays
      change (the extender's view version). Equal values let the cache skip comparing the arrays
      with its snapshot; without it every call compares.
    - `placement_rows_since`: optional, with `cluster_version`; given an earlier version, the rows
      changed since then if ONLY pod placements (apply/release_placement) changed the arrays, else
      None. The cache then re-checks those rows instead of comparing every array.
    """

    workload: TargetWorkload | None = None
    online: OnlineWorkload | None = None
    rng: np.random.Generator | None = None
    use_cache: bool = True
    cache: object | None = field(default=None, repr=False)
    cluster_version: Callable[[], object] | None = field(default=None, repr=False)
    placement_rows_since: Callable[[object], list[int] | None] | None = field(default=None, repr=False)

    def target(self) -> TargetWorkload | None:
        """The workload fragmentation is measured against now (None if nothing is known yet)."""
        if self.online is not None and self.online.current() is not None:
            return self.online.current()
        return self.workload
