"""Progress over a job's samples: a tqdm bar on a terminal, log lines everywhere else.

A bar needs a terminal it can draw on: stderr a TTY at least `MIN_COLUMNS` wide (under
`script -q -c ...` and some CI runners the terminal reports 0 columns, and tqdm then
draws nothing at all). Anywhere else (a log file, a pipe, Ray Jobs' log, CI) one INFO line
every `interval_s` seconds, and one at the end::

    coco: 1200/5000 samples (24%), 85.3 samples/s, about 45 s left; AP50 0.612

>>> with Progress("coco", total=100, initial=0, interval_s=5.0) as progress:
...     progress.update(16, "AP50 0.612")
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

log = logging.getLogger("rayinfer.progress")

MIN_COLUMNS = 20  # narrower than this, a bar would show nothing useful


def terminal_columns(stream: IO[str]) -> int:
    """The width of the terminal `stream` writes to; 0 when it is no terminal (or says 0)."""
    try:
        if not stream.isatty():
            return 0
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class Progress:
    """Samples done of `total` (`initial` of them before this run: `--resume`).

    Args:
        desc: what is counted (the task's name).
        total, initial: samples in the job, and those already done when it starts.
        interval_s: seconds between log lines where no bar can be drawn.
        enabled: False prints nothing (`--quiet`, `--no-progress`).
        stream: where a bar is drawn (stderr).
    """

    def __init__(self, desc: str, total: int, initial: int, interval_s: float = 10.0, enabled: bool = True,
                 stream: IO[str] | None = None) -> None:
        self.desc, self.total, self.initial, self.done = desc, total, initial, initial
        self.interval_s, self.enabled = interval_s, enabled
        self.postfix = ""
        self.logged = initial  # samples done at the last log line
        self.started = self.last_line = time.monotonic()
        stream = stream or sys.stderr
        self.bar: Any = None
        if enabled and "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws its widget there
            from tqdm.auto import tqdm as notebook_tqdm

            self.bar = notebook_tqdm(total=total, initial=initial, unit="img", desc=desc, mininterval=0.5)
        elif enabled and terminal_columns(stream) >= MIN_COLUMNS:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True,
                            file=stream, mininterval=0.5)

    def __enter__(self) -> Progress:
        return self

    def update(self, n: int, postfix: str = "") -> None:
        """`n` more samples done; `postfix` the running figure (say "AP50 0.612")."""
        self.done += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix)  # tqdm itself shows img/s and the ETA
        elif self.enabled and time.monotonic() - self.last_line >= self.interval_s:
            self._line()

    def line(self) -> str:
        """"coco: 1200/5000 samples (24%), 85.3 samples/s, about 45 s left; AP50 0.612"."""
        elapsed = time.monotonic() - self.started
        new = self.done - self.initial
        rate = new / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}/{self.total} samples ({self.done / max(self.total, 1):.0%})"
        if rate > 0:
            text += f", {rate:.1f} samples/s"
            if self.done < self.total:
                text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def _line(self) -> None:
        self.last_line, self.logged = time.monotonic(), self.done
        log.info("%s", self.line())

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.logged:
            self._line()  # where it ended


__all__ = ["Progress", "terminal_columns", "MIN_COLUMNS"]
