"""Split memory-bound array work over a few Python threads, along the batch.

Matrix multiplies already use every core (BLAS runs its own threads).  The rest of
a training step -- copying windows into columns, adding them back, pooling, the
ReLU and LRN passes -- is elementwise work that NumPy runs on one core.  NumPy
releases the GIL inside such loops, so two Python threads that each take half of
the batch really do run at the same time, and on a 2-core machine the memory-bound
layers get about twice as fast.

    from minialexnet.parallel import parallel_for
    parallel_for(N, lambda lo, hi: work_on(x[lo:hi], out[lo:hi]))

On a backend without ``host_threads`` (CuPy: a GPU already runs everything in
parallel) or with one thread, the whole range is done in one call on the calling
thread.  The thread count defaults to the
number of CPU cores; ``MINIALEXNET_THREADS`` or ``set_threads`` change it.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from . import backend

__all__ = ["parallel_for", "set_threads", "threads"]

_threads = None
_pool = None


def threads():
    """How many threads ``parallel_for`` uses on the NumPy backend."""
    global _threads
    if _threads is None:
        _threads = max(1, int(os.environ.get("MINIALEXNET_THREADS", 0) or os.cpu_count() or 1))
    return _threads


def set_threads(n):
    """Use ``n`` threads from now on (1 turns threading off)."""
    global _threads, _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = max(1, int(n))


def parallel_for(n, fn, min_per_thread=1):
    """Call ``fn(lo, hi)`` on consecutive slices that together cover ``range(n)``.

    The slices run on up to ``threads()`` threads at once and ``fn`` must only
    write to the part of the output that belongs to its slice.  Exceptions are
    re-raised in the caller.  ``min_per_thread`` keeps tiny jobs on one thread
    (starting a thread costs tens of microseconds).
    """
    global _pool
    t = min(threads(), n // max(1, min_per_thread)) if backend.current().host_threads else 1
    if t <= 1:
        fn(0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="minialexnet")
    bounds = [n * i // t for i in range(t + 1)]
    futures = [_pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, t)]
    fn(bounds[0], bounds[1])  # the calling thread does the first share itself
    for f in futures:
        f.result()
