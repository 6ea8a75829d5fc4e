"""FGD's fragmentation measure against worked examples, and the target workload rules."""

from __future__ import annotations

import numpy as np
import pytest

from tensorai.scheduler.core.policies.fragmentation import fragmentation_delta, node_fragmentation
from tensorai.scheduler.core.requests import simple_demand
from tensorai.scheduler.core.shapes import OnlineWorkload, Shape, TargetWorkload, shape_of

MODELS = ["T4", "A100"]


def workload(*shapes_and_p: tuple[Shape, float]) -> TargetWorkload:
    return TargetWorkload(tuple(s for s, _ in shapes_and_p), np.array([p for _, p in shapes_and_p]))


def frag(free: list[int], cpu: int, model: int, target: TargetWorkload) -> float:
    return float(node_fragmentation(np.array([free]), np.array([cpu]), np.array([model]), target.arrays(MODELS))[0])


HALF = Shape(1000, 500, 1)
ONE = Shape(1000, 1000, 1)
TWO = Shape(1000, 1000, 2)


def test_share_shape_counts_gpus_smaller_than_its_fraction():
    # free 1000, 500, 200: a 0.5-GPU task cannot use the 200 -> fragment 200
    assert frag([1000, 500, 200], 8000, 0, workload((HALF, 1.0))) == pytest.approx(200)


def test_whole_gpu_shape_counts_every_partial_gpu():
    assert frag([1000, 500, 200], 8000, 0, workload((ONE, 1.0))) == pytest.approx(700)


def test_expectation_weights_shapes_by_probability():
    # 0.5 x 200 + 0.5 x 700, the paper's F_n = sum_m p_m F_n(m)
    assert frag([1000, 500, 200], 8000, 0, workload((HALF, 0.5), (ONE, 0.5))) == pytest.approx(450)


def test_missing_cpu_model_or_gpu_count_makes_all_free_gpu_a_fragment():
    assert frag([1000, 500, 200], 500, 0, workload((HALF, 1.0))) == pytest.approx(1700)  # lacks CPU
    a100_only = Shape(1000, 500, 1, frozenset({"A100"}))
    assert frag([1000, 500, 200], 8000, 0, workload((a100_only, 1.0))) == pytest.approx(1700)  # wrong model
    assert frag([1000, 500, 200], 8000, 1, workload((a100_only, 1.0))) == pytest.approx(200)
    assert frag([1000, 500, 200], 8000, 0, workload((TWO, 1.0))) == pytest.approx(1700)  # one full GPU only
    assert frag([1000, 500, 200], 8000, 0, workload((Shape(1000, 0, 0), 1.0))) == pytest.approx(1700)  # CPU task


def test_padding_and_fully_used_gpus_are_not_fragments():
    assert frag([0, 0, 0], 8000, 0, workload((HALF, 1.0))) == 0.0


def test_delta_is_fragmentation_before_minus_after():
    target = workload((HALF, 0.5), (ONE, 0.5)).arrays(MODELS)
    free = np.array([[1000, 500]])
    options = np.zeros((1, 2, 2), dtype=np.int32)
    options[0, 0, 0] = 300  # on the full GPU: leaves 700 and 500
    options[0, 1, 1] = 300  # on the half GPU: leaves 1000 and 200
    delta = fragmentation_delta(free, np.array([8000]), np.array([0]), options, np.ones((1, 2), bool), 0, target)
    before = 0.5 * 0 + 0.5 * 500
    assert delta[0, 0] == pytest.approx(before - (0.5 * 0 + 0.5 * 1200))
    assert delta[0, 1] == pytest.approx(before - (0.5 * 200 + 0.5 * 200))
    assert delta[0, 1] > delta[0, 0]  # filling the half-used GPU fragments less


def test_target_workload_keeps_most_frequent_shapes_up_to_95_percent():
    shapes = [HALF] * 60 + [ONE] * 36 + [TWO] * 4
    target = TargetWorkload.from_shapes(shapes)
    assert target.shapes == (HALF, ONE)  # 96 % covered before TWO
    assert target.probability.tolist() == pytest.approx([60 / 96, 36 / 96])


def test_shape_of_a_trace_pod():
    assert shape_of(simple_demand(4000, 100, 470, 1)) == Shape(4000, 470, 1)
    assert shape_of(simple_demand(4000, 100, 1000, 8)) == Shape(4000, 1000, 8)
    assert shape_of(simple_demand(4000, 100, 0, 0)) == Shape(4000, 0, 0)


def test_online_workload_learns_from_seen_pods_on_a_schedule():
    online = OnlineWorkload(first_refresh=4, refresh_every=4)  # small numbers to see the schedule
    assert online.current() is None
    online.observe(simple_demand(1000, 1, 500, 1))
    first = online.current()
    assert first is not None and first.shapes == (Shape(1000, 500, 1),)
    for _ in range(3):
        online.observe(simple_demand(1000, 1, 1000, 1))
    learned = online.current()
    assert learned is not first and set(learned.shapes) == {Shape(1000, 500, 1), Shape(1000, 1000, 1)}


def test_online_workload_keeps_the_common_shapes_and_never_more_than_twice_its_cap():
    online = OnlineWorkload(max_shapes=8)
    common = simple_demand(4000, 1024, 500, 1)
    for index in range(200):
        online.observe(common)
        online.observe(simple_demand(1000 + index, 1024, 250, 1))  # a new made-up shape every time
        assert len(online.counts) <= 16
    assert online.counts.most_common(1)[0] == (shape_of(common), 200)
    assert online.seen == 400


def test_a_shapes_model_lists_match_the_names_gpus_report() -> None:
    reported = ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 NVL", "NVIDIA L40S"]
    shape = shape_of(simple_demand(1000, 100, 500, 1, allowed_models=frozenset({"A100", "H100"})))
    assert workload((shape, 1.0)).arrays(reported).model_ok.tolist() == [[True, True, True, False]]
    narrowed = Shape(1000, 500, 1, frozenset({"A100"}), frozenset({"A100-40GB"}))
    assert workload((narrowed, 1.0)).arrays(reported).model_ok.tolist() == [[True, False, False, False]]
    anything_but = Shape(1000, 500, 1, None, frozenset({"L40S"}))
    assert workload((anything_but, 1.0)).arrays(reported).model_ok.tolist() == [[True, True, True, False]]
