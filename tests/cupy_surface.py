"""A recording NumPy backend, and a check of what it recorded against real CuPy.

The layer code cannot run on a GPU here, but it can run on NumPy through a proxy
of the array module that writes down every function, Generator method and array
method it calls, with the keyword arguments used.  CuPy imports without a GPU, so
each recorded call can then be looked up in the real ``cupy`` package: does the
function exist, and does it take those keywords?  That catches the usual traps
(``zeros(device=)``, ``clip(min=)``, ``reshape(shape=)``, ``sum(where=)``,
``as_strided(writeable=)``, ``Generator.normal``) without a GPU.

    rec = Recorder()
    backend.use(recording_backend(rec))
    ... run forward and backward ...
    problems = check_against_cupy(rec)   # [] when every call exists in CuPy
"""

import inspect
import re
import types

import numpy as np

from minialexnet import backend


class Recorder:
    def __init__(self):
        # (kind, path, positional-arg count, keyword names)
        self.calls = set()

    def add(self, kind, path, nargs, kwargs):
        self.calls.add((kind, path, nargs, tuple(sorted(kwargs))))


_RECORDER = None


class RecArray(np.ndarray):
    """An ndarray whose method calls are recorded (results stay RecArrays)."""


def _wrap(value):
    if isinstance(value, np.ndarray) and not isinstance(value, RecArray):
        return value.view(RecArray)
    if isinstance(value, np.random.Generator):
        return _GeneratorProxy(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


def _record_method(name):
    base = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        if _RECORDER is not None:
            _RECORDER.add("ndarray", name, len(args), kwargs)
        return _wrap(base(self, *args, **kwargs))
    method.__name__ = name
    return method


for _name in dir(np.ndarray):
    if not _name.startswith("_") and callable(getattr(np.ndarray, _name)):
        setattr(RecArray, _name, _record_method(_name))


class _GeneratorProxy:
    def __init__(self, gen):
        self._gen = gen

    def __getattr__(self, name):
        attr = getattr(self._gen, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            _RECORDER.add("generator", name, len(args), kwargs)
            return _wrap(attr(*args, **kwargs))
        return call


class ModuleProxy:
    """Stands in for ``numpy`` (and its submodules), recording every call."""

    def __init__(self, module, path=""):
        self._module, self._path = module, path

    def __getattr__(self, name):
        obj = getattr(self._module, name)
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(obj, types.ModuleType):
            return ModuleProxy(obj, path)
        if isinstance(obj, type) or not callable(obj):
            _RECORDER.add("attr", path, 0, {})   # dtypes like xp.uint8, constants
            return obj

        def call(*args, **kwargs):
            _RECORDER.add("function", path, len(args), kwargs)
            return _wrap(obj(*args, **kwargs))
        return call


def recording_backend(recorder, seed=0):
    """A NumPy backend whose array module records into ``recorder``.  It can do what
    CuPy can (no host threads, no cache blocking), so it records the calls CuPy runs."""
    global _RECORDER
    _RECORDER = recorder
    b = backend.Backend("numpy-recording", ModuleProxy(np), seed)
    b.host_threads = b.prefers_cache_blocking = False
    return b


def as_recorded(x):
    """Put a test input into the recording world, so its method calls count too."""
    return np.asarray(x).view(RecArray)


# ---------------------------------------------------------------- the check
def _doc_params(obj):
    """Parameter names from a Cython docstring's first line, e.g. 'sum(self, axis=None, ...)'."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    m = re.match(r"[\w.]+\((.*?)\)", doc[0]) if doc else None
    if not m:
        return None
    names, varargs = [], False
    for part in m.group(1).split(","):
        part = part.strip().split("=")[0].strip()
        if part.startswith("**"):
            return None, True          # takes any keyword
        if part.startswith("*"):
            varargs = True
        elif part and part != "self":
            names.append(part)
    return names, varargs


def _accepts(obj, nargs, kwargs):
    """None if ``obj`` can be called with nargs positionals and these keywords, else why not."""
    cupy = __import__("cupy")
    if isinstance(obj, cupy.ufunc):
        bad = set(kwargs) - {"out", "dtype", "casting"}
        return f"ufunc takes no keyword {sorted(bad)}" if bad else None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        parsed = _doc_params(obj)
        if parsed is None:
            return None              # cannot tell: existence was checked already
        names, varargs = parsed if isinstance(parsed, tuple) else (parsed, False)
        if names is None:
            return None
        bad = [k for k in kwargs if k not in names]
        return f"takes no keyword {bad} (parameters: {names})" if bad else None
    try:
        sig.bind(*([None] * nargs), **{k: None for k in kwargs})
    except TypeError as e:
        return f"{e} (signature {sig})"
    return None


def check_against_cupy(recorder):
    """Every recorded call, looked up in the real ``cupy``: a list of problems."""
    cupy = __import__("cupy")
    problems = []
    for kind, path, nargs, kwargs in sorted(recorder.calls):
        if kind == "ndarray":
            owner, name = cupy.ndarray, path
        elif kind == "generator":
            owner, name = cupy.random.Generator, path
        else:
            *mods, name = path.split(".")
            owner = cupy
            for m in mods:
                owner = getattr(owner, m, None)
        obj = getattr(owner, name, None) if owner is not None else None
        label = {"ndarray": "cupy.ndarray.", "generator": "cupy.random.Generator."}.get(kind, "cupy.") + path
        if obj is None:
            problems.append(f"{label} does not exist")
            continue
        if kind != "attr":
            why = _accepts(obj, nargs, kwargs)
            if why:
                problems.append(f"{label}(<{nargs} positional>, {', '.join(kwargs)}): {why}")
    return problems
