"""Which pod a host process belongs to, from `/proc/<pid>/cgroup`.

NVML reports GPU processes by host PID. Kubelet puts every container in a cgroup whose path names
the pod UID, in one of two spellings depending on the cgroup driver:

    cgroupfs: /kubepods/burstable/pod8d2e4f9c-1b2a-4c3d-9e8f-0a1b2c3d4e5f/<64-hex container id>
    systemd:  /kubepods.slice/kubepods-burstable.slice/
              kubepods-burstable-pod8d2e4f9c_1b2a_4c3d_9e8f_0a1b2c3d4e5f.slice/cri-containerd-<id>.scope

cgroup v1 lists one such line per controller (`12:memory:/kubepods/...`), v2 a single `0::/...`
line; nodes running inside containers (kind) prefix the path with their own cgroup, and a plugin in
a private cgroup namespace sees paths relative to its own (`0::/../../kubepods-...`). The plugin
must run with `hostPID: true` so that it sees the other pods' processes in its `/proc`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# "pod<uid>" as a whole path component (cgroupfs) or as the tail of a systemd slice name.
_POD = re.compile(rf"(?:^|/|-)pod(?P<uid>{_UUID})(?:\.slice)?(?=/|$)")
# Last component: "<64 hex>" (cgroupfs) or "<runtime>-<64 hex>.scope" (systemd: docker, cri-containerd, crio).
_CONTAINER = re.compile(r"^(?:(?:[a-z-]+)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?$")
MAX_CGROUP_BYTES = 64 * 1024  # a real file is a few hundred bytes; bounds reads of odd files


@dataclass(frozen=True, slots=True)
class CgroupPodRef:
    """The pod (and, when the path names it, the container runtime ID) a process runs in."""

    pod_uid: str  # canonical dashed form, lower case
    container_id: str | None  # 64 hex digits without the runtime prefix


def parse_cgroup(text: str) -> CgroupPodRef | None:
    """The pod of a `/proc/<pid>/cgroup` text, or None for processes outside any pod."""
    for line in text.splitlines():
        # "hierarchy-id:controllers:path"; the path itself may contain ':' (rare), so split twice.
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].strip()
        matches = list(_POD.finditer(path))
        if not matches:
            continue
        match = matches[-1]  # the innermost pod wins when nested (a kind node inside a pod)
        uid = match.group("uid").replace("_", "-").lower()
        container_id = None
        tail = path[match.end() :].strip("/").split("/")
        if tail and tail[0]:
            container_match = _CONTAINER.match(tail[0])
            if container_match:
                container_id = container_match.group("id")
        return CgroupPodRef(pod_uid=uid, container_id=container_id)
    return None


def pod_of_pid(pid: int, proc_root: str = "/proc") -> CgroupPodRef | None:
    """The pod of host process `pid`; None if it is not in a pod, has exited or cannot be read."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    path = os.path.join(proc_root, str(pid), "cgroup")
    try:
        with open(path, "rb") as cgroup_file:
            raw = cgroup_file.read(MAX_CGROUP_BYTES)
    except OSError:  # exited between NVML's answer and now, or not visible without hostPID
        return None
    return parse_cgroup(raw.decode("utf-8", "replace"))
