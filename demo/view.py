"""The demo's screen: a rich live view while it runs (or plain event lines when not on a terminal) and
a summary table at the end.

The live view shows the pods (phase, node, GPU share, how long each waited), one line per GPU with its
milli-GPU and memory bars, each GPUQuota's usage against its limit, and the latest events with
failures and waits in colour. Everything is read from DemoState under its lock.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tensorai.demo.state import (
    BOUND,
    DENIED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    UNSCHEDULABLE,
    WAITING_QUOTA,
    DemoState,
)
from tensorai.proto import contract

_PHASE_STYLE = {
    DENIED: "red", FAILED: "bold red", UNSCHEDULABLE: "yellow", WAITING_QUOTA: "yellow",
    BOUND: "cyan", RUNNING: "green", SUCCEEDED: "bold green",
}
_KIND_STYLE = {"ok": "green", "wait": "yellow", "fail": "red", "info": "white"}
BAR_CELLS = 20


def bar(used: float, total: float, cells: int = BAR_CELLS) -> Text:
    """A text bar `used/total`, red when over."""
    fraction = 0.0 if total <= 0 else used / total
    filled = min(cells, round(fraction * cells))
    style = "red" if fraction > 1 else "green" if fraction < 0.75 else "yellow"
    return Text("█" * filled, style=style) + Text("░" * (cells - filled), style="grey50")


def pods_table(state: DemoState, *, final: bool = False) -> Table:
    table = Table(title="pods" if not final else "summary", expand=False, show_lines=False)
    for column in ("pod", "vgpu", "phase", "node", "GPU share", "waited", "ran", "peak / budget"):
        table.add_column(column, no_wrap=column != "phase")
    with state.lock:
        runs = list(state.pods.values())
    for run in runs:
        share = ", ".join(f"{s.uuid[:12]}… {s.milli}m {s.memory_mib} MiB" for s in run.shares) or "-"
        waited = f"{run.wait_s:.1f} s" if run.wait_s is not None else "-"
        if run.waited_for_quota:
            waited += " (quota)"
        ran = (f"{run.finished_s - run.started_s:.1f} s"
               if run.finished_s is not None and run.started_s is not None else "-")
        report = run.worker_report or {}
        peak = report.get("peak_memory_used_bytes")
        budget = report.get("memory_budget_bytes")
        memory = f"{peak} B / {budget // (1 << 20)} MiB" if isinstance(peak, int) and isinstance(budget, int) else "-"
        phase = Text(run.phase, style=_PHASE_STYLE.get(run.phase, "white"))
        if run.reason and run.phase in (DENIED, FAILED, UNSCHEDULABLE, WAITING_QUOTA):
            phase += Text(f"\n{run.reason[:140]}", style="dim")
        table.add_row(run.key, run.spec.vgpu, phase, run.node or "-", share, waited, ran, memory)
    return table


def gpus_table(state: DemoState) -> Table:
    table = Table(title="GPUs (held by bound and running pods)", expand=False)
    for column in ("node / GPU", "model", "milli-GPU", "", "memory MiB", ""):
        table.add_column(column, no_wrap=True)
    usage = state.gpu_usage()
    for gpu in state.gpus:
        milli, memory = usage.get(gpu.uuid, (0, 0))
        table.add_row(f"{gpu.node}/{gpu.index}", gpu.model, bar(milli, contract.MILLI_PER_GPU),
                      f"{milli:4d}/{contract.MILLI_PER_GPU}", bar(memory, gpu.usable_mib),
                      f"{memory:6d}/{gpu.usable_mib}")
    return table


def quotas_table(state: DemoState) -> Table:
    table = Table(title="GPUQuota (status written by the extender)", expand=False)
    for column in ("quota", "GPUs used / hard", "", "waiting pods"):
        table.add_column(column, no_wrap=True)
    with state.lock:
        quotas = dict(state.quotas)
    for key, quota in sorted(quotas.items()):
        hard = str(quota["hard"].get("gpus", "-"))
        used = str(quota["used"].get("gpus", "0"))
        try:
            fraction_bar = bar(float(used), float(hard))
        except ValueError:
            fraction_bar = Text("")
        table.add_row(key, f"{used} / {hard}", fraction_bar, str(quota.get("waitingPods", 0)))
    return table


def events_panel(state: DemoState, lines: int = 10) -> Panel:
    with state.lock:
        events = list(state.events)[-lines:]
        step = state.step
    text = Text()
    for stamp, kind, message in events:
        text.append(f"{stamp:6.1f}s ", style="dim")
        text.append(message[:160] + "\n", style=_KIND_STYLE.get(kind, "white"))
    return Panel(text, title=f"events — {step}", expand=False)


def render(state: DemoState) -> Group:
    return Group(pods_table(state), gpus_table(state), quotas_table(state), events_panel(state))


@contextmanager
def live_view(state: DemoState, console: Console, *, live: bool) -> Iterator[None]:
    """A rich Live view when `live` (a terminal), else one printed line per event."""
    if live:
        # get_renderable: every refresh (4/s) re-reads the state, so bars move between events too.
        with Live(console=console, refresh_per_second=4, get_renderable=lambda: render(state), transient=True):
            yield
        return

    def printer(stamp: float, kind: str, message: str) -> None:
        console.print(Text(f"{stamp:6.1f}s ", style="dim") + Text(message, style=_KIND_STYLE.get(kind, "white")),
                      soft_wrap=True)

    state.listeners.append(printer)
    try:
        yield
    finally:
        state.listeners.remove(printer)


class BusiestScreen:
    """Keeps an SVG of the live view at the moment the most pods were running (the docs' screenshot)."""

    def __init__(self, state: DemoState, width: int = 150, interval_s: float = 0.5) -> None:
        self._state = state
        self._width = width
        self._interval_s = interval_s
        self._best = 0
        self.svg = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="busiest-screen", daemon=True)

    def __enter__(self) -> BusiestScreen:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._state.lock:
                running = sum(run.phase == RUNNING for run in self._state.pods.values())
            if running > self._best:
                self._best = running
                recorder = Console(record=True, width=self._width, file=io.StringIO(), force_terminal=True)
                recorder.print(render(self._state))
                self.svg = recorder.export_svg(title="tensorai-demo")

    def save(self, path: Path) -> Path | None:
        if not self.svg:
            return None
        path.write_text(self.svg, encoding="utf-8")
        return path


def print_summary(state: DemoState, console: Console, problems: list[str]) -> None:
    """The final tables and the verdict."""
    console.print(pods_table(state, final=True))
    console.print(quotas_table(state))
    succeeded = sum(run.phase == SUCCEEDED for run in state.pods.values())
    denied = sum(run.phase == DENIED for run in state.pods.values())
    console.print(f"{succeeded} pods ran to completion, {denied} denied at admission, "
                  f"{len(state.pods) - succeeded - denied} other, in {state.now():.1f} s")
    for problem in problems:
        console.print(Text(f"check failed: {problem}", style="bold red"))
