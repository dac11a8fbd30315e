"""What cdino prints while it works: progress bars on a terminal, plain lines in a log.

:func:`progress_bar` is the one place that decides. A redrawn tqdm bar appears only when
stderr (where tqdm draws) is a terminal; in a log file or CI a bar's redraws would fill
the log, so there a long loop prints a plain line at each tenth of its total instead
(``lines``). ``CDINO_NO_PROGRESS=1`` turns progress off altogether, bars and lines;
``CDINO_PROGRESS=1`` draws bars even where stderr is not a terminal.
"""

from __future__ import annotations

import math
import os
import sys
import time

_ON = ("1", "true", "yes")


def progress_enabled(requested: bool = True) -> bool:
    """Whether progress is shown at all: asked for and not turned off by ``CDINO_NO_PROGRESS=1``."""
    return bool(requested) and os.environ.get("CDINO_NO_PROGRESS", "") not in _ON


def bar_enabled(requested: bool = True) -> bool:
    """Whether a redrawn bar is shown: progress is on and stderr is a terminal (or
    ``CDINO_PROGRESS=1`` forces bars)."""
    if not progress_enabled(requested):
        return False
    if os.environ.get("CDINO_PROGRESS", "") in _ON:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable=None, *, show: bool = True, lines: int = 0, **tqdm_kwargs):
    """A tqdm bar (``tqdm_kwargs`` as tqdm takes them) when :func:`bar_enabled`; else, for a
    loop with a known total and ``lines > 0``, an object with tqdm's interface (iterate,
    ``update``, ``set_postfix``, ``close``) that prints ``lines`` plain lines on stdout, one
    per ``1/lines`` of the total; else a silent disabled bar."""
    from tqdm import tqdm

    if bar_enabled(show):
        return tqdm(iterable, **tqdm_kwargs)
    total = tqdm_kwargs.get("total")
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if lines > 0 and total and progress_enabled(show):
        return ProgressLines(iterable, total, lines, desc=tqdm_kwargs.get("desc") or "",
                             unit=tqdm_kwargs.get("unit") or "it", initial=tqdm_kwargs.get("initial", 0))
    return tqdm(iterable, disable=True, **tqdm_kwargs)


class ProgressLines:
    """tqdm's interface for a log: ``desc: n/total unit (p %), rate unit/s, t s[, postfix]``
    printed when the count crosses each ``1/lines`` of the total."""

    def __init__(self, iterable, total: int, lines: int, desc: str = "", unit: str = "it",
                 initial: int = 0) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, int(total), desc, unit.strip()
        self.n = self.start_n = int(initial)
        self.every = max(1, -(-self.total // lines))  # ceil(total / lines)
        self.next_line = self._next_line()
        self.postfix: dict = {}
        self.t0 = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_line:
            self._print()
            self.next_line = self._next_line()

    def _next_line(self) -> float:
        """The count at which the next line is printed: the next multiple of ``every``, the
        total last; none once it is reached."""
        if self.n >= self.total:
            return math.inf
        return min(self.total, (self.n // self.every + 1) * self.every)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        pass

    def _print(self) -> None:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        done = min(self.n, self.total)
        text = (f"{self.desc + ': ' if self.desc else ''}{done}/{self.total} {self.unit} "
                f"({100 * done / self.total:.0f} %), {(self.n - self.start_n) / dt:.3g} {self.unit}/s, {dt:.0f} s")
        if self.postfix:
            text += ", " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(text, flush=True)
