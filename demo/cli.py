"""`tensorai-demo`: the whole tensor.ai vGPU path on one machine - no cluster, no GPU.

Starts the Kubernetes API stand-in, one real `tensorai-device-plugin` (simulated GPUs) per node with
its stub kubelet, the real `tensorai-webhook` (HTTPS) and `tensorai-extender` (HTTP), then streams the
scenario's pods through admission, scheduling, device allocation and a `tensorai-worker` each on the
CUDA simulator. Exit status: 0 when every pod ended as the scenario expects and every check held;
1 when a check failed or a step could not be carried out (the message names the step); 2 for a bad
scenario or flag; 130 on Ctrl-C. Every process it started is stopped in all cases.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.text import Text

from tensorai.demo.orchestrate import DEFAULT_RUN_TIMEOUT_S, run_demo
from tensorai.demo.processes import StepError
from tensorai.demo.scenario import DEFAULT_SCENARIO, ScenarioError, load_scenario
from tensorai.demo.state import DemoState
from tensorai.demo.view import BusiestScreen, live_view, print_summary
from tensorai.proto import cliutil


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.ArgumentParser(
        prog="tensorai-demo",
        description="Run the whole tensor.ai vGPU path locally: webhook -> extender -> device plugin -> worker, "
        "on simulated GPUs, without a cluster or a GPU.",
    )
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                        help="scenario YAML: nodes, GPUQuotas and the pod stream (default: the shipped one)")
    parser.add_argument("--short", action="store_true",
                        help="only the scenario's pods marked short: true (what the test runs)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="where summary.json, allocation.png, worker reports and logs go (default out/demo)")
    parser.add_argument("--timeout-s", type=cliutil.seconds(allow_zero=False), default=DEFAULT_RUN_TIMEOUT_S,
                        help="give up (exit 1, naming the pods still unfinished) after this long "
                        f"(default {DEFAULT_RUN_TIMEOUT_S:.0f})")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--live", dest="live", action="store_true", default=None,
                      help="rich live view (default when stdout is a terminal)")
    view.add_argument("--no-live", dest="live", action="store_false", help="print one line per event instead")
    cliutil.add_version_flag(parser)
    return parser


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)  # logs and CI: no 80-column wrap
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as error:
        console.print(Text(f"tensorai-demo: bad scenario: {error}", style="red"), soft_wrap=True)
        return 2
    if args.short:
        scenario = scenario.shortened()
    live = console.is_terminal if args.live is None else args.live
    state = DemoState()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        with live_view(state, console, live=live), BusiestScreen(state) as screen:
            result = run_demo(scenario, args.out, state, timeout_s=args.timeout_s)
    except StepError as error:
        console.print(Text.assemble((f"tensorai-demo: step '{error.step}' failed: ", "bold red"), error.message),
                      soft_wrap=True)
        console.print(f"logs of every process: {args.out / 'logs'}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]tensorai-demo: interrupted; every process it started has been stopped[/yellow]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    screenshot = screen.save(args.out / "screen.svg")
    print_summary(state, console, result.problems)
    console.print(f"summary: {result.summary_path}   allocation plot: {result.plot_path}   "
                  f"busiest screen: {screenshot}   logs: {args.out / 'logs'}", soft_wrap=True)
    return 0 if not result.problems else 1


if __name__ == "__main__":
    sys.exit(main())
