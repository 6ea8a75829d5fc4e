"""The node's Inventory: built from backend + health, published as a Node annotation, plus node labels.

The extender reads `tensor.ai/inventory` (protobuf JSON of tensorai.v1.Inventory) to know each
node's GPUs, their memory, reserve, NUMA node and health. The publisher writes it at start, every
`interval_s` (the heartbeat the extender checks for staleness) and at once when a GPU's health
flips. It also carries out the admin's return-to-service requests: UUIDs listed in the Node
annotation `tensor.ai/recover-gpus` are recovered in the HealthTracker and removed from the list.
In the same patch it keeps the node's `tensor.ai/gpu.*` labels (`node_labels`) current, so
nodeSelector and node affinity can choose GPUs too; they are sent only when one differs.
Alongside, from its own thread, `deviceplugin/events.py` writes a GPUUnhealthy / GPUHealthy Event on
the Node for every health flip (started and stopped with the publisher, so no caller wires it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from tensorai.deviceplugin.events import GPUHealthEvents
from tensorai.deviceplugin.gpus import BackendError, GPUBackend
from tensorai.deviceplugin.health import HealthTracker
from tensorai.proto import contract, gpumodels
from tensorai.proto import tensorai_v1_pb2 as pb
from tensorai.proto.kubeclient import RawCoreApi

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR_S = 5.0  # a failed publish is retried this soon, not a whole interval later
HEALTH_WAIT_SLICE_S = 0.5  # bounds how long stop() waits for the thread


def build_inventory(
    backend: GPUBackend,
    tracker: HealthTracker,
    *,
    node_name: str,
    sharing_mode: str,
    plugin_version: str,
    clock: Callable[[], dt.datetime] | None = None,
) -> pb.Inventory:
    """The Inventory of this node now; `clock` returns the heartbeat time (default: now, UTC).

    Raises ValueError for an unknown sharing mode, BackendError if the GPU list cannot be read and
    contract.ContractError if the backend reported GPUs the contract refuses.
    """
    mode = contract.SHARING_MODE_NAMES.get(sharing_mode)
    if mode is None:
        raise ValueError(f"unknown sharing mode {sharing_mode!r}: choose one of {sorted(contract.SHARING_MODE_NAMES)}")
    inventory = pb.Inventory(
        node_name=node_name,
        sharing_mode=mode,
        plugin_version=plugin_version,
        heartbeat_time=contract.timestamp_now(clock() if clock is not None else None),
    )
    for gpu in backend.gpus():
        inventory.gpus.append(
            pb.GPU(
                uuid=gpu.uuid,
                index=gpu.index,
                model=gpu.model,
                memory_mib=gpu.memory_mib,
                reserved_mib=gpu.reserved_mib,
                numa_node=gpu.numa_node,
                healthy=tracker.is_healthy(gpu.uuid),
            )
        )
    contract.validate_inventory(inventory)
    return inventory


def node_labels(inventory: pb.Inventory, sharing_mode: str) -> dict[str, str | None]:
    """The `tensor.ai/gpu.*` labels of the node (contract.PLUGIN_NODE_LABELS), None = remove the label.

    What GPU feature discovery's `nvidia.com/gpu.*` labels say, under our own prefix so both can run:
    the product name the GPUs report as a label value (`NVIDIA-H100-80GB-HBM3`), its short model
    (`H100`, proto/gpumodels.py), the memory of one GPU in MiB, the GPU count and the sharing mode.
    On a node with GPUs of several models the most common model speaks for the node (the lowest GPU
    index breaks a tie) and memory is its smallest GPU's; `count` counts every GPU, healthy or not.
    Every value is valid label syntax (at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both
    ends), whatever name a GPU reports.
    """
    gpus = sorted(inventory.gpus, key=lambda gpu: gpu.index)
    counts: dict[str, int] = {}
    for gpu in gpus:
        counts[gpu.model] = counts.get(gpu.model, 0) + 1
    model = max(counts, key=lambda name: counts[name]) if counts else None  # dicts keep first-seen order
    memory = min((gpu.memory_mib for gpu in gpus if gpu.model == model), default=None)
    return {
        contract.LABEL_GPU_PRODUCT: gpumodels.label_value(model) if model is not None else None,
        contract.LABEL_GPU_MODEL: gpumodels.short_model(model) if model is not None else None,
        contract.LABEL_GPU_MEMORY: str(memory) if memory is not None else None,
        contract.LABEL_GPU_COUNT: str(len(gpus)),
        contract.LABEL_GPU_SHARING_MODE: sharing_mode,
    }


def parse_recover_list(text: str | None) -> list[str]:
    """The UUIDs of a `tensor.ai/recover-gpus` annotation ("GPU-a,GPU-b"), in order, without blanks."""
    if not text:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]


class InventoryPublisher:
    """Keeps the Node's inventory annotation current and applies admin recover requests.

    `core_api` reads and merge-patches the Node as JSON (`RawCoreApi`). Every API or backend error is logged and
    retried after `retry_s`; the thread never dies of one.
    """

    def __init__(
        self,
        core_api: RawCoreApi,
        backend: GPUBackend,
        tracker: HealthTracker,
        *,
        node_name: str,
        sharing_mode: str,
        plugin_version: str,
        interval_s: float = 30.0,
        retry_s: float = RETRY_AFTER_ERROR_S,
        clock: Callable[[], dt.datetime] | None = None,
        health_events: bool = True,
    ) -> None:
        if interval_s <= 0 or retry_s <= 0:
            raise ValueError(f"interval_s and retry_s must be > 0, got {interval_s} and {retry_s}")
        if sharing_mode not in contract.SHARING_MODE_NAMES:
            raise ValueError(
                f"unknown sharing mode {sharing_mode!r}: choose one of {sorted(contract.SHARING_MODE_NAMES)}"
            )
        self.api = core_api
        self.backend = backend
        self.tracker = tracker
        self.node_name = node_name
        self.sharing_mode = sharing_mode
        self.plugin_version = plugin_version
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.clock = clock
        self.publish_count = 0  # successful publishes, for tests and logs
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._health_events = health_events
        self.events: GPUHealthEvents | None = None  # the Node's health Events, once started

    def publish_once(self) -> None:
        """Apply pending admin recoveries, then write the inventory annotation (one merge patch).

        Raises what the API or the backend raised; the thread catches and retries.
        """
        node = self.api.read_node(self.node_name)
        node_metadata = node.get("metadata") or {}
        annotations = dict(node_metadata.get("annotations") or {})
        requested = parse_recover_list(annotations.get(contract.ANNOTATION_GPU_RECOVER))
        known = {gpu.uuid for gpu in self.backend.gpus()}
        for uuid in requested:
            if uuid not in known:
                log.warning(
                    "node %s: %s names GPU %s, which this node does not have; dropping it",
                    self.node_name,
                    contract.ANNOTATION_GPU_RECOVER,
                    uuid,
                )
            elif self.tracker.admin_recover(uuid):
                log.warning("node %s: GPU %s returned to service on admin request", self.node_name, uuid)
        inventory = build_inventory(
            self.backend,
            self.tracker,
            node_name=self.node_name,
            sharing_mode=self.sharing_mode,
            plugin_version=self.plugin_version,
            clock=self.clock,
        )
        patch_annotations: dict[str, str | None] = {contract.ANNOTATION_INVENTORY: contract.encode_inventory(inventory)}
        metadata: dict[str, Any] = {"annotations": patch_annotations}
        labels = node_labels(inventory, self.sharing_mode)
        current_labels = node_metadata.get("labels") or {}
        if any(current_labels.get(key) != value for key, value in labels.items()):
            metadata["labels"] = labels  # same patch: the labels never say what the Inventory does not
        if requested:
            # Remove the handled request. The resourceVersion precondition makes the API server
            # refuse (409) if an admin changed the list since we read it; we then retry with theirs.
            patch_annotations[contract.ANNOTATION_GPU_RECOVER] = None
            metadata["resourceVersion"] = node_metadata.get("resourceVersion")
        self.api.patch_node(self.node_name, {"metadata": metadata})
        self.publish_count += 1
        self.last_error = None

    def start(self) -> None:
        """Publish now and keep publishing in a background thread."""
        if self._thread is not None:
            raise RuntimeError("InventoryPublisher already started")
        self._thread = threading.Thread(target=self._run, name="tensorai-inventory", daemon=True)
        self._thread.start()
        if self._health_events:
            try:
                gpus = self.backend.gpus()
            except BackendError as error:  # the inventory thread reports and retries this one
                log.error("node %s: no GPU health Events, the GPU list cannot be read: %s", self.node_name, error)
            else:
                self.events = GPUHealthEvents(self.api, self.tracker, gpus, node_name=self.node_name).start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.events is not None:
            self.events.stop(timeout_s)

    def _try_publish(self) -> bool:
        try:
            self.publish_once()
        except (BackendError, contract.ContractError, ValueError) as error:
            self.last_error = str(error)
            log.error("node %s: cannot build the inventory: %s", self.node_name, error)
            return False
        except Exception as error:  # API errors, connection refused, timeouts: all retried
            self.last_error = f"{type(error).__name__}: {error}"
            log.error("node %s: publishing the inventory failed (will retry): %s", self.node_name, self.last_error)
            return False
        return True

    def _run(self) -> None:
        generation = self.tracker.generation
        while not self._stop.is_set():
            generation = self.tracker.generation
            ok = self._try_publish()
            wait_s = self.interval_s if ok else min(self.interval_s, self.retry_s)
            waited_s = 0.0
            # Sleep until the next heartbeat, waking early on a health flip or stop().
            while waited_s < wait_s and not self._stop.is_set():
                slice_s = min(HEALTH_WAIT_SLICE_S, wait_s - waited_s)
                if self.tracker.wait_for_change(generation, slice_s) != generation:
                    break
                waited_s += slice_s
