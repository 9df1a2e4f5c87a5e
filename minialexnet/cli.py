"""What the command-line tools share: an argument parser whose mistakes are one line,
and argument types that validate numbers at parse time, naming the option.

    p = cli.ArgumentParser(prog="python -m minialexnet.evaluate", description=...)
    p.add_argument("--batch-size", type=cli.positive_int, default=256)

A bad value exits with status 2 and one line on stderr, e.g.
``error: argument --batch-size: expected a whole number >= 1, got '0' (see ... --help)``.
0 never silently means "all": options where "all" makes sense say so by a default
of None.
"""

import argparse
import math
import sys

__all__ = ["ArgumentParser", "HelpFormatter", "positive_int", "nonnegative_int",
           "positive_float", "nonnegative_float", "fraction", "fractions", "devices"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and a one-line ``error: ...`` (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(kind, text, ok, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _number(int, text, lambda v: v > 0, "an integer >= 1")


def nonnegative_int(text):
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text):
    return _number(float, text, lambda v: v > 0, "a finite number > 0")


def nonnegative_float(text):
    return _number(float, text, lambda v: v >= 0, "a finite number >= 0")


def fraction(text):
    """A number in [0, 1): momentum, dropout."""
    return _number(float, text, lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")


def fractions(text):
    """Comma-separated numbers strictly between 0 and 1, increasing: 0.5,0.75,0.9."""
    parts = [p for p in text.split(",") if p.strip()]
    values = [_number(float, p, lambda v: 0 < v < 1, "numbers strictly between 0 and 1")
              for p in parts]
    if not values or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(
            f"expected increasing numbers between 0 and 1 like 0.5,0.75,0.9, got {text!r}")
    return tuple(values)


def devices(text):
    """Comma-separated device indices: 0,1 or 0,0."""
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated device numbers like 0,1, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"device numbers are >= 0, got {text!r}")
    return values
