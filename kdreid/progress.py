"""Progress of long loops: a tqdm bar on a terminal, plain log lines anywhere else.

A tqdm bar redraws itself with carriage returns; written to a file (``train_net.py ... 2>&1 |
tee run.log``, a batch job's output, CI) it becomes one line of thousands of characters. Where
stderr is not a terminal, :func:`progress` logs a line every :data:`LOG_EVERY_S` seconds and one
at the end instead.
"""

import logging
import sys
import time

from tqdm import tqdm

__all__ = ["LOG_EVERY_S", "is_terminal", "progress", "show_progress_lines"]

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
"""Seconds between two progress lines where no bar is drawn."""


class _LoggedProgress:
    """The part of tqdm's interface kdreid uses, reporting through :mod:`logging`."""

    def __init__(self, iterable, desc, total, unit, enabled, log_every_s):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _length(iterable)
        self.unit = unit
        self.enabled = enabled
        self.log_every_s = log_every_s
        self.n = 0
        self._start = time.perf_counter()
        self._last = self._start
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _line(self):
        elapsed = time.perf_counter() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        return f"{self.desc}: {done} {self.unit}{rate} ({elapsed:.0f} s)"

    def update(self, n=1):
        self.n += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.log_every_s:
            self._last = now
            logger.info(self._line())

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.n:
            logger.info(self._line())


def _length(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None


def progress(
    iterable=None, *, desc, total=None, unit="it", enabled=True, leave=False, log_every_s=None
):
    """``tqdm(iterable, ...)`` where stderr is a terminal; elsewhere a :mod:`logging` line every
    ``log_every_s`` seconds (default :data:`LOG_EVERY_S`) and one when the loop ends, no carriage
    returns. ``enabled`` False: silent. Iterate over it, or call ``update(n)`` (a ``with`` block).
    """
    if enabled and is_terminal(sys.stderr):
        return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=leave)
    every = LOG_EVERY_S if log_every_s is None else log_every_s
    return _LoggedProgress(iterable, desc, total, unit, enabled, every)


def is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def show_progress_lines():
    """For a script without FastReID's logging: let :func:`progress`'s lines reach stderr (the
    script's own logging may stop at warnings)."""
    log = logging.getLogger(__name__)
    log.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
