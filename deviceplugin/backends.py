"""Choosing and opening a GPU backend: `--backend nvml|sim` and the `--sim-gpus` format.

The CLI only parses flags and calls `open_backend`; this module turns the flag values into a
`GPUBackend` or one clear error line. `--sim-gpus` is `COUNTxMODEL:MEMORY_MIB[,...]`, e.g.
`2xH100:81559,1xA100:40960` (two H100 with 81559 MiB each, then one A100; indexes follow the
order written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tensorai.deviceplugin.gpus import GPUBackend

BACKEND_NAMES = ("nvml", "sim")
DEFAULT_SIM_GPUS = "1xH100:81559"  # what `--backend sim` simulates when --sim-gpus is not given
MAX_SIM_GPUS = 64  # far beyond any real node; bounds what a typo like 1000000xH100 can allocate
MAX_MODEL_CHARS = 48

_ENTRY = re.compile(r"^(?P<count>\d{1,6})[xX](?P<model>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<memory>\d{1,9})$")


@dataclass(frozen=True, slots=True)
class SimGPUSpec:
    """`count` simulated GPUs of one `model` with `memory_mib` of device memory each."""

    count: int
    model: str
    memory_mib: int


def parse_sim_gpus(spec: str) -> list[SimGPUSpec]:
    """Parse `--sim-gpus` ("2xH100:81559,1xA100:40960"); ValueError naming the bad entry otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--sim-gpus is empty: expected COUNTxMODEL:MEMORY_MIB[,...], e.g. 2xH100:81559")
    specs: list[SimGPUSpec] = []
    for position, raw_entry in enumerate(spec.split(","), start=1):
        entry = raw_entry.strip()
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(
                f"--sim-gpus entry {position} {entry!r} is not COUNTxMODEL:MEMORY_MIB "
                "(e.g. 2xH100:81559; MODEL is letters, digits, '.', '_' or '-')"
            )
        count = int(match.group("count"))
        model = match.group("model")
        memory_mib = int(match.group("memory"))
        if count < 1:
            raise ValueError(f"--sim-gpus entry {position} {entry!r}: COUNT must be at least 1")
        if memory_mib < 1:
            raise ValueError(f"--sim-gpus entry {position} {entry!r}: MEMORY_MIB must be at least 1")
        if len(model) > MAX_MODEL_CHARS:
            raise ValueError(f"--sim-gpus entry {position}: MODEL is longer than {MAX_MODEL_CHARS} characters")
        specs.append(SimGPUSpec(count=count, model=model, memory_mib=memory_mib))
    total = sum(item.count for item in specs)
    if total > MAX_SIM_GPUS:
        raise ValueError(f"--sim-gpus describes {total} GPUs; at most {MAX_SIM_GPUS} per node are supported")
    return specs


def estimate_reserved_mib(memory_mib: int) -> int:
    """Memory the driver keeps for itself when NVML cannot tell us (no memory v2 API), in MiB.

    Observed `nvidia-smi -q` "Reserved" figures grow with the frame buffer: roughly 250 MiB on a
    16 GiB card up to ~600 MiB on 40-80 GiB cards, before any CUDA context (another ~300-500 MiB
    per process, which pods pay out of their own share). We take 256 MiB plus 1/256 of the memory,
    capped at 1 GiB, and never more than half the card so tiny simulated GPUs stay valid.
    """
    if memory_mib <= 1:
        return 0
    estimate = min(1024, 256 + memory_mib // 256)
    return min(estimate, memory_mib // 2)


def open_backend(name: str, *, sim_gpus: str | None = None, node_name: str = "local") -> GPUBackend:
    """Open the backend `name` ("nvml" or "sim").

    Raises BackendUnavailableError (one line, fit for printing) when NVML cannot start, and
    ValueError for an unknown name or a malformed `sim_gpus`.
    """
    if name == "sim":
        from tensorai.deviceplugin.simulated import SimulatedBackend

        return SimulatedBackend(parse_sim_gpus(sim_gpus or DEFAULT_SIM_GPUS), node_name=node_name)
    if name == "nvml":
        if sim_gpus:
            raise ValueError("--sim-gpus only applies to --backend sim")
        from tensorai.deviceplugin.nvml import NvmlBackend

        return NvmlBackend()
    raise ValueError(f"unknown GPU backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
