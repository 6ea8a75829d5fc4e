"""Prioritize scores kube-scheduler acts on: the node `place()` would choose gets the only 10.

kube-scheduler adds the extender's 0..10 (x weight x 10) to its in-tree plugin scores and breaks
ties at random. Min-max scaling left most feasible nodes tied at 10 under the `tensorai` policy, so
kube-scheduler's own scoring (NodeResourcesFit LeastAllocated spreads!) or its coin chose the node,
not our policy. The simulator's numbers come from `place()`: best policy score, ties to the earliest
node in a fixed node order (that first-fit behaviour is part of why FGD packs well). Ranking the
nodes exactly that way and giving the first a unique 10 makes kube-scheduler pick `place()`'s node
whenever the extender's weight dominates the in-tree scores (see docs/extender.md).

Pure functions; numpy only.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np

MAX_EXTENDER_SCORE = 10  # extenderv1.MaxExtenderPriority


@functools.lru_cache(maxsize=1 << 17)  # kube-scheduler asks about the same names on every pod
def node_order_key(name: str) -> int:
    """A node name's 64-bit position key: the same in every process, replica and restart.

    Not Python's `hash()` (salted per process, so two extender replicas would disagree) and not the
    name itself: alphabetical order follows naming schemes (pool-a-001.., rack-1-..), so first-fit
    ties would always fill one pool, rack or zone first; a hash spreads the preference evenly and a
    node added later lands at a random place instead of always last.
    """
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def stable_node_order(node_names: Sequence[str], keys: np.ndarray | None = None) -> np.ndarray:
    """Positions of `node_names` in the cluster's fixed tie-break order (a permutation, int64).

    Sorted by `node_order_key`, then by name (a 64-bit collision is astronomically unlikely, but the
    order must still be total and deterministic). `keys`, if given, are the names' `node_order_key`s
    already looked up (the extender keeps them per cluster row).
    """
    count = len(node_names)
    if not count:
        return np.zeros(0, dtype=np.int64)
    if keys is None:
        keys = np.fromiter(map(node_order_key, node_names), dtype=np.uint64, count=count)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    if np.any(ordered[1:] == ordered[:-1]):  # a collision: let the names decide, never the list position
        return np.array(sorted(range(count), key=lambda i: (int(keys[i]), node_names[i])), dtype=np.int64)
    return order.astype(np.int64)


def rank_extender_scores(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """0..10 integers per node: 10 for the node `place()` would choose, strictly less for every other.

    `scores` are policy scores (-inf or nan = infeasible); `order` is a permutation of their positions
    (`stable_node_order`) that breaks ties exactly as `place(..., node_order=order)` does. Feasible
    nodes are ranked by (score desc, position in order); rank 0 gets 10, the other ranks share 9..0 in
    equal bands (the 2nd best always 9, the worst 0 when there are 11 or more); infeasible nodes get 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.asarray(order, dtype=np.int64)
    if order.shape != scores.shape:
        raise ValueError(f"order has shape {order.shape}, scores {scores.shape}")
    out = np.zeros(scores.shape, dtype=np.int64)
    feasible = int(np.count_nonzero(scores > -np.inf))  # nan compares False: infeasible too
    if not feasible:
        return out
    # one stable sort of the scores in tie-break order = (score desc, position in order); -inf and nan
    # sort after every feasible score, so the first `feasible` entries are the feasible nodes ranked
    ranked = order[np.argsort(-scores[order], kind="stable")[:feasible]]
    out[ranked[0]] = MAX_EXTENDER_SCORE
    rest = feasible - 1
    if rest:
        bands = (np.arange(rest) * MAX_EXTENDER_SCORE) // rest  # 0..9, never 10
        out[ranked[1:]] = MAX_EXTENDER_SCORE - 1 - bands
    return out
