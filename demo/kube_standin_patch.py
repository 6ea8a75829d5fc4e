"""PATCH bodies for the Kubernetes API stand-in: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Implemented here rather than with the `jsonpatch` package because the demo runs from the runtime
install, which does not carry development dependencies. Strategic merge patch is served as a merge
patch (lists are replaced, never merged by key) — documented in docs/kube-standin.md.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied to the object (the server answers 422)."""


class PatchFormatError(ValueError):
    """A patch body that is not a patch at all (the server answers 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902: apply add/remove/replace/move/copy/test in order to a deep copy of `document`."""
    if not isinstance(operations, list):
        raise PatchFormatError("a JSON patch must be a JSON array of operations")
    result = copy.deepcopy(document)
    for position, operation in enumerate(operations):
        if not isinstance(operation, dict) or not isinstance(operation.get("op"), str):
            raise PatchFormatError(f"JSON patch operation {position} must be an object with a string 'op'")
        if not isinstance(operation.get("path"), str):
            raise PatchFormatError(f"JSON patch operation {position} needs a string 'path'")
        result = _apply_operation(result, operation, position)
    return result


def _apply_operation(document: Any, operation: dict, position: int) -> Any:
    op = operation["op"]
    path = _parse_pointer(operation["path"], position)
    where = f"JSON patch operation {position} ({op} {operation['path']})"
    if op in ("add", "replace", "test") and "value" not in operation:
        raise PatchFormatError(f"{where}: missing 'value'")
    if op == "add":
        return _add(document, path, copy.deepcopy(operation["value"]), where)
    if op == "remove":
        document, _ = _remove(document, path, where)
        return document
    if op == "replace":
        if not path:
            return copy.deepcopy(operation["value"])
        document, _ = _remove(document, path, where)
        return _add(document, path, copy.deepcopy(operation["value"]), where)
    if op in ("move", "copy"):
        if not isinstance(operation.get("from"), str):
            raise PatchFormatError(f"{where}: needs a string 'from'")
        source = _parse_pointer(operation["from"], position)
        if op == "move":
            if path == source:  # a move onto itself changes nothing (RFC 6902 section 4.4)
                _get(document, source, where)
                return document
            if path[: len(source)] == source and len(path) > len(source):
                raise PatchError(f"{where}: cannot move a value into one of its own children")
            document, value = _remove(document, source, where)
        else:
            value = copy.deepcopy(_get(document, source, where))
        return _add(document, path, value, where)
    if op == "test":
        if _get(document, path, where) != operation["value"]:
            raise PatchError(f"{where}: test failed, the value differs")
        return document
    raise PatchFormatError(f"{where}: unknown op {op!r} (expected add, remove, replace, move, copy or test)")


def _parse_pointer(pointer: str, position: int) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchFormatError(f"JSON patch operation {position}: path {pointer!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _array_index(container: list, token: str, where: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{where}: {token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"{where}: index {index} is out of range")
    return index


def _get(document: Any, path: list[str], where: str) -> Any:
    current = document
    for token in path:
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"{where}: {token!r} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_array_index(current, token, where, allow_end=False)]
        else:
            raise PatchError(f"{where}: cannot descend into a {type(current).__name__}")
    return current


def _add(document: Any, path: list[str], value: Any, where: str) -> Any:
    if not path:
        return value
    parent = _get(document, path[:-1], where)
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(parent, token, where, allow_end=True), value)
    else:
        raise PatchError(f"{where}: parent is a {type(parent).__name__}, not an object or array")
    return document


def _remove(document: Any, path: list[str], where: str) -> tuple[Any, Any]:
    if not path:
        raise PatchError(f"{where}: cannot remove the whole document")
    parent = _get(document, path[:-1], where)
    token = path[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"{where}: {token!r} does not exist")
        return document, parent.pop(token)
    if isinstance(parent, list):
        return document, parent.pop(_array_index(parent, token, where, allow_end=False))
    raise PatchError(f"{where}: parent is a {type(parent).__name__}, not an object or array")
