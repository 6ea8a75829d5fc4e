"""Whether this extender is the active one: its kube-scheduler sidecar holds the scheduler's leader Lease.

Why: the scheduler Deployment runs two pods (kube-scheduler + this extender as a sidecar in each).
Only the leading kube-scheduler calls its extender's verbs, so only that extender's view holds the
pods waiting for quota; the standby's view says none wait. If the standby wrote GPUQuota status,
it would overwrite `waitingPods: 1` with 0 (seen twice in a two-replica install), and its requeue
patches would act on a view no scheduler uses. So everything the extender writes outside a verb
(quota status, requeue patches and their Events) is written only while `is_leader()`.

How it knows: kube-scheduler's leader-election identity is `os.Hostname() + "_" + a UUID`
(cmd/kube-scheduler/app/server.go). The containers of one pod share its hostname (the pod name,
its own UTS namespace), so this process is the leader's extender iff the Lease's
`spec.holderIdentity` starts with `<our hostname>_` and the lease has not expired
(`renewTime + leaseDurationSeconds` is in the future). The holder renews on the same node as we
run, so comparing its renewTime with our clock has no skew between machines. The Lease is
watched (one object, by field selector), so a new leader writes status within milliseconds of
taking the lease; a clock thread notices expiry when no renewal comes.

No Lease of that name at all means nobody elects (one kube-scheduler with `leaderElect: false`, or
the demo without any kube-scheduler): this extender is then the only one and writes. With leader
election on, kube-scheduler creates the Lease within seconds of starting and never deletes it
(client-go releasing a lease only empties `holderIdentity`, which makes nobody leader), so two replicas share
that state only before the first kube-scheduler starts, when no pod has been scheduled and both
views count the same pods. A Lease that cannot be read (403, API down) never makes us leader.

`AlwaysLeader` is for one replica without leader election and for `--cluster-file` (no API).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAMESPACE = "tensorai-system"  # manifests/base/scheduler/scheduler-config.yaml, leaderElection
DEFAULT_LEASE_NAME = "tensorai-scheduler"
# Where a pod's own namespace is mounted (client-go's in-cluster config reads the same file).
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

LeaderCallback = Callable[[bool], None]


class Leadership(Protocol):
    """What the writers ask: may I write now, and tell me when that changes."""

    def is_leader(self) -> bool:
        """True while this extender's writes are the ones that count."""
        ...

    def on_change(self, callback: LeaderCallback) -> None:
        """Call `callback(is_leader)` from a background thread each time leadership flips."""
        ...


class AlwaysLeader:
    """Leadership for a single replica without leader election, and for `--cluster-file` mode."""

    def is_leader(self) -> bool:
        """Always True: nobody else writes."""
        return True

    def on_change(self, callback: LeaderCallback) -> None:
        """Never flips, so the callback is never called."""


def parse_lease_ref(text: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` of a Lease as a pair: the `--leader-lease` flag's argparse type, whose error is the message."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(
            f"a Lease is named NAMESPACE/NAME, e.g. tensorai-system/tensorai-scheduler; got {text!r}"
        )
    return namespace, name


def default_lease_ref(namespace_file: str | None = POD_NAMESPACE_FILE) -> tuple[str, str]:
    """The Lease when `--leader-lease` is not given: `tensorai-scheduler` in this pod's own namespace.

    The install puts kube-scheduler's lease in the namespace the scheduler pods run in (the kustomize
    base: tensorai-system; the Helm chart: its `namespace.name`), so the pod's namespace follows a
    renamed install without a flag. `namespace_file` None (the extender was given a kubeconfig, so
    it is not using its pod's identity: a laptop, the e2e harness, a CI runner that is itself a
    pod) or no file there: tensorai-system.
    """
    namespace = ""
    if namespace_file is not None:
        try:
            with open(namespace_file, encoding="utf-8") as handle:
                namespace = handle.read().strip()
        except OSError:
            namespace = ""
    return (namespace or DEFAULT_LEASE_NAMESPACE), DEFAULT_LEASE_NAME


def _parse_micro_time(value: object) -> float | None:
    """A Lease MicroTime (RFC 3339, e.g. `2026-12-08T00:43:00.123456Z`) as epoch seconds; None if absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # the API always writes UTC with Z; a bare time is read as UTC too
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def lease_expiry_s(lease: dict | None) -> float | None:
    """Epoch seconds when the lease's holder stops holding it unless it renews; None if it holds nothing."""
    spec = (lease or {}).get("spec") or {}
    if not spec.get("holderIdentity"):
        return None  # released (client-go empties the holder when it lets go) or never taken
    renewed_s = _parse_micro_time(spec.get("renewTime")) or _parse_micro_time(spec.get("acquireTime"))
    duration_s = spec.get("leaseDurationSeconds")
    if renewed_s is None or not isinstance(duration_s, int) or isinstance(duration_s, bool) or duration_s <= 0:
        return None  # a lease we cannot date is not trusted to make us leader
    return renewed_s + duration_s


def holds_lease(lease: dict | None, hostname: str, now_s: float) -> bool:
    """True if the lease is held, unexpired at `now_s`, by a kube-scheduler on `hostname` (`<hostname>_<uuid>`)."""
    holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
    if not holder.startswith(f"{hostname}_"):
        return False
    expiry_s = lease_expiry_s(lease)
    return expiry_s is not None and now_s < expiry_s


class LeaseLeader:
    """Follows one Lease (list + watch by name) and says whether this pod's kube-scheduler holds it.

    Thread-safe; `on_change` callbacks run on the watch or the clock thread, never under its lock, and
    are hints: two flips in quick succession may reach a callback out of order, so a listener reads
    `is_leader()` again rather than trusting the argument.
    Until the first list answers, and while the API cannot be read, the last known state stands
    (a standby that cannot read the Lease stays standby; a leader keeps writing until its lease
    expires by the clock, as its kube-scheduler would stop scheduling then too).
    """

    def __init__(
        self,
        api_client: object,
        *,
        namespace: str = DEFAULT_LEASE_NAMESPACE,
        name: str = DEFAULT_LEASE_NAME,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        from kubernetes import client

        self.coordination = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.clock = clock
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self._lease: dict | None = None
        self._lease_known = False  # False until the first list answered: unknown is not "absent"
        self._leader = False
        self._callbacks: list[LeaderCallback] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._response: object | None = None
        self.synced = threading.Event()  # set after the first successful list

    # ------------------------------------------------------------------ interface
    def is_leader(self) -> bool:
        """True while this pod's kube-scheduler holds the unexpired lease, or no such Lease exists."""
        with self._changed:
            return self._leads()

    def _leads(self) -> bool:
        """`is_leader` under the lock."""
        if not self._lease_known:
            return False
        return self._lease is None or holds_lease(self._lease, self.hostname, self.clock())

    def on_change(self, callback: LeaderCallback) -> None:
        """Register `callback(is_leader)`, called on every flip (not on every renewal)."""
        with self._changed:
            self._callbacks.append(callback)

    def start(self) -> LeaseLeader:
        """Start the watch thread and the clock thread that notices expiry."""
        for target, name in ((self._watch, "leader-lease-watch"), (self._tick, "leader-lease-clock")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both threads (closes the open watch)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._response is not None:
            with contextlib.suppress(Exception):  # closing a dead socket may fail; we are stopping anyway
                self._response.close()  # type: ignore[attr-defined]
        for thread in self._threads:
            thread.join(timeout_s)

    # ------------------------------------------------------------------ state
    def _observe(self, lease: dict | None) -> None:
        """A new version of the lease (None: it does not exist); re-evaluate and wake the clock."""
        with self._changed:
            self._lease = lease
            self._lease_known = True
            self._changed.notify_all()
        self._evaluate()

    def _evaluate(self) -> None:
        """Fire the callbacks if leadership flipped since the last evaluation."""
        with self._changed:
            leader = self._leads()
            if leader == self._leader:
                return
            self._leader = leader
            callbacks = list(self._callbacks)
            holder = (self._lease.get("spec") or {}).get("holderIdentity") if self._lease else "nobody (no Lease)"
        log.info(
            "%s: Lease %s/%s held by %r (this pod: %s_*)",
            "leading, writing quota status" if leader else "standby, not writing",
            self.namespace,
            self.name,
            holder,
            self.hostname,
        )
        for callback in callbacks:
            try:
                callback(leader)
            except Exception:  # one listener's bug must not keep the others uninformed
                log.exception("leadership callback failed")

    def _tick(self) -> None:
        """Re-evaluate when the current holder's lease would expire (no renewal comes as an event)."""
        while not self._stop.is_set():
            with self._changed:
                expiry_s = lease_expiry_s(self._lease)
                now_s = self.clock()
                # a small margin past expiry, so the evaluation sees it expired; 1 s at most if no expiry is known
                wait_s = 1.0 if expiry_s is None or expiry_s <= now_s else min(expiry_s - now_s + 0.01, 60.0)
                self._changed.wait(wait_s)
            self._evaluate()

    # ------------------------------------------------------------------ API
    def _call(self, **kwargs: object) -> object:
        return self.coordination.list_namespaced_lease(
            self.namespace, field_selector=f"metadata.name={self.name}", _preload_content=False, **kwargs
        )

    def _list(self) -> str:
        response = self._call(_request_timeout=(10, 30))
        document = json.loads(response.data)  # type: ignore[attr-defined]
        items = document.get("items") or []
        self._observe(items[0] if items else None)
        self.synced.set()
        return str((document.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                self._response = self._call(
                    watch=True,
                    resource_version=resource_version,
                    timeout_seconds=self.watch_timeout_s,
                    allow_watch_bookmarks=True,
                    _request_timeout=(10, self.watch_timeout_s + 30),  # a half-open connection must not block
                )
                for line in iter_resp_lines(self._response):
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    event_type, obj = event.get("type"), event.get("object") or {}
                    if event_type == "ERROR":  # 410 Gone and friends: start over from a list
                        resource_version = None
                        break
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    if event_type == "BOOKMARK":
                        continue
                    self._observe(None if event_type == "DELETED" else obj)
            except ApiException as error:
                resource_version = None
                log.warning(
                    "cannot read Lease %s/%s (%s %s); retrying in %.1fs",
                    self.namespace,
                    self.name,
                    error.status,
                    error.reason,
                    self.retry_s,
                )
                self._stop.wait(self.retry_s)
            except Exception as error:  # any transport failure: relist after a pause
                if self._stop.is_set():
                    return
                resource_version = None
                log.warning("watch of Lease %s/%s failed: %s; retrying in %.1fs", self.namespace, self.name, error,
                            self.retry_s)
                self._stop.wait(self.retry_s)
            finally:
                self._response = None
