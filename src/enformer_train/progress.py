"""Progress of long commands (train, prepare, evaluate, predict): a bar with rate and ETA on a
terminal, and on a log file (cluster jobs) a plain line every minute, which a bar's carriage
returns would turn into one unreadable line."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 60.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogProgress:
    """tqdm's update/write/set_postfix/close for a stream that is not a terminal: a line such as
    'prepare human: 512/1000 seq (51%), 12.3 seq/s, ETA 0:00:40' every `every` seconds and at the end."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, stream=None,
                 every: float = LOG_EVERY_S, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.every, self.clock = every, clock
        self._start_n, self._start = initial, clock()
        self._last = self._start
        self._postfix = ""
        self._closed = False

    def line(self) -> str:
        elapsed = self.clock() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_clock((self.total - self.n) / rate)}" if rate > 0 and self.total else ""
        return (f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {rate:.3g} {self.unit}/s, "
                f"elapsed {_clock(elapsed)}{eta}{self._postfix}")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.write(self.line())

    def set_postfix(self, values: dict) -> None:
        self._postfix = "".join(f", {k} {v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.write(self.line())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Off:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0, stream=None):
    """A progress reporter for `total` units: tqdm on a terminal, LogProgress elsewhere, nothing
    when not enabled. Used as a context manager or closed by the caller."""
    stream = stream or sys.stderr
    if not enabled:
        return _Off()
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return LogProgress(total, desc, unit, initial=initial, stream=stream)
