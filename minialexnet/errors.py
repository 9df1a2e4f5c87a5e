"""The base class of minialexnet's own errors."""


class MinialexnetError(Exception):
    """A mistake or a fault minialexnet explains in one line (the message says what
    is wrong and what was expected).  The command-line tools print it as
    ``error: ...`` and exit with status 2."""
