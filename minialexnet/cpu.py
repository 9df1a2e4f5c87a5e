"""Two process settings that make the NumPy backend faster on a small CPU.

Neither changes a single number a layer computes; both are about how the process
uses its cores and its memory.  Both were measured on 2-core machines (see the
README's Performance section); each can be turned off with
``MINIALEXNET_CPU_TUNING=0`` in the environment.

1. **BLAS threads that sleep when idle.**  After every matrix multiply, OpenBLAS's
   worker threads busy-wait for about 2**28 cycles (a tenth of a second) for the
   next one.  A training step alternates matrix multiplies with elementwise work
   that minialexnet itself splits over threads (``parallel.py``: im2col, pooling,
   LRN, ReLU); a spinning BLAS thread then holds one of the two cores those
   threads need.  ``OPENBLAS_THREAD_TIMEOUT=4`` (its minimum, 2**4 cycles) makes
   the workers sleep at once; waking them costs microseconds.  Measured: the
   small AlexNet's step 25-30 % faster, AlexNet's 10 %.  OpenBLAS reads the
   variable when it is loaded, so it only takes effect if minialexnet is imported
   before NumPy (``BLAS_SLEEPS_WHEN_IDLE`` says whether it did); set it in the
   shell to be sure.

2. **Freed memory kept for reuse.**  glibc's malloc hands large freed blocks back
   to the operating system, so an array of the same size made in the next step
   gets fresh pages, and touching each one costs a page fault (a VM exit on a
   virtual machine).  A ReLU over 16 MB took 15 ms that way instead of 2 ms.
   ``keep_freed_memory()`` asks malloc (through ``mallopt``) to serve every block
   from its heap and never to trim it, so the next step reuses the same pages.
   The process's resident memory then stays at its high-water mark.  It returns
   False, changing nothing, where the C library has no usable ``mallopt`` (macOS,
   Windows).
"""

import ctypes
import ctypes.util
import os
import sys

_set_outside = "OPENBLAS_THREAD_TIMEOUT" in os.environ
_numpy_was_loaded = "numpy" in sys.modules

__all__ = ["BLAS_SLEEPS_WHEN_IDLE", "keep_freed_memory", "malloc_mode", "enabled"]


def enabled():
    """False when ``MINIALEXNET_CPU_TUNING=0`` asks for the library defaults."""
    return os.environ.get("MINIALEXNET_CPU_TUNING", "1") != "0"


if enabled():
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

#: True when OpenBLAS runs with OPENBLAS_THREAD_TIMEOUT=4: the variable is set and
#: NumPy (which loads OpenBLAS) was not loaded before it could be read.
BLAS_SLEEPS_WHEN_IDLE = (os.environ.get("OPENBLAS_THREAD_TIMEOUT") == "4"
                         and (_set_outside or not _numpy_was_loaded))

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_kept = None
_mallopt = None


def _libc_mallopt():
    """glibc's ``mallopt`` through ctypes, or None where there is none."""
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        name = ctypes.util.find_library("c")
        try:
            fn = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
        except OSError:
            fn = None
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _mallopt = fn
    return _mallopt or None


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse; True if it agreed.

    ``M_MMAP_MAX = 0``: no block gets its own mapping (those are unmapped on free).
    ``M_TRIM_THRESHOLD`` = 2 GiB: free memory at the top of the heap is not given
    back.  Called once, when minialexnet is imported (unless tuning is off).
    """
    global _kept
    if _kept is None:
        _kept = malloc_mode("kept")
    return _kept


def malloc_mode(mode):
    """Switch malloc between "kept" (``keep_freed_memory``) and "glibc".

    "glibc" is where glibc's own dynamic rule settles in a process that has freed
    a block of 32 MiB or more: blocks from 32 MiB up get their own mapping, and
    more than 64 MiB free at the heap's top is trimmed.  The benchmark uses it to
    time PyTorch as its users get it, in the same process as minialexnet.
    Returns False where there is no ``mallopt``.
    """
    mallopt = _libc_mallopt()
    if mallopt is None:
        return False
    if mode == "kept":
        return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if mode == "glibc":
        return bool(mallopt(_M_MMAP_MAX, 65536) and mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                    and mallopt(_M_TRIM_THRESHOLD, 64 << 20))
    raise ValueError(f"malloc_mode: expected 'kept' or 'glibc', got {mode!r}")


if enabled():
    keep_freed_memory()
