"""Job specs for the tensor worker: YAML in, validated typed operations out (errors name the field).

```yaml
name: attention-block         # optional
iterations: 10                # default for operations that do not set their own
verify: false                 # compare each operation's first result with NumPy (float64)
operations:
  - op: matmul                # matmul | einsum | fused | softmax | layernorm | sum | max
    shapes: [[512, 512], [512, 512]]
    dtype: float32            # float32 (default) | float64
    iterations: 20
  - op: einsum
    spec: "bhqd,bhkd->bhqk"
    shapes: [[4, 8, 128, 64], [4, 8, 128, 64]]
  - op: fused                 # contraction + bias + activation in one kernel
    shapes: [[256, 512], [512, 128]]
    activation: gelu          # none | relu | gelu | sigmoid | tanh | silu
    bias: true
  - op: softmax
    shapes: [[256, 1024]]
    axis: -1
  - op: layernorm
    shapes: [[256, 1024]]
    eps: 1.0e-5
  - op: sum
    shapes: [[1048576]]
    axis: null
```
Every binary operation's shapes are checked with the kernels' own planner at load time, so a
bad spec fails before any GPU memory is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tensorai.kernels.activations import activation_code
from tensorai.kernels.contraction import plan_contraction
from tensorai.kernels.errors import TensorError
from tensorai.kernels.fused import default_spec

UNARY_OPS = ("softmax", "layernorm", "sum", "max")
BINARY_OPS = ("matmul", "einsum", "fused")
MAX_DIMENSION = 1 << 31
MAX_ITERATIONS = 10**9
_COMMON_KEYS = {"op", "shapes", "dtype", "iterations", "name"}
_OP_KEYS = {
    "matmul": set(),
    "einsum": {"spec"},
    "fused": {"spec", "activation", "bias"},
    "softmax": {"axis"},
    "layernorm": {"eps"},
    "sum": {"axis"},
    "max": {"axis"},
}


class JobSpecError(ValueError):
    """A job file that cannot be run; the message names the file position (operations[i].field)."""


@dataclass(frozen=True)
class Operation:
    """One validated operation: what to run, on which shapes, how often."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    iterations: int = 1
    name: str = ""
    spec: str | None = None
    activation: str = "relu"
    bias: bool = False
    axis: int | None = -1
    eps: float = 1e-5

    @property
    def label(self) -> str:
        return self.name or self.op

    @property
    def flops(self) -> int:
        """Floating-point operations of one run (2 per multiply-add; 1 per element for the rest)."""
        if self.op in BINARY_OPS:
            plan = plan_contraction(self.contraction_spec, self.shapes[0], self.shapes[1])
            return 2 * math.prod(plan.sizes.values())
        return math.prod(self.shapes[0])

    @property
    def contraction_spec(self) -> str:
        if self.op == "matmul":
            return "MK,KN->MN" if len(self.shapes[0]) == 2 else _batched_matmul_spec(len(self.shapes[0]))
        if self.op == "fused":
            return self.spec or default_spec(len(self.shapes[0]), len(self.shapes[1]))
        assert self.spec is not None
        return self.spec


@dataclass(frozen=True)
class Job:
    name: str
    operations: tuple[Operation, ...]
    verify: bool = False
    source: str = field(default="<built-in>", compare=False)


def _batched_matmul_spec(ndim: int) -> str:
    batch = "abcdefgh"[: ndim - 2]
    return f"{batch}MK,{batch}KN->{batch}MN"


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobSpecError(f"{where} must be an integer in {low}..{high}, got {value!r}")
    return value


def _parse_operation(raw: Any, where: str, default_iterations: int) -> Operation:
    if not isinstance(raw, dict):
        raise JobSpecError(f"{where} must be a mapping with at least 'op' and 'shapes', got {type(raw).__name__}")
    op = raw.get("op")
    if op not in _OP_KEYS:
        raise JobSpecError(f"{where}.op must be one of {', '.join(_OP_KEYS)}, got {op!r}")
    unknown = set(raw) - _COMMON_KEYS - _OP_KEYS[op]
    if unknown:
        raise JobSpecError(f"{where}: unknown keys {sorted(map(str, unknown))} for op {op!r}")
    want = 2 if op in BINARY_OPS else 1
    shapes_raw = raw.get("shapes")
    if not isinstance(shapes_raw, list) or len(shapes_raw) != want:
        raise JobSpecError(f"{where}.shapes must be a list of {want} shape(s) for {op!r}, got {shapes_raw!r}")
    shapes = []
    for index, shape in enumerate(shapes_raw):
        if not isinstance(shape, list) or len(shape) > 8:
            raise JobSpecError(f"{where}.shapes[{index}] must be a list of at most 8 sizes, got {shape!r}")
        shapes.append(tuple(_int(size, f"{where}.shapes[{index}]", 0, MAX_DIMENSION) for size in shape))
    dtype = raw.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise JobSpecError(f"{where}.dtype must be float32 or float64, got {dtype!r}")
    iterations = _int(raw.get("iterations", default_iterations), f"{where}.iterations", 1, MAX_ITERATIONS)
    name = raw.get("name", "")
    if not isinstance(name, str) or len(name) > 64:
        raise JobSpecError(f"{where}.name must be a string of at most 64 characters")
    options: dict[str, Any] = {}
    if "spec" in raw:
        if not isinstance(raw["spec"], str):
            raise JobSpecError(f"{where}.spec must be a string like 'ij,jk->ik', got {raw['spec']!r}")
        options["spec"] = raw["spec"]
    elif op == "einsum":
        raise JobSpecError(f"{where}.spec is required for einsum (e.g. 'bij,bjk->bik')")
    if "activation" in raw:
        options["activation"] = str(raw["activation"])
    if "bias" in raw:
        if not isinstance(raw["bias"], bool):
            raise JobSpecError(f"{where}.bias must be true or false, got {raw['bias']!r}")
        options["bias"] = raw["bias"]
    if "axis" in raw:
        axis = raw["axis"]
        if axis is not None:
            axis = _int(axis, f"{where}.axis", -8, 7)
        if op == "softmax" and axis is None:
            raise JobSpecError(f"{where}.axis must be an integer for softmax")
        options["axis"] = axis
    elif op in ("sum", "max"):
        options["axis"] = None
    if "eps" in raw:
        eps = raw["eps"]
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not (eps >= 0 and math.isfinite(eps)):
            raise JobSpecError(f"{where}.eps must be a finite number >= 0, got {eps!r}")
        options["eps"] = float(eps)
    operation = Operation(op=op, shapes=tuple(shapes), dtype=dtype, iterations=iterations, name=name, **options)
    _check_shapes(operation, where)
    return operation


def _check_shapes(operation: Operation, where: str) -> None:
    try:
        if operation.op in BINARY_OPS:
            a_shape, b_shape = operation.shapes
            if operation.op == "matmul" and (len(a_shape) < 2 or len(a_shape) != len(b_shape)):
                raise JobSpecError(f"{where}: matmul needs two shapes of one rank >= 2, got {a_shape}, {b_shape}")
            plan = plan_contraction(operation.contraction_spec, a_shape, b_shape)
            if operation.op == "fused":
                activation_code(operation.activation)
                if operation.bias and (not plan.out_labels or plan.out_labels[-1] not in plan.free_b):
                    raise JobSpecError(f"{where}: bias needs the output's last index to come from the second operand")
        else:
            shape = operation.shapes[0]
            if not shape:
                raise JobSpecError(f"{where}: {operation.op} needs at least one dimension")
            if operation.axis is not None and not -len(shape) <= operation.axis < len(shape):
                raise JobSpecError(f"{where}.axis {operation.axis} is out of range for shape {shape}")
            if operation.op == "max" and math.prod(shape) == 0:
                raise JobSpecError(f"{where}: max of an empty shape {shape} has no identity")
    except TensorError as error:
        raise JobSpecError(f"{where}: {error}") from error


def parse_job(text: str, source: str = "<string>", iterations_override: int | None = None) -> Job:
    """Parse a YAML job; `iterations_override` (the --iterations flag) replaces every count."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise JobSpecError(f"{source} is not valid YAML: {error}") from error
    if isinstance(document, list):
        document = {"operations": document}
    if not isinstance(document, dict):
        raise JobSpecError(f"{source} must be a mapping with an 'operations' list")
    unknown = set(document) - {"name", "iterations", "verify", "operations"}
    if unknown:
        raise JobSpecError(f"{source}: unknown top-level keys {sorted(map(str, unknown))}")
    default_iterations = _int(document.get("iterations", 1), f"{source}: iterations", 1, MAX_ITERATIONS)
    if iterations_override is not None:
        default_iterations = _int(iterations_override, "--iterations", 1, MAX_ITERATIONS)
    raw_operations = document.get("operations")
    if not isinstance(raw_operations, list) or not raw_operations:
        raise JobSpecError(f"{source}: 'operations' must be a non-empty list")
    if len(raw_operations) > 1000:
        raise JobSpecError(f"{source}: at most 1000 operations per job, got {len(raw_operations)}")
    operations = []
    for index, raw in enumerate(raw_operations):
        operation = _parse_operation(raw, f"{source}: operations[{index}]", default_iterations)
        if iterations_override is not None:
            operation = Operation(**{**operation.__dict__, "iterations": default_iterations})
        operations.append(operation)
    verify = document.get("verify", False)
    if not isinstance(verify, bool):
        raise JobSpecError(f"{source}: verify must be true or false")
    name = document.get("name", Path(source).stem)
    return Job(name=str(name), operations=tuple(operations), verify=verify, source=source)


def load_job(path: Path, iterations_override: int | None = None) -> Job:
    """Read and parse a job file; JobSpecError when it is missing, too large or invalid."""
    try:
        if path.stat().st_size > 1 << 20:
            raise JobSpecError(f"{path} is larger than 1 MiB")
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise JobSpecError(f"cannot read job file {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise JobSpecError(f"{path} is not UTF-8 text") from error
    return parse_job(text, str(path), iterations_override)


def demo_job(simulator: bool, iterations_override: int | None = None) -> Job:
    """The built-in job for --loop demos: an MLP-ish block; tiny shapes on the simulator."""
    m, k, n = (6, 8, 5) if simulator else (1024, 1024, 1024)
    text = f"""
name: demo
iterations: {iterations_override or 1}
operations:
  - {{op: fused, shapes: [[{m}, {k}], [{k}, {n}]], activation: gelu, bias: true}}
  - {{op: softmax, shapes: [[{m}, {n}]]}}
  - {{op: layernorm, shapes: [[{m}, {k}]]}}
  - {{op: einsum, spec: "bij,bjk->bik", shapes: [[2, {m}, {k}], [2, {k}, {n}]]}}
"""
    return parse_job(text, "<built-in demo>", iterations_override)
