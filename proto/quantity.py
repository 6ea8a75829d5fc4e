"""Kubernetes resource quantities (`250m`, `2k`, `10Gi`, `1e3`) parsed exactly.

Everything that reads a resource value from the API (the webhook, the extender, the device plugin)
goes through here: the API server re-canonicalises stored quantities (`2000` comes back as `2k`),
so plain `int()` would break on real clusters.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# ASCII digits only and no surrounding whitespace, like the API server's own parser: `\d` would
# also take fullwidth or Arabic-Indic digits ("０.５"), and Decimal() would then read them as 0.5.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)"
)
# Far beyond any GPU count or memory size; bounds Decimal work on hostile input like "1e999999999".
_MAX_ABS = Decimal("1e30")


class QuantityError(ValueError):
    """A string that is not a valid Kubernetes quantity."""


def parse_quantity(value: object) -> Decimal:
    """Return the exact value of a Kubernetes quantity (str, int or float) as a Decimal."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity must be a string or number, got boolean {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if not isinstance(value, str):
        raise QuantityError(f"quantity must be a string or number, got {type(value).__name__}")
    text = value
    match = _QUANTITY.fullmatch(text) if text.isascii() else None
    if match is None or len(text) > 64:
        hint = ""
        if any(character.isspace() for character in text):
            hint = " (no spaces are allowed around or inside a quantity)"
        elif not text.isascii():
            hint = " (only ASCII digits 0-9 and suffixes are allowed; fullwidth or other digits are not)"
        raise QuantityError(
            f"invalid quantity {value!r}{hint}: expected a number with an optional suffix "
            "(m, k, M, G, Ki, Mi, Gi, ...) or exponent, e.g. '250m', '2', '10Gi'"
        )
    try:
        number = Decimal(match.group("number"))
        if match.group("exp"):
            exponent = int(match.group("exp")[1:])
            if abs(exponent) > 30:
                raise QuantityError(f"quantity {value!r} is out of range")
            number = number.scaleb(exponent)
        elif match.group("suffix") in _BINARY_SUFFIXES:
            number = number * _BINARY_SUFFIXES[match.group("suffix")]
        else:
            number = number * _DECIMAL_SUFFIXES[match.group("suffix") or ""]
    except InvalidOperation as error:
        raise QuantityError(f"invalid quantity {value!r}") from error
    if abs(number) > _MAX_ABS:
        raise QuantityError(f"quantity {value!r} is out of range")
    return number


def quantity_to_milli(value: object) -> int:
    """Thousandths of the quantity, rounded up like the API server does (0.0005 -> 1)."""
    return int((parse_quantity(value) * 1000).to_integral_value(rounding=ROUND_CEILING))


def quantity_to_int(value: object, *, what: str = "quantity") -> int:
    """The quantity as a whole number; raise QuantityError if it has a fractional part."""
    number = parse_quantity(value)
    if number != number.to_integral_value():
        raise QuantityError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def bytes_to_mib(value: object) -> int:
    """A memory quantity (bytes, `10Gi`, `512Mi`) in MiB, rounded up."""
    number = parse_quantity(value)
    return int((number / (1 << 20)).to_integral_value(rounding=ROUND_CEILING))
