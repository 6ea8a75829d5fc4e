"""Field and label selectors for the Kubernetes API stand-in, parsed once into small matchers.

The stand-in filters lists and watches the way kube-apiserver does, so client code that relies on
`fieldSelector=spec.nodeName=X` or `labelSelector=app in (a,b)` sees the same objects it would see
on a real cluster. Bad selectors raise SelectorError (the server answers 400), never crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class SelectorError(ValueError):
    """A field or label selector that kube-apiserver would also refuse."""


@dataclass(frozen=True)
class FieldRequirement:
    """One `path=value` / `path!=value` term of a field selector."""

    path: str
    equal: bool
    value: str

    def matches(self, obj: Mapping) -> bool:
        return (field_value(obj, self.path) == self.value) == self.equal


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector: `k=v`, `k!=v`, `k in (..)`, `k notin (..)`, `k`, `!k`."""

    key: str
    operator: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin, like !=


def field_value(obj: Mapping, path: str) -> str:
    """The string a field selector compares against: missing fields read as "" like the API server."""
    current: object = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return ""
        current = current[part]
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def parse_field_selector(text: str, supported_fields: frozenset[str] | None) -> tuple[FieldRequirement, ...]:
    """Parse `a=b,c!=d,e==f`; reject fields the real server does not index for this resource."""
    requirements: list[FieldRequirement] = []
    for term in _split_terms(text):
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-/]+)\s*(==|!=|=)\s*([^,]*?)\s*", term)
        if match is None:
            raise SelectorError(f"invalid field selector term {term!r}: expected 'field=value' or 'field!=value'")
        path, operator, value = match.groups()
        if supported_fields is not None and path not in supported_fields:
            raise SelectorError(
                f'field label not supported: "{path}" (this resource supports {", ".join(sorted(supported_fields))})'
            )
        requirements.append(FieldRequirement(path=path, equal=operator != "!=", value=value))
    return tuple(requirements)


_LABEL_KEY = r"(?:[A-Za-z0-9.\-]+/)?[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?)?"


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    """Parse equality, set (`in`, `notin`) and existence (`k`, `!k`) label selector terms."""
    requirements: list[LabelRequirement] = []
    for raw_term in _split_terms(text):
        term = raw_term.strip()
        requirements.append(_parse_label_term(term))
    return tuple(requirements)


def _parse_label_term(term: str) -> LabelRequirement:
    set_match = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^()]*)\)", term)
    if set_match:
        key, operator, raw_values = set_match.groups()
        values = frozenset(value.strip() for value in raw_values.split(","))
        _check_key(key, term)
        for value in values:
            _check_value(value, term)
        return LabelRequirement(key=key, operator=operator, values=values)
    equality = re.fullmatch(r"([^=!\s]+)\s*(==|!=|=)\s*(\S*)", term)
    if equality:
        key, operator, value = equality.groups()
        _check_key(key, term)
        _check_value(value, term)
        return LabelRequirement(key=key, operator="notin" if operator == "!=" else "in", values=frozenset([value]))
    if term.startswith("!"):
        _check_key(term[1:].strip(), term)
        return LabelRequirement(key=term[1:].strip(), operator="!exists", values=frozenset())
    _check_key(term, term)
    return LabelRequirement(key=term, operator="exists", values=frozenset())


def _check_key(key: str, term: str) -> None:
    if not re.fullmatch(_LABEL_KEY, key) or len(key) > 317:
        raise SelectorError(f"invalid label selector term {term!r}: {key!r} is not a valid label key")


def _check_value(value: str, term: str) -> None:
    if not re.fullmatch(_LABEL_VALUE, value) or len(value) > 63:
        raise SelectorError(f"invalid label selector term {term!r}: {value!r} is not a valid label value")


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses; an empty selector selects everything."""
    if not text.strip():
        return []
    terms: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"invalid selector {text!r}: unbalanced ')'")
        elif char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise SelectorError(f"invalid selector {text!r}: unbalanced '('")
    terms.append(text[start:])
    if any(not term.strip() for term in terms):
        raise SelectorError(f"invalid selector {text!r}: empty term")
    return terms


@dataclass(frozen=True)
class Selector:
    """A parsed field + label selector; an empty one matches every object."""

    fields: tuple[FieldRequirement, ...] = ()
    labels: tuple[LabelRequirement, ...] = ()

    def matches(self, obj: Mapping) -> bool:
        if not all(requirement.matches(obj) for requirement in self.fields):
            return False
        if not self.labels:
            return True
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        return all(requirement.matches(labels) for requirement in self.labels)
