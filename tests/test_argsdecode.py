"""ArgsDecoder gives exactly json.loads' answer, also for bodies built to fool its tail reuse, and
does reuse the lists kube-scheduler repeats (the full node list, filter's answer in prioritize)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extender_support import filter_args, node, pod

from tensorai.scheduler.argsdecode import ArgsDecoder
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import ClusterView

NAMES = [f"node-{index:03d}" for index in range(50)]


def canonical_tail(names: list[str]) -> bytes:
    """`[...]}` as Go's encoding/json writes a list of node names: compact."""
    return json.dumps(names, separators=(",", ":")).encode() + b"}"


def _body(pod_json: bytes, names: list[str] | None) -> bytes:
    """ExtenderArgs as Go's encoding/json writes it: Pod, Nodes, NodeNames, compact."""
    listed = json.dumps(names, separators=(",", ":")).encode()
    return b'{"Pod":' + pod_json + b',"Nodes":null,"NodeNames":' + listed + b"}"


def _learned(decoder: ArgsDecoder, pod_json: bytes = b'{"metadata":{"name":"p"}}') -> list[str]:
    """Teach the decoder NAMES the way it learns: the same list twice."""
    for _ in range(2):
        decoder.decode(_body(pod_json, NAMES))
    names = decoder.decode(_body(pod_json, NAMES))["NodeNames"]
    assert decoder.known(names)
    return names


def _assert_decodes_like_json_loads(decoder: ArgsDecoder, raw: bytes) -> None:
    """The same value as json.loads, or the same kind of error."""
    try:
        expected = json.loads(raw)
    except ValueError as error:
        with pytest.raises(type(error)):
            decoder.decode(raw)
        return
    assert decoder.decode(raw) == expected


def test_a_repeated_node_list_is_decoded_once_and_then_shared() -> None:
    decoder = ArgsDecoder()
    first = decoder.decode(_body(b'{"metadata":{"name":"a"}}', NAMES))
    assert not decoder.known(first["NodeNames"])  # seen once: a rotating sample costs nothing extra
    names = _learned(decoder)
    again = decoder.decode(_body(b'{"metadata":{"name":"b","labels":{"x":"y"}}}', NAMES))
    assert again["NodeNames"] is names
    assert again == json.loads(_body(b'{"metadata":{"name":"b","labels":{"x":"y"}}}', NAMES))


def test_a_spaced_encoding_is_learned_too() -> None:
    """Python's default json.dumps (", " and ": ") is reused like Go's compact encoding."""
    decoder = ArgsDecoder()
    raw = json.dumps({"Pod": {"metadata": {"name": "a"}}, "Nodes": None, "NodeNames": NAMES}).encode()
    decoder.decode(raw)
    decoder.decode(raw)
    again = decoder.decode(raw)
    assert decoder.known(again["NodeNames"]) and again == json.loads(raw)


def test_a_different_list_is_decoded_in_full() -> None:
    decoder = ArgsDecoder()
    names = _learned(decoder)
    other = decoder.decode(_body(b"{}", NAMES[:-1]))
    assert other["NodeNames"] == NAMES[:-1] and other["NodeNames"] is not names


def test_filters_answer_is_reused_by_prioritize() -> None:
    decoder = ArgsDecoder()
    kept = NAMES[3:9]
    decoder.remember(kept, canonical_tail(kept))
    assert decoder.decode(_body(b'{"metadata":{"name":"a"}}', kept))["NodeNames"] is kept


@pytest.mark.parametrize(
    "raw",
    [
        # the known list is the value of a key inside the pod, the real NodeNames is elsewhere
        b'{"Nodes":null,"NodeNames":["x"],"Pod":{"a":1,"NodeNames":' + canonical_tail(NAMES) + b"}",
        # a key that ends in a quoted NodeNames inside a string
        b'{"Pod":{"a\\"NodeNames":' + canonical_tail(NAMES)[:-1] + b'},"NodeNames":' + canonical_tail(NAMES),
        # the tail after a value position, not a key
        b'{"Pod":"NodeNames":' + canonical_tail(NAMES),
        # a string value that ends with the tail's bytes
        b'{"Pod":{},"X":"\\"NodeNames":' + canonical_tail(NAMES),
        # not an object at all
        b'["NodeNames":' + canonical_tail(NAMES),
        b"[1," + b'"NodeNames":' + canonical_tail(NAMES),
        # a duplicate NodeNames key before the last
        b'{"NodeNames":["z"],"Pod":{},"NodeNames":' + canonical_tail(NAMES),
        # broken heads
        b'{"Pod":{,"NodeNames":' + canonical_tail(NAMES),
        b'{"Pod":{}},"NodeNames":' + canonical_tail(NAMES),
        b'"NodeNames":' + canonical_tail(NAMES),
    ],
)
def test_bodies_built_to_fool_the_reuse_get_json_loads_answer(raw: bytes) -> None:
    decoder = ArgsDecoder()
    _learned(decoder)
    for _ in range(3):  # also after the decoder had the chance to learn this body's tail
        _assert_decodes_like_json_loads(decoder, raw)


def test_a_tail_with_more_than_the_list_is_never_learned() -> None:
    """Keys after NodeNames would override the head's: such a tail must not be reused for another head."""
    decoder = ArgsDecoder()
    tail = b'["a","b"],"Pod":{"metadata":{"name":"from-tail"}}}'
    for name in (b"x", b"x", b"y"):
        raw = b'{"Pod":{"metadata":{"name":"' + name + b'"}},"NodeNames":' + tail
        assert decoder.decode(raw) == json.loads(raw)
        assert decoder.decode(raw)["Pod"]["metadata"]["name"] == "from-tail"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from([*NAMES[:3], '"NodeNames":']),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
_fragments = st.sampled_from(
    [b'"NodeNames":', canonical_tail(NAMES), canonical_tail(NAMES)[:-1], b"}", b",", b"{", b'"', b'\\"', b"null", b" "]
)


@settings(max_examples=300, deadline=None)
@given(
    pod_value=_json_values,
    junk=st.lists(_fragments, max_size=4),
    use_list=st.booleans(),
    cut=st.integers(0, 40),
)
def test_decode_always_equals_json_loads(pod_value, junk, use_list, cut) -> None:
    """Random pods, junk spliced in before the tail and truncated tails: the same value or the same
    error as json.loads, with the decoder warmed on the list so the reuse path is the one tried."""
    decoder = ArgsDecoder()
    _learned(decoder)
    pod_json = json.dumps(pod_value).encode()
    raw = b'{"Pod":' + pod_json + b"".join(junk) + b',"Nodes":null,"NodeNames":'
    raw += canonical_tail(NAMES if use_list else NAMES[:2])
    for body in (raw, raw[: len(raw) - cut] if cut else raw, b"".join(junk) + raw):
        _assert_decodes_like_json_loads(decoder, body)


def test_the_extender_answers_the_same_with_reused_lists() -> None:
    """filter then prioritize over HTTP-shaped bytes: reused lists give the plain decoder's answers."""
    def service() -> ExtenderService:
        view = ClusterView(stale_seconds=0)
        view.replace("nodes", [node(name, 2) for name in NAMES[:6]])
        view.replace("pods", [])
        view.replace("gpuquotas", [])
        return ExtenderService(view)

    reusing, plain = service(), service()
    for index in range(4):
        raw = json.dumps(filter_args(pod(f"p{index}", 250), [*NAMES[:6], "ghost"])).encode()
        kept_answer = reusing.encode_filter(reusing.filter(reusing.args_decoder.decode(raw)))
        assert kept_answer == plain.encode_filter(plain.filter(json.loads(raw)))
        kept = json.loads(kept_answer)["NodeNames"]
        prioritize_raw = json.dumps(filter_args(pod(f"p{index}", 250), kept), separators=(",", ":")).encode()
        decoded = reusing.args_decoder.decode(prioritize_raw)
        assert reusing.args_decoder.known(decoded["NodeNames"])  # filter's answer, reused
        assert reusing.prioritize_json(decoded) == plain.prioritize_json(json.loads(prioritize_raw))
