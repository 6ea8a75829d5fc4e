"""Pod identity without a node lock: the claim rule (pure) and the whole protocol end to end.

End-to-end tests run the real plugin (`Plugin`, kube mode) against the Kubernetes API stand-in via
the real `kubernetes` client, with the stub kubelet driving it over the real v1beta1 sockets.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.demo.kube_standin import KubeStandin
from tensorai.demo.stub_kubelet import AdmissionError, StubKubelet, wait_until
from tensorai.deviceplugin.allocations import AllocationBook
from tensorai.deviceplugin.cli import Plugin, PluginConfig
from tensorai.deviceplugin.identity import IdentityError, PodIdentity, PodWatch
from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.kubeclient import RawCoreApi
from tensorai.proto.podslots import GPUPortion, Owner, ambiguous_with, parse_pod

NODE = "node-a"
G0, G1, G2 = "GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-0000-0000-0000-000000000000", "GPU-2"


def make_pod(
    name: str,
    containers: list[tuple[str, int]],
    *,
    assignment: dict[str, list[tuple[str, int, int]]] | None = None,
    node: str = NODE,
    uid: str | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """A pod as the API returns it; `assignment` = container -> [(gpu uuid, milli, memory MiB)]."""
    notes = dict(annotations or {})
    if assignment is not None:
        message = pb.Assignment(node_name=node, decided_at=contract.timestamp_now())
        for container, shares in assignment.items():
            entry = message.containers.add(name=container)
            for uuid, milli, memory in shares:
                entry.gpus.add(uuid=uuid, milli=milli, memory_mib=memory)
        notes[contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(message)
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "annotations": notes},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": c, "image": "worker", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: str(m)}}}
                for c, m in containers
            ],
        },
        "status": {"phase": "Pending"},
    }
    if uid is not None:
        pod["metadata"]["uid"] = uid
    return pod


def fractional(name: str, gpu: str, milli: int, memory: int, **extra: Any) -> dict[str, Any]:
    return make_pod(name, [("main", milli)], assignment={"main": [(gpu, milli, memory)]}, uid=f"uid-{name}", **extra)


# --- the claim rule, pure -------------------------------------------------------------------------


def test_pods_bound_elsewhere_or_without_vgpu_have_no_slots() -> None:
    assert parse_pod(fractional("a", G0, 250, 1000, node="node-b"), NODE, 1) is None
    plain = make_pod("b", [], uid="uid-b")
    assert parse_pod(plain, NODE, 1) is None


def test_an_assignment_for_another_node_or_that_does_not_parse_is_never_guessed() -> None:
    wrong_node = fractional("a", G0, 250, 1000)
    wrong_node["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = json.dumps(
        {"nodeName": "node-b", "containers": [{"name": "main", "gpus": [{"uuid": G0, "milli": 250}]}]}
    )
    broken = fractional("b", G0, 250, 1000)
    broken["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = "{not json"
    for pod in (wrong_node, broken):
        state = parse_pod(pod, NODE, 1)
        assert state is not None and state.slots == () and state.problems
    identity = PodIdentity(NODE, AllocationBook(), catch_up_s=0.05)
    identity.replace_all([broken])
    with pytest.raises(IdentityError, match=r"problems.*unusable"):
        identity.claim(frozenset({G0}), 250)


def test_interchangeable_pods_fill_each_others_positions() -> None:
    """Two pods of one class on different GPUs: Allocate on either GPU is safe for either pod."""
    book = AllocationBook()
    identity = PodIdentity(NODE, book, catch_up_s=0.05)
    identity.replace_all([fractional("a", G0, 250, 1000), fractional("b", G1, 250, 1000)])
    assert identity.target_gpu_sets(250) == [(G0,), (G1,)]
    claim = identity.claim(frozenset({G1}), 250)
    assert claim.slot.pod_name == "b" and claim.portions == (GPUPortion(G1, 250, 1000),)
    book.add([f"{G1}::{i:04d}" for i in range(250)], claim.portions, claim.slot.owner)
    identity.finish(claim)
    # the remaining position is G0; an Allocate on G1 again would be unaccounted
    assert identity.target_gpu_sets(250) == [(G0,)]
    with pytest.raises(IdentityError, match="did not account"):
        identity.claim(frozenset({G1}), 250, timeout_s=0.05)
    assert identity.claim(frozenset({G0}), 250).slot.pod_name == "a"


def test_pods_of_one_size_but_different_memory_are_refused_after_a_bounded_wait() -> None:
    identity = PodIdentity(NODE, AllocationBook())
    identity.replace_all([fractional("a", G0, 250, 1000), fractional("b", G0, 250, 2000)])
    started = time.monotonic()
    with pytest.raises(IdentityError, match="cannot tell which pod"):
        identity.claim(frozenset({G0}), 250, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0


def test_different_constraints_make_pods_non_interchangeable() -> None:
    identity = PodIdentity(NODE, AllocationBook())
    exclusive = {contract.ANNOTATION_EXCLUSIVE: "true"}
    identity.replace_all([fractional("a", G0, 250, 1000), fractional("b", G1, 250, 1000, annotations=exclusive)])
    with pytest.raises(IdentityError, match="cannot tell"):
        identity.claim(frozenset({G0}), 250, timeout_s=0.05)


def test_allocate_waits_for_the_watch_to_show_the_pod_kubelet_is_admitting() -> None:
    identity = PodIdentity(NODE, AllocationBook())
    identity.replace_all([])
    timer = threading.Timer(0.2, identity.upsert_pod, args=(fractional("late", G0, 500, 4000),))
    timer.start()
    try:
        claim = identity.claim(frozenset({G0}), 500, timeout_s=5.0)
    finally:
        timer.cancel()
    assert claim.slot.pod_name == "late"


def test_no_waiting_pod_of_that_size_is_a_clear_refusal() -> None:
    identity = PodIdentity(NODE, AllocationBook())
    identity.replace_all([fractional("a", G0, 250, 1000)])
    with pytest.raises(IdentityError, match="no pod bound to node 'node-a' is waiting for 500"):
        identity.claim(frozenset({G0}), 500, timeout_s=0.05)


def test_allocated_annotation_marks_containers_done_after_a_plugin_restart() -> None:
    done = fractional("a", G0, 250, 1000)
    done["metadata"]["annotations"][contract.ANNOTATION_ALLOCATED] = done["metadata"]["annotations"][
        contract.ANNOTATION_ASSIGNMENT
    ]
    identity = PodIdentity(NODE, AllocationBook())
    identity.replace_all([done, fractional("b", G1, 250, 1000)])
    assert [slot.pod_name for slot in identity.pending_slots(250)] == ["b"]


def test_a_finished_or_deleted_pod_releases_its_allocations() -> None:
    book = AllocationBook()
    identity = PodIdentity(NODE, book)
    identity.on_pod_gone = book.release_pod
    identity.replace_all([fractional("a", G0, 250, 1000), fractional("b", G1, 250, 1000)])
    for name, gpu in (("a", G0), ("b", G1)):
        book.add([f"{gpu}::0001"], [GPUPortion(gpu, 1, 1)], Owner("default", name, f"uid-{name}", "main"))
    finished = fractional("a", G0, 250, 1000)
    finished["status"]["phase"] = "Succeeded"
    identity.upsert_pod(finished)
    identity.remove_pod("uid-b")
    assert book.records() == []


# --- end to end against the API stand-in -----------------------------------------------------------


class Node:
    """The API stand-in, a stub kubelet and the real plugin (kube mode) on one simulated node."""

    def __init__(self, api: KubeStandin, kubelet: StubKubelet, plugin: Plugin) -> None:
        self.api, self.kubelet, self.plugin = api, kubelet, plugin

    @property
    def uuids(self) -> list[str]:
        return self.plugin.table.uuids

    def settle(self) -> None:
        """Reconcile with kubelet's listing now and wait for the annotation writes."""
        self.plugin.reconciler.run_once()
        assert self.plugin.writer is not None and self.plugin.writer.flush(5.0)

    def pods(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.api.list_objects("pods")}


@pytest.fixture
def node() -> Iterator[Node]:
    workdir = tempfile.mkdtemp(prefix="dpid", dir="/tmp")  # short: unix socket paths max 107 chars
    try:
        with KubeStandin() as api:
            api.add_node(NODE)
            kubelet = StubKubelet(f"{workdir}/dp", pod_resources_socket=f"{workdir}/pr.sock",
                                  rng=random.Random(7)).start()
            config = PluginConfig(
                backend="sim", sim_gpus="4xH100:81559", node_name=NODE, device_plugin_dir=f"{workdir}/dp",
                pod_resources_socket=f"{workdir}/pr.sock", kubeconfig=api.kubeconfig_path, metrics_port=0,
                catch_up_s=5.0, reconcile_interval_s=1.0, registration_poll_s=0.1,
            )
            current = Node(api, kubelet, Plugin(config).start())
            try:
                assert kubelet.wait_for_registration(1, 10) and kubelet.wait_for_updates(1, 10)
                yield current
            finally:
                current.plugin.stop()  # a test may have replaced it (plugin restart)
                kubelet.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def allocated_of(pod: dict[str, Any]) -> dict[str, list[tuple[str, int, int]]] | None:
    text = (pod["metadata"].get("annotations") or {}).get(contract.ANNOTATION_ALLOCATED)
    if text is None:
        return None
    message = contract.decode_assignment(text)
    return {c.name: sorted((g.uuid, g.milli, g.memory_mib) for g in c.gpus) for c in message.containers}


def assignment_of(pod: dict[str, Any]) -> dict[str, list[tuple[str, int, int]]]:
    message = contract.decode_assignment(pod["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT])
    return {c.name: sorted((g.uuid, g.milli, g.memory_mib) for g in c.gpus) for c in message.containers}


def accounted_per_gpu(pods: dict[str, dict[str, Any]]) -> dict[str, Counter[tuple[int, int]]]:
    """What the scheduler counts on each GPU: every bound pod's Assignment (which the plugin keeps true)."""
    per_gpu: dict[str, Counter[tuple[int, int]]] = {}
    for pod in pods.values():
        for entries in assignment_of(pod).values():
            for uuid, milli, memory in entries:
                per_gpu.setdefault(uuid, Counter())[(milli, memory)] += 1
    return per_gpu


def running_per_gpu(node: Node, envs: dict[str, dict[str, str]]) -> dict[str, Counter[tuple[int, int]]]:
    """What physically runs on each GPU: kubelet's device IDs, with the limits the container was given."""
    per_gpu: dict[str, Counter[tuple[int, int]]] = {}
    for (_, pod_name, _), ids in node.kubelet.allocations().items():
        gpus = {contract.gpu_of_device_id(d) for d in ids}
        env = envs[pod_name]
        milli, memory = int(env[contract.ENV_VGPU_MILLI]), int(env[contract.ENV_VGPU_MEMORY_MIB])
        for uuid in gpus:
            per_gpu.setdefault(uuid, Counter())[(milli // len(gpus), memory // len(gpus))] += 1
    return per_gpu


SHAPES = [(250, 16000), (250, 12000), (500, 40000), (100, 8000), (1000, 80000)]


@pytest.mark.parametrize("seed", [20261123, 5])
def test_no_container_ever_runs_on_a_gpu_the_scheduler_did_not_account_for(node: Node, seed: int) -> None:
    """Randomised: a binpacking 'extender' binds pods with Assignments (obeying the one rule through
    `ambiguous_with`: never two waiting pods of one size but different class on a node), a kubelet
    admits them in random order,
    pods finish; after every admission each GPU's running containers must be a sub-multiset of what
    the scheduler counts there, every container gets its own pod's limits on the GPU it really got,
    and once reconciled every pod's allocated annotation names the GPU its device IDs are on."""
    rng = random.Random(seed)
    uuids = node.uuids
    waiting: dict[str, tuple[int, int]] = {}  # bound, not admitted: name -> shape
    running: dict[str, tuple[int, int]] = {}
    envs: dict[str, dict[str, str]] = {}
    admissions = swaps = 0
    for step in range(80):
        action = rng.random()
        if action < 0.45 and len(waiting) < 6:
            milli, memory = rng.choice(SHAPES)
            used = Counter()
            for counter_gpu, shapes in accounted_per_gpu(node.pods()).items():
                used[counter_gpu] = sum(m * n for (m, _), n in shapes.items())
            fits = [u for u in uuids if 1000 - used[u] >= milli]
            if not fits:
                continue
            gpu = min(fits, key=lambda u: (1000 - used[u], uuids.index(u)))  # binpack
            name = f"p{step}"
            candidate = make_pod(name, [("main", milli)], assignment={"main": [(gpu, milli, memory)]})
            if ambiguous_with(candidate, list(node.pods().values()), NODE):
                continue  # the protocol's one rule for the scheduler: this bind waits
            node.api.add_pod(candidate)
            waiting[name] = (milli, memory)
        elif action < 0.8 and waiting:
            name = rng.choice(sorted(waiting))
            admitted = node.kubelet.admit_pod(node.api.get_object("pods", name, "default"))
            envs[name] = dict(admitted["main"].response.envs)
            running[name] = waiting.pop(name)
            admissions += 1
            ids = admitted["main"].device_ids
            gpus = {contract.gpu_of_device_id(d) for d in ids}
            assert len(gpus) == 1, "a fractional or single whole GPU request landed on several GPUs"
            swaps += assignment_of(node.api.get_object("pods", name, "default"))["main"][0][0] not in gpus
            assert envs[name][contract.ENV_VISIBLE_DEVICES] == gpus.pop()
            assert (int(envs[name][contract.ENV_VGPU_MILLI]), int(envs[name][contract.ENV_VGPU_MEMORY_MIB])) == \
                running[name], "a container got another class's limits"
            if rng.random() < 0.5:
                node.settle()
            node.plugin.book.check_invariants()
            accounted, physical = accounted_per_gpu(node.pods()), running_per_gpu(node, envs)
            for uuid, shapes in physical.items():
                assert not shapes - accounted.get(uuid, Counter()), f"unaccounted work on {uuid}"
        elif running:
            node.settle()  # the protocol's assumption: a pod lives longer than one reconcile (~0.2 s)
            name = rng.choice(sorted(running))
            node.kubelet.remove_pod("default", name)
            node.api.delete_object("pods", name, "default")
            del running[name]
    node.settle()
    for name, pod in node.pods().items():
        if name not in running:
            continue
        ids = node.kubelet.allocations()[("default", name, "main")]
        (gpu,) = {contract.gpu_of_device_id(d) for d in ids}
        assert allocated_of(pod) == {"main": [(gpu, *running[name])]}
        assert assignment_of(pod) == {"main": [(gpu, *running[name])]}, "the Assignment no longer says where it runs"
    print(f"seed {seed}: {admissions} admissions, {swaps} of them on another pod's GPU")
    assert admissions >= 10
    assert wait_until(lambda: len(node.plugin.book.records()) == len(running), 5.0)


def test_the_pod_kubelet_admits_gets_its_own_gpu_because_kubelets_listing_names_it(node: Node) -> None:
    """Real kubelet lists a pod from the moment it starts admitting it (found on the real v1.36 kubelet:
    it admits in creation-time order with ties unordered, not in bind order, and short pods ended before
    a swap could be corrected). Two interchangeable pods, the younger admitted first: no guess, no swap."""
    g0, g1 = node.uuids[:2]
    node.api.add_pod(make_pod("a", [("main", 250)], assignment={"main": [(g0, 250, 9000)]}))
    node.api.add_pod(make_pod("b", [("main", 250)], assignment={"main": [(g1, 250, 9000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 2, 5.0)
    b = node.kubelet.admit_pod(node.api.get_object("pods", "b", "default"))
    assert b["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g1
    a = node.kubelet.admit_pod(node.api.get_object("pods", "a", "default"))
    assert a["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g0
    node.settle()
    pods = node.pods()
    assert assignment_of(pods["b"]) == allocated_of(pods["b"]) == {"main": [(g1, 250, 9000)]}
    assert assignment_of(pods["a"]) == allocated_of(pods["a"]) == {"main": [(g0, 250, 9000)]}


def test_a_pod_kubelet_admits_before_our_watch_shows_it_is_waited_for_not_given_a_neighbours_gpu(
        node: Node) -> None:
    """Seen on the real kubelet: kubelet admitted b while our watch showed only a waiting; the call went to
    a (its GPU), to be corrected later. kubelet's listing shows b, not a: wait for the watch instead."""
    g0, g1, g2 = node.uuids[:3]
    node.api.add_pod(make_pod("warm", [("main", 250)], assignment={"main": [(g2, 250, 9000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 1, 5.0)
    node.kubelet.admit_pod(node.api.get_object("pods", "warm", "default"))  # the plugin learns kubelet lists pods
    node.api.add_pod(make_pod("a", [("main", 250)], assignment={"main": [(g0, 250, 9000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 1, 5.0)
    b = make_pod("b", [("main", 250)], assignment={"main": [(g1, 250, 9000)]})
    late = threading.Timer(0.5, node.api.add_pod, args=(b,))  # our watch delivers b after kubelet has it
    late.start()
    try:
        admitted = node.kubelet.admit_pod(b)
    finally:
        late.join()
    assert admitted["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g1


def test_a_pod_kubelet_puts_on_a_neighbours_gpu_has_both_assignments_moved_at_once(node: Node) -> None:
    """Seen on the real kubelet: it still counted a deleted pod's IDs on b's GPU, so b went to a's GPU
    (same class); the plugin must rewrite both Assignments then, not leave b's naming a GPU it is not on."""
    g0, g1 = node.uuids[:2]
    node.api.add_pod(make_pod("a", [("main", 250)], assignment={"main": [(g0, 250, 9000)]}))
    node.api.add_pod(make_pod("b", [("main", 250)], assignment={"main": [(g1, 250, 9000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 2, 5.0)
    # kubelet still holds all of g1 for a pod that is gone
    node.kubelet.hold_devices("default", "ghost", "main", [contract.device_id(g1, i) for i in range(1000)])
    b = node.kubelet.admit_pod(node.api.get_object("pods", "b", "default"))
    assert b["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g0
    assert node.plugin.writer is not None and node.plugin.writer.flush(5.0)
    assert wait_until(lambda: assignment_of(node.pods()["b"]) == {"main": [(g0, 250, 9000)]}, 5.0)
    assert assignment_of(node.pods()["a"]) == {"main": [(g1, 250, 9000)]}
    node.kubelet.remove_pod("default", "ghost")
    a = node.kubelet.admit_pod(node.api.get_object("pods", "a", "default"))
    assert a["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g1
    node.settle()
    pods = node.pods()
    assert allocated_of(pods["a"]) == assignment_of(pods["a"]) == {"main": [(g1, 250, 9000)]}
    assert allocated_of(pods["b"]) == assignment_of(pods["b"]) == {"main": [(g0, 250, 9000)]}


def test_a_swap_between_interchangeable_pods_is_corrected_on_the_annotations(node: Node) -> None:
    node.kubelet.list_admitting = False  # kubelet's listing cannot name the pod (e.g. it answered too late)
    g0, g1 = node.uuids[:2]
    node.api.add_pod(make_pod("a", [("main", 250)], assignment={"main": [(g0, 250, 9000)]}))
    node.api.add_pod(make_pod("b", [("main", 250)], assignment={"main": [(g1, 250, 9000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 2, 5.0)
    # kubelet admits b first; the plugin, not knowing, prefers the oldest pod's GPU (a's, g0)
    b = node.kubelet.admit_pod(node.api.get_object("pods", "b", "default"))
    assert b["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g0
    node.settle()
    pods = node.pods()
    assert allocated_of(pods["b"]) == {"main": [(g0, 250, 9000)]}
    assert allocated_of(pods["a"]) is None
    # the plugin swapped the two placements, so the scheduler's count per GPU stays true
    assert assignment_of(pods["b"]) == {"main": [(g0, 250, 9000)]}
    assert assignment_of(pods["a"]) == {"main": [(g1, 250, 9000)]}
    a = node.kubelet.admit_pod(node.api.get_object("pods", "a", "default"))
    assert a["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g1
    node.settle()
    assert allocated_of(node.pods()["a"]) == {"main": [(g1, 250, 9000)]}


def test_pods_of_one_size_and_different_limits_get_their_own_when_kubelets_listing_names_them(node: Node) -> None:
    g0 = node.uuids[0]
    node.api.add_pod(make_pod("small", [("main", 250)], assignment={"main": [(g0, 250, 4000)]}))
    node.api.add_pod(make_pod("large", [("main", 250)], assignment={"main": [(g0, 250, 16000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 2, 5.0)
    large = node.kubelet.admit_pod(node.api.get_object("pods", "large", "default"))
    assert large["main"].response.envs[contract.ENV_VGPU_MEMORY_MIB] == "16000"
    small = node.kubelet.admit_pod(node.api.get_object("pods", "small", "default"))
    assert small["main"].response.envs[contract.ENV_VGPU_MEMORY_MIB] == "4000"


def test_breaking_the_binding_rule_fails_admission_clearly_instead_of_mixing_limits(node: Node) -> None:
    node.kubelet.list_admitting = False  # without kubelet naming the pod, the bind rule is what keeps it safe
    g0 = node.uuids[0]
    node.plugin.identity.catch_up_s = 0.3
    node.api.add_pod(make_pod("small", [("main", 250)], assignment={"main": [(g0, 250, 4000)]}))
    node.api.add_pod(make_pod("large", [("main", 250)], assignment={"main": [(g0, 250, 16000)]}))
    assert wait_until(lambda: len(node.plugin.identity.pending_slots(250)) == 2, 5.0)
    with pytest.raises(AdmissionError) as caught:
        node.kubelet.admit_pod(node.api.get_object("pods", "large", "default"))
    assert caught.value.code == "FAILED_PRECONDITION" and "cannot tell which pod" in caught.value.message
    assert node.kubelet.allocations() == {} and node.plugin.book.records() == []


def test_a_pod_without_assignment_gets_the_binpack_choice(node: Node) -> None:
    node.api.add_pod(make_pod("plain", [("main", 300)]))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(300)), 5.0)
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "plain", "default"))
    envs = admitted["main"].response.envs
    assert envs[contract.ENV_VGPU_MILLI] == "300" and int(envs[contract.ENV_VGPU_MEMORY_MIB]) > 0
    node.settle()
    assert allocated_of(node.pods()["plain"])["main"][0][0] == envs[contract.ENV_VISIBLE_DEVICES]


def test_pod_watch_relists_after_the_watch_expires() -> None:
    with KubeStandin() as api:
        identity = PodIdentity(NODE, AllocationBook())
        watch = PodWatch(RawCoreApi(api.api_client()), identity, watch_timeout_s=5).start()
        try:
            assert identity.synced.wait(5.0)
            api.add_pod(make_pod("first", [("main", 250)]))
            assert wait_until(lambda: len(identity.pods()) == 1, 5.0)
            api.expire_watches()
            api.add_pod(make_pod("second", [("main", 250)]))
            api.delete_object("pods", "first", "default")
            assert wait_until(lambda: [p.name for p in identity.pods()] == ["second"], 10.0)
        finally:
            watch.stop()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    annotation=st.one_of(JSON.map(json.dumps), st.text(max_size=50)),
    limit=st.one_of(st.text(max_size=12), st.integers(-5, 5000), JSON),
    junk_spec=JSON,
)
def test_malformed_pods_and_annotations_never_crash_the_identity(annotation: str, limit: Any, junk_spec: Any) -> None:
    """A bad Assignment is never guessed (its pod gets no slot); junk pods are ignored."""
    identity = PodIdentity(NODE, AllocationBook(), catch_up_s=0.0)
    pod = make_pod("hostile", [("main", 250)], uid="uid-hostile")
    pod["metadata"]["annotations"] = {
        contract.ANNOTATION_ASSIGNMENT: annotation,
        contract.ANNOTATION_ALLOCATED: annotation,
    }
    pod["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] = limit
    identity.upsert_pod(pod)
    identity.upsert_pod({"metadata": {"uid": "uid-junk"}, "spec": junk_spec})
    identity.upsert_pod({"metadata": junk_spec, "spec": {"nodeName": NODE}})
    for state in identity.pods():
        assert state.uid == "uid-hostile"  # the junk pods never enter
        for slot in state.slots:
            assert slot.assigned and all(1 <= p.milli <= 1000 for p in slot.portions)


def test_a_restarted_plugin_adopts_kubelets_allocations_and_keeps_going(node: Node) -> None:
    g0, g1 = node.uuids[:2]
    node.api.add_pod(make_pod("old", [("main", 500)], assignment={"main": [(g0, 500, 30000)]}))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(500)), 5.0)
    node.kubelet.admit_pod(node.api.get_object("pods", "old", "default"))
    node.settle()
    config = node.plugin.config
    node.plugin.stop()
    node.plugin = Plugin(config).start()
    assert node.kubelet.wait_for_registration(2, 10)
    assert wait_until(lambda: node.plugin.reconciler.runs >= 1, 5.0)
    (share,) = node.plugin.book.shares()  # adopted from kubelet's listing, limits from the annotation
    assert (share.pod_name, share.gpu_uuid, share.milli, share.memory_mib) == ("old", g0, 500, 30000)
    assert node.plugin.identity.pending_slots(500) == []
    node.api.add_pod(make_pod("new", [("main", 500)], assignment={"main": [(g1, 500, 30000)]}))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(500)), 5.0)
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "new", "default"))
    assert admitted["main"].response.envs[contract.ENV_VISIBLE_DEVICES] == g1


def test_the_scheduler_can_ask_which_waiting_pods_make_a_bind_unsafe() -> None:
    waiting_small = fractional("small", G0, 250, 4000)
    same_class = fractional("twin", G1, 250, 4000)
    other_size = fractional("half", G0, 500, 4000)
    done = fractional("done", G0, 250, 16000)
    done["metadata"]["annotations"][contract.ANNOTATION_ALLOCATED] = done["metadata"]["annotations"][
        contract.ANNOTATION_ASSIGNMENT
    ]
    bound = [waiting_small, same_class, other_size, done]
    candidate = fractional("large", G1, 250, 16000)
    del candidate["spec"]["nodeName"]
    assert ambiguous_with(candidate, bound, NODE) == ["default/small", "default/twin"]
    assert ambiguous_with(fractional("third", G2, 250, 4000), bound, NODE) == []


# --- init containers: kubelet hands their devices on to the pod's next container ---------------------


def pod_with_init(
    name: str, init: tuple[str, int, int, str], main: tuple[str, int, int, str], *, sidecar: bool = False
) -> dict[str, Any]:
    """A pod with one GPU init container and one GPU app container; each is (name, milli, memory, gpu)."""
    (init_name, init_milli, init_memory, init_gpu), (main_name, main_milli, main_memory, main_gpu) = init, main
    pod = make_pod(name, [(main_name, main_milli)], uid=f"uid-{name}", assignment={
        init_name: [(init_gpu, init_milli, init_memory)], main_name: [(main_gpu, main_milli, main_memory)]})
    container = {"name": init_name, "image": "prep", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI:
                                                                             str(init_milli)}}}
    if sidecar:
        container["restartPolicy"] = "Always"
    pod["spec"]["initContainers"] = [container]
    return pod


def limits_of(admitted: Any) -> tuple[str, int, int]:
    envs = admitted.response.envs
    milli, memory = int(envs[contract.ENV_VGPU_MILLI]), int(envs[contract.ENV_VGPU_MEMORY_MIB])
    return envs[contract.ENV_VISIBLE_DEVICES], milli, memory


def test_an_app_container_reusing_its_init_containers_slices_gets_its_own_limits(node: Node) -> None:
    g0, g1 = node.uuids[:2]
    node.api.add_pod(pod_with_init("prep", ("warmup", 500, 40000, g0), ("main", 250, 20000, g0)))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(500)), 5.0)
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "prep", "default"))
    assert limits_of(admitted["warmup"]) == (g0, 500, 40000)
    assert limits_of(admitted["main"]) == (g0, 250, 20000)
    assert set(admitted["main"].device_ids) < set(admitted["warmup"].device_ids), "kubelet reuses the init slices"
    assert admitted["main"].preferred == (), "kubelet asks for no preference when reused slices cover the request"
    node.settle()
    assert allocated_of(node.pods()["prep"]) == {"main": [(g0, 250, 20000)]}
    assert [r.owner.container_name for r in node.plugin.book.records()] == ["main"]
    # the finished init container is not waiting any more: a later 500-milli pod is not confused with it
    node.api.add_pod(fractional("next", g1, 500, 38000))
    assert wait_until(lambda: "next" in {s.pod_name for s in node.plugin.identity.pending_slots(500)}, 5.0)
    assert [s.pod_name for s in node.plugin.identity.pending_slots(500)] == ["next"]
    later = node.kubelet.admit_pod(node.api.get_object("pods", "next", "default"))
    assert limits_of(later["main"]) == (g1, 500, 38000)


def test_an_app_container_larger_than_its_init_container_grows_on_the_init_gpu(node: Node) -> None:
    g0 = node.uuids[2]
    node.api.add_pod(pod_with_init("grow", ("fetch", 250, 10000, g0), ("main", 600, 45000, g0)))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(250)), 5.0)
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "grow", "default"))
    assert limits_of(admitted["fetch"]) == (g0, 250, 10000)
    assert limits_of(admitted["main"]) == (g0, 600, 45000)
    assert set(admitted["fetch"].device_ids) < set(admitted["main"].device_ids)
    assert {contract.gpu_of_device_id(d) for d in admitted["main"].device_ids} == {g0}
    node.settle()
    assert allocated_of(node.pods()["grow"]) == {"main": [(g0, 600, 45000)]}


def test_reused_init_slices_on_another_gpu_than_the_app_assignment_are_refused_with_the_reason(node: Node) -> None:
    g0, g1 = node.uuids[:2]
    node.plugin.identity.catch_up_s = 0.3
    node.api.add_pod(pod_with_init("split", ("warmup", 500, 40000, g0), ("main", 250, 20000, g1)))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(500)), 5.0)
    with pytest.raises(AdmissionError) as caught:
        node.kubelet.admit_pod(node.api.get_object("pods", "split", "default"))
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "init container" in caught.value.message and g1 in caught.value.message
    assert node.kubelet.allocations() == {}
    assert wait_until(lambda: node.plugin.book.records() == [], 2.0), "the refused pod holds nothing"


def test_a_sidecar_init_container_keeps_its_own_slices_beside_the_app(node: Node) -> None:
    g0 = node.uuids[3]
    node.api.add_pod(pod_with_init("side", ("proxy", 100, 5000, g0), ("main", 250, 20000, g0), sidecar=True))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(100)), 5.0)
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "side", "default"))
    assert set(admitted["proxy"].device_ids).isdisjoint(admitted["main"].device_ids)
    assert limits_of(admitted["proxy"]) == (g0, 100, 5000) and limits_of(admitted["main"]) == (g0, 250, 20000)
    node.settle()
    assert allocated_of(node.pods()["side"]) == {"main": [(g0, 250, 20000)], "proxy": [(g0, 100, 5000)]}


def test_an_init_container_is_done_once_the_pod_status_shows_it_started() -> None:
    book = AllocationBook()
    identity = PodIdentity(NODE, book, catch_up_s=0.0)
    pod = pod_with_init("restarted", ("warmup", 500, 40000, G0), ("main", 250, 20000, G0))
    identity.upsert_pod(pod)
    assert [s.container for s in identity.pending_slots(500)] == ["warmup"]
    pod["status"]["initContainerStatuses"] = [{"name": "warmup", "state": {"terminated": {"exitCode": 0}}}]
    identity.upsert_pod(pod)  # e.g. a restarted plugin reading a pod whose init container already ran
    assert identity.pending_slots(500) == []
    assert [s.container for s in identity.pending_slots(250)] == ["main"]


def test_a_same_size_init_container_is_claimed_before_its_app_container(node: Node) -> None:
    """kubelet allocates init containers first: the app slot of the same size is not a candidate yet."""
    g0 = node.uuids[1]
    node.api.add_pod(pod_with_init("twin", ("prep", 1000, 70000, g0), ("main", 1000, 80000, g0)))
    assert wait_until(lambda: bool(node.plugin.identity.pending_slots(1000)), 5.0)
    assert [s.container for s in node.plugin.identity.pending_slots(1000)] == ["prep"]
    admitted = node.kubelet.admit_pod(node.api.get_object("pods", "twin", "default"))
    assert limits_of(admitted["prep"]) == (g0, 1000, 70000) and limits_of(admitted["main"]) == (g0, 1000, 80000)
    assert set(admitted["main"].device_ids) == set(admitted["prep"].device_ids)


@pytest.mark.parametrize("seed", [11, 12])
def test_pods_with_init_containers_in_any_order_run_where_the_scheduler_accounted(node: Node, seed: int) -> None:
    """Randomised: pods whose init container shares the app's size and GPU (what the scheduler must do)
    and plain pods of the same app size, bound only when `ambiguous_with` allows, admitted in random
    order: every container gets its own limits on the GPU its device IDs are on, and the app containers
    running on each GPU are always a sub-multiset of the app shares the Assignments count there."""
    rng = random.Random(seed)
    uuids = node.uuids
    todo = [pod_with_init(f"i{k}", ("prep", 250, 10000, uuids[k % 4]), ("main", 250, 20000, uuids[k % 4]))
            for k in range(6)] + [fractional(f"plain{k}", uuids[k], 250, 20000) for k in range(4)]
    rng.shuffle(todo)
    waiting: list[str] = []
    admitted_pods = 0
    for _ in range(300):
        if not todo and not waiting:
            break
        if todo and (not waiting or rng.random() < 0.5):
            candidate = todo[0]
            if not ambiguous_with(candidate, list(node.pods().values()), NODE):
                node.api.add_pod(todo.pop(0))
                waiting.append(candidate["metadata"]["name"])
                continue
            if not waiting:
                node.settle()  # the blocking pods' allocated annotations unblock the bind
                continue
        name = waiting.pop(rng.randrange(len(waiting)))
        admitted = node.kubelet.admit_pod(node.api.get_object("pods", name, "default"))
        admitted_pods += 1
        for container, got in admitted.items():
            (gpu,) = {contract.gpu_of_device_id(d) for d in got.device_ids}
            want = (250, 10000) if container == "prep" else (250, 20000)
            assert limits_of(got) == (gpu, *want), f"{name}/{container} got another container's limits or GPU"
        accounted: dict[str, Counter[tuple[int, int]]] = {}
        for pod in node.pods().values():
            for uuid, milli, memory in assignment_of(pod)["main"]:
                accounted.setdefault(uuid, Counter())[(milli, memory)] += 1
        running: dict[str, Counter[tuple[int, int]]] = {}
        for (_, _, container), ids in node.kubelet.allocations().items():
            assert container == "main", "a finished init container is not listed"
            (gpu,) = {contract.gpu_of_device_id(d) for d in ids}
            running.setdefault(gpu, Counter())[(250, 20000)] += 1
        for uuid, shapes in running.items():
            assert not shapes - accounted.get(uuid, Counter()), f"unaccounted work on {uuid}"
        if rng.random() < 0.5:
            node.settle()
    assert admitted_pods == 10
    node.settle()
    for name, pod in node.pods().items():
        ids = node.kubelet.allocations()[("default", name, "main")]
        (gpu,) = {contract.gpu_of_device_id(d) for d in ids}
        assert allocated_of(pod) == {"main": [(gpu, 250, 20000)]}
        assert assignment_of(pod)["main"] == [(gpu, 250, 20000)]
