"""Errors raised for bad user input: each message names the file or key and what was expected.

Entry points (``train_net.py``, the tools, the demo) print these without a traceback and exit with
status 2 (:func:`report_user_errors`).
"""

import logging
import sys

__all__ = [
    "report_user_errors",
    "user_message",
    "UserInputError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetCorruptError",
    "UnreadableImageError",
    "WeightsError",
    "OutputDirError",
    "RecordError",
    "StaleRunError",
]


class UserInputError(Exception):
    """Base class: the input is wrong, not the code."""


class ConfigError(UserInputError, KeyError):
    """A config file or command-line option names an unknown key or an invalid value."""

    def __str__(self):
        # KeyError quotes its message; print it as written.
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(UserInputError, FileNotFoundError):
    """A dataset folder is missing or does not have the expected layout."""


class DatasetCorruptError(UserInputError, RuntimeError):
    """A dataset folder exists but is incomplete or not the dataset expected."""


class UnreadableImageError(UserInputError, OSError):
    """An image file cannot be opened or decoded (missing, truncated, not an image)."""


class WeightsError(UserInputError, RuntimeError):
    """Model weights are missing, unreadable, or do not fit the model."""


class OutputDirError(UserInputError, OSError):
    """An output folder cannot be created or written."""


class RecordError(UserInputError, ValueError):
    """A file a run wrote (a JSON record, a run's settings) is empty or not what it should hold."""


class StaleRunError(UserInputError, RuntimeError):
    """An output folder holds a run made with other settings than the ones asked for now."""


logger = logging.getLogger("kdreid")


def user_message(exc):
    """The message of a :class:`UserInputError`, without the worker traceback that a data loader
    process prepends when it re-raises the error in the training process."""
    message = str(exc)
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last
    return message


def report_user_errors(fn, *args, prefix=""):
    """Call ``fn(*args)``; bad input ends the process with one ``error:`` line and status 2.

    The traceback goes to the run's log files (``OUTPUT_DIR/log.txt``, where logging to one was
    set up), not to the console. ``prefix`` starts the message (``"rank 1: "``).
    """
    try:
        return fn(*args)
    except UserInputError as exc:
        log_to_files_only("User input error", exc)
        print(f"error: {prefix}{user_message(exc)}", file=sys.stderr)
        sys.exit(2)


def log_to_files_only(message, exc):
    """Write ``message`` and the traceback of ``exc`` to the log files only (not the console)."""
    record = logger.makeRecord(
        logger.name, logging.DEBUG, __file__, 0, message, None, (type(exc), exc, exc.__traceback__)
    )
    seen = set()
    for name in ("kdreid", "fastreid", ""):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if id(handler) in seen or stream in (sys.stdout, sys.stderr, sys.__stdout__, None):
                continue
            seen.add(id(handler))
            handler.handle(record)
