"""`tensorai-device-plugin`: flags, precedence, one-line failures, and a real process stopped by SIGTERM."""

from __future__ import annotations

import gc
import os
import platform
import signal
import subprocess
import sys

import pytest

from tensorai.demo.stub_kubelet import StubKubelet
from tensorai.deviceplugin import backends, footprint, gpus
from tensorai.deviceplugin.cli import ENV_PREFIX, build_parser, config_from_args, main

FLAGS = [
    "--backend", "--sim-gpus", "--sharing", "--device-plugin-dir", "--pod-resources-socket", "--node-name",
    "--kubeconfig", "--no-kube", "--metrics-port", "--inventory-interval", "--ignored-xids",
    "--recovery-quiet-seconds", "--recovery-probes", "--mps-pipe-dir", "--log-level", "--log-format", "--version",
]


def test_help_lists_every_flag_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside the defaults we look for
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag
    assert "/var/lib/kubelet/device-plugins" in text and "9400" in text and "13,31,43,45,68,109" in text


def test_flags_beat_environment_which_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args([]).sharing == "timeslice"
    monkeypatch.setenv(ENV_PREFIX + "SHARING", "mps")
    monkeypatch.setenv(ENV_PREFIX + "METRICS_PORT", "9500")
    monkeypatch.setenv("NODE_NAME", "from-downward-api")
    args = build_parser().parse_args([])
    assert (args.sharing, args.metrics_port, args.node_name) == ("mps", 9500, "from-downward-api")
    args = build_parser().parse_args(["--sharing", "exclusive", "--node-name", "flag-node"])
    assert (args.sharing, args.node_name) == ("exclusive", "flag-node")


def test_ignored_xids_are_parsed_and_bad_ones_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    config = config_from_args(build_parser().parse_args(["--ignored-xids", "13, 31"]))
    assert config.ignored_xids == frozenset({13, 31})
    with pytest.raises(SystemExit) as exit_info:
        main(["--ignored-xids", "13,x", "--node-name", "n", "--no-kube"])
    assert exit_info.value.code == 2 and "'x'" in capsys.readouterr().err


def test_environment_values_are_typed_like_their_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DaemonSet sets these as strings; the plugin must read them as the flag's type, never as raw text."""
    monkeypatch.setenv(ENV_PREFIX + "NO_KUBE", "Yes")
    monkeypatch.setenv(ENV_PREFIX + "INVENTORY_INTERVAL", "12.5")
    monkeypatch.setenv(ENV_PREFIX + "RECOVERY_PROBES", "5")
    monkeypatch.setenv(ENV_PREFIX + "LOG_FORMAT", "json")
    args = build_parser().parse_args([])
    assert (args.no_kube, args.inventory_interval, args.recovery_probes, args.log_format) == (True, 12.5, 5, "json")
    monkeypatch.setenv(ENV_PREFIX + "NO_KUBE", "off")
    assert main(["--node-name", "n"]) == 2


def test_missing_node_name_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--backend", "sim", "--no-kube"])
    assert exit_info.value.code == 2 and "node name" in capsys.readouterr().err


def test_bad_sim_gpus_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", "sim", "--sim-gpus", "2xH100", "--node-name", "n", "--no-kube"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "COUNTxMODEL:MEMORY_MIB" in err


def test_nvml_backend_without_a_driver_exits_2_with_one_line(workdir: str) -> None:
    try:
        backends.open_backend("nvml").close()
    except gpus.BackendUnavailableError:
        pass
    else:
        pytest.skip("NVML works on this machine: the no-driver path cannot be exercised")
    result = subprocess.run(
        [sys.executable, "-m", "tensorai.deviceplugin.cli", "--backend", "nvml", "--node-name", "n", "--no-kube",
         "--device-plugin-dir", f"{workdir}/dp", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_sigterm_unregisters_by_removing_the_socket(workdir: str) -> None:
    plugin_dir = f"{workdir}/dp"
    with StubKubelet(plugin_dir) as kubelet:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorai.deviceplugin.cli", "--backend", "sim", "--sim-gpus", "1xT4:15360",
             "--node-name", "n", "--no-kube", "--device-plugin-dir", plugin_dir, "--metrics-port", "0",
             "--pod-resources-socket", f"{workdir}/pr.sock"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert kubelet.wait_for_registration(1, 30), process.stderr.read() if process.poll() else ""
            assert kubelet.wait_for(lambda devices: len(devices) == 1000, 10)
            socket_path = os.path.join(plugin_dir, kubelet.registrations[0].endpoint)
            assert os.path.exists(socket_path)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert not os.path.exists(socket_path)
            assert kubelet.wait_for(lambda devices: set(devices.values()) == {"Unhealthy"}, 5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def test_malloc_arena_cap_applies_on_glibc_and_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(footprint.ENV_MALLOC_ARENA_MAX, raising=False)
    assert footprint.limit_malloc_arenas(2) == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    with pytest.raises(ValueError, match="at least 1"):
        footprint.limit_malloc_arenas(0)


def test_an_operators_malloc_arena_max_wins_over_the_plugins_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(footprint.ENV_MALLOC_ARENA_MAX, "4")
    assert footprint.limit_malloc_arenas(2) is False


def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    try:
        assert footprint.freeze_startup_objects() > 1000  # at least the interpreter's and our modules' objects
    finally:
        gc.unfreeze()  # the test process keeps collecting normally


def test_freed_buffer_thresholds_apply_on_glibc_unless_glibc_variables_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in footprint.MALLOC_KEEP_ENV:
        monkeypatch.delenv(name, raising=False)
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert footprint.keep_freed_buffers() == on_glibc
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert footprint.keep_freed_buffers() is False
