"""The one place that imports NumPy or CuPy.

Everything else in minialexnet gets its arrays and array functions from here, so
the same layer code runs on the CPU (NumPy) and on NVIDIA GPUs (CuPy).  The idea is
DeZero's ``cuda.py``: choose the array module once, in one small file.

    from minialexnet import backend
    backend.use("numpy")          # the default; "cupy" for GPUs
    xp = backend.xp()             # the array module of the current backend
    with backend.device(1):       # a no-op on NumPy, cupy.cuda.Device(1) on CuPy
        w = xp.zeros((3, 3), dtype=backend.dtype())
    x = backend.to_device(w, 0)   # explicit copy between devices
    host = backend.to_numpy(x)    # always a NumPy array

``np`` below is the host NumPy module.  Only host-side code (data loading,
checkpoints, plots) may use it; layer code must use ``xp()``.
"""

import contextlib

import numpy as np

from .errors import BackendError

__all__ = [
    "Backend", "BackendError", "use", "current", "xp", "dtype", "rng", "keyed_rng", "seed",
    "device", "to_device", "to_numpy", "as_strided", "np", "synchronize",
    "get_device_id",
]


class Backend:
    """An array module plus what layer code needs around it.

    Attributes: ``name`` ("numpy" or "cupy"), ``xp`` (the array module),
    ``dtype`` (the default float dtype, float32), ``rng`` (a seeded
    ``Generator`` of ``xp``; only ``random``, ``standard_normal`` and
    ``integers`` are used, since CuPy's Generator has no ``normal``,
    ``permutation`` or ``choice``).

    What the backend can do, so that no code asks for its name: ``host_threads``,
    ``prefers_cache_blocking``, ``nccl`` and ``gpu_ids`` (below).
    """

    # What the backend offers for training across processes: the NCCL module (None
    # here: host arrays travel over MPI; see distributed.py).
    nccl = None
    #: Array work runs on the calling CPU thread, and NumPy releases the GIL in its
    #: loops: memory-bound loops split over Python threads use more cores
    #: (parallel.py).  A GPU already runs each kernel in parallel.
    host_threads = True
    #: Passes over data are cheaper a cache-sized block at a time (a CPU's caches:
    #: LRN, pooling, col2im, Conv2D's column chunks, SGD).  On a GPU one kernel over
    #: the whole array is best: blocks would only multiply kernel launches.
    prefers_cache_blocking = True

    def __init__(self, name, xp, seed=0):
        self.name = name
        self.xp = xp
        self.dtype = np.float32
        self.seed(seed)

    def seed(self, seed):
        self._seed = int(seed)
        self.rng = self.xp.random.default_rng(seed)

    def keyed_rng(self, *key):
        """A new Generator fixed by (the seed, *key) alone, on the current device.

        For draws that must not depend on what was drawn before: dropout masks,
        keyed by layer and step as the Loader keys crops by epoch and batch, so a
        resumed run draws what the straight run drew with no generator state to save
        (a CuPy generator's state lives on its GPU).  ``key``: non-negative ints.
        """
        return self.xp.random.default_rng([self._seed, *key])

    def device(self, i):
        """A context in which new arrays live on device ``i`` (no-op here)."""
        return contextlib.nullcontext()

    def device_count(self):
        return 1

    def device_of(self, x):
        """The device index an array lives on (always 0 for NumPy)."""
        return 0

    def gpu_ids(self, devices):
        """The GPUs, as CUDA numbers them, behind the device indices ``devices`` (a
        rank's own GPUs in a distributed log line); None: the devices are no GPUs."""
        return None

    def to_device(self, x, i):
        """Copy ``x`` to device ``i``; on NumPy there is one device, so no copy."""
        return x

    def to_numpy(self, x):
        return np.asarray(x)

    def synchronize(self):
        """Wait for queued device work (only meaningful on GPUs)."""

    def as_strided(self, x, shape, strides):
        """A strided view of ``x``: the one trick behind im2col and pooling.

        Called with positional arguments only, because CuPy's ``as_strided``
        has no ``subok`` or ``writeable`` keywords.
        """
        return self.xp.lib.stride_tricks.as_strided(x, shape, strides)

    def __repr__(self):
        return f"<Backend {self.name}>"


class CupyBackend(Backend):
    """CuPy on one or more NVIDIA GPUs; device i is ``cupy.cuda.Device(i + offset)``.

    host_threads = False
    prefers_cache_blocking = False

    ``offset`` (default 0) shifts every device index: a rank of a distributed run
    that places its towers on "devices 0, 1" really uses GPUs offset and offset + 1
    (``distributed.py``), while its model, config and checkpoint say 0, 1 like every
    other rank's.  The first of them is made CUDA's current device.
    """

    def __init__(self, cupy, seed=0, offset=0):
        self._cupy = cupy
        self.offset = int(offset)
        super().__init__("cupy", cupy, seed)
        if self.offset:
            cupy.cuda.Device(self.offset).use()

    @property
    def nccl(self):
        """``cupy.cuda.nccl`` when CuPy found the NCCL library, else None."""
        try:
            from cupy.cuda import nccl
        except ImportError:
            return None
        return nccl if getattr(nccl, "available", False) else None

    # A CuPy Generator's state lives on the GPU that was current when it was made,
    # and CuPy refuses to use it under another device ("This Generator state has
    # been allocated in a different device").  So there is one generator per device,
    # made on first use; device 0's is seeded with ``seed`` exactly as before, device
    # i's with ``seed + i * 1000003``.  A tower's dropout on GPU 1 draws from GPU 1's.
    def seed(self, seed):
        self._seed = int(seed)
        self._rngs = {}

    def keyed_rng(self, *key):
        # Philox is counter-based: a new one costs a few integer stores per state.
        # default_rng's XORWOW skips ahead for each of its 256,000 states (cuRAND:
        # curand_init is slow for large subsequence numbers), on every call.
        cupy = self._cupy
        return cupy.random.Generator(cupy.random.Philox4x3210([self._seed, *key]))

    @property
    def rng(self):
        i = self._cupy.cuda.Device().id       # the current device (no synchronisation)
        gen = self._rngs.get(i)
        if gen is None:
            with self._cupy.cuda.Device(i):
                # Seeded by the index the model knows (i - offset), so every rank
                # draws what one process would.
                gen = self._rngs[i] = self._cupy.random.default_rng(
                    self._seed + (i - self.offset) * 1000003)
        return gen

    def device(self, i):
        self._check_index(i)
        return self._cupy.cuda.Device(int(i) + self.offset)

    def device_count(self):
        return self._cupy.cuda.runtime.getDeviceCount()

    def device_of(self, x):
        return x.device.id - self.offset

    def gpu_ids(self, devices):
        return [int(d) + self.offset for d in devices]

    def _check_index(self, i):
        n = self.device_count()
        if not 0 <= int(i) + self.offset < n or int(i) < 0:
            shifted = f" (GPU {int(i) + self.offset} for this rank)" if self.offset else ""
            raise BackendError(
                f"cupy backend: device {i}{shifted} does not exist (this machine has {n} GPU"
                f"{'s' if n != 1 else ''}: 0..{n - 1})")

    def to_device(self, x, i):
        # An explicit peer copy: the point where the paper's two GPUs talk.
        with self.device(i):
            return self._cupy.asarray(x)

    def to_numpy(self, x):
        return self._cupy.asnumpy(x)

    def synchronize(self):
        for i in range(self.device_count()):
            with self._cupy.cuda.Device(i):
                self._cupy.cuda.Device(i).synchronize()


def _make_cupy(seed, devices=None, offset=0):
    """Import CuPy and prove it can run, or fail with one line saying why."""
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "cupy backend: CuPy is not installed (pip install cupy-cuda12x or "
            f"cupy-cuda13x, matching your CUDA driver): {e}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        why = "CUDA reports no GPU"
    except RuntimeError as e:  # CUDARuntimeError: no driver, or a too-old driver
        n, why = 0, f"CUDA says {e}"
    if n == 0:
        # Said first: on a machine without an NVIDIA GPU, "driver version is
        # insufficient" would send the user off to upgrade a driver for nothing.
        raise BackendError(
            f"cupy backend: no usable NVIDIA GPU was found ({why}); on a machine without "
            "one use --backend numpy (the default); with one, its driver may be missing "
            "or older than this CuPy needs")
    if not 0 <= offset < n:
        raise BackendError(f"cupy backend: this rank's first GPU would be {offset}, but "
                           f"this machine has {n} GPU{'s' if n != 1 else ''}: 0..{n - 1} "
                           "(more ranks on this machine than GPUs for them?)")
    b = CupyBackend(cupy, seed, offset)
    for i in devices or ():
        b._check_index(i)
    return b


_current = None


def use(name="numpy", seed=0, devices=None, device_offset=0):
    """Switch the backend for all of minialexnet and return it.

    ``name`` is "numpy", "cupy", or a ready ``Backend`` instance (tests use this
    to plug in a recording or fake-device backend).  ``devices`` lists the
    device indices the caller will use; a missing one fails here, at once.
    ``device_offset``: CuPy's device i is GPU i + offset (a rank of a distributed
    run; NumPy has one device and ignores it).
    """
    global _current
    if isinstance(name, Backend):
        _current = name
    elif name == "numpy":
        if devices is not None and any(int(i) != 0 for i in devices):
            bad = [i for i in devices if int(i) != 0]
            raise BackendError(f"numpy backend: there is only device 0 (the CPU), not {bad}")
        _current = Backend("numpy", np, seed)
    elif name == "cupy":
        _current = _make_cupy(seed, devices, int(device_offset))
    else:
        raise BackendError(f"unknown backend {name!r}: expected 'numpy' or 'cupy'")
    return _current


def current():
    """The backend in use (NumPy unless ``use`` said otherwise)."""
    if _current is None:
        use("numpy")
    return _current


# Short forms used by layer code.
def xp():
    return current().xp


def dtype():
    return current().dtype


def rng():
    return current().rng


def keyed_rng(*key):
    return current().keyed_rng(*key)


def seed(s):
    current().seed(s)


def device(i):
    return current().device(i)


def get_device_id(x):
    return current().device_of(x)


def to_device(x, i):
    return current().to_device(x, i)


def to_numpy(x):
    return current().to_numpy(x)


def as_strided(x, shape, strides):
    return current().as_strided(x, shape, strides)


def synchronize():
    current().synchronize()
