"""Data parallel training over ranks (processes, on one machine or many): MPI and NCCL.

    mpiexec -n 4 python -m minialexnet.train --distributed --batch-size 512 ...

Every rank holds the whole model (its towers on its own devices, paper 3.2) and
reads its own rows of every global batch: rank r of K gets rows r*B/K .. (r+1)*B/K of
the batch that one process would make (``data.Loader(shard=...)``), augmentation
included.  After backward, the gradients are averaged over the ranks with one
allreduce per step, in a few large buckets; then every rank makes the same SGD step.
Each rank's loss is its rows' mean (``SoftmaxCrossEntropy`` divides by the local
batch), so the mean of the K ranks' gradients is the gradient of the global batch;
dropout masks are drawn for the whole global batch from (seed, layer, step) and each
rank keeps its rows (``Network.set_draw(step, rows=...)``, ``layers.Dropout``).  So
K ranks at B/K images each compute the step of one process at B, up to rounding.

Communicators (one small interface, ChainerMN's idea):

    Communicator          one process: every collective is the identity (the default)
    MPICommunicator       mpi4py: ``Iallreduce`` on NumPy buffers; CuPy arrays go
                          through host copies
    NCCLCommunicator      CuPy arrays reduced on their GPUs by ``cupy.cuda.nccl``
                          (one NCCL communicator per tower device; the NCCL unique
                          id is broadcast over MPI, which also carries small objects)

    comm.rank, comm.size, comm.is_root, comm.local_rank
    comm.allreduce_mean(arrays)      in place: the ranks' average (gradients)
    comm.sum_numbers(values)         host numbers summed over ranks (counts, losses)
    comm.broadcast_arrays(arrays)    in place, from rank 0 (initial weights)
    comm.broadcast_object(obj)       rank 0's object on every rank
    comm.allgather_object(obj)       [every rank's object]
    comm.barrier()

Faults.  Every collective waits under a watchdog: a rank that does not arrive within
``timeout`` seconds (at start-up at least STARTUP_TIMEOUT; it died or hangs) is named
in one line, and the job is aborted
(``MPI_Abort``), instead of hanging until someone kills the launcher.  To know who
is missing, each rank tells rank 0 (and rank 0 tells everyone) the number of every
collective it enters: tiny messages beside the collective itself.  Errors found at
start-up on any rank (a missing data directory, a GPU that is not there) and any
difference between the ranks' code, configuration, model or data are reported once,
by rank 0, naming the rank (``together``, ``check_same``).  Ctrl-C or SIGTERM only
sets a flag; the ranks agree at the next step boundary to stop there, so the
checkpoint rank 0 then writes is that of a whole step.

Importing this module needs no MPI; ``connect`` imports mpi4py and says in one line
what to install when it is missing.
"""

import atexit
import hashlib
import os
import pickle
import signal
import sys
import time
import traceback
import zlib

from . import backend
from .backend import np

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "DistributedError",
           "connect", "with_devices", "active", "report", "code_version", "array_digest",
           "DEFAULT_TIMEOUT", "STARTUP_TIMEOUT", "BUCKET_BYTES"]

INSTALL = "pip install mpi4py mpich (or pip install minialexnet[mpi])"
DEFAULT_TIMEOUT = 600.0     # seconds a rank waits for the others at a collective
# ... before training starts: ranks may prepare their data for very different times
# (one computes the mean image of ImageNet, another finds it cached).
STARTUP_TIMEOUT = 1800.0
BUCKET_BYTES = 32 << 20     # gradients travel in buckets of about this size
HEARTBEAT_TAG = 7713


class DistributedError(RuntimeError):
    """A problem between ranks, reported in one line.  ``collective``: every rank raised
    it (so rank 0 alone prints it); otherwise only the rank that found it knows."""

    def __init__(self, message, collective=False):
        super().__init__(message)
        self.collective = collective


# ---------------------------------------------------------------- one process
class Communicator:
    """One process: the interface, with every collective the identity.

    Subclasses implement the same methods across processes.  The trainer always has
    a communicator, so training code has no "if distributed" branches.
    """

    rank, size, local_rank = 0, 1, 0
    kind = "one process"

    def __init__(self):
        self.stop_requested = False     # set by a signal; agreed on at step boundaries
        self.allreduce_seconds = 0.0    # time spent averaging gradients (benchmarks)

    @property
    def is_root(self):
        return self.rank == 0

    def shard(self, n):
        """This rank's rows lo..hi of n rows (contiguous; equal shares when K divides n)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def allreduce_mean(self, arrays):
        """Replace each array (in place) by its mean over the ranks."""

    def gradient_sync(self, model):
        """For one training step: ``after(step)`` (``Network.backward``'s hook) and
        ``finish()``, which leaves every gradient of ``model`` averaged over the
        ranks.  Here: one ``allreduce_mean`` of them all at the end."""
        return _SyncAtEnd(self, model)

    def sum_numbers(self, values):
        """Host numbers (ints, floats, bools) summed over ranks: a list of floats."""
        return [float(v) for v in values]

    def broadcast_arrays(self, arrays, root=0):
        """Overwrite each array (in place) with rank ``root``'s."""

    def broadcast_object(self, obj, root=0):
        return obj

    def allgather_object(self, obj):
        return [obj]

    def barrier(self):
        pass

    def together(self, fn, *args, errors=(Exception,)):
        """``fn(*args)`` on every rank; if it raises one of ``errors`` on any, every rank
        raises a DistributedError naming it (one process: fn's own exception).  For
        start-up work that may fail on one rank while the others wait."""
        return fn(*args)

    def check_same(self, parts):
        """Raise on every rank if another rank's ``parts`` ({name: value}) differ."""

    def start_training(self):
        """The set-up is over: collectives from now on wait ``timeout`` at most."""

    def install_stop_handlers(self):
        """One process: Ctrl-C raises KeyboardInterrupt where it lands, as always."""

    def abort(self, code=1):
        sys.exit(code)

    def describe(self):
        return "one process"


# ---------------------------------------------------------------- MPI
class _SyncAtEnd:
    """``gradient_sync`` without overlap: everything at ``finish``."""

    def __init__(self, comm, model):
        self.comm, self.model = comm, model

    def after(self, step):
        pass

    def finish(self):
        self.comm.allreduce_mean(self.model.grads().values())


class _Buckets:
    """One gradient allreduce over MPI, bucket by bucket.  ``ready(i, a)``: array
    ``a`` (the i-th of ``templates``) is final; when its bucket is full, the bucket
    is packed into its host buffer and its Iallreduce starts.  ``finish()`` waits
    for each bucket in turn and writes the mean back into the arrays."""

    def __init__(self, comm, templates):
        self.comm, self.layout = comm, self._plan(comm, templates)
        items = [self._items(entry) for entry in self.layout]
        self.slot = {i: (b, j) for b, its in enumerate(items) for j, (i, _, _) in enumerate(its)}
        self.arrays = [[None] * len(its) for its in items]
        self.missing = [len(its) for its in items]
        self.requests = [None] * len(self.layout)
        self.started = 0                          # buckets on their way

    @staticmethod
    def _plan(comm, templates):
        return comm._layout(templates)            # [(items, host buffer)]

    @staticmethod
    def _items(entry):
        return entry[0]

    def _check_all_started(self):
        if self.started < len(self.layout):
            raise RuntimeError(f"{len(self.layout) - self.started} gradient bucket(s) never "
                               "filled: backward did not reach every parameter")

    def ready(self, i, a):
        t0 = time.perf_counter()
        b, j = self.slot[i]
        self.arrays[b][j] = a
        self.missing[b] -= 1
        if self.missing[b] == 0:
            self._start(b)
        self.comm.allreduce_seconds += time.perf_counter() - t0

    def _start(self, b):
        if not self.started:
            self.comm.watchdog.arrive()           # one collective for the watchdog
        items, buf = self.layout[b]
        for a, (_, off, n) in zip(self.arrays[b], items):
            buf[off:off + n] = backend.to_numpy(a).reshape(-1)
        self.requests[b] = self.comm.comm.Iallreduce(self.comm.MPI.IN_PLACE, buf,
                                                     op=self.comm.MPI.SUM)
        self.started += 1

    def finish(self):
        t0 = time.perf_counter()
        self._check_all_started()
        for (items, buf), arrays, req in zip(self.layout, self.arrays, self.requests):
            self.comm._wait([req], "gradient allreduce")
            buf /= self.comm.size
            for a, (_, off, n) in zip(arrays, items):
                _put(a, buf[off:off + n])
        self.comm.allreduce_seconds += time.perf_counter() - t0


class _Overlapped:
    """``gradient_sync`` with overlap: each step's gradients go to their buckets
    (``_Buckets`` over MPI, ``_NCCLBuckets`` over NCCL) as soon as backward has made
    them, so a bucket's allreduce starts while the steps before it still run backward
    (buckets in model order: fc8's go first).  The buckets hold the same arrays in
    the same order as ``allreduce_mean``'s, so the sums are the same bits; only the
    time they travel changes."""

    def __init__(self, comm, model):
        params = model.params()
        self.index = {name: i for i, name in enumerate(params)}
        self.buckets = comm._bucket_sync(list(params.values()))

    def after(self, step):
        for prefix, layer, _ in step.named_layers():
            for k in layer.params:
                self.buckets.ready(self.index[f"{prefix}.{k}"], layer.grads[k])

    def finish(self):
        self.buckets.finish()


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"--distributed needs MPI for Python: {INSTALL} ({e})") from None
    return MPI


class _Watchdog:
    """Waits for a collective with a deadline, and knows who has not arrived.

    Rank 0 hears from every rank the number of each collective it enters, and tells
    every rank its own.  When a wait passes ``timeout``, rank 0 names the ranks whose
    last number is behind; another rank names rank 0 if rank 0 is behind, else gives
    rank 0 a moment to abort the job with the names, then aborts it itself.
    """

    GRACE = 5.0

    def __init__(self, mpi, comm, timeout):
        self.MPI, self.comm, self.timeout = mpi, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.seq = 0
        self.peers = [p for p in range(self.size) if p != self.rank] if self.rank == 0 else [0]
        self.seen = {p: 0 for p in self.peers}
        self._bufs = {p: np.zeros(1, np.int64) for p in self.peers}
        self._recvs = {p: self._post(p) for p in self.peers}
        self._sends = []
        atexit.register(self.close)     # runs before mpi4py's MPI_Finalize (registered earlier)

    def _post(self, p):
        return self.comm.Irecv(self._bufs[p], source=p, tag=HEARTBEAT_TAG)

    def close(self):
        """Cancel the heartbeat receives still posted (MPI_Finalize wants none pending)."""
        for r in self._recvs.values():
            try:
                r.Cancel()
                r.Wait()
            except self.MPI.Exception:
                pass
        self._recvs = {}
        self.peers = []

    def arrive(self):
        """Called on entering a collective: say so to rank 0 (rank 0: to everyone)."""
        self.seq += 1
        self._sends = [(b, r) for b, r in self._sends if not r.Test()]
        for p in self.peers:
            buf = np.array([self.seq], np.int64)
            self._sends.append((buf, self.comm.Isend(buf, dest=p, tag=HEARTBEAT_TAG)))

    def drain(self):
        for p in self.peers:
            while self._recvs[p].Test():
                self.seen[p] = max(self.seen[p], int(self._bufs[p][0]))
                self._recvs[p] = self._post(p)

    def wait(self, done, what):
        """Poll ``done()`` until True; past the deadline, report and abort the job."""
        start = time.monotonic()
        deadline = start + self.timeout
        polls = 0
        while not done():
            polls += 1
            if polls % 64 == 0:
                self.drain()
            now = time.monotonic()
            if now > deadline:
                self._expire(what, done)
                deadline = float("inf")      # only a non-root rank in its grace gets here
            # Spin for the first millisecond (a collective that is about to finish), then
            # sleep a little per poll so that a long wait does not eat a core.
            if now - start > 1e-3:
                time.sleep(2e-4 if now - start < 0.1 else 2e-3)
        self.drain()

    def _expire(self, what, done):
        self.drain()
        behind = [p for p in self.peers if self.seen[p] < self.seq]
        t = f"{self.timeout:g} s"
        if behind:
            who = ", ".join(f"rank {p}" for p in behind)
            last = ", ".join(f"#{self.seen[p]}" for p in behind)
            _die(self.comm, f"error: {who} did not reach collective #{self.seq} ({what}) "
                            f"within {t} (last seen at {last}): it died or hangs; "
                            f"stopping all {self.size} ranks")
        if self.rank != 0:
            # Rank 0 is alive and waiting too: it will name the missing rank.
            end = time.monotonic() + self.GRACE
            while time.monotonic() < end and not done():
                time.sleep(0.01)
            if done():
                return
        _die(self.comm, f"error: collective #{self.seq} ({what}) did not complete within "
                        f"{t} although every rank reached it (a stalled network or device?); "
                        f"stopping all {self.size} ranks")


def _die(comm, line, code=1):
    """Print ``line``, stop every rank, and never return."""
    print(line, file=sys.stderr, flush=True)
    comm.Abort(code)
    os._exit(code)       # MPICH's MPI_Abort may return before the launcher kills us


class MPICommunicator(Communicator):
    """Ranks of an MPI job (mpi4py).  Arrays travel as NumPy buffers: CuPy arrays are
    copied to the host and back (no CUDA-aware MPI needed)."""

    kind = "MPI"

    def __init__(self, mpi=None, comm=None, timeout=DEFAULT_TIMEOUT, bucket_bytes=BUCKET_BYTES,
                 watchdog=None):
        super().__init__()
        self.MPI = mpi or _import_mpi()
        self.comm = comm or self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank).Get_rank()
        self.timeout, self.bucket_bytes = float(timeout), int(bucket_bytes)
        self.watchdog = watchdog or _Watchdog(self.MPI, self.comm, max(self.timeout, STARTUP_TIMEOUT))
        self._layouts = {}

    # ------------------------------------------------------------ the plumbing
    def _wait(self, requests, what):
        reqs = list(requests)
        self.watchdog.wait(lambda: all(r.Test() for r in reqs), what)

    def _host_sum(self, buf, what):
        """In place: buf (host NumPy) summed over ranks."""
        self.watchdog.arrive()
        self._wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)], what)

    # ------------------------------------------------------------ gradients
    def _layout(self, arrays):
        """The buckets of ``arrays`` with a persistent host buffer each (cached per model)."""
        key = tuple((tuple(a.shape), str(a.dtype)) for a in arrays)
        if key not in self._layouts:
            self._layouts[key] = [(items, np.empty(n, dtype))
                                  for dtype, items, n in _plan(arrays, self.bucket_bytes)]
        return self._layouts[key]

    def _bucket_sync(self, arrays):
        return _Buckets(self, arrays)

    def allreduce_mean(self, arrays):
        """Pack each bucket, start its allreduce at once (the next bucket packs while
        the last one travels), then unpack divided by K."""
        arrays = list(arrays)
        buckets = self._bucket_sync(arrays)
        for i, a in enumerate(arrays):
            buckets.ready(i, a)
        buckets.finish()

    def gradient_sync(self, model):
        """Buckets start their allreduce while backward still runs (``_Overlapped``)."""
        return _Overlapped(self, model)

    def sum_numbers(self, values):
        buf = np.array([float(v) for v in values], np.float64)
        self._host_sum(buf, "step agreement")
        return buf.tolist()

    def broadcast_arrays(self, arrays, root=0):
        for a in arrays:
            host = np.ascontiguousarray(backend.to_numpy(a))
            self.watchdog.arrive()
            self._wait([self.comm.Ibcast(host, root=root)], "weight broadcast")
            if self.rank != root:
                _put(a, host.reshape(-1))

    # ------------------------------------------------------------ small objects
    def broadcast_object(self, obj, root=0):
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else len(data)], np.int64)
        self.watchdog.arrive()
        self._wait([self.comm.Ibcast(n, root=root)], "object broadcast")
        buf = data.copy() if data is not None else np.empty(int(n[0]), np.uint8)
        self.watchdog.arrive()
        self._wait([self.comm.Ibcast(buf, root=root)], "object broadcast")
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj):
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        counts = np.zeros(self.size, np.int64)
        self.watchdog.arrive()
        self._wait([self.comm.Iallgather(np.array([len(data)], np.int64), counts)], "object gather")
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        buf = np.empty(int(counts.sum()), np.uint8)
        self.watchdog.arrive()
        self._wait([self.comm.Iallgatherv(data, [buf, counts, displs, self.MPI.BYTE])], "object gather")
        return [pickle.loads(buf[o:o + c].tobytes()) for o, c in zip(displs, counts)]

    def barrier(self):
        self.watchdog.arrive()
        self._wait([self.comm.Ibarrier()], "barrier")

    # ------------------------------------------------------------ agreeing
    def together(self, fn, *args, errors=(Exception,)):
        result, failure = None, None
        try:
            result = fn(*args)
        except errors as e:
            failure = str(e)
        except Exception:
            # A bug, not a user's mistake: its traceback, then stop the job.
            traceback.print_exc()
            self.abort(1)
        failures = self.allgather_object(failure)
        bad = [(r, f) for r, f in enumerate(failures) if f is not None]
        if bad:
            if len(bad) == self.size and len({f for _, f in bad}) == 1:
                raise DistributedError(f"{bad[0][1]} (on every rank)", collective=True)
            r, f = bad[0]
            more = f" (and on ranks {', '.join(str(q) for q, _ in bad[1:])})" if len(bad) > 1 else ""
            raise DistributedError(f"rank {r}: {f}{more}", collective=True)
        return result

    def check_same(self, parts):
        everyone = self.allgather_object(parts)
        for r, theirs in enumerate(everyone):
            why = _difference(everyone[0], theirs)
            if why:
                raise DistributedError(f"rank {r} does not match rank 0: {why}", collective=True)

    def start_training(self):
        """From now on a rank that does not arrive within ``timeout`` is reported (at
        start-up the limit is at least STARTUP_TIMEOUT)."""
        self.watchdog.timeout = self.timeout

    def install_stop_handlers(self):
        """Ctrl-C / SIGTERM (the launcher forwards both to every rank) only set a flag:
        stopping in the middle of a collective would leave the others waiting."""
        def request_stop(signum, frame):
            self.stop_requested = True
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def abort(self, code=1):
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)

    def describe(self):
        version = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return f"{self.size} ranks, {self.kind} ({version})"


def _plan(arrays, bucket_bytes):
    """Buckets: runs of same-dtype arrays, in model order, of at most ``bucket_bytes``
    (an array larger than that is a bucket alone), as [(dtype, [(index, offset, size)], n)]."""
    plan, cur, total, dtype = [], [], 0, None
    for i, a in enumerate(arrays):
        if cur and (a.dtype != dtype or (total + int(a.size)) * a.dtype.itemsize > bucket_bytes):
            plan.append((dtype, cur, total))
            cur, total = [], 0
        dtype = a.dtype
        cur.append((i, total, int(a.size)))
        total += int(a.size)
    if cur:
        plan.append((dtype, cur, total))
    return plan


def _put(a, flat):
    """Write host values ``flat`` into array ``a`` (any backend), in place, on its device."""
    dev = backend.get_device_id(a)
    with backend.device(dev):
        a[...] = backend.to_device(flat.reshape(a.shape), dev)


def _difference(mine, theirs):
    """Why ``theirs`` ({name: value}) differs from ``mine``, in words; None if equal."""
    for name in mine:
        a, b = mine[name], theirs.get(name)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(set(a) | set(b), key=str)
            k = next(k for k in keys if a.get(k) != b.get(k))
            return f"its {name} differs in {k!r} ({b.get(k)!r} there, {a.get(k)!r} on rank 0)"
        return f"its {name} differs ({b!r} there, {a!r} on rank 0)"
    return None


# ---------------------------------------------------------------- NCCL
class NCCLCommunicator(MPICommunicator):
    """CuPy arrays reduced on their GPUs by NCCL (``cupy.cuda.nccl``); MPI carries the
    NCCL ids, small objects, host numbers and the watchdog's heartbeats.

    A rank whose towers sit on two GPUs has two NCCL communicators: tower device j of
    every rank forms communicator j, and each gradient is reduced on its own device
    (the calls grouped by ``groupStart``/``groupEnd``, as NCCL requires when one thread
    drives several devices).  Gradient buckets are reduced on a communication stream
    per device while backward goes on (``gradient_sync``, ``_NCCLBuckets``).  ``xp``
    is the CuPy module and ``nccl`` its NCCL module (given by the backend; tests pass
    recording fakes).
    """

    kind = "NCCL"

    def __init__(self, devices, xp, nccl, mpi=None, comm=None, timeout=DEFAULT_TIMEOUT,
                 bucket_bytes=BUCKET_BYTES, watchdog=None):
        super().__init__(mpi, comm, timeout, bucket_bytes, watchdog)
        self.xp, self.nccl = xp, nccl
        self.devices = list(dict.fromkeys(int(d) for d in devices))   # distinct, in order
        ids = [nccl.get_unique_id() for _ in self.devices] if self.rank == 0 else None
        ids = self.broadcast_object(ids)
        self.comms = {}
        nccl.groupStart()
        try:
            for d, uid in zip(self.devices, ids):
                with backend.device(d):
                    self.comms[d] = nccl.NcclCommunicator(self.size, uid, self.rank)
        finally:
            nccl.groupEnd()
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                        np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.float16): nccl.NCCL_FLOAT16}
        self._buffers = {}
        self._streams = {}

    def _bucket_sync(self, arrays):
        return _NCCLBuckets(self, arrays)

    def _comm_stream(self, d):
        """Device ``d``'s communication stream: NCCL's kernels run there, beside the
        compute stream (the current one), so that a bucket travels while backward
        goes on; events order the two (``_NCCLBuckets``)."""
        if d not in self._streams:
            with backend.device(d):
                self._streams[d] = self.xp.cuda.Stream(non_blocking=True)
        return self._streams[d]

    def _event_on(self, stream):
        """An event recorded now on ``stream``: a later wait covers what is queued there."""
        ev = self.xp.cuda.Event(disable_timing=True)
        ev.record(stream)
        return ev

    def _nccl_dtype(self, a):
        try:
            return self._dtypes[np.dtype(a.dtype)]
        except KeyError:
            raise DistributedError(f"NCCL communicator: no reduction for dtype {a.dtype}") from None

    def _wait_devices(self, what):
        """Record an event on every device's stream and wait for all under the watchdog."""
        events = []
        for d in self.devices:
            with backend.device(d):
                ev = self.xp.cuda.Event()
                ev.record(self.xp.cuda.get_current_stream())
                events.append(ev)

        def done():
            for c in self.comms.values():
                c.check_async_error()            # raises NcclError on a failed peer
            return all(ev.done for ev in events)
        try:
            self.watchdog.wait(done, what)
        except self.nccl.NcclError as e:
            for c in self.comms.values():
                c.abort()
            _die(self.comm, f"error: NCCL failed during {what} on rank {self.rank}: {e}; "
                            f"stopping all {self.size} ranks")

    def _buckets(self, arrays):
        """Per device, its arrays' buckets with persistent device buffers."""
        key = tuple((tuple(a.shape), str(a.dtype), backend.get_device_id(a)) for a in arrays)
        if key not in self._buffers:
            out = []
            for d in self.devices:
                mine = [i for i, a in enumerate(arrays) if backend.get_device_id(a) == d]
                for dtype, items, n in _plan([arrays[i] for i in mine], self.bucket_bytes):
                    with backend.device(d):
                        buf = self.xp.empty(n, dtype=dtype)
                    out.append((d, [(mine[j], off, size) for j, off, size in items], buf))
            self._buffers[key] = out
        return self._buffers[key]

    def broadcast_arrays(self, arrays, root=0):
        """Pack each device's arrays into its buckets, broadcast them with NCCL on the
        current stream, unpack; then wait for all of it (once, at start-up)."""
        arrays = list(arrays)
        buckets = self._buckets(arrays)
        self.watchdog.arrive()
        for d, items, buf in buckets:
            with backend.device(d):
                for i, off, n in items:
                    buf[off:off + n] = arrays[i].reshape(-1)
        self.nccl.groupStart()
        try:
            for d, _, buf in buckets:
                with backend.device(d):
                    self.comms[d].bcast(buf.data.ptr, buf.size, self._nccl_dtype(buf), root,
                                        self.xp.cuda.get_current_stream().ptr)
        finally:
            self.nccl.groupEnd()
        for d, items, buf in buckets:                # queued behind the NCCL calls
            with backend.device(d):
                for i, off, n in items:
                    arrays[i][...] = buf[off:off + n].reshape(arrays[i].shape)
        self._wait_devices("weight broadcast")

    def abort(self, code=1):
        for c in self.comms.values():
            c.abort()
        super().abort(code)


class _NCCLBuckets(_Buckets):
    """One gradient allreduce over NCCL, bucket by bucket (``_Buckets``'s bookkeeping;
    the buckets are per device, ``NCCLCommunicator._buckets``).  When a bucket is
    full it is packed on the compute stream, and its allReduce is queued on the
    device's communication stream behind an event recorded after the packing: the
    reduction runs on the GPU while the later backward kernels run on the compute
    stream.  ``finish()`` makes each compute stream wait for its communication
    stream (an event again), queues the unpacking of the means there, and waits
    under the watchdog until the devices are done."""

    @staticmethod
    def _plan(comm, templates):
        return comm._buckets(templates)           # [(device, items, device buffer)]

    @staticmethod
    def _items(entry):
        return entry[1]

    def _start(self, b):
        c = self.comm
        if not self.started:
            c.watchdog.arrive()
        d, items, buf = self.layout[b]
        with backend.device(d):
            for a, (_, off, n) in zip(self.arrays[b], items):
                buf[off:off + n] = a.reshape(-1)
            stream = c._comm_stream(d)
            stream.wait_event(c._event_on(c.xp.cuda.get_current_stream()))   # packed
            c.nccl.groupStart()               # a group of one: several communicators, one thread
            try:
                c.comms[d].allReduce(buf.data.ptr, buf.data.ptr, buf.size, c._nccl_dtype(buf),
                                     c.nccl.NCCL_SUM, stream.ptr)
            finally:
                c.nccl.groupEnd()
        self.started += 1

    def finish(self):
        t0 = time.perf_counter()
        self._check_all_started()
        c = self.comm
        for d in dict.fromkeys(d for d, _, _ in self.layout):
            with backend.device(d):
                c.xp.cuda.get_current_stream().wait_event(c._event_on(c._comm_stream(d)))
        for (d, items, buf), arrays in zip(self.layout, self.arrays):
            with backend.device(d):
                buf /= c.size
                for a, (_, off, n) in zip(arrays, items):
                    a[...] = buf[off:off + n].reshape(a.shape)
        c._wait_devices("gradient allreduce")
        c.allreduce_seconds += time.perf_counter() - t0


# ---------------------------------------------------------------- starting
_active = Communicator()


def active():
    """The communicator of this process's run (one process unless ``connect`` made one)."""
    return _active


def connect(kind=None, timeout=DEFAULT_TIMEOUT, bucket_bytes=BUCKET_BYTES):
    """The MPI communicator of this job (``kind`` "auto", "mpi" or "nccl"), or, for
    ``kind`` None, the one-process communicator.  Call before choosing the backend:
    ``with_devices`` then adds NCCL where the backend offers it."""
    global _active
    if kind in (None, False, ""):
        _active = Communicator()
    elif kind in ("auto", "mpi", "nccl"):
        _active = MPICommunicator(timeout=timeout, bucket_bytes=bucket_bytes)
        _active.wanted = kind
    else:
        raise DistributedError(f"unknown communicator {kind!r}: auto, mpi or nccl")
    return _active


def with_devices(comm, devices):
    """After ``backend.use``: the NCCL communicator on ``devices`` when it was asked for
    (or "auto" and the backend offers NCCL), else ``comm`` unchanged."""
    global _active
    wanted = getattr(comm, "wanted", None)
    if wanted not in ("auto", "nccl"):
        return comm
    nccl = backend.current().nccl
    if nccl is None:
        if wanted == "nccl":
            raise DistributedError("--distributed nccl needs the cupy backend with NCCL "
                                   "(pip install nvidia-nccl-cu12; or use --distributed mpi)")
        return comm
    _active = NCCLCommunicator(devices, backend.xp(), nccl, comm.MPI, comm.comm,
                               comm.timeout, comm.bucket_bytes, comm.watchdog)
    _active.stop_requested = comm.stop_requested
    return _active


def report(line, code, collective):
    """Print ``line`` the right number of times and return the exit code.

    One process, or an error every rank has (``collective``): rank 0 prints it and
    every rank returns ``code``.  An error only this rank has (the others are still
    training): print it naming the rank, then stop the job."""
    comm = _active
    if comm.size == 1 or collective:
        if comm.is_root:
            print(line, file=sys.stderr, flush=True)
        return code
    print(f"{line} (on rank {comm.rank})", file=sys.stderr, flush=True)
    # The launcher forwards our stderr through a pipe; MPI_Abort tears the job down at
    # once and can drop a line still in that pipe (seen under load): give it a moment.
    time.sleep(0.5)
    comm.abort(code)
    return code


# ---------------------------------------------------------------- identities
def code_version():
    """A short hash of minialexnet's source files: ranks must run the same code."""
    h = hashlib.sha1()
    root = os.path.dirname(os.path.abspath(__file__))
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def array_digest(a):
    """A CRC of an array's bytes (to compare data between ranks cheaply)."""
    return f"{zlib.crc32(np.ascontiguousarray(a).tobytes()):08x}"
