"""Scoring policies of the scheduling core.

Each policy scores the candidate GPU options of every feasible node (see `placement.score_nodes`);
the node score is the best option's score and the GPU chosen at bind is that same option.
"""

from __future__ import annotations

POLICY_NAMES: tuple[str, ...] = ("random", "bestfit", "binpack", "spread", "fgd", "tensorai")
DEFAULT_POLICY = "tensorai"
