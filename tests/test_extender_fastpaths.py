"""The extender's fast paths give the answers of the plain ones: the hand-encoded filter answer is
byte for byte json.dumps; filter's reasons and bind's GPUs from the score cache are those of fresh
fit checks and scoring, also when binds change the cluster between calls."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from test_extender_support import assigned_pod, bind_args, filter_args, node, pod

from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.extender import ExtenderService, encode_priorities
from tensorai.scheduler.view import ClusterView

# any text: quotes, backslashes, the '","' that separates encoded items, control and non-ASCII characters
_names = st.sampled_from(['a","b', '","', "\\", 'x\\"', ""]) | st.text(max_size=12)
_reasons = st.sampled_from(["does not fit", 'say "why"', 'a","b', "naïve \\ reason\n"]) | st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    kept=st.lists(_names, max_size=8),
    failed=st.dictionaries(_names, _reasons, max_size=8),
    unresolvable=st.dictionaries(_names, _reasons, max_size=8),
)
def test_encoded_filter_answer_is_exactly_json_dumps(kept, failed, unresolvable) -> None:
    service = ExtenderService(ClusterView(stale_seconds=0))
    answer = {
        "Nodes": None,
        "NodeNames": kept,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": "",
    }
    for _ in range(2):  # the second time from the caches
        assert service.encode_filter(answer) == json.dumps(answer, separators=(",", ":")).encode()


@settings(max_examples=200, deadline=None)
@given(names=st.lists(_names, max_size=8, unique=True), reason=_reasons)
def test_encoded_failures_with_one_reason_for_all_nodes_are_exactly_json_dumps(names, reason) -> None:
    """The usual answer: every failed node for one fit reason, from the cached literals the second time."""
    service = ExtenderService(ClusterView(stale_seconds=0))
    answer = {"Nodes": None, "NodeNames": [], "FailedNodes": dict.fromkeys(names, reason)}
    answer |= {"FailedAndUnresolvableNodes": dict.fromkeys(names, reason), "Error": ""}
    for _ in range(2):
        assert service.encode_filter(answer) == json.dumps(answer, separators=(",", ":")).encode()


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(st.tuples(_names, st.integers(0, 10)), max_size=10))
def test_encoded_priorities_are_exactly_json_dumps(entries) -> None:
    names, scores = [name for name, _ in entries], [score for _, score in entries]
    expected = [{"Host": name, "Score": score} for name, score in entries]
    assert encode_priorities(names, scores) == json.dumps(expected, separators=(",", ":"))


def test_answers_with_an_error_or_node_objects_are_encoded_too() -> None:
    service = ExtenderService(ClusterView(stale_seconds=0))
    for answer in (
        {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": "bad pod"},
        {
            "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [{"metadata": {"name": "a"}}]},
            "NodeNames": None,
            "FailedNodes": {"b": "x"},
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        },
    ):
        assert json.loads(service.encode_filter(answer)) == answer


def _view(seed: int) -> ClusterView:
    """Six 2-GPU nodes, partly filled; one unknown to the view is asked about too."""
    rng = random.Random(seed)
    view = ClusterView(stale_seconds=0)
    names = [f"n{index}" for index in range(6)]
    view.replace("nodes", [node(name, 2) for name in names])
    running = []
    for index, name in enumerate(names):
        shares = [(slot, rng.choice((250, 500, 750, 1000))) for slot in range(2) if rng.random() < 0.6]
        if shares:
            running.append(assigned_pod(f"run-{index}", name, shares, namespace="other"))
    view.replace("pods", running)
    view.replace("gpuquotas", [])
    return view


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000), shapes=st.lists(st.sampled_from([100, 250, 500, 750, 1000]), min_size=1, max_size=9)
)
def test_filter_from_the_score_cache_answers_as_fresh_fit_checks_do_across_binds(seed: int, shapes: list[int]) -> None:
    """Each pod is filtered, then bound: every bind changes a node between two filters of the same shape,
    which the cached scores and reasons must not miss (a stale cache would keep a full node or give the
    reason of an old state)."""
    cached = ExtenderService(_view(seed))
    fresh = ExtenderService(_view(seed), context=PolicyContext(use_cache=False))
    names = [f"n{index}" for index in range(6)] + ["ghost"]
    for index, milli in enumerate(shapes):
        pending = pod(f"p{index}", milli, namespace="bench", uid=f"uid-{index}")
        answers = [service.filter(filter_args(pending, names)) for service in (cached, fresh)]
        assert answers[0] == answers[1]
        # encoded with the kept rows' literals (the list filter just answered): still exactly json.dumps
        assert cached.encode_filter(answers[0]) == json.dumps(answers[0], separators=(",", ":")).encode()
        kept = list(answers[0]["NodeNames"] or [])  # as kube-scheduler sends them: a fresh list
        fresh._names_cache, fresh._kept_candidates = [], None  # the fresh side maps names to rows from scratch
        ranked = [service.prioritize_json(filter_args(pending, kept)) for service in (cached, fresh)]
        assert ranked[0] == ranked[1]
        if answers[0]["NodeNames"]:
            target = answers[0]["NodeNames"][0]
            errors = [service.bind(bind_args(pending, target))["Error"] for service in (cached, fresh)]
            assert errors[0] == errors[1] == ""


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    plan=st.lists(
        st.tuples(st.sampled_from([100, 250, 500, 750, 1000, 2000, (250, 250)]), st.integers(0, 6)),
        min_size=1,
        max_size=9,
    ),
)
def test_bind_from_the_score_cache_takes_the_gpus_fresh_scoring_takes(seed: int, plan: list) -> None:
    """Bind to any node (kept, full or unknown) after filter: same error, same Assignment as without the
    cache. Shapes the cache cannot place (two containers, whole GPUs) are in the mix on purpose."""
    cached = ExtenderService(_view(seed))
    fresh = ExtenderService(_view(seed), context=PolicyContext(use_cache=False))
    names = [f"n{index}" for index in range(6)] + ["ghost"]
    for index, (shape, target) in enumerate(plan):
        milli = list(shape) if isinstance(shape, tuple) else shape
        pending = pod(f"p{index}", milli, namespace="bench", uid=f"uid-{index}")
        for service in (cached, fresh):
            service.filter(filter_args(pending, names))
        errors = [service.bind(bind_args(pending, names[target]))["Error"] for service in (cached, fresh)]
        assert errors[0] == errors[1]
        held = [service.view.pod(f"uid-{index}").shares for service in (cached, fresh)]  # GPU, milli, MiB
        assert held[0] == held[1]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), picks=st.lists(st.lists(st.integers(0, 6), max_size=7), min_size=1, max_size=6))
def test_prioritize_answer_from_row_prefixes_is_exactly_json_dumps(seed: int, picks: list[list[int]]) -> None:
    """Known nodes take the per-row prefixes, a list with an unknown node the per-name ones; a node
    joining the cluster between two calls renumbers nothing it should not."""
    service = ExtenderService(_view(seed))
    names = [f"n{index}" for index in range(6)] + ["ghost"]
    for round_number, pick in enumerate(picks):
        args = filter_args(
            pod(f"p{round_number}", 250, namespace="bench", uid=f"u{round_number}"), [names[i] for i in pick]
        )
        assert service.prioritize_json(args) == json.dumps(service.prioritize(args), separators=(",", ":")).encode()
        if round_number == 2:
            service.view.upsert_node(node("late", 2))
            names[6] = "late"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), milli=st.sampled_from([250, 500, 750, 1000]))
def test_prioritize_after_a_bind_in_between_does_not_reuse_filters_scores(seed: int, milli: int) -> None:
    """filter(p), then another pod is bound to p's best node, then prioritize(p): p's ranking must be
    that of the changed cluster, as a service without any cache computes it."""
    service = ExtenderService(_view(seed))
    names = [f"n{index}" for index in range(6)]
    first = pod("p", 250, namespace="bench", uid="p")
    service.filter(filter_args(first, names))
    ranked = json.loads(service.prioritize_json(filter_args(first, names)))
    best = max(ranked, key=lambda entry: entry["Score"])["Host"]
    other = pod("q", milli, namespace="bench", uid="q")
    service.view.remember_pending(other)  # known to the extender without a filter call
    service.bind(bind_args(other, best))
    expected = ExtenderService(service.view, context=PolicyContext(use_cache=False))
    args = filter_args(first, names)
    assert service.prioritize_json(args) == expected.prioritize_json(args)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    steps=st.lists(
        st.tuples(st.sampled_from(["bind", "delete", "forget", "unhealthy", "healthy"]), st.integers(0, 5),
                  st.sampled_from([250, 500, 1000])),
        min_size=1,
        max_size=12,
    ),
)
def test_score_cache_follows_every_kind_of_view_change(seed: int, steps: list) -> None:
    """Binds and deletions change one row (the view's placement log tells the cache which), a forgotten
    bind gives capacity back, a node update may change anything (the cache compares everything): after
    each, filter and prioritize from the cache answer as a service without a cache does."""
    cached = ExtenderService(_view(seed))
    names = [f"n{index}" for index in range(6)]
    bound: list[dict] = []
    for index, (kind, target, milli) in enumerate(steps):
        view = cached.view
        pending = pod(f"p{index}", milli, namespace="bench", uid=f"uid-{index}")
        cached.filter(filter_args(pending, names))  # the cache syncs here, before the change
        if kind == "bind":
            if not cached.bind(bind_args(pending, names[target]))["Error"]:
                bound.append(pending)
        elif kind == "delete" and bound:
            view.delete_pod(bound.pop(target % len(bound)))
        elif kind == "forget" and bound:
            view.forget_assumed(bound.pop(target % len(bound))["metadata"]["uid"])
        elif kind in ("unhealthy", "healthy"):
            view.upsert_node(node(names[target], 2, unhealthy=frozenset({0}) if kind == "unhealthy" else frozenset()))
        fresh = ExtenderService(view, context=PolicyContext(use_cache=False))
        probe = pod(f"probe{index}", milli, namespace="bench", uid=f"probe-{index}")
        args = filter_args(probe, names)
        assert cached.filter(args) == fresh.filter(args)
        assert cached.prioritize_json(args) == fresh.prioritize_json(args)
