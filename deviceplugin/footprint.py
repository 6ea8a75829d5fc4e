"""Process-wide memory settings the plugin applies at start (the DaemonSet's RSS target is 80 MiB).

Two measured, cheap levers (numbers in docs/deviceplugin.md):
- glibc gives each thread that allocates its own malloc arena (up to 8 per core). The gRPC workers,
  the pod watch, the annotation writer and the reconciler each churn through request-sized buffers
  (kubelet's GetPreferredAllocation carries up to 8,000 IDs), and every arena keeps its freed pages.
  Capping arenas at 2 saved ~4 MiB RSS on the benchmark. It is the programmatic form of
  `MALLOC_ARENA_MAX=2`; an explicit `MALLOC_ARENA_MAX` in the environment wins.
- `gc.freeze()` after start moves the ~55,000 objects alive after start (grpc, protobuf and the
  kubernetes client's low-level layer; the typed API's pydantic models are never imported, see
  proto/kubeclient.py) out of the collector's reach, so a full collection during a kubelet call no longer walks
  them. It saves time, not memory.
- fixed glibc trim/mmap thresholds (`keep_freed_buffers`), so request-sized buffers are reused
  instead of page-faulted back on every kubelet call.
"""

from __future__ import annotations

import gc
import logging

from tensorai.proto.glibc import (
    ENV_MALLOC_ARENA_MAX,
    ENV_MALLOC_MMAP_THRESHOLD,
    ENV_MALLOC_TRIM_THRESHOLD,
    M_ARENA_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
)
from tensorai.proto.glibc import mallopt as _mallopt

log = logging.getLogger(__name__)

MALLOC_KEEP_ENV = (ENV_MALLOC_TRIM_THRESHOLD, ENV_MALLOC_MMAP_THRESHOLD)  # glibc's own variables win


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False where that does not apply.

    Does nothing (False) off glibc, or when the operator set `MALLOC_ARENA_MAX` themselves.
    """
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, got {arenas}")
    return _mallopt((ENV_MALLOC_ARENA_MAX,), (M_ARENA_MAX, arenas))


def freeze_startup_objects() -> int:
    """Collect once, then exclude every object alive now from future collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def keep_freed_buffers(mmap_threshold: int = 8 << 20, trim_threshold: int = 32 << 20) -> bool:
    """Let glibc reuse request-sized buffers instead of returning them to the kernel after every call.

    Why: a GetPreferredAllocation with kubelet's 8,000 IDs allocates ~1 MB of short-lived buffers
    (protobuf arena, byte columns). By default glibc serves blocks over 128 KiB with a fresh mmap and
    trims freed heap tops, so the next call page-faulted the same memory back: ~250 minor faults,
    ~0.5 ms per call on a 2-vCPU VM (in-process, 8,000 IDs). Fixed thresholds keep the memory for
    reuse; what stays mapped is bounded by the largest call's buffers (plugin RSS in
    docs/deviceplugin.md). False off glibc or when the operator set glibc's variables.
    """
    return _mallopt(MALLOC_KEEP_ENV, (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold))
