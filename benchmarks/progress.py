"""A rich progress bar per load step (on stderr, so stdout stays clean for the summary)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from benchmarks.record import RequestRecord


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True)

    @contextmanager
    def task(self, title: str, total: int | None) -> Iterator[Callable[[RequestRecord], None]]:
        if self.quiet:
            yield lambda _rec: None
            return
        failed = 0
        bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[errors]}"), TimeElapsedColumn(),
                           console=self.console, transient=False)

        def advance(rec: RequestRecord) -> None:
            nonlocal failed
            failed += 0 if rec.ok else 1
            bar.update(task, advance=1, errors=f"[red]{failed} failed" if failed else "")

        with bar:
            task = bar.add_task(title, total=total, errors="")
            yield advance
