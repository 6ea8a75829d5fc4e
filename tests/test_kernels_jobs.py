"""Job YAML parsing: valid jobs become typed operations; every mistake names its field."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.kernels.jobs import Job, JobSpecError, demo_job, load_job, parse_job

VALID = """
name: block
iterations: 3
verify: true
operations:
  - op: matmul
    shapes: [[4, 5], [5, 6]]
    iterations: 7
  - op: einsum
    spec: "bhqd,bhkd->bhqk"
    shapes: [[1, 2, 3, 4], [1, 2, 5, 4]]
    dtype: float64
  - {op: fused, shapes: [[2, 3], [3, 4]], activation: gelu, bias: true}
  - {op: softmax, shapes: [[3, 4]], axis: 0}
  - {op: layernorm, shapes: [[3, 4]], eps: 1.0e-6}
  - {op: sum, shapes: [[10]]}
  - {op: max, shapes: [[2, 3]], axis: 1}
"""


def test_a_valid_job_becomes_typed_operations() -> None:
    job = parse_job(VALID, "job.yaml")
    assert job.name == "block" and job.verify
    assert [operation.op for operation in job.operations] == [
        "matmul", "einsum", "fused", "softmax", "layernorm", "sum", "max",
    ]  # fmt: skip
    assert job.operations[0].iterations == 7 and job.operations[1].iterations == 3
    assert job.operations[1].dtype == "float64" and job.operations[0].dtype == "float32"
    assert job.operations[2].activation == "gelu" and job.operations[2].bias
    assert job.operations[5].axis is None and job.operations[3].axis == 0
    assert job.operations[0].flops == 2 * 4 * 5 * 6


def test_iterations_flag_overrides_every_operation() -> None:
    job = parse_job(VALID, "job.yaml", iterations_override=2)
    assert {operation.iterations for operation in job.operations} == {2}


def test_a_bare_list_of_operations_is_a_job() -> None:
    assert len(parse_job("- {op: sum, shapes: [[3]]}").operations) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("operations: []", "non-empty list"),
        ("- {op: conv, shapes: [[3]]}", r"operations\[0\]\.op must be one of"),
        ("- {op: matmul, shapes: [[2, 3]]}", r"operations\[0\]\.shapes must be a list of 2"),
        ("- {op: matmul, shapes: [[2, 3], [4, 5]]}", "index 'K' is 3 in the first operand but 4"),
        ("- {op: einsum, shapes: [[2, 3], [3, 5]]}", r"operations\[0\]\.spec is required"),
        ("- {op: einsum, spec: 'ii,ij->j', shapes: [[2, 2], [2, 3]]}", "diagonals"),
        ("- {op: sum, shapes: [[-1]]}", r"shapes\[0\] must be an integer"),
        ("- {op: sum, shapes: [[3]], dtype: float16}", "float32 or float64"),
        ("- {op: sum, shapes: [[3]], iterations: 0}", "iterations must be an integer"),
        ("- {op: sum, shapes: [[3]], activation: relu}", "unknown keys"),
        ("- {op: softmax, shapes: [[3]], axis: 4}", "out of range"),
        ("- {op: fused, shapes: [[2, 3], [3, 4]], activation: swish9}", "unknown activation"),
        ("- {op: max, shapes: [[0]]}", "no identity"),
        ("- {op: layernorm, shapes: [[3]], eps: -1}", "eps must be"),
        ("operations: [{op: sum, shapes: [[3]]}]\nbogus: 1", "unknown top-level keys"),
        ("{{{", "not valid YAML"),
        ("42", "must be a mapping"),
    ],
)
def test_invalid_jobs_name_the_field_that_is_wrong(text, message) -> None:
    with pytest.raises(JobSpecError, match=message):
        parse_job(text, "job.yaml")


def test_missing_job_file_is_a_job_spec_error(tmp_path) -> None:
    with pytest.raises(JobSpecError, match="cannot read job file"):
        load_job(tmp_path / "absent.yaml")


def test_demo_job_is_valid_on_both_targets() -> None:
    for simulator in (True, False):
        assert isinstance(demo_job(simulator), Job)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 9) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["matmul", "einsum", "fused", "softmax", "layernorm", "sum", "max", "x"])},
    optional={
        "shapes": st.lists(st.lists(st.integers(-1, 5), max_size=4), max_size=3),
        "spec": st.text(alphabet="ijk,->", max_size=10),
        "axis": st.integers(-3, 3) | st.none(),
        "eps": _values,
        "bias": _values,
        "dtype": st.sampled_from(["float32", "float64", "int8"]),
        "iterations": _values,
    },
)


@given(document=st.one_of(_values, st.fixed_dictionaries({"operations": st.lists(_operations, max_size=4)})))
@settings(max_examples=300, deadline=None)
def test_any_yaml_document_gives_a_job_or_a_job_spec_error(document) -> None:
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    with contextlib.suppress(JobSpecError):
        parse_job(text, "fuzz.yaml")
