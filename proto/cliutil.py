"""What every tensor.ai console script shares at its edge: --version, --log-format, flag value types,
and one line instead of a traceback when the Kubernetes client cannot be configured.

Why one module: the five programs must agree on the version they print (one source, the package
metadata, which setuptools takes from pyproject.toml - the version charts/generate.py writes into
Chart.yaml), on the JSON log shape a log pipeline (Loki, ELK) parses, and on how a bad value is
reported (flag or variable, the value, what was expected; exit 2). Only the standard library is
imported here, so `--version` and `--help` stay instant.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

DISTRIBUTION = "tensorai-vgpu"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})
NO_KUBECONFIG = "no kubeconfig: --kubeconfig not given, not in a pod (no service account), and ~/.kube/config missing"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag is one line on stderr and exit 2, not the whole usage block.

    An admin reading a crash-looping pod's log sees the flag, the value and what was expected as the
    last (and only) line; --help still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed package's version; pyproject.toml's when running from a source tree that is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """`--version` printing `<prog> <version>` (e.g. `tensorai-extender 0.1.0`) and exiting 0."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {version()}",
                        help="print the program's version and exit")


def add_log_format_flag(parser: argparse.ArgumentParser, default: str = "text") -> None:
    """`--log-format text|json`; `default` lets a program take it from its environment."""
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default,
                        help="log lines as text, or as one JSON object per line (time, level, logger, message, "
                        "exc_info) for Loki/ELK (default %(default)s)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC, milliseconds), level, logger, message, exc_info.

    The message is formatted with its arguments; a traceback becomes one string field, so a record
    is always exactly one line however many lines its traceback has."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Configure the root logger once, on stderr, as text (the format every program had) or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no in any case; anything else is a ValueError (never silently false)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false, 1/0 or yes/no, got {text!r}")


def port(text: str) -> int:
    """A TCP port, 0 (any free port / off, as the flag says) to 65535."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return number


def int_at_least(low: int) -> Any:
    """An argparse type: a whole number >= `low`."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return number

    parse.__name__ = f"int >= {low}"
    return parse


def seconds(*, allow_zero: bool) -> Any:
    """An argparse type: a finite number of seconds, > 0 (or >= 0 with `allow_zero`)."""
    expected = "a number of seconds >= 0" if allow_zero else "a number of seconds > 0"

    def parse(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return number

    parse.__name__ = "seconds"
    return parse


def kube_client_problem(error: Exception, kubeconfig: str | os.PathLike[str] | None) -> str:
    """One line saying why the Kubernetes client could not be configured (instead of its traceback).

    With no --kubeconfig, outside a pod and without a default kubeconfig the client says 'Invalid
    kube-config file. No configuration found.', which hides the three places it looked."""
    message = " ".join(str(error).split()) or type(error).__name__
    if kubeconfig is None or not str(kubeconfig):
        default = os.environ.get("KUBECONFIG") or "~/.kube/config"
        if not Path(os.path.expanduser(default.split(os.pathsep)[0])).exists():
            return NO_KUBECONFIG.replace("~/.kube/config", default)
        return f"kubeconfig {default}: {message}"
    if not Path(kubeconfig).is_file():
        return f"--kubeconfig {kubeconfig}: no such file"
    return f"--kubeconfig {kubeconfig}: {message}"
