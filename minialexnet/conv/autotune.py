"""Which convolution algorithm each layer shape runs: timed once, then remembered.

A ``Conv2D(algorithm="auto")`` layer, on its first forward with a new shape, runs
each applicable algorithm (``conv.applicable``) on that very input -- once untimed,
to allocate and warm up, then timed: forward, and backward too in training mode
-- and keeps the fastest.  The choice is stored here, per shape, for the whole
process (as ``torch.backends.cudnn.benchmark`` does), so every later forward of
that shape, in any layer, runs it without timing anything.

The key of a choice is everything the timings depend on, as one readable string:

    "numpy float32 train+dx x2x48x27x27 w128x48x5x5 s1 p2"

(backend, dtype, training with or without dx / "eval", input and kernel shapes,
stride, padding).  Timing on a busy machine is noisy, so the choice is *not* a
measurement to repeat: it is state, made deterministic by

- ``MINIALEXNET_CONV_ALGO=im2col|fft|winograd|winograd4``: every fast Conv2D runs
  that algorithm where it applies (im2col elsewhere), whatever its ``algorithm``
  and the cache say; ``=auto`` turns autotuning on for every layer;
- ``save(path)`` / ``load(path)`` (a small JSON file) and ``state()`` /
  ``load_state(d)``: a resumed run that loads the choices runs the same
  algorithms (the Trainer keeps them in its checkpoints' metadata);
- the same cache always gives the same choice: nothing is timed for a key that is
  in it.

Importing this module times nothing and changes nothing; ``clear()`` forgets all.
"""

import json
import os
import time

from .. import backend
from ..errors import ConfigError
from ..files import atomic_write_text

__all__ = ["ENV", "override", "key", "choose", "choice", "choices", "timings",
           "tune_seconds", "state", "load_state", "save", "load", "clear"]

ENV = "MINIALEXNET_CONV_ALGO"
FORMAT = "minialexnet conv algorithms"
VERSION = 1

#: Timed runs per candidate after its warm-up run (the fastest counts).
repeats = 1
#: Rounds of timing, the candidates in turn within each: a load that comes and goes
#: (another process on the same cores) then falls on every candidate alike, not on
#: whichever was being timed at that moment.  The fastest round counts.
rounds = 2

_choices = {}        # key -> algorithm name
_timings = {}        # key -> {algorithm: seconds} (this process's measurements only)
_tune_seconds = [0.0]


def _settings():
    from . import SETTINGS
    return SETTINGS


def override():
    """The algorithm ``MINIALEXNET_CONV_ALGO`` forces on every layer, or None."""
    v = os.environ.get(ENV, "").strip()
    if not v:
        return None
    if v not in _settings():
        raise ConfigError(f"{ENV}={v!r}: expected one of {', '.join(_settings())}")
    return v


def key(x_shape, w_shape, stride, padding, dtype, training, needs_input_grad):
    """The cache key of a convolution (see the module docstring)."""
    mode = ("train+dx" if needs_input_grad else "train") if training else "eval"
    dims = lambda s: "x".join(str(int(d)) for d in s)   # noqa: E731
    return (f"{backend.current().name} {backend.xp().dtype(dtype).name} {mode} "
            f"x{dims(x_shape)} w{dims(w_shape)} s{int(stride)} p{int(padding)}")


def choice(k):
    """The algorithm chosen for key ``k``, or None if it has not been chosen."""
    return _choices.get(k)


def choose(k, candidates, measure):
    """The algorithm for key ``k``: the remembered one, else the fastest of
    ``candidates`` by ``measure(name) -> seconds``, the fastest of ``rounds`` rounds
    taken in turn (ties: the first; one that runs out of memory counts as infinitely
    slow and is not tried again), remembered."""
    name = _choices.get(k)
    if name is not None:
        if name not in candidates:
            raise ConfigError(f"conv algorithm cache: {name!r} was chosen for {k!r} but "
                              f"does not apply to it (applicable: {', '.join(candidates)})")
        return name
    t0 = time.perf_counter()
    times = dict.fromkeys(candidates, float("inf"))
    out_of_memory = set()
    for _ in range(max(1, rounds)):
        for c in candidates:
            if c in out_of_memory:
                continue
            try:
                times[c] = min(times[c], measure(c))
            except MemoryError:   # (CuPy's OutOfMemoryError too): as cuDNN, skip it
                out_of_memory.add(c)
    _tune_seconds[0] += time.perf_counter() - t0
    best = min(candidates, key=lambda c: times[c])      # min keeps the first of ties
    _choices[k], _timings[k] = best, times
    return best


def time_call(fn):
    """Seconds of ``fn()``: one untimed warm-up call, then the fastest of ``repeats``
    (the device synchronised around each)."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        backend.synchronize()
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def choices():
    """{key: algorithm} of every choice made or loaded (a copy)."""
    return dict(_choices)


def timings():
    """{key: {algorithm: seconds}} measured by this process (not loaded ones)."""
    return {k: dict(v) for k, v in _timings.items()}


def tune_seconds():
    """Seconds this process has spent timing candidates (the autotune's own cost)."""
    return _tune_seconds[0]


def state():
    """The choices as a JSON-able dict (for ``load_state`` or a checkpoint)."""
    return {"format": FORMAT, "version": VERSION, "choices": dict(sorted(_choices.items()))}


def load_state(d):
    """Replace the choices by those of ``state()``'s dict ``d`` (None or {}: none)."""
    if not d:
        clear()
        return
    names = set(_settings()) - {"auto"}
    if not isinstance(d, dict) or d.get("format") != FORMAT or \
            not isinstance(d.get("choices"), dict):
        raise ConfigError(f"conv algorithm cache: not a {FORMAT!r} state "
                          f"(got {str(d)[:60]!r})")
    if d.get("version") != VERSION:
        raise ConfigError(f"conv algorithm cache: version {d.get('version')!r}, "
                          f"this minialexnet reads {VERSION}")
    bad = {k: v for k, v in d["choices"].items()
           if not isinstance(k, str) or v not in names}
    if bad:
        k, v = next(iter(bad.items()))
        raise ConfigError(f"conv algorithm cache: {v!r} for {k!r} is not an algorithm "
                          f"({', '.join(sorted(names))})")
    clear()
    _choices.update(d["choices"])


def save(path):
    """Write the choices to ``path`` (JSON, atomically).  Returns ``path``."""
    return atomic_write_text(path, json.dumps(state(), indent=1, sort_keys=True) + "\n")


def load(path):
    """Replace the choices by those saved in ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{os.fspath(path)}: cannot read conv algorithm choices "
                          f"({type(e).__name__}: {e})") from None
    load_state(d)


def clear():
    """Forget every choice and measurement."""
    _choices.clear()
    _timings.clear()
    _tune_seconds[0] = 0.0
