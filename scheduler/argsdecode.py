"""Decode ExtenderArgs bodies without decoding the same NodeNames list again and again.

kube-scheduler sends filter the same node list on every pod (all nodes, or its sample) and
prioritize the list filter just answered. Go encodes ExtenderArgs' fields in declaration order
(Pod, Nodes, NodeNames), so the list is the body's tail: `..."NodeNames":[...]}`. Decoding 1,000
names and checking they are strings costs ~60 us a request, a tenth of the extender's CPU per pod.

`ArgsDecoder.decode(raw)` returns exactly what `json.loads(raw)` returns (or raises what it
raises). When the bytes after the last `"NodeNames":` equal a known tail - a list learned from an
earlier body, or filter's own answer registered by `remember` - only the head is decoded, as
`head + '"NodeNames":null}'`, and the known list object is put in its place. Why that is the same:
the head parses with that ending only if the position after it expects a key of the top-level
object (inside a string, a nested object or a value it would not parse); a known tail is, byte for
byte, one JSON list of names and the closing `}` of that object, so in the full body it is the last
NodeNames key's value and nothing else - later keys cannot hide in it. The list objects handed out
are shared: callers must not mutate them (the extender only reads).
"""

from __future__ import annotations

import json
import threading

_KEY = b'"NodeNames":'
_NULL_TAIL = b'"NodeNames":null}'
_LEARNED_SLOTS = 4  # the full list and a few samples; learned lists are the long, repeating ones
_OWN_SLOTS = 4  # filter answers awaiting their prioritize (kube-scheduler may interleave a few)
_PROBE = 64  # bytes at each end of an unknown tail remembered to spot it coming again
# Longest tail kept (learned or remembered): 15,000 node names of 130 characters. Bodies are external
# input: with 8 slots this caps what the decoder keeps near 8 x (2 MiB + its decoded list), whatever is sent.
MAX_TAIL_BYTES = 2 << 20


class ArgsDecoder:
    """`json.loads` for ExtenderArgs bodies, reusing decoded NodeNames lists (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._learned: list[tuple[bytes, list[str]]] = []  # newest first
        self._own: list[tuple[bytes, list[str]]] = []  # newest first
        self._unknown_probe: tuple[int, bytes, bytes] | None = None  # the last tail seen once
        self._rejected: list[tuple[int, bytes, bytes]] = []  # repeating tails that are not just a list

    def decode(self, raw: bytes) -> object:
        """What json.loads(raw) gives; the NodeNames list may be a shared, already decoded one."""
        at = raw.rfind(_KEY)
        if at <= 0:
            return json.loads(raw)
        tail_length = len(raw) - at - len(_KEY)
        for pool in (self._own, self._learned):
            for tail, names in pool:
                if len(tail) == tail_length and raw.endswith(tail):
                    head = json.loads(raw[:at] + _NULL_TAIL)
                    if isinstance(head, dict):
                        head["NodeNames"] = names
                        return head
                    return json.loads(raw)  # cannot happen (see the module doc); answer as json.loads would
        body = json.loads(raw)
        if isinstance(body, dict):
            self._maybe_learn(raw, at, tail_length, body.get("NodeNames"))
        return body

    def known(self, names: object) -> bool:
        """Whether `names` is a list this decoder handed out (already checked: a list of str)."""
        return any(names is known for _, known in (*self._own, *self._learned))

    def remember(self, names: list[str], tail: bytes) -> None:
        """Offer the list filter just answered, with its `[...]}` bytes, for the coming prioritize.

        `tail` must be exactly `json.dumps(names, separators=(",", ":")).encode() + b"}"` - what Go's
        encoding/json writes for a list of node names - which the caller has from encoding its answer."""
        if len(tail) > MAX_TAIL_BYTES:
            return
        with self._lock:
            self._own = [(tail, names), *self._own[: _OWN_SLOTS - 1]]

    def _maybe_learn(self, raw: bytes, at: int, tail_length: int, names: object) -> None:
        """Learn a tail the second time it comes (a rotating sample never repeats: no cost for it).

        The tail is learned only if it is exactly one JSON list and the closing brace (any spacing):
        decoding it without its last `}` must give the body's NodeNames list."""
        if not isinstance(names, list) or not names or tail_length > MAX_TAIL_BYTES:
            return
        start = at + len(_KEY)
        probe = (tail_length, raw[start : start + _PROBE], raw[-_PROBE:])
        with self._lock:
            seen_before, self._unknown_probe = self._unknown_probe == probe, probe
            if not seen_before or probe in self._rejected:
                return
        tail = raw[start:]
        closed = tail.rstrip()
        try:
            listed = json.loads(closed[:-1]) if closed.endswith(b"}") else None
        except ValueError:
            listed = None
        with self._lock:
            if listed != names or not all(isinstance(name, str) for name in listed):
                self._rejected = [probe, *self._rejected[: _LEARNED_SLOTS - 1]]
                return
            self._learned = [(tail, listed), *self._learned[: _LEARNED_SLOTS - 1]]
