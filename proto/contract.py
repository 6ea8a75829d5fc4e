"""The one place where tensor.ai vGPU's resource names, annotation keys and units live.

The extender, the webhook, the device plugin, the simulator and the tests import these names; no
other module spells them. Inventory and Assignment travel as protobuf JSON (camelCase keys) in
annotations; `encode_*` / `decode_*` here are the only (de)serialisers and they validate what they
read, raising ContractError with the reason instead of letting a bad annotation corrupt state.
"""

from __future__ import annotations

import datetime as dt
import json

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from tensorai.proto import tensorai_v1_pb2 as pb

# --- resources -----------------------------------------------------------------------------------
DOMAIN = "tensor.ai"
RESOURCE_VGPU = "tensor.ai/vgpu"  # user-facing, in GPUs (0.25, 1, 2); rewritten by the webhook
RESOURCE_VGPU_MILLI = "tensor.ai/vgpu-milli"  # advertised by the device plugin, 1000 per GPU
RESOURCE_VGPU_MEMORY = "tensor.ai/vgpu-memory"  # scheduler-only quantity (bytes), optional
MILLI_PER_GPU = 1000

# --- annotations ---------------------------------------------------------------------------------
ANNOTATION_INVENTORY = "tensor.ai/inventory"  # Node: Inventory JSON, written by the device plugin
ANNOTATION_ASSIGNMENT = "tensor.ai/assignment"  # Pod: Assignment JSON, written by the extender at bind
ANNOTATION_ALLOCATED = "tensor.ai/allocated"  # Pod: GPUs actually allocated, written by the plugin
ANNOTATION_VGPU_REQUESTED = "tensor.ai/vgpu-requested"  # Pod/template: the user's original request
ANNOTATION_GPU_MODEL = "tensor.ai/gpu-model"  # Pod: comma list of allowed GPU models (matched: gpumodels.py)
ANNOTATION_GPU_MODEL_EXCLUDE = "tensor.ai/gpu-model-exclude"  # Pod: comma list of refused models (likewise)
ANNOTATION_GPU_UUID = "tensor.ai/gpu-uuid"  # Pod: comma list of allowed GPU UUIDs
ANNOTATION_GPU_UUID_EXCLUDE = "tensor.ai/gpu-uuid-exclude"  # Pod: comma list of refused UUIDs
ANNOTATION_EXCLUSIVE = "tensor.ai/exclusive"  # Pod: "true" = no other pod on its GPUs
ANNOTATION_ANTI_AFFINITY_GROUP = "tensor.ai/anti-affinity-group"  # Pod: no two of a group on a GPU
ANNOTATION_POLICY = "tensor.ai/policy"  # Pod: scoring policy override
ANNOTATION_QUOTA_REQUEUE = "tensor.ai/quota-requeue"  # Pod: touched by the extender to requeue a quota waiter
ANNOTATION_GPU_RECOVER = "tensor.ai/recover-gpus"  # Node: comma list of UUIDs an admin returns to service
# The scheduler's accounting on a Pod: only the extender's and the device plugin's ServiceAccounts may set,
# change or remove these (manifests/base/policies/accounting-annotations.yaml; docs/scheduling.md)
PROTECTED_POD_ANNOTATIONS = (ANNOTATION_ASSIGNMENT, ANNOTATION_ALLOCATED)

# --- the scheduler ----------------------------------------------------------------------------------
SCHEDULER_NAME = "tensorai-scheduler"  # the kube-scheduler profile that calls the extender; bind takes only its pods

# --- labels --------------------------------------------------------------------------------------
LABEL_GPU_NODE = "tensor.ai/gpu-node"  # Node label selecting where the device plugin runs
# Node labels the device plugin publishes with its Inventory, for nodeSelector / node affinity (the way
# GPU feature discovery publishes nvidia.com/gpu.*; docs/deviceplugin.md). Only these may it change
# (manifests/base/policies/device-plugin-own-node.yaml).
LABEL_GPU_PRODUCT = "tensor.ai/gpu.product"  # the name the GPUs report, as a label value: NVIDIA-H100-80GB-HBM3
LABEL_GPU_MODEL = "tensor.ai/gpu.model"  # the short model (proto/gpumodels.py): H100
LABEL_GPU_MEMORY = "tensor.ai/gpu.memory"  # MiB of one GPU: 81559
LABEL_GPU_COUNT = "tensor.ai/gpu.count"  # GPUs on the node: 8
LABEL_GPU_SHARING_MODE = "tensor.ai/gpu.sharing-mode"  # --sharing: timeslice, mps or exclusive
PLUGIN_NODE_LABELS = (LABEL_GPU_PRODUCT, LABEL_GPU_MODEL, LABEL_GPU_MEMORY, LABEL_GPU_COUNT, LABEL_GPU_SHARING_MODE)

# --- environment given to containers by Allocate --------------------------------------------------
ENV_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
ENV_VGPU_MILLI = "TENSORAI_VGPU_MILLI"
ENV_VGPU_MEMORY_MIB = "TENSORAI_VGPU_MEMORY_MIB"
ENV_SHARING_MODE = "TENSORAI_SHARING_MODE"
# NVIDIA MPS client variables the plugin sets in --sharing mps (reference/nvml-facts.md)
ENV_MPS_PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"
ENV_MPS_PINNED_DEVICE_MEM_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
ENV_MPS_ACTIVE_THREAD_PERCENTAGE = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"

# --- environment read by the programs themselves ------------------------------------------------
ENV_DEVICE_PLUGIN_PREFIX = "TENSORAI_DEVICE_PLUGIN_"  # TENSORAI_DEVICE_PLUGIN_<FLAG> sets a plugin flag
ENV_NODE_NAME = "NODE_NAME"  # the node's name, from the downward API (spec.nodeName) in the DaemonSet

# --- GPUQuota CRD --------------------------------------------------------------------------------
QUOTA_GROUP = "tensor.ai"
QUOTA_VERSION = "v1alpha1"
QUOTA_PLURAL = "gpuquotas"
QUOTA_KIND = "GPUQuota"

# --- device IDs ----------------------------------------------------------------------------------
DEVICE_ID_SEPARATOR = "::"  # "<GPU-UUID>::<slice index, 4 digits>", at most 63 characters

INVENTORY_HEARTBEAT_STALE_SECONDS = 120

SHARING_MODE_NAMES = {
    "mps": pb.SHARING_MODE_MPS,
    "timeslice": pb.SHARING_MODE_TIMESLICE,
    "exclusive": pb.SHARING_MODE_EXCLUSIVE,
}


class ContractError(ValueError):
    """An annotation or message that does not follow the tensorai.v1 contract."""


def _parse_json(text: str, message: pb.Inventory | pb.Assignment, what: str) -> None:
    if not isinstance(text, str):
        raise ContractError(f"{what} annotation must be a JSON string, got {type(text).__name__}")
    if len(text) > 1 << 20:
        raise ContractError(f"{what} annotation is larger than 1 MiB")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ContractError(f"{what} annotation is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise ContractError(f"{what} annotation must be a JSON object, got {type(document).__name__}")
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as error:
        raise ContractError(f"{what} annotation is not valid tensorai.v1.{what} JSON: {error}") from error


def _to_json(message: pb.Inventory | pb.Assignment) -> str:
    return json_format.MessageToJson(message, indent=None, sort_keys=True)


def encode_inventory(inventory: pb.Inventory) -> str:
    """Inventory as compact protobuf JSON for the Node annotation."""
    validate_inventory(inventory)
    return _to_json(inventory)


def decode_inventory(text: str) -> pb.Inventory:
    """Parse and validate a `tensor.ai/inventory` annotation."""
    inventory = pb.Inventory()
    _parse_json(text, inventory, "Inventory")
    validate_inventory(inventory)
    return inventory


_HEARTBEAT_FIELD = "heartbeatTime"  # Inventory.heartbeat_time in protobuf JSON (lowerCamelCase)


def inventory_heartbeat(text: str) -> tuple[dict, float] | None:
    """(the Inventory's JSON object without its heartbeat, the heartbeat in Unix seconds), or None.

    Every node's device plugin rewrites its Inventory every 30 s only to move the heartbeat: at
    1,000 nodes that is 33 Node updates a second, and decoding each through protobuf's ParseDict
    cost ~1 ms - half of the extender's CPU through a real kube-scheduler. A reader that already
    holds the decoded Inventory of an equal object (compared in C) needs only the new time.
    None when the text is not a JSON object with a plain RFC 3339 heartbeat: decode_inventory then
    decides (and explains) as before."""
    if not isinstance(text, str) or len(text) > 1 << 20:
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    stamp = document.pop(_HEARTBEAT_FIELD, None)
    if not isinstance(stamp, str) or not stamp.endswith("Z"):
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() != dt.timedelta(0):
        return None
    return document, moment.timestamp()


def validate_inventory(inventory: pb.Inventory) -> None:
    """Raise ContractError unless every GPU has a unique UUID, index and sane memory figures."""
    seen_uuids: set[str] = set()
    seen_indexes: set[int] = set()
    for gpu in inventory.gpus:
        where = f"Inventory of node {inventory.node_name!r}, GPU {gpu.uuid!r}"
        if not gpu.uuid or DEVICE_ID_SEPARATOR in gpu.uuid or len(gpu.uuid) > 56:
            raise ContractError(f"{where}: uuid must be non-empty, at most 56 characters, without '::'")
        if gpu.uuid in seen_uuids:
            raise ContractError(f"{where}: duplicate uuid")
        if gpu.index < 0 or gpu.index in seen_indexes:
            raise ContractError(f"{where}: index {gpu.index} is negative or duplicated")
        if gpu.memory_mib <= 0 or gpu.reserved_mib < 0 or gpu.reserved_mib >= gpu.memory_mib:
            raise ContractError(
                f"{where}: need memory_mib > 0 and 0 <= reserved_mib < memory_mib, "
                f"got {gpu.memory_mib} and {gpu.reserved_mib}"
            )
        seen_uuids.add(gpu.uuid)
        seen_indexes.add(gpu.index)


def encode_assignment(assignment: pb.Assignment) -> str:
    """Assignment as compact protobuf JSON for the Pod annotation."""
    validate_assignment(assignment)
    return _to_json(assignment)


def decode_assignment(text: str) -> pb.Assignment:
    """Parse and validate a `tensor.ai/assignment` annotation."""
    assignment = pb.Assignment()
    _parse_json(text, assignment, "Assignment")
    validate_assignment(assignment)
    return assignment


def validate_assignment(assignment: pb.Assignment) -> None:
    """Raise ContractError unless every share is 1..1000 milli with non-negative memory."""
    if not assignment.node_name:
        raise ContractError("Assignment: node_name is empty")
    names: set[str] = set()
    for container in assignment.containers:
        if not container.name or container.name in names:
            raise ContractError(f"Assignment: container name {container.name!r} is empty or duplicated")
        names.add(container.name)
        uuids = [share.uuid for share in container.gpus]
        if len(set(uuids)) != len(uuids):
            raise ContractError(f"Assignment: container {container.name!r} names a GPU twice")
        for share in container.gpus:
            if not share.uuid:
                raise ContractError(f"Assignment: container {container.name!r} has a share without uuid")
            if not 1 <= share.milli <= MILLI_PER_GPU:
                raise ContractError(
                    f"Assignment: container {container.name!r} GPU {share.uuid}: milli {share.milli} "
                    f"is outside 1..{MILLI_PER_GPU}"
                )
            if share.memory_mib < 0:
                raise ContractError(f"Assignment: container {container.name!r} GPU {share.uuid}: memory < 0")


def timestamp_now(clock: dt.datetime | None = None) -> Timestamp:
    """A protobuf Timestamp of `clock` (default: now, UTC)."""
    stamp = Timestamp()
    stamp.FromDatetime((clock or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))
    return stamp


def device_id(gpu_uuid: str, slice_index: int) -> str:
    """The kubelet device ID of one milli-slice of a GPU."""
    return f"{gpu_uuid}{DEVICE_ID_SEPARATOR}{slice_index:04d}"


def gpu_of_device_id(device: str) -> str:
    """The GPU UUID a device ID belongs to; ContractError for IDs we never advertised."""
    uuid, separator, index = device.rpartition(DEVICE_ID_SEPARATOR)
    if not separator or not uuid or not index.isdigit():
        raise ContractError(f"device ID {device!r} is not of the form '<GPU-UUID>::<slice>'")
    return uuid
