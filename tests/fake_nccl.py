"""A recording stand-in for ``cupy.cuda.nccl`` (and the few CuPy calls around it), and
the real API it must match, read from the installed CuPy (a test helper).

Without GPUs, ``distributed.NCCLCommunicator`` runs on fake devices
(``fake_devices.FakeDevices``) with:

- ``FakeCupy``: ``empty`` makes arrays on the current fake device that have CuPy's
  ``a.data.ptr``; ``cuda.get_current_stream().ptr``, ``cuda.Event()`` with
  ``record(stream)`` and ``done``;
- ``FakeNccl(mpi_comm)``: ``get_unique_id``, ``groupStart``/``groupEnd``,
  ``NcclCommunicator(ndev, commId, rank)`` with ``allReduce``, ``bcast``,
  ``check_async_error``, ``abort``, and the ``NCCL_*`` constants (NCCL's own enum
  values).  ``allReduce`` and ``bcast`` really compute: they read and write the
  memory at the pointers they are given (so a wrong count, dtype or pointer shows
  up as a wrong result) and exchange it with the other ranks over MPI.  They also
  check what NCCL requires: the buffer lives on the communicator's device, and a
  process that drives several communicators calls them inside a group.

Every call is recorded as (path, positional count, keyword names);
``check_calls`` looks each up in the real API: ``real_nccl_api()`` reads the
signatures from ``cupy.cuda.nccl`` itself when the NCCL library loads, else from the
signature lines Cython embedded in CuPy's compiled ``cupy_backends/cuda/libs/nccl``
extension (the same text the module's docstrings carry).

    python tests/fake_nccl.py OUT.json      # under mpiexec -n 2: the check's worker
"""

import glob
import inspect
import json
import os
import re
import sys
import types

import numpy as np

import fake_devices

# NCCL's enum values (nccl.h): ncclDataType_t and ncclRedOp_t.
DTYPES = {"NCCL_INT8": (0, np.int8), "NCCL_UINT8": (1, np.uint8), "NCCL_INT32": (2, np.int32),
          "NCCL_UINT32": (3, np.uint32), "NCCL_INT64": (4, np.int64), "NCCL_UINT64": (5, np.uint64),
          "NCCL_FLOAT16": (6, np.float16), "NCCL_FLOAT32": (7, np.float32),
          "NCCL_FLOAT64": (8, np.float64)}
OPS = {"NCCL_SUM": 0, "NCCL_PROD": 1, "NCCL_MAX": 2, "NCCL_MIN": 3}


class Recorder:
    def __init__(self):
        self.calls = []          # (path, nargs, keyword names)
        self.problems = []       # what NCCL or CuPy would refuse

    def add(self, path, args, kwargs):
        self.calls.append((path, len(args), sorted(kwargs)))


# ---------------------------------------------------------------- CuPy's side
class PtrArray(fake_devices.FakeArray):
    """A fake-device array with CuPy's ``data.ptr`` (the address of its first element)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=int(self.ctypes.data))


class FakeCupy:
    """The CuPy calls NCCLCommunicator makes, recorded (``xp`` of the communicator).

    Streams and events are modelled enough to catch ordering mistakes: each device
    has its compute stream (``get_current_stream``) and any number of ``Stream``s.
    A collective queued on a stream that has not waited for an event recorded on the
    compute stream since its last collective would read a bucket before it is packed;
    a host wait (``Event.done``) while a collective's stream has not been joined back
    into the compute stream (``wait_event`` on an event recorded after it) would let
    the host, and the optimiser, see gradients before they are reduced.  Both go to
    ``rec.problems``."""

    def __init__(self, rec):
        self.rec = rec
        self.buffers = {}        # ptr -> (array, device): what NCCL may be handed
        self.streams = {}        # ptr -> Stream (compute streams included)
        outer = self

        class Stream:
            def __init__(self, *args, ptr=None, device=None, **kwargs):
                if ptr is None:                  # made by the code under test (compute streams are not)
                    outer.rec.add("cuda.Stream", args, kwargs)
                self.ptr = ptr if ptr is not None else 2000 + len(outer.streams)
                self.device = fake_devices.current_device() if device is None else device
                self.ready = True            # waited for the compute stream since its last collective
                self.unjoined = False        # a collective not yet waited for by the compute stream
                outer.streams[self.ptr] = self

            def wait_event(self, *args, **kwargs):
                outer.rec.add("cuda.Stream.wait_event", args, kwargs)
                ev = args[0] if args else kwargs["event"]
                src = outer.streams[ev.stream]
                if src.device != self.device:
                    outer.rec.problems.append("wait_event: an event of another device")
                if src.ptr == outer.compute(self.device).ptr:
                    self.ready = True
                for ptr in ev.covers:        # the compute stream waits for these collectives
                    outer.streams[ptr].unjoined = False

        class Event:
            def __init__(self, *args, **kwargs):
                outer.rec.add("cuda.Event", args, kwargs)
                self.stream, self.covers = None, ()

            def record(self, *args, **kwargs):
                outer.rec.add("cuda.Event.record", args, kwargs)
                stream = args[0] if args else kwargs.get("stream") or outer.compute()
                self.stream = stream.ptr
                self.covers = (stream.ptr,) if stream.unjoined else ()

            @property
            def done(self):
                outer.rec.add("cuda.Event.done", (), {})
                late = [s.ptr for s in outer.streams.values() if s.unjoined]
                if late:
                    outer.rec.problems.append(f"host wait before the compute stream joined the "
                                              f"collectives of stream(s) {late}")
                return True

        def get_current_stream(*args, **kwargs):
            outer.rec.add("cuda.get_current_stream", args, kwargs)
            return outer.compute()

        self.Stream = Stream
        self.cuda = types.SimpleNamespace(Event=Event, Stream=Stream,
                                          get_current_stream=get_current_stream)

    def compute(self, device=None):
        """A device's compute stream (the current stream: CuPy's null stream here)."""
        device = fake_devices.current_device() if device is None else device
        ptr = 1000 + device
        if ptr not in self.streams:
            self.Stream(ptr=ptr, device=device)
        return self.streams[ptr]

    def collective(self, stream_ptr, device, what):
        """NCCL queued ``what`` on stream ``stream_ptr`` of ``device``: check and note it."""
        s = self.streams.get(stream_ptr)
        if s is None or s.device != device:
            self.rec.problems.append(f"{what}: stream {stream_ptr} is not a stream of device {device}")
            return
        if not s.ready:
            self.rec.problems.append(f"{what}: queued on stream {stream_ptr} without waiting for "
                                     "the compute stream's packing")
        if s.ptr != self.compute(device).ptr:
            s.ready, s.unjoined = False, True

    def empty(self, *args, **kwargs):
        self.rec.add("empty", args, kwargs)
        a = np.empty(*args, **kwargs)
        with fake_devices._Bypass():
            out = a.view(PtrArray)
        out.device = fake_devices.current_device()
        self.buffers[out.data.ptr] = (out, out.device)
        return out


# ---------------------------------------------------------------- NCCL
class FakeNccl:
    """``cupy.cuda.nccl``, computing over MPI on host memory (see the module docstring)."""

    available = True

    class NcclError(RuntimeError):
        pass

    def __init__(self, mpi_comm, cupy):
        self.mpi, self.cupy, self.rec = mpi_comm, cupy, cupy.rec
        self.group_depth = 0
        self.communicators = []
        for name, (value, _) in DTYPES.items():
            setattr(self, name, value)
        for name, value in OPS.items():
            setattr(self, name, value)
        outer = self

        class NcclCommunicator:
            def __init__(self, *args, **kwargs):
                outer.rec.add("NcclCommunicator", args, kwargs)
                ndev, uid, rank = args
                if not isinstance(uid, bytes) or len(uid) != 128:
                    outer.rec.problems.append(f"commId must be the 128 bytes of get_unique_id, got {type(uid)}")
                if (ndev, rank) != (outer.mpi.Get_size(), outer.mpi.Get_rank()):
                    outer.rec.problems.append(f"NcclCommunicator({ndev}, id, {rank}) on rank "
                                              f"{outer.mpi.Get_rank()} of {outer.mpi.Get_size()}")
                self.device = fake_devices.current_device()
                self.uid = uid
                outer.communicators.append(self)

            def _buffer(self, ptr, count, datatype, what):
                if not isinstance(ptr, int) or not isinstance(count, int):
                    outer.rec.problems.append(f"{what}: pointer and count must be ints")
                arr, dev = outer.cupy.buffers.get(ptr, (None, None))
                dtype = {v: t for v, t in DTYPES.values()}[datatype]
                if arr is None or dev != self.device:
                    outer.rec.problems.append(f"{what}: buffer not on the communicator's device {self.device}")
                    return None
                if arr.dtype != dtype or arr.size != count:
                    outer.rec.problems.append(f"{what}: {count} x {dtype.__name__} for a buffer of "
                                              f"{arr.size} x {arr.dtype}")
                    return None
                with fake_devices._Bypass():
                    return arr.view(np.ndarray)

            def _grouped(self, what):
                if len(outer.communicators) > 1 and outer.group_depth == 0:
                    outer.rec.problems.append(f"{what}: several communicators in one thread "
                                              "outside groupStart/groupEnd")

            def allReduce(self, *args, **kwargs):
                outer.rec.add("NcclCommunicator.allReduce", args, kwargs)
                send, recv, count, datatype, op, stream = args
                self._grouped("allReduce")
                if send != recv or op != outer.NCCL_SUM:
                    outer.rec.problems.append("allReduce: expected an in-place sum")
                outer.cupy.collective(stream, self.device, "allReduce")
                buf = self._buffer(send, count, datatype, "allReduce")
                if buf is not None:
                    from mpi4py import MPI
                    outer.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

            def bcast(self, *args, **kwargs):
                outer.rec.add("NcclCommunicator.bcast", args, kwargs)
                buff, count, datatype, root, stream = args
                self._grouped("bcast")
                outer.cupy.collective(stream, self.device, "bcast")
                buf = self._buffer(buff, count, datatype, "bcast")
                if buf is not None:
                    outer.mpi.Bcast(buf, root=root)

            def check_async_error(self, *args, **kwargs):
                outer.rec.add("NcclCommunicator.check_async_error", args, kwargs)

            def abort(self, *args, **kwargs):
                outer.rec.add("NcclCommunicator.abort", args, kwargs)

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self, *args, **kwargs):
        self.rec.add("get_unique_id", args, kwargs)
        return os.urandom(128)

    def groupStart(self, *args, **kwargs):
        self.rec.add("groupStart", args, kwargs)
        self.group_depth += 1

    def groupEnd(self, *args, **kwargs):
        self.rec.add("groupEnd", args, kwargs)
        self.group_depth -= 1


# ---------------------------------------------------------------- the real API
_SIG = re.compile(r"^((?:NcclCommunicator\.)?\w+)\((.*)\)$")


def _parse(lines):
    """{path: inspect.Signature} from Cython signature lines such as
    'NcclCommunicator.bcast(self, intptr_t buff, size_t count, int datatype, ...)'."""
    sigs = {}
    for line in lines:
        m = _SIG.match(line.strip())
        if not m:
            continue
        params = []
        for part in filter(None, (p.strip() for p in m.group(2).split(","))):
            name, _, default = part.partition("=")
            name = name.split()[-1].lstrip("*")
            if name == "self":
                continue
            params.append(inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None if default else inspect.Parameter.empty))
        sigs.setdefault(m.group(1), inspect.Signature(params))
    return sigs


def real_nccl_api():
    """(signatures {path: Signature}, module-level names, where they were read), or
    None without CuPy."""
    try:
        from cupy.cuda import nccl
        loaded = nccl.available
    except ImportError:
        return None
    if loaded:
        lines = [(getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
                 for obj in [nccl.NcclCommunicator] + [getattr(nccl, n) for n in dir(nccl)] +
                 [getattr(nccl.NcclCommunicator, n) for n in dir(nccl.NcclCommunicator)]]
        sigs = _parse(l[0] for l in lines if l)
        return sigs, set(dir(nccl)), "cupy.cuda.nccl"
    import cupy_backends.cuda.libs as libs
    found = glob.glob(os.path.join(os.path.dirname(libs.__file__), "nccl*.so"))
    if not found:
        return None
    text = open(found[0], "rb").read().decode("latin-1")
    lines = re.findall(r"[\x20-\x7e]{4,}", text)
    sigs = _parse(lines)
    # Module-level names: the constants, and the classes Cython names in full.
    names = set(re.findall(r"\bNCCL_[A-Z0-9]+\b", text)) | set(sigs)
    names |= set(re.findall(r"cupy_backends\.cuda\.libs\.nccl\.(\w+)", text))
    return sigs, names, os.path.basename(found[0])


def check_calls(calls, api):
    """Every recorded NCCL call, bound against the real signature: a list of problems."""
    sigs, _, where = api
    problems = []
    for path, nargs, kwargs in sorted({(p, n, tuple(k)) for p, n, k in calls}):
        if path.startswith(("cuda.", "empty")):
            continue                                   # CuPy's side: check_cupy_calls
        sig = sigs.get(path)
        if sig is None:
            problems.append(f"cupy.cuda.nccl.{path} does not exist ({where})")
            continue
        try:
            sig.bind(*([None] * nargs), **{k: None for k in kwargs})
        except TypeError as e:
            problems.append(f"cupy.cuda.nccl.{path}(<{nargs} positional>, {', '.join(kwargs)}): {e} "
                            f"(real: {sig})")
    return problems


def check_names(source, api):
    """Every ``nccl.NAME`` that ``source`` (distributed.py's text) reads exists for real."""
    used = set(re.findall(r"\bnccl\.([A-Za-z_]\w*)", source))
    return [f"cupy.cuda.nccl.{n} does not exist ({api[2]})" for n in sorted(used - api[1])]


def check_cupy_calls(calls):
    """The CuPy calls around NCCL, looked up in the real cupy package."""
    import cupy
    problems = []
    for path, nargs, kwargs in sorted({(p, n, tuple(k)) for p, n, k in calls}):
        if not path.startswith(("cuda.", "empty")):
            continue
        obj, parent = cupy, None
        for part in path.split("."):
            parent, obj = obj, getattr(obj, part, None)
        if obj is None:
            problems.append(f"cupy.{path} does not exist")
            continue
        if path.endswith(".done"):
            continue                                   # a property, read not called
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        self_arg = isinstance(parent, type) and "self" in sig.parameters   # an unbound method
        try:
            sig.bind(*([None] * (nargs + self_arg)), **{k: None for k in kwargs})
        except TypeError as e:
            problems.append(f"cupy.{path}: {e} (real: {sig})")
    return problems


# ---------------------------------------------------------------- the worker
def worker(out):
    """Under mpiexec: NCCLCommunicator on two fake devices per rank, checked for
    results; the recorded calls go to ``out`` (rank 0) for the test to check."""
    from mpi4py import MPI
    from minialexnet import backend, distributed
    mpi = MPI.COMM_WORLD
    rank, size = mpi.Get_rank(), mpi.Get_size()
    backend.use(fake_devices.FakeDevices(2))
    rec = Recorder()
    xp = FakeCupy(rec)
    nccl = FakeNccl(mpi, xp)
    # Tiny buckets, so that arrays split over several; two devices, two dtypes.
    comm = distributed.NCCLCommunicator([0, 1, 1], xp, nccl, timeout=30, bucket_bytes=64)
    shapes = [((3, 4), np.float32, 0), ((5,), np.float64, 0), ((2, 2), np.float32, 1),
              ((40,), np.float32, 1), ((7,), np.float32, 0)]
    base = [np.arange(np.prod(s), dtype=t).reshape(s) + 1 for s, t, _ in shapes]
    arrays = [fake_devices.on_device(b * (rank + 1), d) for b, (_, _, d) in zip(base, shapes)]
    comm.allreduce_mean(arrays)
    mean = (size + 1) / 2
    ok = all(np.allclose(backend.to_numpy(a), b * mean) and backend.get_device_id(a) == d
             for a, b, (_, _, d) in zip(arrays, base, shapes))
    arrays = [fake_devices.on_device(b * (rank + 7), d) for b, (_, _, d) in zip(base, shapes)]
    comm.broadcast_arrays(arrays)
    ok_b = all(np.array_equal(backend.to_numpy(a), b * 7) for a, b in zip(arrays, base))
    uids = mpi.allgather(sorted(c.uid for c in nccl.communicators))
    result = {"allreduce_ok": bool(ok), "broadcast_ok": bool(ok_b),
              "same_ids": all(u == uids[0] for u in uids), "communicators": len(nccl.communicators),
              "devices": [c.device for c in nccl.communicators],
              "calls": rec.calls, "problems": rec.problems}
    everyone = mpi.gather(result)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(everyone, f)


if __name__ == "__main__":
    worker(sys.argv[1])
