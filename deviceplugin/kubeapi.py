"""The device plugin's Kubernetes API calls: `tensorai.proto.kubeclient.RawCoreApi` (raw JSON over the
official client's REST layer, no generated models imported - see that module for why)."""

from __future__ import annotations

from tensorai.proto.kubeclient import JSON, MERGE_PATCH, RawCoreApi

__all__ = ["JSON", "MERGE_PATCH", "RawCoreApi"]
