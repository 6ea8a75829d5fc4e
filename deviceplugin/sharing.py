"""What Allocate hands a container in each sharing mode (`--sharing mps|timeslice|exclusive`).

Every mode sets `NVIDIA_VISIBLE_DEVICES` (the container toolkit mounts exactly those GPUs: this is
the one hard isolation every mode has) and our `TENSORAI_*` variables. What each mode enforces
beyond that is written down in docs/deviceplugin.md; in short:

- timeslice: nothing beyond GPU visibility. Milli and memory are advisory (read by cooperative
  workers such as `tensorai-worker`); CUDA time-slices all contexts on the GPU.
- mps: adds the MPS client settings (pipe directory mount, pinned-memory limit, active-thread
  percentage). A client-side limit only further constrains the MPS daemon's own limit, and a
  container can unset its env, so without daemon-side limits they are advisory too.
- exclusive: one container per GPU; fractional requests are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tensorai.deviceplugin.slices import SliceError
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto.podslots import GPUPortion

ENV_MPS_PIPE_DIRECTORY = contract.ENV_MPS_PIPE_DIRECTORY
ENV_MPS_PINNED_DEVICE_MEM_LIMIT = contract.ENV_MPS_PINNED_DEVICE_MEM_LIMIT
ENV_MPS_ACTIVE_THREAD_PERCENTAGE = contract.ENV_MPS_ACTIVE_THREAD_PERCENTAGE

DEFAULT_MPS_PIPE_DIR = "/run/tensor-ai/mps"  # host side, shared with the MPS control daemon
MPS_CONTAINER_PIPE_DIR = "/tmp/nvidia-mps"  # CUDA's default pipe directory inside the container


@dataclass(frozen=True, slots=True)
class SharingPolicy:
    """Turns one container's GPU portions into a ContainerAllocateResponse for the configured mode."""

    mode: str = "timeslice"
    mps_pipe_dir: str = DEFAULT_MPS_PIPE_DIR

    def __post_init__(self) -> None:
        if self.mode not in contract.SHARING_MODE_NAMES:
            raise ValueError(f"sharing mode {self.mode!r} is not one of {sorted(contract.SHARING_MODE_NAMES)}")

    def check_request(self, size_milli: int) -> None:
        """Refuse requests the mode cannot serve (exclusive mode has no fractional GPUs)."""
        if self.mode == "exclusive" and size_milli % contract.MILLI_PER_GPU:
            raise SliceError(
                f"this node shares GPUs in exclusive mode: request whole GPUs (multiples of "
                f"{contract.MILLI_PER_GPU} {contract.RESOURCE_VGPU_MILLI}), not {size_milli}",
                precondition=True,
            )

    def container_response(self, portions: Sequence[GPUPortion]) -> dp.ContainerAllocateResponse:
        """Env and mounts for a container holding `portions` (one per GPU, in GPU index order)."""
        response = dp.ContainerAllocateResponse()
        envs = response.envs
        envs[contract.ENV_VISIBLE_DEVICES] = ",".join(portion.uuid for portion in portions)
        envs[contract.ENV_VGPU_MILLI] = str(sum(portion.milli for portion in portions))
        envs[contract.ENV_VGPU_MEMORY_MIB] = str(sum(portion.memory_mib for portion in portions))
        envs[contract.ENV_SHARING_MODE] = self.mode
        if self.mode == "mps":
            envs[ENV_MPS_PIPE_DIRECTORY] = MPS_CONTAINER_PIPE_DIR
            # Ordinals as the client sees them: the toolkit renumbers visible GPUs from 0 in list order.
            envs[ENV_MPS_PINNED_DEVICE_MEM_LIMIT] = ",".join(
                f"{ordinal}={portion.memory_mib}M" for ordinal, portion in enumerate(portions)
            )
            smallest_milli = min(portion.milli for portion in portions)
            envs[ENV_MPS_ACTIVE_THREAD_PERCENTAGE] = str(max(1, min(100, math.ceil(smallest_milli / 10))))
            response.mounts.add(container_path=MPS_CONTAINER_PIPE_DIR, host_path=self.mps_pipe_dir, read_only=False)
        return response
