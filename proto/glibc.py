"""glibc's `mallopt`, for the programs' process-wide memory settings (device plugin, webhook).

One loader and one rule: nothing is set off glibc, or when the operator set glibc's own environment
variable for the same knob (theirs wins)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc malloc.h parameters, and the environment variables glibc reads for them
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ENV_MALLOC_ARENA_MAX = "MALLOC_ARENA_MAX"
ENV_MALLOC_TRIM_THRESHOLD = "MALLOC_TRIM_THRESHOLD_"
ENV_MALLOC_MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


@functools.cache
def _libc() -> ctypes.CDLL:
    """glibc, loaded once (find_library runs ldconfig in a subprocess)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mallopt(operator_env: tuple[str, ...], *settings: tuple[int, int]) -> bool:
    """Apply glibc `mallopt(param, value)` settings; False off glibc, when the operator set one of
    `operator_env` (glibc's own variables win), or when a setting is refused."""
    if any(os.environ.get(name) for name in operator_env):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = _libc()
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError) as error:
        log.debug("mallopt unavailable: %s", error)
        return False
