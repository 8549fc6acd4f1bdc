"""A progress line for long loops (data preparation, training epochs).

    with Progress(total=n, desc="train") as p:
        for batch in ...:
            p.update(len(batch))

On a terminal: one line, redrawn in place, with the count, the rate and the ETA.
Otherwise (a log file, CI): a plain line every `interval` seconds and one at the end.
"""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    """1:02:03 for an hour and more, 2:03 below; '?' when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int | None, desc: str = "", unit: str = "img", stream=None,
                 interval: float | None = None, tty: bool | None = None, clock=time.monotonic,
                 quiet: bool = False):
        self.quiet = quiet  # count, but print nothing (other ranks of a distributed run; tests)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.tty = _isatty(self.stream) if tty is None else tty
        # A terminal is redrawn often; a log gets one line every few seconds.
        self.interval = (0.2 if self.tty else 10.0) if interval is None else interval
        self.clock = clock
        self.count = 0
        self.start = clock()
        self._last = float("-inf")
        self._width = 0
        self.closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # the error message follows: no summary line, but end a half-drawn terminal line
            if self.tty and self._width:
                self.stream.write("\n")
            self.closed = True

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now, final=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._emit(self.clock(), final=True)

    def rate(self, now: float | None = None) -> float:
        elapsed = (self.clock() if now is None else now) - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = self.clock() if now is None else now
        rate = self.rate(now)
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100.0 * self.count / self.total
            text = f"{head}{self.count:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
        else:
            text = f"{head}{self.count:,} {self.unit}"
        text += f", {rate:,.1f} {self.unit}/s"
        if final:
            text += f", {format_duration(now - self.start)} in all"
        elif self.total:
            left = (self.total - self.count) / rate if rate > 0 else float("nan")
            text += f", ETA {format_duration(max(left, 0.0))}"
        return text

    def _emit(self, now: float, final: bool) -> None:
        if self.quiet:
            return
        text = self.line(now, final)
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
