"""What the command-line tools share: an argument parser whose mistakes are one line,
and argument types that validate numbers at parse time, naming the option.

    p = cli.ArgumentParser(prog="python -m minialexnet.evaluate", description=...)
    p.add_argument("--batch-size", type=cli.positive_int, default=256)

A bad value exits with status 2 and one line on stderr, e.g.
``error: argument --batch-size: expected an integer >= 1, got '0'``.
0 never silently means "all": options where "all" makes sense say so by a default
of None.
"""

import argparse
import math
import sys

__all__ = ["ArgumentParser", "positive_int", "nonnegative_int", "positive_float",
           "nonnegative_float"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and a one-line ``error: ...`` (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _integer(s, low):
    try:
        v = int(s)
    except (TypeError, ValueError):
        v = None
    if v is None or v < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {s!r}")
    return v


def _number(s, positive):
    try:
        v = float(s)
    except (TypeError, ValueError):
        v = None
    if v is None or not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite number {'> 0' if positive else '>= 0'}, got {s!r}")
    return v


def positive_int(s):
    """An int >= 1 (a size, a count)."""
    return _integer(s, 1)


def nonnegative_int(s):
    """An int >= 0 (a device number, a seed)."""
    return _integer(s, 0)


def positive_float(s):
    """A finite float > 0 (a learning rate); nan, inf and 0 are refused."""
    return _number(s, True)


def nonnegative_float(s):
    """A finite float >= 0 (a weight decay, a momentum)."""
    return _number(s, False)
