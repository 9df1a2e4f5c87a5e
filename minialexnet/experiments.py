"""Resumable experiment jobs: the chapters' long runs, trained once, kept, resumed.

A chapter's full mode can need hours of 2-core time (many seeds, learning rates and
settings), so it cannot be one notebook execution.  Each run is a *job* with a name
and a configuration.  ``run_job``:

* returns at once when the job's record (``<results>/<name>.json``) says it is
  complete: nothing is trained twice, and a notebook re-run only renders;
* otherwise trains it with ``train.Trainer``, writing the record after every epoch
  (history, health records, config, status) and a checkpoint in ``<runs>/<name>/``
  (git-ignored: weights are never committed), so a job stopped mid-way, by Ctrl-C, a
  crash or the end of a session, resumes from its last checkpoint.

Two processes may work through the same jobs at once (two one-thread queues on a
2-core machine): a job being trained holds a lock on ``<runs>/<name>/.lock``, and
another process that reaches it skips it instead of training it twice.

The records are small JSON files committed under ``chapters/results/`` next to the
chapter that made them.  ``split_train_val`` carves a fixed validation split out of a
training set (the test set is never used to choose anything).
"""

import contextlib
import json
import os
import time

try:
    import fcntl                  # POSIX; elsewhere jobs are not locked (one queue at a time)
except ImportError:               # pragma: no cover - Windows
    fcntl = None

from . import data, inference, train
from .backend import np
from .files import atomic_write_text

__all__ = ["Job", "run_job", "load_record", "is_complete", "split_train_val", "eval_mode_hook"]


class Job:
    """One training run: ``name`` (a file name), the Trainer's config overrides
    ``cfg`` (see ``train.default_config``), and ``stop``: an optional callable
    ``stop(history_row) -> bool`` that ends the job early (e.g. "training error below
    25 %"); a stopped job is complete."""

    def __init__(self, name, cfg, stop=None, describe=None):
        self.name, self.cfg, self.stop = name, dict(cfg), stop
        self.describe = describe or {}

    def __repr__(self):
        return f"Job({self.name!r})"


@contextlib.contextmanager
def job_lock(out):
    """Yields True while this process holds ``out``'s job lock, False if another live
    process holds it.  The OS drops the lock when its holder exits, even on a crash."""
    os.makedirs(out, exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(os.path.join(out, ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_record(results_dir, name):
    path = os.path.join(results_dir, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_complete(results_dir, name):
    rec = load_record(results_dir, name)
    return bool(rec) and rec.get("status") == "complete"


def split_train_val(ds, n_val, seed=0):
    """(train, val) Datasets: a seeded random ``n_val`` images of ``ds`` held out."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))
    val_idx, train_idx = np.sort(idx[:n_val]), np.sort(idx[n_val:])

    def part(ix, split):
        return data.Dataset(ds.x[ix], ds.y[ix], list(ds.class_names), ds.name, split,
                            f"{ds.key}-{split}{len(ix)}-s{seed}", dict(ds.extra))
    return part(train_idx, "train"), part(val_idx, "val")


def _write(results_dir, job, trainer, status, seconds):
    rec = {"name": job.name, "status": status, "describe": job.describe,
           "config": {k: v for k, v in trainer.cfg.items() if k != "data_dir"},
           "model_config": trainer.model.config, "epochs": trainer.epoch,
           "steps": trainer.step, "train_seconds": seconds, "n_train": len(trainer.train_set),
           "n_val": len(trainer.val_set), "history": trainer.history,
           "health": trainer.health}
    os.makedirs(results_dir, exist_ok=True)
    atomic_write_text(os.path.join(results_dir, f"{job.name}.json"),
                      json.dumps(rec, indent=1, default=float))
    return rec


def run_job(job, train_set, val_set, results_dir, runs_dir, log=print, after=None,
            train_missing=True, epoch_eval=None, figures=True):
    """Train ``job`` on (``train_set``, ``val_set``) unless its record is complete;
    resume it from ``runs_dir/<name>/checkpoint.npz`` if a checkpoint is there.
    ``after(trainer)`` runs once when the job completes (e.g. a test-set evaluation;
    its returned dict is stored as the record's ``"final"``).  Returns the record.
    ``train_missing=False`` trains nothing: it returns what is there (a complete or
    still-running job's record, or None), to render a chapter while its jobs run.
    ``epoch_eval(trainer) -> dict``: extra numbers for every epoch's history row
    (``train.Trainer``; e.g. ``eval_mode_hook``).  ``figures=False``: no curves.png
    or health.png in the run directory (drawing them is most of a tiny job's time).
    A job another process is training (see ``job_lock``) is skipped: its record as it
    stands is returned."""
    rec = load_record(results_dir, job.name)
    if (rec and rec.get("status") == "complete") or not train_missing:
        return rec
    out = os.path.join(runs_dir, job.name)
    with job_lock(out) as mine:
        if not mine:
            log(f"{job.name}: another process is training it; skipped")
            return load_record(results_dir, job.name)
        rec = load_record(results_dir, job.name)     # it may have finished meanwhile
        if rec and rec.get("status") == "complete":
            return rec
        return _train(job, rec, out, train_set, val_set, results_dir, log, after, epoch_eval, figures)


def _train(job, rec, out, train_set, val_set, results_dir, log, after, epoch_eval, figures):
    """``run_job``'s training, under the job's lock."""
    cfg = train.default_config(**{"progress": False, "figures": figures, **job.cfg, "out": out})
    from . import backend
    backend.use(cfg["backend"], seed=cfg["seed"], devices=cfg["devices"])
    mean = data.mean_image(train_set.x, data.stats_file(train_set, "mean"), progress_bar=False)
    model = train.make_model(cfg, train_set.num_classes)
    trainer = train.Trainer(model, train_set, val_set, mean.astype(np.float32), cfg,
                            pca=train.colour_pca(train_set, cfg), log=log, epoch_eval=epoch_eval)
    ckpt = os.path.join(out, "checkpoint.npz")
    spent = 0.0
    if os.path.exists(ckpt):
        trainer.load(ckpt)
        # The checkpoint's own epochs count even when the record is gone (a record
        # lost or reset while its checkpoint stayed): never report less than them.
        spent = max((rec or {}).get("train_seconds", 0.0),
                    sum(r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for r in trainer.history))
        log(f"{job.name}: resumed at epoch {trainer.epoch}, step {trainer.step}")
    stopped = [False]

    def on_epoch(row):
        stopped[0] = bool(job.stop and job.stop(row))
        _write(results_dir, job, trainer, "running", spent + time.perf_counter() - t0)
        if stopped[0]:
            raise _Stop

    t0 = time.perf_counter()
    done = trainer.epoch >= cfg["epochs"] or bool(job.stop and any(map(job.stop, trainer.history)))
    diverged = None
    if not done:
        try:
            trainer.run(on_epoch=on_epoch)
        except _Stop:
            pass
        except train.TrainingDiverged as e:
            # An outcome, not a crash: a sweep's too-large rate is a result to keep
            # (with the health records that show how it went), and the sweep goes on.
            diverged = {"step": trainer.step, "message": str(e)}
            log(f"{job.name}: {e}")
    seconds = spent + time.perf_counter() - t0
    rec = _write(results_dir, job, trainer, "trained", seconds)
    if diverged:
        rec["diverged"] = diverged
    if after is not None:
        rec["final"] = after(trainer)
    rec["status"] = "complete"
    atomic_write_text(os.path.join(results_dir, f"{job.name}.json"),
                      json.dumps(rec, indent=1, default=float))
    return rec


def eval_mode_hook(**sets):
    """An ``epoch_eval`` hook: for each ``name=dataset``, the model's cross-entropy
    and top-1 error in eval mode (dropout off, centre crops, the run's input scaling)
    as ``<name>_loss`` and ``<name>_top1``.  Eval mode matters for dropout: the
    training-mode loss of the history rows is that of thinned nets (paper 4.2)."""
    def hook(trainer):
        out = {}
        for name, ds in sets.items():
            logits = inference.predict_batches(
                trainer.model, ds.x, data.EvalTransform(trainer.cfg["crop"], trainer.mean, trainer.std),
                device=trainer.device).astype(np.float64)
            z = logits - logits.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            y = np.asarray(ds.y)
            out[f"{name}_loss"] = float(-logp[np.arange(len(y)), y].mean())
            out[f"{name}_top1"] = float((logits.argmax(1) != y).mean())
        return out
    return hook


class _Stop(Exception):
    """A job's stop rule fired at the end of an epoch."""
