"""Child processes of the demo: started with their output in a log file, found by a line, always stopped.

Every program of the project runs as its own process, exactly as it would in a cluster. The demo
must never leave one behind (also on Ctrl-C or a failed step), so every start goes through one
`ProcessGroup` whose `stop_all()` terminates, then kills, what is still running, by pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class StepError(RuntimeError):
    """A demo step failed; `step` names it so the user knows where to look."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


def module_command(module: str, *args: str) -> list[str]:
    """`python -m <module> args`: the same entry point as the console script, found without PATH."""
    return [sys.executable, "-m", module, *args]


class ManagedProcess:
    """One child: its output is copied to `log_path` line by line, and `wait_for_line` finds a pattern."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the reader thread
        self.popen = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops its children in order
        )
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self._log.write(line)
                self._log.flush()
                with self._cond:
                    self._lines.append(line.rstrip("\n"))
                    if len(self._lines) > 2000:
                        del self._lines[:1000]
                    self._cond.notify_all()
        finally:
            self._log.close()
            with self._cond:
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, count: int = 8) -> str:
        with self._cond:
            return "\n".join(self._lines[-count:])

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first output line matching `pattern`; StepError if the process exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StepError(f"start {self.name}", f"no line matching {pattern!r} within {timeout_s:.0f} s; "
                                    f"last output:\n{self.tail()}\n(full log: {self.log_path})")
                if not self.running() and not self._reader.is_alive():
                    raise StepError(f"start {self.name}", f"exited with status {self.popen.returncode}; "
                                    f"last output:\n{self.tail()}\n(full log: {self.log_path})")
                self._cond.wait(min(remaining, 0.2))

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit status."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout_s)
        self._reader.join(2.0)
        return self.popen.returncode


class ProcessGroup:
    """Every process the demo started; `stop_all` stops them, newest first (workers before servers)."""

    def __init__(self) -> None:
        self._processes: list[ManagedProcess] = []
        self._lock = threading.Lock()

    def start(self, name: str, command: Sequence[str], log_path: Path,
              env: Mapping[str, str] | None = None) -> ManagedProcess:
        try:
            process = ManagedProcess(name, command, log_path, env)
        except OSError as error:
            raise StepError(f"start {name}", f"cannot run {command[0]}: {error}") from error
        with self._lock:
            self._processes.append(process)
        return process

    def running(self) -> list[ManagedProcess]:
        with self._lock:
            return [process for process in self._processes if process.running()]

    def stop_all(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            processes = list(reversed(self._processes))
        for process in processes:
            if process.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.stop(timeout_s)
