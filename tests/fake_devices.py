"""A NumPy backend with fake devices whose arrays refuse to meet (a test helper).

The two-tower AlexNet (paper 3.2) must move data between its GPUs only at the
explicit transfer steps of ``minialexnet.towers``.  Without two GPUs, we prove it
with arrays that carry a device tag:

- an array made inside ``with backend.device(i)`` is tagged ``i`` (device 0 outside
  any context, as on CuPy; the current device is per thread, as on CuPy);
- any ufunc, array function, ``xp`` call, view, copy, method or item assignment that
  touches an array of a device other than the current one raises ``DeviceMismatch``,
  which also forbids mixing two devices in one operation;
- ``to_device(x, i)`` is the only way across: it returns a copy tagged ``i``;
- each device has its own random generator, and using device j's generator under
  device i raises (as CuPy's ``Generator`` does);
- host synchronisations (``float()``, ``int()``, ``bool()``, ``.item()``,
  ``.tolist()``, ``to_numpy``) are counted in ``FakeDevices.syncs``, so a test can
  assert that forward and backward never wait for the device.

    fake = FakeDevices(2)
    backend.use(fake)
    with backend.device(1):
        a = backend.xp().zeros(3)      # tagged 1
    a + 1                              # DeviceMismatch: current device is 0
    b = backend.to_device(a, 0)        # fine: a copy on device 0
"""

import threading

import numpy as np

from minialexnet import backend


class DeviceMismatch(RuntimeError):
    """An operation met an array that lives on another device."""


_state = threading.local()          # per thread, like CUDA's current device
_BACKEND = None                     # the FakeDevices instance in use (for sync counts)


def current_device():
    return getattr(_state, "device", 0)


class _Bypass:
    """Inside this context the checks are off (used by the fake itself)."""

    def __enter__(self):
        _state.bypass = getattr(_state, "bypass", 0) + 1

    def __exit__(self, *exc):
        _state.bypass -= 1


def _bypassed():
    return getattr(_state, "bypass", 0) > 0


def _check(arr, what):
    if isinstance(arr, FakeArray) and not _bypassed():
        cur = current_device()
        if arr.device != cur:
            raise DeviceMismatch(
                f"{what}: an array on device {arr.device} used while the current device "
                f"is {cur} (a missing transfer step?)")


def _check_all(obj, what):
    if isinstance(obj, FakeArray):
        _check(obj, what)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _check_all(o, what)
    elif isinstance(obj, dict):
        for o in obj.values():
            _check_all(o, what)


def _plain(obj):
    """FakeArrays -> plain ndarray views (recursively), for the real NumPy call."""
    if isinstance(obj, FakeArray):
        with _Bypass():
            return obj.view(np.ndarray)
    if isinstance(obj, list):
        return [_plain(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _tag(value, device=None):
    """Results -> FakeArrays on ``device`` (default: the current device)."""
    device = current_device() if device is None else device
    if isinstance(value, np.generic):         # as CuPy: reductions give 0-d arrays
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        with _Bypass():
            out = value if isinstance(value, FakeArray) else value.view(FakeArray)
        out.device = device
        return out
    if isinstance(value, tuple):
        return tuple(_tag(v, device) for v in value)
    if isinstance(value, list):
        return [_tag(v, device) for v in value]
    return value


def _sync(what):
    if _BACKEND is not None and not _bypassed():
        _BACKEND.syncs.append(what)


class FakeArray(np.ndarray):
    """An ndarray that knows its device and refuses to be used from another one."""

    device = 0

    def __array_finalize__(self, obj):
        # Views, copies, reshapes, astype...: made from ``obj``, on ``obj``'s device.
        if isinstance(obj, FakeArray):
            _check(obj, "a view or copy")
            self.device = obj.device
        else:
            self.device = current_device()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__
        _check_all(inputs, name)
        _check_all(kwargs.get("out", ()), name)
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_plain(inputs), **_plain(kwargs))
        if out is not None:                       # results written into given arrays
            return out[0] if len(out) == 1 else out
        return _tag(result)

    def __array_function__(self, func, types, args, kwargs):
        _check_all(args, func.__name__)
        _check_all(kwargs, func.__name__)
        return _tag(func(*_plain(args), **_plain(kwargs)))

    def __setitem__(self, key, value):
        _check(self, "item assignment (target)")
        _check_all(value, "item assignment (value)")
        _check_all(key, "item assignment (index)")
        with _Bypass():
            np.ndarray.__setitem__(self.view(np.ndarray), _plain(key), _plain(value))

    def __getitem__(self, key):
        _check(self, "indexing")
        _check_all(key, "indexing (index)")
        return np.ndarray.__getitem__(self, _plain(key))

    def __repr__(self):
        with _Bypass():
            return f"FakeArray(device={self.device}, {np.ndarray.__repr__(self.view(np.ndarray))})"

    # host synchronisations: allowed, but counted
    def __float__(self):
        _sync("float()")
        return float(self.view(np.ndarray))

    def __int__(self):
        _sync("int()")
        return int(self.view(np.ndarray))

    def __bool__(self):
        _sync("bool()")
        return bool(self.view(np.ndarray))

    def item(self, *args):
        _sync(".item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _sync(".tolist()")
        return self.view(np.ndarray).tolist()


class _Generator:
    """A NumPy Generator that lives on one device."""

    def __init__(self, gen, device):
        self._gen, self.device = gen, device

    def __getattr__(self, name):
        attr = getattr(self._gen, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            cur = current_device()
            if cur != self.device and not _bypassed():
                raise DeviceMismatch(
                    f"Generator.{name}: the generator of device {self.device} used while "
                    f"the current device is {cur}")
            _check_all(args, f"Generator.{name}")
            return _tag(attr(*_plain(args), **_plain(kwargs)))
        return call


class _ModuleProxy:
    """``numpy`` (and submodules) whose functions check and tag their arrays."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        obj = getattr(self._module, name)
        if isinstance(obj, type(np)):
            return _ModuleProxy(obj)
        if isinstance(obj, type) or not callable(obj):
            return obj                           # dtypes, constants

        def call(*args, **kwargs):
            _check_all(args, name)
            _check_all(kwargs, name)
            return _tag(obj(*_plain(args), **_plain(kwargs)))
        call.__name__ = name
        return call


class _DeviceContext:
    def __init__(self, i):
        self.i = i

    def __enter__(self):
        self.prev = current_device()
        _state.device = self.i
        return self

    def __exit__(self, *exc):
        _state.device = self.prev


class FakeDevices(backend.Backend):
    """A backend with ``n`` fake devices (see the module docstring).

    It can do what CuPy can: no host threads (the current device is per thread, so
    worker threads would run on device 0) and no cache blocking, so the fake-device
    tests run the code paths a GPU runs."""

    host_threads = False
    prefers_cache_blocking = False

    def __init__(self, n=2, seed=0):
        global _BACKEND
        self.n = n
        self.syncs = []
        self.transfers = []          # (from, to, shape) of every cross-device copy
        super().__init__("fake-devices", _ModuleProxy(np), seed)
        _BACKEND = self
        _state.device = 0

    def seed(self, seed):
        self._seed = seed
        self._rngs = {}

    @property
    def rng(self):
        i = current_device()
        if i not in self._rngs:
            self._rngs[i] = _Generator(np.random.default_rng(self._seed + i * 1000003), i)
        return self._rngs[i]

    def keyed_rng(self, *key):
        """As NumPy's (the same numbers), but made on and bound to the current device."""
        return _Generator(np.random.default_rng([self._seed, *key]), current_device())

    def device(self, i):
        if not 0 <= int(i) < self.n:
            raise backend.BackendError(f"fake backend: no device {i} (0..{self.n - 1})")
        return _DeviceContext(int(i))

    def device_count(self):
        return self.n

    def device_of(self, x):
        return x.device if isinstance(x, FakeArray) else 0

    def to_device(self, x, i):
        src = self.device_of(x)
        if isinstance(x, FakeArray) and src == i:
            return x                                # as cupy.asarray on the same device
        if src != i:
            self.transfers.append((src, i, tuple(x.shape)))
        with _Bypass():
            copy = np.array(_plain(x), copy=True)
        return _tag(copy, int(i))

    def to_numpy(self, x):
        _sync("to_numpy")
        with _Bypass():
            return np.array(_plain(x), copy=True)

    def as_strided(self, x, shape, strides):
        _check(x, "as_strided")
        with _Bypass():
            view = np.lib.stride_tricks.as_strided(x.view(np.ndarray), shape, strides)
        return _tag(view, self.device_of(x))


def on_device(a, i):
    """A host array put on fake device ``i`` (for test inputs)."""
    return _tag(np.array(a, copy=True), i)
