"""Soak the real extender and webhook processes with hostile traffic; print peak RSS per attack against
the memory limits in their Deployments.

The extender: a cluster file (default 5,000 nodes x 8 GPUs, 20,000 running pods,
`bench_extender.build_cluster`) served by the real `tensorai-extender --cluster-file` process. The
webhook: the real `tensorai-webhook --self-signed --no-kube` process. Each attack is one phase; the
process's peak RSS in the phase is its kernel high-water mark (VmHWM, reset per phase through
/proc/<pid>/clear_refs; RSS sampled every 20 ms where that is not allowed), and "after" is its RSS
2 s after the phase (what it kept). Attacks on the extender:

- filter flood, unique uids: 4 connections sending /filter with all node names, a new pod uid
  every call, for --flood-s seconds (each uid seen once, as from a flood of pending pods);
- the same with 1 MiB pods (an annotation near the API server's object size limit);
- near-limit bodies, one at a time: just under MAX_BODY_BYTES each - NodeNames of unknown names; a
  pod with one huge annotation; the worst case for decoding (a list of empty objects: ~150 bytes
  of Python object per 3 bytes of JSON);
- the same near-limit bodies, --concurrent at once (worst-case decoding each);
- /preempt with every node a candidate and every running pod a victim, 5 rounds;
- a body declared over the limit (refused before it is read).

The webhook: --webhook-concurrent (default 24) AdmissionReviews at once, each just under its
MAX_BODY_BYTES, of two shapes - a Pod with one huge annotation, and a Pod whose annotations are
many small entries (the costly shape to decode).

    .venv/bin/python tests/benchmarks/bench_soak.py [--nodes 5000] [--flood-s 20] [--concurrent 3]

Goal (issue 13): every peak under the Deployment's memory limit with margin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extender import Client, build_cluster, cpu_model, start_extender

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_extender_support import pod

from tensorai.proto.quantity import bytes_to_mib
from tensorai.scheduler import webhook_server
from tensorai.scheduler.extender import MAX_BODY_BYTES

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "base"


def memory_limit_mib(deployment: Path, container: str) -> int:
    """resources.limits.memory of one container of a Deployment manifest, in MiB."""
    for document in yaml.safe_load_all(deployment.read_text()):
        if not document or document.get("kind") != "Deployment":
            continue
        for entry in document["spec"]["template"]["spec"]["containers"]:
            if entry["name"] == container:
                return bytes_to_mib(entry["resources"]["limits"]["memory"])
    raise LookupError(f"no container {container!r} in {deployment}")


class Memory:
    """Peak and current RSS of one process, per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak_kib = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.hwm_resets = self._reset_hwm()
        threading.Thread(target=self._sample, daemon=True).start()

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _reset_hwm(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._status_kib("VmRSS")
            except OSError:
                return
            with self._lock:
                self._peak_kib = max(self._peak_kib, rss)
            time.sleep(0.02)

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def start_phase(self) -> None:
        with self._lock:
            self._peak_kib = self._status_kib("VmRSS")
        self.hwm_resets = self._reset_hwm()

    def peak_mib(self) -> float:
        with self._lock:
            sampled = self._peak_kib
        hwm = self._status_kib("VmHWM") if self.hwm_resets else 0
        return max(sampled, hwm) / 1024

    def stop(self) -> None:
        self._stop.set()


def run_phase(memory: Memory, name: str, attack: Callable[[], str], limit_mib: int, rows: list[tuple]) -> None:
    before = memory.rss_mib()
    memory.start_phase()
    started = time.perf_counter()
    note = attack()
    seconds = time.perf_counter() - started
    peak = memory.peak_mib()
    time.sleep(2.0)
    after = memory.rss_mib()
    rows.append((name, note, seconds, before, peak, after, limit_mib))
    print(
        f"  {name:<42} {note:<34} {seconds:6.1f} s  before {before:7.0f}  peak {peak:7.0f}  after {after:7.0f} MiB",
        flush=True,
    )


def _names_body(pod_json: bytes, names_json: bytes) -> bytes:
    return b'{"Pod":' + pod_json + b',"Nodes":null,"NodeNames":' + names_json + b"}"


def flood(port: int, names: list[str], seconds: float, annotation_bytes: int = 0, clients: int = 4) -> str:
    """/filter with all nodes and a new pod uid each call, from `clients` connections for `seconds`."""
    names_json = json.dumps(names, separators=(",", ":")).encode()
    template = pod("flood", 250, namespace="attack")
    if annotation_bytes:
        template["metadata"]["annotations"]["filler"] = "f" * annotation_bytes
    marker = template["metadata"]["uid"]
    encoded = json.dumps(template, separators=(",", ":"))
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(slot: int) -> None:
        client = Client(port)
        while time.perf_counter() < deadline:
            uid = str(uuid.uuid4())
            body = _names_body(
                encoded.replace(marker, uid).replace('"flood"', f'"flood-{uid[:8]}"').encode(), names_json
            )
            client.post_raw("/filter", body)
            counts[slot] += 1

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return f"{sum(counts)} filters, {sum(counts) / seconds:.0f}/s"


def near_limit_bodies(limit: int) -> dict[str, bytes]:
    """Bodies a little under `limit` bytes, of three shapes."""
    room = limit - 4096
    small_pod = json.dumps(pod("near-limit", 250, namespace="attack"), separators=(",", ":")).encode()
    count = room // 26
    unknown = json.dumps([f"unknown-node-{index:010d}" for index in range(count)], separators=(",", ":")).encode()
    fat = pod("fat", 250, namespace="attack")
    fat["metadata"]["annotations"]["filler"] = "a" * (room - 2048)
    empties = b"[" + b",".join([b"{}"] * ((room - 2048) // 3)) + b"]"
    return {
        "NodeNames of unknown names": _names_body(small_pod, unknown),
        "one huge annotation": _names_body(json.dumps(fat, separators=(",", ":")).encode(), b'["node-00000"]'),
        "list of empty objects": b'{"Pod":' + small_pod + b',"Junk":' + empties + b',"NodeNames":["node-00000"]}',
    }


def _status(connection: socket.socket, request: bytes) -> int:
    """Send a request, return the answer's HTTP status; a server that answers early (413, 503) and
    closes while the body is still going out is read anyway; 0 if it hung up without an answer."""
    with contextlib.suppress(OSError):
        connection.sendall(request)
    try:
        answer = connection.recv(64)
    except OSError:
        return 0
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def post_once(port: int, path: str, body: bytes) -> int:
    """POST on a fresh connection; the HTTP status (0 if the server hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return _status(connection, head.encode() + body)


def sequential(port: int, bodies: dict[str, bytes]) -> str:
    statuses = [post_once(port, "/filter", body) for body in bodies.values()]
    return f"{len(bodies)} bodies, HTTP {sorted(set(statuses))}"


def concurrent(port: int, body: bytes, count: int, path: str = "/filter") -> str:
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post_once(port, path, body))) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return f"{count} x {len(body) >> 20} MiB, HTTP {sorted(set(statuses))}"


def preempt_all(port: int, cluster: dict, rounds: int) -> str:
    victims: dict[str, list[str]] = {}
    for item in cluster["items"]:
        if item["kind"] == "Pod":
            victims.setdefault(item["spec"]["nodeName"], []).append(item["metadata"]["uid"])
    meta = {name: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": 0} for name, uids in victims.items()}
    body = json.dumps(
        {"Pod": pod("preemptor", 1000, namespace="attack"), "NodeNameToVictims": None, "NodeNameToMetaVictims": meta},
        separators=(",", ":"),
    ).encode()
    client = Client(port)
    took = [client.post_raw("/preempt", body)[0] for _ in range(rounds)]
    return f"{rounds} x {len(meta)} candidates, max {max(took):.2f} s"


def over_limit(port: int, limit: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            f"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: {limit * 64}\r\n\r\n".encode() + b"{" * 65536
        )
        answer = connection.recv(64)
    return f"declared {limit * 64 >> 20} MiB: {answer.split(b' ', 2)[1].decode()}"


def start_webhook() -> tuple[subprocess.Popen, int]:
    """The real webhook CLI (self-signed, no Kubernetes API) on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorai.scheduler.webhook_cli",
            "--self-signed",
            "--no-kube",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("webhook did not start")


def admission_reviews(limit: int) -> dict[str, bytes]:
    """AdmissionReviews of a Pod a little under `limit` bytes, two shapes."""
    room = limit - 8192

    def review(obj: dict) -> bytes:
        return json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": str(uuid.uuid4()),
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "attack",
                    "operation": "CREATE",
                    "object": obj,
                },
            },
            separators=(",", ":"),
        ).encode()

    huge = pod("huge", 0, namespace="attack")
    huge["metadata"]["annotations"]["filler"] = "h" * room
    many = pod("many", 0, namespace="attack")
    many["metadata"]["annotations"] = {f"k{index:07d}": "" for index in range(room // 14)}
    return {"one huge annotation": review(huge), "many small annotations": review(many)}


def post_tls(port: int, body: bytes) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the webhook's own self-signed CA; this is a local benchmark
    head = f"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=120) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        return _status(connection, head.encode() + body)


def webhook_concurrent(port: int, body: bytes, count: int) -> str:
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post_tls(port, body))) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return f"{count} x {len(body) >> 20} MiB, HTTP {sorted(set(statuses))}"


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    header = "| attack | what was sent | peak RSS MiB | RSS after MiB | limit MiB | peak / limit |"
    print(header)
    print("|---|---|---:|---:|---:|---:|")
    for name, note, _, _, peak, after, limit in rows:
        print(f"| {name} | {note} | {peak:.0f} | {after:.0f} | {limit} | {peak / limit:.0%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=20_000, help="running pods in the cluster")
    parser.add_argument("--flood-s", type=float, default=20.0, help="seconds of each filter flood")
    parser.add_argument("--concurrent", type=int, default=3, help="near-limit bodies at once (extender)")
    parser.add_argument("--webhook-concurrent", type=int, default=24, help="max-size reviews at once (webhook)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-webhook", action="store_true")
    args = parser.parse_args(argv)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    extender_limit = memory_limit_mib(MANIFESTS / "scheduler" / "deployment.yaml", "extender")
    webhook_limit = memory_limit_mib(MANIFESTS / "webhook" / "deployment.yaml", "webhook")
    cluster = build_cluster(args.nodes, args.pods, args.seed)
    names = [item["metadata"]["name"] for item in cluster["items"] if item["kind"] == "Node"]
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cluster.json")
        with open(path, "w") as handle:
            json.dump(cluster, handle)
        process, port = start_extender(path)
        memory = Memory(process.pid)
        try:
            print(
                f"extender ({args.nodes} nodes, {args.pods} running pods) at start: {memory.rss_mib():.0f} MiB; "
                f"Deployment limit {extender_limit} MiB; body limit {MAX_BODY_BYTES >> 20} MiB"
            )
            Client(port).post_raw(
                "/filter", _names_body(json.dumps(pod("warm", 250)).encode(), json.dumps(names).encode())
            )
            bodies = near_limit_bodies(MAX_BODY_BYTES)
            phases = [
                ("filter flood, unique uids", lambda: flood(port, names, args.flood_s)),
                ("filter flood, unique uids, 1 MiB pods", lambda: flood(port, names, args.flood_s / 2, 1 << 20)),
                ("near-limit bodies, one at a time", lambda: sequential(port, bodies)),
                (
                    f"near-limit bodies, {args.concurrent} at once (worst decode)",
                    lambda: concurrent(port, bodies["list of empty objects"], args.concurrent),
                ),
                ("preempt, every node a candidate", lambda: preempt_all(port, cluster, 5)),
                ("body over the limit", lambda: over_limit(port, MAX_BODY_BYTES)),
            ]
            for name, attack in phases:
                run_phase(memory, name, attack, extender_limit, rows)
        finally:
            memory.stop()
            process.terminate()
            process.wait(timeout=30)
    print_table(f"extender, {args.nodes} nodes x 8 GPUs, {args.pods} running pods", rows)
    if args.skip_webhook:
        return 0
    rows = []
    process, port = start_webhook()
    memory = Memory(process.pid)
    try:
        print(
            f"\nwebhook at start: {memory.rss_mib():.0f} MiB; Deployment limit {webhook_limit} MiB; "
            f"body limit {webhook_server.MAX_BODY_BYTES >> 20} MiB"
        )
        for shape, body in admission_reviews(webhook_server.MAX_BODY_BYTES).items():
            run_phase(
                memory,
                f"{args.webhook_concurrent} reviews at once, {shape}",
                lambda body=body: webhook_concurrent(port, body, args.webhook_concurrent),
                webhook_limit,
                rows,
            )
    finally:
        memory.stop()
        process.terminate()
        process.wait(timeout=30)
    print_table("webhook", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
