"""Builders of Node/Pod/GPUQuota objects shaped as the API returns them, shared by the extender tests
and tests/benchmarks/bench_extender.py; the tests at the bottom pin that they are valid input."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
import uuid as uuid_module

from tensorai.proto import contract
from tensorai.proto import tensorai_v1_pb2 as pb

H100_MIB = 81559
RESERVED_MIB = 1024


def inventory_annotation(
    node_name: str,
    gpu_count: int = 8,
    *,
    model: str = "H100",
    memory_mib: int = H100_MIB,
    reserved_mib: int = RESERVED_MIB,
    heartbeat: dt.datetime | None = None,
    unhealthy: frozenset[int] = frozenset(),
) -> str:
    """A valid `tensor.ai/inventory` value for a node with `gpu_count` GPUs."""
    inventory = pb.Inventory(node_name=node_name, sharing_mode=pb.SHARING_MODE_MPS, plugin_version="test")
    for index in range(gpu_count):
        inventory.gpus.add(
            uuid=gpu_uuid(node_name, index),
            index=index,
            model=model,
            memory_mib=memory_mib,
            reserved_mib=reserved_mib,
            numa_node=index * 2 // max(gpu_count, 1),
            healthy=index not in unhealthy,
        )
    inventory.heartbeat_time.CopyFrom(contract.timestamp_now(heartbeat))
    return contract.encode_inventory(inventory)


def gpu_uuid(node_name: str, index: int) -> str:
    """A stable fake GPU UUID."""
    return f"GPU-{uuid_module.uuid5(uuid_module.NAMESPACE_DNS, f'{node_name}/{index}')}"


def node(name: str, gpu_count: int = 8, **inventory: object) -> dict:
    """A v1.Node with an inventory annotation and allocatable resources."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {contract.LABEL_GPU_NODE: "true"},
            "annotations": {contract.ANNOTATION_INVENTORY: inventory_annotation(name, gpu_count, **inventory)},
        },
        "status": {
            "allocatable": {
                "cpu": "128",
                "memory": "1024Gi",
                "pods": "1000",
                contract.RESOURCE_VGPU_MILLI: str(gpu_count * contract.MILLI_PER_GPU),
            }
        },
    }


def pod(
    name: str,
    milli: int | list[int] = 250,
    *,
    namespace: str = "ml",
    uid: str | None = None,
    node_name: str | None = None,
    annotations: dict | None = None,
    memory: str | None = None,
    phase: str = "Pending",
    cpu: str = "100m",
) -> dict:
    """A v1.Pod asking `milli` tensor.ai/vgpu-milli per container (a list = several containers)."""
    containers = []
    for position, container_milli in enumerate(milli if isinstance(milli, list) else [milli]):
        limits = {contract.RESOURCE_VGPU_MILLI: str(container_milli)} if container_milli else {}
        if memory is not None:
            limits[contract.RESOURCE_VGPU_MEMORY] = memory
        containers.append(
            {
                "name": f"c{position}",
                "image": "worker",
                "resources": {"limits": dict(limits), "requests": {**limits, "cpu": cpu}},
            }
        )
    spec: dict = {"containers": containers, "schedulerName": "tensorai-scheduler"}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid_module.uuid4()),
            "annotations": dict(annotations or {}),
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def share_memory_mib(milli: int, memory_mib: int = H100_MIB, reserved_mib: int = RESERVED_MIB) -> int:
    """The GPU memory the extender writes for a share without an explicit vgpu-memory: its part of the
    GPU's usable memory, rounded down (the view counts an Assignment giving less as the pod asks)."""
    usable_mib = memory_mib - reserved_mib
    return usable_mib if milli >= contract.MILLI_PER_GPU else usable_mib * milli // contract.MILLI_PER_GPU


def assigned_pod(name: str, node_name: str, shares: list[tuple[int, int]], **kwargs: object) -> dict:
    """A Running pod bound to node_name with an Assignment of (gpu index, milli) shares, one container each."""
    built = pod(name, [milli for _, milli in shares], node_name=node_name, phase="Running", **kwargs)
    assignment = pb.Assignment(pod_uid=built["metadata"]["uid"], node_name=node_name)
    for position, (index, milli) in enumerate(shares):
        container = assignment.containers.add(name=f"c{position}")
        container.gpus.add(uuid=gpu_uuid(node_name, index), milli=milli, memory_mib=share_memory_mib(milli))
    built["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
    return built


def quota(name: str, namespace: str = "ml", **hard: object) -> dict:
    """A GPUQuota object."""
    return {
        "apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}",
        "kind": contract.QUOTA_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hard": hard},
    }


def post(url: str, body: object, timeout_s: float = 10.0) -> tuple[int, object]:
    """POST JSON, return (status, decoded JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def filter_args(pod_object: dict, node_names: list[str]) -> dict:
    """ExtenderArgs as kube-scheduler sends them with nodeCacheCapable: true."""
    return {"Pod": pod_object, "Nodes": None, "NodeNames": node_names}


def bind_args(pod_object: dict, node_name: str) -> dict:
    """ExtenderBindingArgs for a pod."""
    metadata = pod_object["metadata"]
    return {
        "PodName": metadata["name"],
        "PodNamespace": metadata["namespace"],
        "PodUID": metadata["uid"],
        "Node": node_name,
    }


def test_builders_make_valid_contract_objects() -> None:
    annotation = node("n1", 4)["metadata"]["annotations"][contract.ANNOTATION_INVENTORY]
    inventory = contract.decode_inventory(annotation)
    assert [gpu.index for gpu in inventory.gpus] == [0, 1, 2, 3]
    assert len({gpu.uuid for gpu in inventory.gpus}) == 4


def test_pod_builder_sets_milli_in_limits_and_requests() -> None:
    built = pod("p", [250, 1000])
    limits = [c["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] for c in built["spec"]["containers"]]
    assert limits == ["250", "1000"]


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    """Poll `predicate` until true or timeout; returns its last value (every blocking wait has a timeout)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval_s)


class ExtenderStack:
    """The real parts wired as in production: API stand-in, watch source, service over HTTP, quota controller."""

    def __init__(self, api, *, clock=None, stale_seconds: float = 120.0, interval_s: float = 5.0) -> None:
        import time

        from tensorai.scheduler.events import EventRecorder
        from tensorai.scheduler.extender import ExtenderService
        from tensorai.scheduler.metrics import ExtenderMetrics
        from tensorai.scheduler.quota_controller import QuotaController
        from tensorai.scheduler.view import ClusterView, KubeSource

        self.api = api
        self.client = api.api_client()
        self.view = ClusterView(stale_seconds=stale_seconds, clock=clock or time.time)
        self.source = KubeSource(self.view, self.client, retry_s=0.1)
        self.metrics = ExtenderMetrics(self.view)
        self.events = EventRecorder(self.client)
        self.service = ExtenderService(self.view, api_client=self.client, events=self.events, metrics=self.metrics)
        self.controller = QuotaController(
            self.view, api_client=self.client, interval_s=interval_s, metrics=self.metrics, events=self.events
        )
        self.server = None
        self.url = ""

    def __enter__(self) -> ExtenderStack:
        from tensorai.scheduler.extender import serve

        self.source.start()
        self.events.start()
        self.controller.start()
        assert wait_for(lambda: self.view.ready, 10.0), "view never synced"
        self.server, _ = serve(self.service, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.controller.stop()
        self.events.stop()
        self.source.stop()
