"""Progress of long work: a bar with rate and ETA on a terminal, and otherwise (logs, CI, a Ray
worker) one line per milestone or per minute, whichever comes first."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("ie_flow")
LINE_EVERY_S = 60.0


def _eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f", ETA {left / 60:.1f} min" if left >= 90 else f", ETA {left:.0f} s"


class Progress:
    """`with Progress("stage 1 extract", total, "seq") as p: p.update(n)`. On a terminal it draws a
    tqdm bar; elsewhere it logs "desc: done/total unit (rate, ETA)" at most once a minute, plus
    every milestone, and a last line at the end."""

    def __init__(self, desc: str, total: float, unit: str, terminal: bool | None = None,
                 every_s: float = LINE_EVERY_S, closing_line: bool = True) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.closing_line = closing_line  # without a terminal: a last line at the end
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.done = self._reported = 0.0
        self._bar: Any = None
        self._t0 = self._last_line = time.monotonic()

    def __enter__(self) -> "Progress":
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit=self.unit, desc=self.desc, dynamic_ncols=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
        elif exc[0] is None and self.closing_line and self._reported < self.done:
            self._line()

    def update(self, n: float = 1, note: str = "", milestone: bool = False) -> None:
        """Count `n` more done; a `milestone` (a layer group finished) gets a line of its own."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
        elif milestone or time.monotonic() - self._last_line >= self.every_s:
            self._line(note)

    def _line(self, note: str = "") -> None:
        self._reported = self.done
        self._last_line = time.monotonic()
        elapsed = self._last_line - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        log.info("%s: %g/%g %s (%.3g %s/s%s)%s", self.desc, self.done, self.total, self.unit, rate, self.unit,
                 _eta(self.done, self.total, elapsed), f": {note}" if note else "")
