"""Errors raised for bad user input: each message names the file or key and what was expected.

Entry points (``train_net.py``, the demo) print these without a traceback and exit with status 2.
"""

__all__ = [
    "UserInputError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetCorruptError",
    "UnreadableImageError",
    "WeightsError",
    "OutputDirError",
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


class StaleRunError(UserInputError, RuntimeError):
    """An output folder holds a run made with other settings than the ones asked for now."""
