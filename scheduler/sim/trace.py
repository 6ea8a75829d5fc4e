"""Read openb-format node and pod lists (Alibaba cluster-trace-gpu-v2023) into core inputs.

The trace is offered by Alibaba for research and study with a citation (Weng et al., "Beware of
Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC
2023) and is never bundled with this package: it is read from a path.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.requests import simple_demand
from tensorai.scheduler.core.types import NodeSpec, PodDemand

DEFAULT_NODE_FILE = "openb_node_list_gpu_node.csv"
POD_FILE_PATTERN = "openb_pod_list_{workload}.csv"
TRACE_URL = "https://github.com/alibaba/clusterdata/tree/master/cluster-trace-gpu-v2023"
CITATION = (
    "Qizhen Weng, Lingyun Yang, Yinghao Yu, Wei Wang, Xiaochuan Tang, Guodong Yang, Liping Zhang. "
    "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent. "
    "USENIX ATC 2023, pp. 995-1008."
)
# GPU memory per model (MiB). The trace gives no memory per GPU; G2/G3 are undisclosed models.
# Shares default to their fraction of usable memory, so these figures never change a decision here.
MODEL_MEMORY_MIB = {"P100": 16384, "T4": 15360, "V100M16": 16384, "V100M32": 32768, "A10": 23028,
                    "G2": 32768, "G3": 32768}


class TraceError(ValueError):
    """A trace file that is missing or not in the openb format."""


@dataclass(slots=True)
class PodTrace:
    """The pod list as arrays plus one PodDemand per row (rows with equal resources share one)."""

    names: list[str]
    cpu_milli: np.ndarray  # (P,) int64
    memory_mib: np.ndarray  # (P,) int64
    gpu_count: np.ndarray  # (P,) int64
    gpu_milli: np.ndarray  # (P,) int64, per GPU
    gpu_spec: list[str]
    demands: list[PodDemand]

    @property
    def total_gpu_milli(self) -> np.ndarray:
        return self.gpu_count * self.gpu_milli

    def __len__(self) -> int:
        return len(self.names)


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        raise TraceError(f"{path} not found; get the openb trace from {TRACE_URL} (csv/ folder)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)}; expected openb format")
        return list(reader)


def _int(row: dict[str, str], column: str, path: Path, line: int) -> int:
    try:
        return int(row[column])
    except (TypeError, ValueError) as error:
        raise TraceError(f"{path}:{line}: column {column}={row[column]!r} is not an integer") from error


def read_nodes(path: Path) -> list[NodeSpec]:
    """Node list CSV (`sn,cpu_milli,memory_mib,gpu,model`)."""
    nodes = []
    for line, row in enumerate(_rows(path, ("sn", "cpu_milli", "memory_mib", "gpu", "model")), start=2):
        model = row["model"] or ""
        gpus = _int(row, "gpu", path, line)
        nodes.append(NodeSpec(row["sn"], _int(row, "cpu_milli", path, line), _int(row, "memory_mib", path, line),
                              gpus, model, MODEL_MEMORY_MIB.get(model, 16384), 0))
    return nodes


def read_pods(path: Path) -> PodTrace:
    """Pod list CSV (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`)."""
    rows = _rows(path, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"))
    names, specs = [], []
    columns = {key: np.zeros(len(rows), dtype=np.int64) for key in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli")}
    cache: dict[tuple, PodDemand] = {}
    demands = []
    for index, row in enumerate(rows):
        line = index + 2
        for key, values in columns.items():
            values[index] = _int(row, key, path, line)
        gpus, milli = columns["num_gpu"][index], columns["gpu_milli"][index]
        if gpus < 0 or not 0 <= milli <= MILLI_PER_GPU or (gpus > 1 and milli != MILLI_PER_GPU):
            raise TraceError(f"{path}:{line}: num_gpu={gpus}, gpu_milli={milli} is not a valid openb pod")
        spec = (row.get("gpu_spec") or "").strip()
        key = (int(columns["cpu_milli"][index]), int(columns["memory_mib"][index]), int(gpus), int(milli), spec)
        demand = cache.get(key)
        if demand is None:
            models = frozenset(part for part in spec.split("|") if part) or None
            demand = simple_demand(key[0], key[1], key[3], key[2], allowed_models=models, name=row["name"])
            cache[key] = demand
        names.append(row["name"])
        specs.append(spec)
        demands.append(demand)
    return PodTrace(names, columns["cpu_milli"], columns["memory_mib"], columns["num_gpu"], columns["gpu_milli"],
                    specs, demands)


def pod_file(trace_dir: Path, workload: str) -> Path:
    return trace_dir / POD_FILE_PATTERN.format(workload=workload)
