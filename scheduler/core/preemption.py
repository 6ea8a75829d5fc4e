"""Would evicting these victims let the pod fit? The extender's /preempt question, on a few nodes' rows.

kube-scheduler proposes candidate nodes, each with the pods it would evict. The extender answers
per node whether releasing the victims' GPU shares (and CPU/memory) makes room for the pod. The
work is per candidate row only: the caller copies the candidates' rows (`cluster.cluster_rows`),
this module releases each victim on its row of that copy and evaluates the pod on all the rows in
one vectorised `fit.evaluate` - never a copy of the whole cluster per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tensorai.scheduler.core.fit import evaluate
from tensorai.scheduler.core.placement import release_placement
from tensorai.scheduler.core.types import ClusterArrays, Placement, PodDemand

Release = tuple[int, PodDemand, Placement]  # (row of the candidates' cluster, victim's demand, its placement)


def fits_after_release(candidates: ClusterArrays, demand: PodDemand, releases: Iterable[Release]) -> np.ndarray:
    """(rows,) bool: whether `demand` fits each row of `candidates` once the victims on that row are gone.

    `candidates` is changed in place (the victims are released on it): pass a copy, such as
    `cluster_rows(view.cluster, rows)`. Each release names the victim's row in `candidates`; its
    placement may carry the node's index in the full cluster (only its GPU slots are read).
    """
    for row, victim, placement in releases:
        release_placement(candidates, victim, placement, row)
    return evaluate(candidates, demand).feasible
