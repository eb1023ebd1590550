"""Progress of a data-set run: a rich bar with samples/s and ETA on a terminal, nothing until the summary otherwise."""
from __future__ import annotations

import time
from typing import Optional


def _columns():
    """Description, bar, done/total, samples/s, time left, failures."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        """Samples per second over rich's recent window."""

        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} samples/s" if task.speed else "- samples/s")

    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[failed]} failed")]


class RunProgress:
    """Counts explained and failed samples; draws a bar on stderr when it is a terminal (or when asked)."""

    def __init__(self, total: int, done: int = 0, enabled: Optional[bool] = None, description: str = "explaining"):
        self.total, self.start_done = total, done
        self.ok = self.failed = 0
        self.started = time.perf_counter()
        self._bar = None
        if enabled is not False:   # rich is imported only when a bar may be drawn
            from rich.console import Console
            console = Console(stderr=True)
            enabled = console.is_terminal if enabled is None else enabled
        self.enabled = bool(enabled)
        if self.enabled:
            from rich.progress import Progress
            self._bar = Progress(*_columns(), console=console, transient=False)
            self._task = self._bar.add_task(description, total=total, completed=done, failed=0)

    def __enter__(self) -> "RunProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, ok: int, failed: int) -> None:
        """ok samples explained and failed ones skipped since the last call."""
        self.ok += ok
        self.failed += failed
        if self._bar is not None:
            self._bar.update(self._task, advance=ok + failed, failed=self.failed)

    @property
    def seconds(self) -> float:
        """Time since the start."""
        return time.perf_counter() - self.started
