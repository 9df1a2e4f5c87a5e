"""Two process settings that make the NumPy backend faster on a small CPU: opt-in.

Importing minialexnet changes nothing in the process (no environment variable, no
malloc setting): a Jupyter kernel, or torch in the same process, runs as it would
without it.  ``tune()`` applies both settings.  The command-line tools (train,
evaluate, predict) and the benchmark call it first thing, before NumPy is loaded;
a program of your own can call it too, or set the environment variables below
before Python starts, which does the same::

    OPENBLAS_THREAD_TIMEOUT=4 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python ...

    from minialexnet import cpu
    cpu.tune()    # Tuning(blas_sleeps_when_idle=True, malloc_keeps_freed=True, note='...')

Neither changes a single number a layer computes; both are about how the process
uses its cores and its memory.  Both were measured on 2-core machines (see the
README's Performance section).  ``MINIALEXNET_CPU_TUNING=0`` in the environment
makes ``tune()`` change nothing (the tools then run with the library defaults).

1. **BLAS threads that sleep when idle.**  After every matrix multiply, OpenBLAS's
   worker threads busy-wait for about 2**28 cycles (a tenth of a second) for the
   next one.  A training step alternates matrix multiplies with elementwise work
   that minialexnet itself splits over threads (``parallel.py``: im2col, pooling,
   LRN, ReLU); a spinning BLAS thread then holds one of the two cores those
   threads need.  ``OPENBLAS_THREAD_TIMEOUT=4`` (its minimum, 2**4 cycles) makes
   the workers sleep at once; waking them costs microseconds.  Measured: the
   small AlexNet's step 25-30 % faster, AlexNet's 10 %.  OpenBLAS reads the
   variable when it is loaded (NumPy loads it), so ``tune()`` can only set it
   while NumPy is not loaded yet; called later, it says so
   (``blas_sleeps_when_idle`` False, and ``note``).  Set it in the shell to be sure.

2. **Freed memory kept for reuse.**  glibc's malloc hands large freed blocks back
   to the operating system, so an array of the same size made in the next step
   gets fresh pages, and touching each one costs a page fault (a VM exit on a
   virtual machine).  A ReLU over 16 MB took 15 ms that way instead of 2 ms.
   ``keep_freed_memory()`` asks malloc (through ``mallopt``) to serve every block
   from its heap and never to trim it, so the next step reuses the same pages.
   The process's resident memory then stays at its high-water mark.  This works at
   any time.  glibc reads ``MALLOC_MMAP_MAX_`` and ``MALLOC_TRIM_THRESHOLD_`` from
   the environment itself, at start.  It returns False, changing nothing, where
   the C library has no usable ``mallopt`` (macOS, Windows).
"""

import collections
import ctypes
import ctypes.util
import os
import sys

__all__ = ["Tuning", "tune", "tuned", "enabled", "keep_freed_memory", "malloc_mode"]

BLAS_VAR = "OPENBLAS_THREAD_TIMEOUT"

# Read, not changed: set when this module was imported means set in the shell, as
# far as we can tell, so OpenBLAS read it when it loaded.
_blas_var_outside = BLAS_VAR in os.environ
_blas_var_in_time = False       # tune() set it before NumPy was loaded

Tuning = collections.namedtuple("Tuning", "blas_sleeps_when_idle malloc_keeps_freed note")
_tuned = None


def enabled():
    """False when ``MINIALEXNET_CPU_TUNING=0`` asks for the library defaults."""
    return os.environ.get("MINIALEXNET_CPU_TUNING", "1") != "0"


def tune():
    """Apply both settings (see the module docstring) and say which took effect.

    Returns a ``Tuning``: ``blas_sleeps_when_idle`` (OpenBLAS runs with
    OPENBLAS_THREAD_TIMEOUT=4), ``malloc_keeps_freed`` and a one-line ``note``.
    """
    global _tuned, _blas_var_in_time
    if not enabled():
        _tuned = Tuning(False, False, "MINIALEXNET_CPU_TUNING=0: nothing changed")
        return _tuned
    numpy_loaded = "numpy" in sys.modules      # NumPy loads OpenBLAS
    if BLAS_VAR not in os.environ and not numpy_loaded:
        os.environ[BLAS_VAR] = "4"             # OpenBLAS reads it when NumPy loads it
        _blas_var_in_time = True
    value = os.environ.get(BLAS_VAR)
    blas = value == "4" and (_blas_var_outside or _blas_var_in_time or not numpy_loaded)
    malloc = keep_freed_memory()
    if blas:
        note = "OpenBLAS threads sleep when idle"
    elif value not in (None, "4"):
        note = f"{BLAS_VAR}={value} from the environment is kept"
    else:
        note = (f"NumPy (OpenBLAS) was loaded before tune(): its threads still spin after "
                f"each matrix multiply; set {BLAS_VAR}=4 in the environment, or call "
                "tune() before importing NumPy")
    note += "; freed memory kept by malloc" if malloc else "; malloc unchanged (no mallopt)"
    _tuned = Tuning(blas, malloc, note)
    return _tuned


def tuned():
    """What the last ``tune()`` returned, or None if it was never called."""
    return _tuned


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
    back.  Called by ``tune()``; once is enough.
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
