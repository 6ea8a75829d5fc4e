"""Peak memory of the real `tensorai-webhook` under concurrent large AdmissionReviews, as a table.

For each body shape and size it starts `tensorai-webhook --self-signed --no-kube` on a loopback
port, opens `--clients` TLS connections at once, each POSTing the same review to /mutate, and reports
the answers by status, the wall time and the server's resident memory: at rest, and its peak
(VmHWM from /proc/<pid>/status, the kernel's high-water mark, so no sample can miss it). The
Deployment's memory limit is 256 Mi; docs/webhook.md quotes this table.

Shapes (UPDATE reviews: the pod twice, as object and oldObject, like the API server sends them):
- labels: many short labels - JSON that decodes to ~9x its size, the densest a real pod gets;
- annotation: one long annotation - decodes to ~2x.

    .venv/bin/python tests/benchmarks/bench_webhook_memory.py [--clients 24] [--sizes-mib 7 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def review(shape: str, size_bytes: int) -> bytes:
    """An UPDATE AdmissionReview of a vGPU pod of about `size_bytes` in total."""
    half = size_bytes // 2
    metadata: dict = {"name": "big", "namespace": "team-a"}
    if shape == "labels":
        metadata["labels"] = {f"l{i:07d}": f"v{i:07d}" for i in range(half // 24)}
    else:
        metadata["annotations"] = {"note": "x" * (half - 300)}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": {"tensor.ai/vgpu": "250m"}}}]},
    }
    request = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "team-a",
        "operation": "UPDATE",
        "object": pod,
        "oldObject": pod,
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def post(port: int, body: bytes, statuses: collections.Counter, lock: threading.Lock, start: threading.Event) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the webhook's self-signed certificate
    status = "error"
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            start.wait()
            tls.sendall(f"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            data = b""
            while b"\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            status = data.split(b" ", 2)[1].decode() if data else "closed"
    except OSError as error:
        status = type(error).__name__
    with lock:
        statuses[status] += 1


def run(shape: str, size_mib: float, clients: int, module: str) -> dict:
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--self-signed", "--no-kube", "--address", "127.0.0.1", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        port = 0
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"serving https://[^:]+:(\d+)/mutate", line)
            port = int(match[1]) if match else 0
            if not line and process.poll() is not None:
                raise RuntimeError("the webhook exited at start")
        threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()  # keep its log pipe drained
        body = review(shape, int(size_mib * (1 << 20)))
        rest = memory_kib(process.pid)["VmRSS"]
        statuses: collections.Counter = collections.Counter()
        lock, start = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=post, args=(port, body, statuses, lock, start)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # every handshake done: the bodies go out together
        began = time.monotonic()
        start.set()
        for thread in threads:
            thread.join()
        return {
            "shape": shape,
            "body_mib": len(body) / (1 << 20),
            "clients": clients,
            "answers": " ".join(f"{count}x{status}" for status, count in sorted(statuses.items())),
            "seconds": time.monotonic() - began,
            "rest_mib": rest / 1024,
            "peak_mib": memory_kib(process.pid)["VmHWM"] / 1024,
        }
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[7.0, 8.0])
    parser.add_argument("--shapes", nargs="+", default=["labels", "annotation"], choices=["labels", "annotation"])
    parser.add_argument("--module", default="tensorai.scheduler.webhook_cli", help="the server's module (to compare)")
    args = parser.parse_args()
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {args.module}")
    print(" shape      | body MiB | clients | answers (count x status)   | seconds | RSS at rest MiB | peak RSS MiB")
    print("-" * 104)
    for shape in args.shapes:
        for size in args.sizes_mib:
            row = run(shape, size, args.clients, args.module)
            print(
                f" {row['shape']:<10} | {row['body_mib']:8.2f} | {row['clients']:7d} | {row['answers']:<26} | "
                f"{row['seconds']:7.2f} | {row['rest_mib']:15.1f} | {row['peak_mib']:12.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
