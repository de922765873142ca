"""Value checks: one function per kind of value, each raising one ValueError / TypeError that names the argument,
the value found and what is allowed. Used by the config dataclasses, the config translators (there the name is
"file: field") and the pipelines' argument checks (minunet.pipelines.checks), so that bad input stops before it
turns into a black image. (The samplers check their generator and callback themselves: schedulers/samplers.py.)
"""
import math


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(name, value, minimum=None):
    """An int (not a bool, not a float) >= minimum."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def number(name, value, low=None, high=None, *, low_open=False, high_open=False):
    """A finite int or float within [low, high] (an end is excluded where *_open)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left, right = ("(" if low_open else "[") if low is not None else "(", ")" if high_open or high is None else "]"
        raise ValueError(f"{name} must be in {left}{'-inf' if low is None else low}, "
                         f"{'inf' if high is None else high}{right}, got {value}")
    return value


def int_tuple(name, value, minimum=1, length=None):
    """A list / tuple of ints >= minimum (of `length` entries when given) -> tuple."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of ints, got {value!r} ({type(value).__name__})")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries (one per level), got {len(value)}: {list(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, v in enumerate(value):
        integer(f"{name}[{i}]", v, minimum)
    return tuple(value)


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def divisible(name, value, by, by_name):
    if value % by:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def short(value):
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"
