"""Resource quantities the way kube-apiserver stores them: validated, defaulted and re-canonicalised.

A real API server returns node allocatable `8000` as `8k` and a limit of `0.25` as `250m`, rejects a
fractional extended resource (`tensor.ai/vgpu: 0.25` -> 422 "must be an integer"), and copies a pod's
limits into missing requests. The stand-in does the same, so code that would break on a real
cluster (plain `int()` on a quantity, reading only `requests`, relying on a fractional extended
resource) breaks in our tests too. Quantities are parsed only with `tensorai.proto.quantity`.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from tensorai.proto.quantity import QuantityError, parse_quantity

_DECIMAL_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}
_BINARY_SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
_NANO = Decimal("1e-9")
MILLI = Decimal("1e-3")


class ResourceError(ValueError):
    """An invalid quantity in a resource map, phrased like the API server's 422 field error."""


def canonical_quantity(value: object, *, step: Decimal = _NANO) -> str:
    """The string kube-apiserver stores for a quantity: `2000`->`2k`, `0.25`->`250m`, `1024Mi`->`1Gi`.

    Values finer than `step` are rounded up to it: nano in general, milli for pod resources (observed on
    a real server: a limit of 0.0005 is stored as `1m`, 0.2501 as `251m`).
    """
    number = parse_quantity(value)
    text = value.strip() if isinstance(value, str) else ""
    binary = text.endswith("i")
    exponent_format = not binary and any(char in text for char in "eE")
    with localcontext() as context:
        context.prec = 80  # parse_quantity bounds values to 1e30; 80 digits keep nano steps exact
        number = (number / step).to_integral_value(rounding=ROUND_CEILING) * step
    if number == 0:
        return "0"
    if binary and abs(number) >= 1024 and number == number.to_integral_value():
        mantissa, power = int(number), 0
        while mantissa % 1024 == 0 and power < len(_BINARY_SUFFIXES) - 1:
            mantissa //= 1024
            power += 1
        return f"{mantissa}{_BINARY_SUFFIXES[power]}"
    sign, digits, exponent = number.normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
    shift = exponent % 3  # lower the exponent to a multiple of 3, growing the mantissa
    mantissa, exponent = mantissa * 10**shift, exponent - shift
    if exponent_format:
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    while exponent > 18:
        mantissa, exponent = mantissa * 1000, exponent - 3
    return f"{mantissa}{_DECIMAL_SUFFIXES[exponent]}"


def is_extended_resource(name: str) -> bool:
    """Extended resources (ours: tensor.ai/...) live outside kubernetes.io and must be whole numbers."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


def canonical_resource_map(
    resources: Any, where: str, *, integer_extended: bool, step: Decimal = _NANO
) -> dict[str, str]:
    """Validate and canonicalise a `{name: quantity}` map; ResourceError names the offending field."""
    if not isinstance(resources, dict):
        raise ResourceError(f"{where}: Invalid value: must be a map of resource names to quantities")
    result: dict[str, str] = {}
    for name, value in resources.items():
        field = f"{where}[{name}]"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ResourceError(f"{field}: Invalid value: {value!r}: must be a quantity string")
        try:
            canonical = canonical_quantity(value, step=step)
            number = parse_quantity(canonical)
        except QuantityError as error:
            raise ResourceError(
                f"{field}: Invalid value: {value!r}: quantities must match the regular expression "
                f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' ({error})"
            ) from None
        if number < 0:
            raise ResourceError(f'{field}: Invalid value: "{canonical}": must be greater than or equal to 0')
        if integer_extended and is_extended_resource(name) and number != number.to_integral_value():
            raise ResourceError(f'{field}: Invalid value: "{canonical}": must be an integer')
        result[name] = canonical
    return result


def normalize_pod_resources(pod: dict) -> None:
    """Canonicalise every container's requests/limits, default requests from limits, check extended rules."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    for list_name in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(list_name) or []):
            if not isinstance(container, dict) or container.get("resources") is None:
                continue
            where = f"spec.{list_name}[{index}].resources"
            resources = container["resources"]
            if not isinstance(resources, dict):
                raise ResourceError(f"{where}: Invalid value: must be an object")
            limits = canonical_resource_map(
                resources.get("limits") or {}, f"{where}.limits", integer_extended=True, step=MILLI
            )
            requests = canonical_resource_map(
                resources.get("requests") or {}, f"{where}.requests", integer_extended=True, step=MILLI
            )
            for name, limit in limits.items():
                requests.setdefault(name, limit)
                if is_extended_resource(name) and parse_quantity(requests[name]) != parse_quantity(limit):
                    raise ResourceError(
                        f'{where}.requests[{name}]: Invalid value: "{requests[name]}": must be equal to {name} limit '
                        f"of {limit}"
                    )
            for name, request in requests.items():
                if is_extended_resource(name) and name not in limits:
                    raise ResourceError(
                        f"{where}.limits[{name}]: Required value: Limit must be set for non overcommitable resources"
                    )
                if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
                    raise ResourceError(
                        f'{where}.requests[{name}]: Invalid value: "{request}": must be less than or equal to '
                        f"{name} limit of {limits[name]}"
                    )
            if limits:
                resources["limits"] = limits
            if requests:
                resources["requests"] = requests


def normalize_node_resources(node: dict) -> None:
    """Canonicalise a node's status.capacity and status.allocatable."""
    status = node.get("status")
    if not isinstance(status, dict):
        return
    for field in ("capacity", "allocatable"):
        if status.get(field) is not None:
            status[field] = canonical_resource_map(status[field], f"status.{field}", integer_extended=False)
