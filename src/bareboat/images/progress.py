"""Download progress: a callback protocol, and a rich bar drawn only on a terminal."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, digest: str, total: int) -> None: ...
    def advance(self, digest: str, n: int) -> None: ...
    def finish(self, digest: str) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, digest: str, total: int) -> None:
        pass

    def advance(self, digest: str, n: int) -> None:
        pass

    def finish(self, digest: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """One bar per layer; rich is imported here, only when a bar is drawn."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._bar.start()

    def start(self, digest: str, total: int) -> None:
        short = digest.split(":")[-1][:12]
        self._tasks[digest] = self._bar.add_task(short, total=total)

    def advance(self, digest: str, n: int) -> None:
        self._bar.advance(self._tasks[digest], n)

    def finish(self, digest: str) -> None:
        task = self._tasks[digest]
        self._bar.update(task, completed=self._bar.tasks[task].total)

    def close(self) -> None:
        self._bar.stop()


def make_progress(progress: bool | Progress) -> Progress:
    if progress is True:
        return RichProgress() if sys.stderr.isatty() else NoProgress()
    if progress is False:
        return NoProgress()
    return progress
