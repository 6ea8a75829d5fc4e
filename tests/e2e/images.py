"""Container images for the end-to-end cluster, built here: no registry is reachable.

Both images are one layer holding Debian's static busybox (`busybox-static`) and its applet links,
written as a Docker image archive that `ctr images import` reads. The sandbox ("pause") image runs
`sleep` as the pod's PID 1; the workload image is the same layer under another name, so a test pod
runs `sh -c 'env; sleep N'` and its log file shows the env kubelet gave it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
WORKLOAD_IMAGE = "tensorai.local/busybox:e2e"
APPLETS = ("sh", "env", "sleep", "cat", "echo", "true", "false", "ls", "date", "grep", "wc")


def _layer_tar() -> bytes:
    """An uncompressed layer: /bin/busybox, its applets as symlinks, /tmp and /etc/passwd."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for folder in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            layer.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        layer.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            layer.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        layer.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def _archive(tags: list[str], command: list[str], layer: bytes) -> bytes:
    """A Docker image archive (manifest.json + config + layer) for `tags`."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": command, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": ["layer.tar"]}]).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_images(folder: Path) -> list[Path]:
    """The sandbox and workload image archives, written into `folder`; returns their paths."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    layer = _layer_tar()
    folder.mkdir(parents=True, exist_ok=True)
    pause = folder / "pause.tar"
    pause.write_bytes(_archive([PAUSE_IMAGE], ["/bin/sleep", "2147483647"], layer))
    workload = folder / "busybox.tar"
    workload.write_bytes(_archive([WORKLOAD_IMAGE], ["/bin/sh"], layer))
    return [pause, workload]
