"""Every console script as an admin meets it: --version from one source, a config error as one line
on stderr with exit 2 (never a traceback), and --log-format json as one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tensorai.proto import cliutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
PYPROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run_script(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout_s,
                          env=env, cwd=cwd, check=False)


def no_kube_env(home: Path) -> dict[str, str]:
    """An environment with no kubeconfig anywhere and no service account (not in a pod)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
           and not key.startswith("TENSORAI_")}
    env["HOME"] = str(home)
    return env


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, (word, result.stderr)
    return last


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_prints_the_pyproject_version(script: str) -> None:
    result = run_script(script, "--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"{script} {PYPROJECT_VERSION}"


def test_the_device_plugin_reports_the_same_version_in_its_inventory() -> None:
    from tensorai.deviceplugin.cli import PLUGIN_VERSION

    assert PLUGIN_VERSION == cliutil.version() == PYPROJECT_VERSION


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("METRICS_PORT", "abc", "port number 0..65535"),
    ("METRICS_PORT", "70000", "port number 0..65535"),
    ("NO_KUBE", "ture", "true/false, 1/0 or yes/no"),
    ("RECOVERY_PROBES", "0", "whole number >= 1"),
    ("INVENTORY_INTERVAL", "soon", "seconds > 0"),
    ("SHARING", "mpss", "exclusive, mps, timeslice"),
    ("LOG_FORMAT", "xml", "text, json"),
    ("DEVICE_PLUGIN_DIR", "plugins", "absolute path"),
])
def test_a_bad_device_plugin_environment_value_names_the_variable(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    env = no_kube_env(tmp_path) | {"TENSORAI_DEVICE_PLUGIN_" + variable: value}
    result = run_script("tensorai-device-plugin", "--node-name", "n", "--no-kube", env=env)
    line = assert_one_line_exit_2(result, "TENSORAI_DEVICE_PLUGIN_" + variable, repr(value), expected)
    assert len(result.stderr.strip().splitlines()) == 1, line


@pytest.mark.parametrize("word", ["TRUE", "Yes", "1"])
def test_device_plugin_boolean_environment_accepts_the_usual_words(
    monkeypatch: pytest.MonkeyPatch, word: str
) -> None:
    from tensorai.deviceplugin.cli import build_parser

    monkeypatch.setenv("TENSORAI_DEVICE_PLUGIN_NO_KUBE", word)
    assert build_parser().parse_args([]).no_kube is True
    monkeypatch.setenv("TENSORAI_DEVICE_PLUGIN_NO_KUBE", word.replace("1", "0").replace("TRUE", "false")
                       .replace("Yes", "NO"))
    assert build_parser().parse_args([]).no_kube is False


@pytest.mark.parametrize("flag", ["--device-plugin-dir", "--pod-resources-socket", "--mps-pipe-dir"])
def test_a_relative_device_plugin_path_is_refused_in_one_line(tmp_path: Path, flag: str) -> None:
    result = run_script("tensorai-device-plugin", "--node-name", "n", "--no-kube", "--backend", "sim",
                        "--sim-gpus", "1xH100:81559", flag, "relative/dir", env=no_kube_env(tmp_path), cwd=tmp_path)
    line = assert_one_line_exit_2(result, flag, "'relative/dir'", "absolute path")
    assert len(result.stderr.strip().splitlines()) == 1, line


@pytest.mark.parametrize(("script", "args"), [
    ("tensorai-extender", ["--port", "0"]),
    ("tensorai-webhook", ["--self-signed", "--port", "0"]),
    ("tensorai-device-plugin", ["--backend", "sim", "--sim-gpus", "1xH100:81559", "--node-name", "n",
                                "--metrics-port", "0"]),
])
def test_no_kubeconfig_anywhere_is_one_line_and_exit_2(tmp_path: Path, script: str, args: list[str]) -> None:
    plugin_dir = ["--device-plugin-dir", str(tmp_path / "dp")] if script == "tensorai-device-plugin" else []
    result = run_script(script, *args, *plugin_dir, env=no_kube_env(tmp_path), cwd=tmp_path)
    assert_one_line_exit_2(result, f"{script}: {cliutil.NO_KUBECONFIG}")


@pytest.mark.parametrize("script", ["tensorai-extender", "tensorai-device-plugin"])
def test_an_unreadable_kubeconfig_is_one_condensed_line(tmp_path: Path, script: str) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [\n")
    extra = (["--backend", "sim", "--sim-gpus", "1xH100:81559", "--node-name", "n", "--metrics-port", "0",
              "--device-plugin-dir", str(tmp_path / "dp")] if script == "tensorai-device-plugin" else ["--port", "0"])
    result = run_script(script, "--kubeconfig", str(bad), *extra, env=no_kube_env(tmp_path))
    assert_one_line_exit_2(result, f"--kubeconfig {bad}:")
    missing = run_script(script, "--kubeconfig", str(tmp_path / "none"), *extra, env=no_kube_env(tmp_path))
    assert_one_line_exit_2(missing, f"--kubeconfig {tmp_path / 'none'}: no such file")


@pytest.mark.parametrize(("script", "flag", "value"), [
    ("tensorai-extender", "--port", "http"),
    ("tensorai-extender", "--requeue-interval-seconds", "0"),
    ("tensorai-extender", "--node-stale-seconds", "-5"),
    ("tensorai-extender", "--node-stale-seconds", "nan"),
    ("tensorai-demo", "--timeout-s", "-1"),
    ("tensorai-worker", "--iterations", "0"),
])
def test_a_bad_numeric_flag_is_one_line(tmp_path: Path, script: str, flag: str, value: str) -> None:
    result = run_script(script, flag, value, env=no_kube_env(tmp_path), cwd=tmp_path)
    line = assert_one_line_exit_2(result, flag)
    assert len(result.stderr.strip().splitlines()) == 1, line


def test_webhook_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(BIN / "tensorai-webhook"), "--self-signed", "--no-kube", "--port", "0", "--address", "127.0.0.1",
         "--log-format", "json"],
        stderr=subprocess.PIPE, text=True, env=no_kube_env(tmp_path))
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving https://" in line:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert lines and "serving https://" in lines[-1], lines
    for line in lines:
        entry = json.loads(line)
        assert set(entry) >= {"time", "level", "logger", "message"}, entry
        assert RFC3339_UTC.match(entry["time"]), entry
    assert json.loads(lines[-1])["logger"] == "tensorai.webhook"


def test_json_log_record_carries_its_traceback_as_one_string() -> None:
    handler_stream = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_stream.append(self.format(record))

    handler = Collect()
    handler.setFormatter(cliutil.JsonFormatter())
    logger = logging.getLogger("tensorai.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed %s", "twice")
    finally:
        logger.removeHandler(handler)
    (line,) = handler_stream
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "tensorai.test.json", "failed twice")
    assert "RuntimeError: boom" in entry["exc_info"] and entry["exc_info"].startswith("Traceback")
