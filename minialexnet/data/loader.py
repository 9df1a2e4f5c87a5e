"""Batches in the background while the model trains (paper section 4.1: "the
transformed images are generated in Python code on the CPU while the GPU is training
on the previous batch of images").

``Loader`` hands out (x float32 NCHW, y int64) batches.  Worker threads decode and
augment the next ``prefetch`` batches while the consumer trains: NumPy and Pillow
release the GIL in their heavy loops, so threads overlap real work.  The consumer's
time blocked waiting for a batch is summed in ``loader.wait_time``.

Determinism: batch b of epoch e is fully determined by (seed, e, b): the epoch's
shuffle comes from ``default_rng([seed, e])`` and the batch's augmentation from
``default_rng([seed, e, b, 1])``.  So results do not depend on thread timing, and
``state_dict()`` = {seed, epoch, position} is all it takes to resume bit-identically.

Sharding (data parallel training over K ranks, ``distributed.py``): with
``shard=(r, K)`` the loader hands out rows r*B/K .. (r+1)*B/K of exactly the batch
that the one-process loader makes, augmentation included, so ``batch_size`` stays
the global batch and the state (epoch, position) does not depend on K.  Only the
shard's images are read; a transform that accepts ``rows=(lo, n)`` (as
``TrainTransform`` does) augments only them, any other gets the whole batch with the
other rows left black and its output is cut.
"""

import collections
import concurrent.futures
import inspect
import time

from ..backend import np
from ..errors import ConfigError, DataError, StateDictError


class Loader:
    """Iterate over a dataset in shuffled, augmented mini-batches.

    x: uint8 (N, H, W, C) array or lazy ``ImageFiles``; y: (N,) int labels.
    transform: ``f(x_uint8_batch, rng) -> float32 (B, C, h, w)``, e.g.
    ``TrainTransform``/``EvalTransform``; None gives the raw images as float32 NCHW.
    seed: int, or a NumPy Generator (one integer is drawn from it).
    shuffle: reshuffle every epoch.  drop_last: skip the last, smaller batch.
    prefetch: batches prepared ahead (the bound of the queue).  workers: threads.
    shard: (rank, ranks): hand out only this rank's rows of each batch (see above);
    ``batch_size`` must divide into equal shares.

    ``for x, y in loader`` runs the rest of the current epoch: after a ``break`` the
    next ``for`` goes on where it stopped (with the next epoch if the last batch had
    been handed out).  ``len(loader)`` is the number of batches per epoch.
    """

    def __init__(self, x, y, batch_size, transform=None, seed=0, shuffle=True,
                 drop_last=False, prefetch=2, workers=1, shard=(0, 1)):
        if len(x) != len(y):
            raise DataError(f"Loader: {len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ConfigError(f"Loader: batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, np.asarray(y, np.int64)
        self.batch_size, self.transform = int(batch_size), transform
        self.shuffle, self.drop_last = shuffle, drop_last
        self.prefetch, self.workers = max(1, int(prefetch)), max(1, int(workers))
        self.rank, self.ranks = int(shard[0]), int(shard[1])
        if not 0 <= self.rank < self.ranks:
            raise ValueError(f"Loader: shard {shard} is not (rank, ranks) with 0 <= rank < ranks")
        if self.batch_size % self.ranks:
            raise ValueError(f"Loader: batch_size {batch_size} does not split into "
                             f"{self.ranks} equal shares (one per rank)")
        self._transform_takes_rows = (transform is not None and
                                      "rows" in inspect.signature(transform).parameters)
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2 ** 63))
        self.seed = int(seed)
        self.epoch, self.position = 0, 0    # position: batches of this epoch handed out
        self.wait_time = 0.0                # seconds the consumer waited for data
        self.images = 0                     # images handed out (for images/s)
        if len(self) == 0:
            raise ConfigError(f"Loader: {len(x)} images make no batch of {batch_size} "
                             f"with drop_last={drop_last}")

    def __len__(self):
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch):
        """The image order of ``epoch``: a permutation, or 0..N-1 if not shuffling."""
        n = len(self.y)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def rows(self, n):
        """This shard's rows lo..hi of a batch of n (all of them without a shard)."""
        return self.rank * n // self.ranks, (self.rank + 1) * n // self.ranks

    def make_batch(self, epoch, b, order=None):
        """Batch ``b`` of ``epoch``: (x float32 NCHW, y int64), computed here and now
        (with a shard: this rank's rows of it)."""
        order = self.order(epoch) if order is None else order
        batch = order[b * self.batch_size:(b + 1) * self.batch_size]
        n = len(batch)
        lo, hi = self.rows(n)
        idx = batch[lo:hi]
        # Sorted reads are kinder to memmaps and files; the batch order is then
        # restored so that shuffling still mixes classes within a batch.
        s = np.argsort(idx, kind="stable")
        xb = np.empty((len(idx),) + tuple(self.x.shape[1:]), np.uint8)
        xb[s] = self.x[idx[s]]
        rng = np.random.default_rng([self.seed, epoch, b, 1])
        if self.transform is None:
            xf = np.ascontiguousarray(xb.transpose(0, 3, 1, 2), dtype=np.float32)
        elif (lo, hi) == (0, n):
            xf = self.transform(xb, rng)
        elif self._transform_takes_rows:
            xf = self.transform(xb, rng, rows=(lo, n))
        else:
            # Any other transform: the whole batch (the rest black), then our rows,
            # so that its random draws are those of the whole batch.
            full = np.zeros((n,) + xb.shape[1:], np.uint8)
            full[lo:hi] = xb
            xf = self.transform(full, rng)[lo:hi]
        return xf, self.y[idx]

    def __iter__(self):
        epoch, start = self.epoch, self.position
        order = self.order(epoch)
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="loader")
        pending = collections.deque()           # the bounded queue of batches in flight
        nxt = start
        try:
            while True:
                while nxt < len(self) and len(pending) < self.prefetch:
                    pending.append(pool.submit(self.make_batch, epoch, nxt, order))
                    nxt += 1
                if not pending:
                    break
                t0 = time.perf_counter()
                xb, yb = pending.popleft().result()   # re-raises a worker's exception
                self.wait_time += time.perf_counter() - t0
                self._advance()
                self.images += len(yb)
                yield xb, yb
        finally:
            for f in pending:                   # consumer stopped early: drop the rest
                f.cancel()
            pool.shutdown(wait=True)

    def _advance(self):
        """One more batch handed out.  Handing out an epoch's last batch moves to the
        next epoch at once (not when the ``for`` asks for one more): so a ``break``
        after the last batch, a ``state_dict`` then, and the next ``for`` all see the
        next epoch, and (epoch + 1, 0) is the one way to say "epoch done"."""
        self.position += 1
        if self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        """JSON-able resume state: {"seed", "epoch", "position"} (position = batches of
        this epoch already handed out).  Together with the constructor arguments it
        fixes every future batch, augmentation included."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position <= len(self):
            raise StateDictError(f"Loader state: position {self.position} is outside 0..{len(self)}")
        if self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0
