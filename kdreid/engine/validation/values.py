"""The checks every stage is written with: a config value of the right kind and range, a name that
a FastReID registry holds. Each raises :class:`~kdreid.errors.ConfigError` naming the key."""

import numbers
import sys
import types

from kdreid.errors import ConfigError

__all__ = [
    "at_least",
    "check_registered",
    "image_size",
    "is_registered",
    "number",
    "one_of",
    "positive",
    "registered",
    "registered_names",
    "value",
]


def value(cfg, key):
    """The value of the dotted ``key`` in ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def at_least(cfg, key, low):
    """An integer ``>= low``."""
    got = value(cfg, key)
    if isinstance(got, bool) or not isinstance(got, int) or got < low:
        what = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise ConfigError(f"{key} must be {what}, got {got!r}.")
    return got


def positive(cfg, key):
    """An integer ``>= 1``."""
    return at_least(cfg, key, 1)


def number(cfg, key, low, high=None, low_open=False):
    """A real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    got = value(cfg, key)
    ok = isinstance(got, numbers.Real) and not isinstance(got, bool)
    ok = ok and (got > low if low_open else got >= low) and (high is None or got <= high)
    if not ok:
        where = f"{'above' if low_open else 'at least'} {low}" + (
            f" and at most {high}" if high is not None else ""
        )
        raise ConfigError(f"{key} must be a number {where}, got {got!r}.")
    return got


def one_of(cfg, key, choices):
    """One of ``choices``."""
    got = value(cfg, key)
    if got not in choices:
        raise ConfigError(f"{key} '{got}' is not one of: {', '.join(map(str, choices))}.")
    return got


def image_size(cfg, key):
    """``INPUT.SIZE_*``: FastReID resizes every image to ``[height, width]``."""
    size = value(cfg, key)
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ConfigError(
            f"{key} must be [height, width] in pixels, two positive integers (e.g. [256, 128]); "
            f"got {size!r}."
        )
    return size


def is_registered(registry, name):
    """Whether the FastReID ``registry`` holds ``name``."""
    try:
        registry.get(name)
    except KeyError:
        return False
    return True


def registered_names(registry):
    """The names the FastReID ``registry`` holds, sorted (for messages).

    FastReID's ``Registry`` answers for one name (``get``) but lists none. Every entry is a class
    or function registered under its own ``__name__`` by a module that has been imported, so the
    entries are those of the imported modules' top-level classes and functions that ``get``
    returns. Slow-ish (every loaded module is looked through): for error messages only.
    """
    names = set()
    for module in list(sys.modules.values()):
        try:
            members = list(vars(module).values())
        except TypeError:  # not a module (a placeholder some packages leave)
            continue
        for obj in members:
            # type(), not isinstance(): a module's odd objects answer attribute lookups themselves
            if issubclass(type(obj), type | types.FunctionType) and obj.__name__ not in names:
                if is_registered(registry, obj.__name__) and registry.get(obj.__name__) is obj:
                    names.add(obj.__name__)
    return sorted(names)


def registered(registry, key, name, what):
    """``name`` (the value of ``key``) is in ``registry``.

    Raises:
        ConfigError: it is not, listing the registered names.
    """
    if not is_registered(registry, name):
        raise ConfigError(
            f"{key} '{name}' is not a registered {what}; registered: "
            f"{', '.join(registered_names(registry))}."
        )


def check_registered(registry, names, key, what):
    """Every name in ``names`` is in ``registry``; ``key`` says where they came from.

    Raises:
        ConfigError: an unknown or no name, listing the registered ones.
    """
    unknown = [name for name in names if not is_registered(registry, name)]
    if unknown:
        raise ConfigError(
            f"{key} names {', '.join(repr(n) for n in unknown)}, which is not a registered "
            f"{what}; registered: {', '.join(registered_names(registry))}."
        )
    if not names:
        raise ConfigError(
            f"{key} is empty: name at least one {what} ({', '.join(registered_names(registry))})."
        )
