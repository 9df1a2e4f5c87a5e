"""Training, the paper's way (section 5), as a tool that never loses a run.

    python -m minialexnet.train                       # built-in dataset, small AlexNet, CPU
    python -m minialexnet.train --dataset cifar10 --data-dir ../shared/data --epochs 30
    python -m minialexnet.train --backend cupy --devices 0,1 --dataset imagenette --model alexnet
    mpiexec -n 4 python -m minialexnet.train --distributed --batch-size 512   # 4 ranks (distributed.py)

One step: a batch of augmented crops (made in background threads, section 4.1) goes
forward through the net to the softmax cross-entropy; backward fills every
gradient; SGD with momentum 0.9 and weight decay 0.0005 updates the weights.  After
each epoch the held-out split is evaluated (centre crop) and the learning rate is
divided by 10 when the validation error stops improving.

Never lose a run: checkpoints (weights, optimiser, schedule, loader state, config;
dropout masks follow from (seed, layer, step), so no generator state) are written
atomically at the end of every epoch, every ``--checkpoint-every`` steps and on Ctrl-C
or SIGTERM, at a step boundary (``Trainer.run`` says how); ``--resume`` continues
bit-identically, writing only in the run directory of the command line, and refuses
settings that contradict the run's (``resume_config``).  A NaN or infinite loss
stops the run with one line and keeps the last good checkpoint.  What can be checked
before the first step is (``check_run_dir``, ``check_splits``).  Bad input (missing
data, a checkpoint of another model, a GPU that is not there) gets one line, not a
traceback.

The same ``Trainer`` drives the chapters' experiments in Python.
"""

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time

if __name__ == "__main__":        # the command line: CPU tuning before NumPy loads (cpu.py)
    from .cpu import tune
    tune()

from . import backend, cli, data, distributed, reference
from .backend import np
from .checkpoint import (CheckpointError, check_training_meta,
                         load_checkpoint, save_checkpoint)
from .conv import autotune
from .data.common import check_images, check_labels
from .errors import ConfigError, DataError, MinialexnetError, ShapeError, TrainingDiverged
from .files import atomic_write_text, describe_os_error, remove_stale_temps
from .layers import SoftmaxCrossEntropy
from .inference import evaluate, load_model_weights
from .metrics import topk_correct
from .models import DEFAULT_LR, build_model, default_lr, model_has_dropout
from .health import HealthMonitor
from .optim import SGD, ReduceLROnPlateau, StepLR

__all__ = ["Trainer", "TrainingDiverged", "default_config",
           "prepare_data", "main"]


# The user's mistakes: one line ``error: ...`` and exit code 2, never a traceback.
USER_ERRORS = (MinialexnetError, distributed.DistributedError)


# ---------------------------------------------------------------- configuration
# Per dataset: image side as stored and the random-crop side fed to the net.
# 28 of 32 and 56 of 64 mirror the paper's 227 of 256 (section 4.1).  None: the side
# the data has, known once it is loaded (``fit_sizes``): Imagenette is 256 px from
# its folders, 224 px from the packed files.
DATASET_SIZES = {"synthetic": (32, 28), "cifar10": (32, 28), "imagenette": (None, None),
                 "imagenet-folder": (256, 227)}
# The crop for images stored at a given side.  Images are never upscaled to make room
# for a crop (224 -> 256 invents pixels and costs a third more memory): packed
# Imagenette gets 199 of 224, the paper's 227 of 256 in proportion, and (199 - 11) / 4
# is whole as (227 - 11) / 4 is, so conv1's stride-4 windows tile the crop.
CROP_FOR_SIDE = {256: 227, 224: 199, 64: 56, 32: 28}


def _recipe_help():
    return ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + ", others 0.01"


# Per dataset, what None means for epochs, n_train and dropout.  The built-in set is
# generated, so it has as many images as we ask for: 20,000 do not overfit in four
# epochs, and dropout, which fights overfitting at the price of about twice the steps
# (paper 4.2), is off there so that the main job learns in two minutes.
DATASET_DEFAULTS = {"synthetic": {"epochs": 4, "n_train": 20000, "dropout": 0.0}}
OTHER_DEFAULTS = {"epochs": 30, "n_train": None, "dropout": None}


def default_config(**overrides):
    """The main job's configuration: every knob with the paper's value where it has one.
    None for ``epochs``, ``n_train`` or ``dropout`` means the dataset's default
    (``DATASET_DEFAULTS``; dropout None: the model's own, the paper's 0.5)."""
    cfg = dict(
        dataset="synthetic", data_dir=None, n_train=None, n_val=None,
        image_size=None, crop=None, pca=False, flip=True, input_scale="unit",
        model="small-alexnet", model_kwargs={}, dropout=None,
        epochs=None, batch_size=128, lr=None, momentum=0.9, weight_decay=0.0005,
        schedule="plateau", patience=3, plateau_threshold=0.0, max_reductions=3,
        step_epochs=30, step_fractions=(0.5, 0.75, 0.9), health_every=50,
        seed=0, backend="numpy", devices=None, out="runs/latest", resume=False,
        max_steps=None, checkpoint_every=200, workers=2, progress=True, figures=True,
        distributed=None, rank_timeout=distributed.DEFAULT_TIMEOUT,
    )
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}")
    cfg.update(overrides)
    for k, v in DATASET_DEFAULTS.get(cfg["dataset"], OTHER_DEFAULTS).items():
        if cfg[k] is None:
            cfg[k] = v
    if cfg["lr"] is None:                       # the model's recipe (models.DEFAULT_LR)
        cfg["lr"] = default_lr(cfg["model"])
    size, crop = DATASET_SIZES[cfg["dataset"]]
    cfg["image_size"] = cfg["image_size"] or size
    cfg["crop"] = cfg["crop"] or crop
    return cfg


def prepare_data(cfg):
    """Load both splits, the mean image (section 2), the per-channel std for the
    "unit" input scale (not the paper's: see data/transforms.py) and, if asked, the
    PCA of the training pixels (section 4.1).
    Returns (train Dataset, val Dataset, mean, std or None, pca)."""
    name, size = cfg["dataset"], cfg["image_size"]
    kw = dict(data_dir=cfg["data_dir"], size=size, seed=cfg["seed"],
              progress_bar=cfg["progress"])
    train = data.load_dataset(name, split="train", n=cfg["n_train"], **kw)
    val = data.load_dataset(name, split="test", n=cfg["n_val"], **kw)
    mean = data.mean_image(train.x, data.stats_file(train, "mean"), progress_bar=cfg["progress"])
    std = input_std(train, mean, cfg)
    return train, val, mean.astype(np.float32), std, colour_pca(train, cfg)


def colour_pca(train, cfg):
    """The PCA of the training pixels for the colour noise of section 4.1 (cached
    beside the mean image), or None when ``cfg["pca"]`` is off."""
    return data.pca_fit(train.x, cache_file=data.stats_file(train, "pca")) if cfg["pca"] else None


INPUT_SCALES = ("unit", "paper")


def input_std(train, mean, cfg):
    """The per-channel std that inputs are divided by: "unit" scale (the default, not
    the paper's) -> float32 (3,), cached beside the mean image; "paper" -> None (the
    paper's raw mean-subtracted 0..255 pixels)."""
    scale = cfg.get("input_scale", "paper")   # a checkpoint from before the key: raw pixels
    if scale not in INPUT_SCALES:
        raise ConfigError(f"input_scale must be one of {INPUT_SCALES}, not {scale!r}")
    if scale == "paper":
        return None
    return data.channel_std(train.x, mean, data.stats_file(train, "std"),
                            progress_bar=cfg.get("progress", True))


def fit_sizes(cfg, train):
    """``cfg`` with image_size and crop filled in from the loaded training images
    (``CROP_FOR_SIDE``); a ConfigError if the crop is larger than the images."""
    side = train.image_shape[0]
    crop = cfg["crop"] or CROP_FOR_SIDE.get(side, side * 227 // 256)
    if crop > side:
        raise ConfigError(f"crop {crop} does not fit the {side}-px images of {cfg['dataset']} "
                          f"(images are never upscaled): use a crop of at most {side}")
    return dict(cfg, image_size=cfg["image_size"] or side, crop=crop)


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Runs epochs of SGD on a model and keeps everything needed to resume.

    model: a minialexnet model; train / val: ``data.Dataset`` (uint8 NHWC images);
    mean: the (H, W, 3) mean image; cfg: ``default_config(...)``.  std: the (3,)
    channel std of the "unit" input scale; "auto" (default) computes it from ``train``
    when cfg["input_scale"] is "unit" and uses None (raw pixels) when it is "paper".
    ``history`` is a list of per-epoch dicts (loss, errors, lr, seconds, images/s).
    A model built with ``input_grad=False`` (as ``make_model`` builds) skips the
    image's gradient, which training never uses.
    ``epoch_eval(trainer) -> dict``: optional numbers measured after each epoch's
    validation (e.g. the eval-mode loss on training images, which the training-mode
    row's ``train_loss`` is not: it carries dropout's masks and the crops' noise); they
    go into the epoch's history row, so they are checkpointed and resumed with it.
    """

    def __init__(self, model, train, val, mean, cfg, pca=None, log=print, std="auto",
                 comm=None, epoch_eval=None):
        check_splits(train, val)                 # before the first step, not after an epoch
        if (comm is None or comm.is_root) and cfg["out"]:
            check_run_dir(cfg["out"])
        self.model, self.train_set, self.val_set, self.mean, self.cfg = model, train, val, mean, cfg
        self.std = input_std(train, mean, cfg) if isinstance(std, str) and std == "auto" else std
        self.log, self.epoch_eval = log, epoch_eval
        # Distributed (issue 13): the ranks' communicator; one process by default.
        self.comm = comm or distributed.Communicator()
        self.device = int((cfg["devices"] or [0])[0])
        self.criterion = SoftmaxCrossEntropy()
        # A model built with layers="reference" is trained by the reference SGD too.
        sgd = reference.SGD if model.config.get("layers") == "reference" else SGD
        self.optimizer = sgd(model.params(), lr=cfg["lr"], momentum=cfg["momentum"],
                             weight_decay=cfg["weight_decay"])
        self.schedule = make_schedule(cfg, self.optimizer, n_val=len(val))
        self.loader = data.Loader(
            train.x, train.y, cfg["batch_size"],
            data.TrainTransform(cfg["crop"], mean, flip=cfg["flip"], pca=pca, std=self.std),
            seed=cfg["seed"], shuffle=True, drop_last=True, workers=cfg["workers"],
            shard=(self.comm.rank, self.comm.size))
        self.epoch, self.step, self.history = 0, 0, []
        self.stop_agreed = False
        self.monitor = HealthMonitor(cfg.get("health_every", 0) or 0)
        self.health = []        # health.HealthMonitor records, every health_every steps
        self.last_good_checkpoint = None
        self._saved_at = None      # the _point() that checkpoint holds
        self._epoch_stats = self._fresh_stats()
        self._phase = "busy"       # see _phase_as
        self._torn = None          # "step N" after a hard stop mid-step
        self.resumed_complete = False   # train.run: resumed a run with nothing left to do
        self.stop_signal = None    # the signal that asked this run to stop

    @staticmethod
    def _fresh_stats():
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "wait": 0.0}

    # ------------------------------------------------------------ one step
    def train_step(self, x, y):
        """Forward, backward and the SGD update for one batch; returns (loss, logits).
        Every ``health_every`` steps the health monitor watches this same step."""
        # In the model's dtype: a float64 net (gradient checks, tests) computes in float64.
        x = backend.to_device(backend.xp().asarray(x, dtype=self.model.dtype), self.device)
        step = self.step + 1
        # Dropout masks from (seed, layer, step), drawn for the global batch, of
        # which x is this rank's rows: the masks one process would apply to x.
        self.model.set_draw(self.step, rows=self._global_rows(len(x)))
        logits = self.model.forward(x, record=self.monitor.hook(step))
        # The loss runs where the logits are (the model's first device, fc8's), so
        # that its labels, arange and dlogits are made there, not on device 0.
        home = backend.get_device_id(logits)
        with backend.device(home):
            y = backend.to_device(y, home)
            loss = self.criterion.forward(logits, y)
            dlogits = self.criterion.backward()
        # dL/d(image) only if the model was built with input_grad (make_model: not).
        # Distributed: the ranks' mean gradient, each bucket sent as soon as backward
        # has made it (one process: nothing to do).
        sync = self.comm.gradient_sync(self.model)
        self.model.backward(dlogits, after=sync.after)
        sync.finish()
        grads = self.model.grads()
        self.optimizer.step(grads)
        rec = self.monitor.after_update(step, self.optimizer)
        if rec is not None:
            rec["epoch"] = self.epoch + 1
            self.health.append(rec)
        return loss, logits

    def _global_rows(self, n):
        """(lo, global batch) of this rank's n images; None in one process."""
        if self.comm.size == 1:
            return None
        lo, hi = self.loader.rows(self.loader.batch_size)
        if n != hi - lo:
            raise ShapeError(f"rank {self.comm.rank}: a batch of {n} images, but its share "
                             f"of the global batch of {self.loader.batch_size} is {hi - lo}")
        return lo, self.loader.batch_size

    # ------------------------------------------------------------ epochs
    def run(self, epochs=None, max_steps=None, on_epoch=None, on_step=None):
        """Train until ``epochs`` epochs (or ``max_steps`` optimiser steps) are done.

        ``on_epoch(row)`` is called after each epoch with its history row,
        ``on_step(step, loss)`` after every optimiser step (loss: a float).
        Returns the history.  Raises TrainingDiverged on a NaN/inf loss (the last
        good checkpoint stays on disk).

        Ctrl-C or SIGTERM (in the main thread) only asks to stop: the current step
        finishes, a checkpoint of that step boundary is written, one line says where,
        and ``Interrupted`` (a KeyboardInterrupt) is raised.  During validation the
        stop is at once (nothing to finish: the checkpoint says "validation pending").
        A second Ctrl-C stops at once, mid-step, saving nothing (one line says which
        checkpoint stands); during a save the save is finished first.  A library
        error while a training batch is made or during validation (a bad image) is
        reported after a save, too.
        """
        epochs = self.cfg["epochs"] if epochs is None else epochs
        max_steps = self.cfg["max_steps"] if max_steps is None else max_steps
        if self._torn:
            raise MinialexnetError(f"this Trainer was stopped in the middle of {self._torn}: "
                                   "its state is torn; load a checkpoint to go on")
        if self.comm.size == 1:            # a stop asked of an earlier run() is over
            self.comm.stop_requested, self.stop_agreed, self.stop_signal = False, False, None
        self._phase = "busy"
        with _StopSignals(self):
            try:
                while True:
                    if self._stop_requested():
                        self._phase = "boundary"
                        raise Interrupted(self.stop_signal or signal.SIGINT)
                    if self.validation_pending():
                        row = self._end_epoch()
                        if on_epoch:
                            with self._phase_as("boundary"):
                                on_epoch(row)
                        continue
                    if not self.has_work(epochs, max_steps):
                        break
                    self._run_epoch(max_steps, on_step)
                # (not again if the checkpoint holds this point: a finished run's file
                # stays as it is)
                if (max_steps and self.step >= max_steps and self.cfg["out"]
                        and self._saved_at != self._point()):
                    self.save("max-steps")
            except KeyboardInterrupt:
                self._report_interrupt()
                raise
            except MinialexnetError as e:
                if not isinstance(e, TrainingDiverged) and self._phase in CONSISTENT_PHASES:
                    self._save_before_reporting()
                raise
        return self.history

    def has_work(self, epochs, max_steps=None):
        """Whether a run to ``epochs`` (and ``max_steps``) has anything left to do."""
        if self.validation_pending():
            return True
        return self.epoch < epochs and not (max_steps and self.step >= max_steps)

    def validation_pending(self):
        """Every step of the current epoch is done but its validation is not: the run
        stopped (or was killed after a save) between its last step and its end."""
        return self.loader.epoch > self.epoch

    # ------------------------------------------------------------ stopping
    @contextlib.contextmanager
    def _phase_as(self, phase):
        """What the run is doing, for the signal handler and for what an exception
        leaves behind (CONSISTENT_PHASES).  Not restored on an exception: ``run``
        reads where it struck."""
        before, self._phase = self._phase, phase
        yield
        self._phase = before

    def _stop_requested(self):
        # Distributed: only a stop agreed on at a step's end (every rank's sum).
        return self.stop_agreed or (self.comm.size == 1 and self.comm.stop_requested)

    def _on_signal(self, signum, frame):
        """SIGINT/SIGTERM while ``run`` runs (one process, main thread; _StopSignals)."""
        again, self.comm.stop_requested = self.comm.stop_requested, True
        self.stop_signal = self.stop_signal or signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self._phase == "save":
            _note(f"{name}: the checkpoint is being written; stopping once it is")
        elif self._phase == "validate" or again:
            raise Interrupted(signum)
        else:
            _note(f"{name}: stopping after this step, once its checkpoint is written "
                  "(Ctrl-C again: stop at once, saving nothing)")

    def _report_interrupt(self):
        """One line for a KeyboardInterrupt: saved at this boundary (a consistent
        phase), or what stands instead."""
        where = f"epoch {self.epoch + 1}, step {self.step}"
        if self._phase in CONSISTENT_PHASES:
            if not self.cfg["out"]:
                self.log(f"interrupted at {where} (no run directory: nothing saved)")
                return
            path = self.save("interrupted")
            self.log(f"interrupted at {where}: checkpoint saved to {path} (resume with "
                     f"--resume --out {self.cfg['out']})")
        elif self._phase == "save":
            self.log(f"interrupted at {where} while writing the checkpoint: that save "
                     f"was abandoned; {self._what_stands()}")
        else:
            self._torn = f"step {self.step + 1}"
            self.log(f"stopped at once in the middle of step {self.step + 1} (epoch "
                     f"{self.epoch + 1}): nothing saved; {self._what_stands()}")

    def _save_before_reporting(self):
        if self.cfg["out"]:
            path = self.save("error")
            self.log(f"stopped at epoch {self.epoch + 1}, step {self.step}: checkpoint saved "
                     f"to {path}; once the problem below is fixed, --resume goes on from there")

    def _what_stands(self):
        if self._saved_at is None:
            return "no checkpoint of this run was written"
        epoch, step, _ = self._saved_at
        return (f"the last checkpoint, {self.last_good_checkpoint} (after {epoch} epochs, "
                f"step {step}), stands")

    def _progress(self, total, initial):
        if not self.cfg["progress"] or not self.comm.is_root:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, unit="batch", leave=False,
                    desc=f"epoch {self.epoch + 1}/{self.cfg['epochs']}", dynamic_ncols=True)

    def _run_epoch(self, max_steps, on_step=None):
        """Steps through the rest of the current epoch, or until ``max_steps`` or a
        stop request."""
        self.model.train()
        self._phase = "busy"            # the loader advances before a batch is trained
        loader, st = self.loader, self._epoch_stats
        bar = self._progress(len(loader), loader.position)
        waited, t_last = loader.wait_time, time.perf_counter()
        batches = iter(loader)
        try:
            while (batch := self._next_batch(batches)) is not None:
                x, y = batch
                self._phase = "busy"            # from here on a step is in progress
                loss, logits = self.train_step(x, y)
                loss = float(loss)   # one sync per step: we must look at the loss anyway
                # Distributed: every rank adds its rows' numbers (and its wish to stop)
                # to the others', so that all log, check and stop on the same values.
                loss_sum, correct, seen, stop = self.comm.sum_numbers(
                    [loss * len(y), int(topk_correct(logits, y, 1).sum()), len(y),
                     self.comm.stop_requested])
                self.step += 1
                if not math.isfinite(loss_sum):
                    raise TrainingDiverged(
                        f"loss became {loss_sum / seen} at step {self.step} (epoch {self.epoch + 1}): "
                        f"try a lower learning rate than --lr {self.optimizer.lr:g}"
                        + (f"; the last good checkpoint is {self.last_good_checkpoint}"
                           if self.last_good_checkpoint else ""))
                now = time.perf_counter()
                st["seconds"] += now - t_last
                st["wait"] += loader.wait_time - waited
                t_last, waited = now, loader.wait_time
                st["loss_sum"] += loss_sum
                st["correct"] += int(correct)   # ties count as wrong, as in val
                st["seen"] += int(seen)
                self._phase = "boundary"        # the step is whole: model, loader, stats
                if stop:
                    self.stop_agreed = True
                if on_step is not None:
                    on_step(self.step, loss_sum / seen)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{st['loss_sum'] / st['seen']:.3f}",
                                    err=f"{1 - st['correct'] / st['seen']:.3f}",
                                    img_s=f"{st['seen'] / max(st['seconds'], 1e-9):.0f}")
                every = self.cfg["checkpoint_every"]
                if every and self.cfg["out"] and self.step % every == 0:
                    self.save("periodic")
                if (max_steps and self.step >= max_steps) or self._stop_requested():
                    break
                self._phase = "busy"            # the next batch is being fetched
        finally:
            if bar is not None:
                bar.close()

    def _next_batch(self, batches):
        """The loader's next batch, or None at the end of the epoch.  A library error
        while a batch is made (a bad training image) strikes before the loader counts
        the batch as handed out, so the run is still at the last step's boundary: it
        is saved before the error is reported (``run``)."""
        try:
            return next(batches)
        except StopIteration:
            return None
        except MinialexnetError:
            self._phase = "boundary"
            raise

    def _end_epoch(self):
        st = self._epoch_stats
        t0 = time.perf_counter()
        with self._phase_as("validate"):    # interruptible at once: nothing is torn
            val = evaluate(self.model, self.val_set, self.cfg["crop"], self.mean,
                           device=self.device, std=self.std, comm=self.comm)
            extra = self.epoch_eval(self) if self.epoch_eval else {}
        row = {
            "epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.lr,
            "train_loss": st["loss_sum"] / max(st["seen"], 1),
            "train_error": 1 - st["correct"] / max(st["seen"], 1),
            "val_top1": val["top1"], "val_top5": val["top5"],
            "seconds": st["seconds"], "eval_seconds": time.perf_counter() - t0,
            "images_per_s": st["seen"] / max(st["seconds"], 1e-9),
            "data_wait_s": st["wait"],
        }
        clash = set(extra) & set(row)
        if clash:
            raise ConfigError(f"epoch_eval must not overwrite the row's {sorted(clash)}")
        row.update(extra)
        self.history.append(row)
        self.epoch += 1
        row["type"] = "epoch"
        if isinstance(self.schedule, ReduceLROnPlateau):
            self.schedule.step(row["val_top1"])
        elif self.schedule is not None:
            self.schedule.step()
        self._epoch_stats = self._fresh_stats()
        self._phase = "boundary"        # the epoch is whole: saving it is right
        self.log(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train err "
                 f"{row['train_error']:.3f}  val top-1 {row['val_top1']:.3f} top-5 "
                 f"{row['val_top5']:.3f}  lr {row['lr']:g}  {row['images_per_s']:.0f} img/s  "
                 f"waited {row['data_wait_s']:.1f} s for data")
        if self.cfg["out"]:
            self.save("epoch")          # first: metrics never run ahead of the checkpoint
            if self.comm.is_root:
                self._write_metrics()
        return row

    # ------------------------------------------------------------ files
    def _path(self, name):
        os.makedirs(self.cfg["out"], exist_ok=True)
        return os.path.join(self.cfg["out"], name)

    def _write_metrics(self):
        # Each file whole or not at all (files.atomic_write): a full disk or a kill
        # never leaves a cut-off metrics.jsonl or a broken curves.png, and a symlink
        # planted at one of these names is replaced, never followed.
        keys = list(self.history[0])
        # Epoch rows, then the health records: each row says its "type".
        atomic_write_text(self._path("metrics.jsonl"),
                          "".join(json.dumps(row) + "\n" for row in self.history + self.health))
        table = io.StringIO()
        w = csv.DictWriter(table, keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self._path("metrics.csv"), table.getvalue())
        if not self.cfg["figures"]:
            return
        try:
            from .viz import plot_history
            plot_history(self.history, self._path("curves.png"))
            if self.health:
                from .viz import plot_health
                plot_health(self.health, self._path("health.png"))
        except ImportError:  # matplotlib missing: metrics are still written
            pass

    def state(self):
        """(arrays, meta) of everything that defines the run right now."""
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_state = self.optimizer.state_dict()
        arrays.update({f"optim.{k}": v for k, v in optim_state.pop("velocity").items()})
        arrays["data.mean"] = self.mean
        if self.std is not None:
            arrays["data.std"] = np.asarray(self.std, np.float32)
        loader_state = self.loader.state_dict()
        meta = {
            "config": self.cfg, "model_config": self.model.config,
            "class_names": list(self.train_set.class_names),
            "epoch": self.epoch, "step": self.step, "history": self.history,
            "health": self.health,
            "optimizer": optim_state,
            "schedule": self.schedule.state_dict() if self.schedule else None,
            "loader": loader_state,
            "epoch_stats": self._epoch_stats,
            # No generator state: dropout masks are keyed by (seed, layer, step)
            # (layers.Dropout); the Loader's crops by (seed, epoch, batch).
        }
        # The convolution algorithms "auto" chose (conv/autotune.py): a resume runs the same.
        meta["conv_algorithms"] = autotune.state()
        return arrays, meta

    def _point(self):
        """Where the run is: (epochs done, steps done, the loader's epoch)."""
        return (self.epoch, self.step, self.loader.epoch)

    def save(self, why="epoch"):
        """Write the checkpoint (distributed: every rank calls this; rank 0 writes).
        A signal during the save waits for it (_on_signal)."""
        path = os.path.join(self.cfg["out"], "checkpoint.npz")
        with self._phase_as("save"):
            if self.comm.is_root:
                arrays, meta = self.state()
                meta["saved_because"] = why
                save_checkpoint(self._path("checkpoint.npz"), arrays, meta)
        self.last_good_checkpoint, self._saved_at = path, self._point()
        return path

    def load(self, path, loaded=None):
        """Restore a checkpoint written by ``save`` (same architecture); ``loaded``:
        its (arrays, meta) if the caller has already read it."""
        arrays, meta = loaded or load_checkpoint(path)
        load_model_weights(self.model, arrays, meta, path)
        optim_arrays = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
        self.optimizer.load_state_dict({**meta["optimizer"], "velocity": optim_arrays})
        if self.schedule:
            self.schedule.load_state_dict(meta["schedule"])
        self.loader.load_state_dict(meta["loader"])
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self.health = list(meta.get("health") or [])
        self._epoch_stats = meta.get("epoch_stats") or self._fresh_stats()
        autotune.load_state(meta.get("conv_algorithms"))    # None: an older checkpoint
        if not 0 <= self.loader.epoch - self.epoch <= 1:
            raise CheckpointError(f"{path}: damaged or crafted metadata: the loader is in "
                                  f"epoch {self.loader.epoch}, the run at epoch {self.epoch}")
        self.last_good_checkpoint, self._torn = path, None
        self._saved_at = self._point() if os.path.abspath(path) == os.path.abspath(
            os.path.join(self.cfg["out"] or "", "checkpoint.npz")) else None
        return meta


# Phases in which the Trainer's state is whole, so that an interruption or error
# there can be saved: between steps, and during validation (the checkpoint then says
# the epoch's steps are done and its validation is pending).
CONSISTENT_PHASES = ("boundary", "validate")


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C: SIGINT, a scheduler: SIGTERM), after saving
    what could be saved.  ``signum``: the signal; the tool exits with 128 + signum."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _note(line):
    # From a signal handler: os.write, not print (print may be mid-line already).
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


class _StopSignals:
    """While a Trainer runs (one process, main thread): SIGINT and SIGTERM go to
    ``Trainer._on_signal``; the handlers before are restored afterwards.  Distributed
    ranks keep the communicator's handlers (a flag, agreed on at step ends)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer):
        self.trainer, self.before = trainer, None

    def __enter__(self):
        if self.trainer.comm.size == 1 and threading.current_thread() is threading.main_thread():
            self.before = {s: signal.signal(s, self.trainer._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in (self.before or {}).items():
            signal.signal(s, handler)


SCHEDULES = ("plateau", "budget", "step", "none")


def make_schedule(cfg, optimizer, n_val=None):
    """The learning-rate schedule of section 5.

    "plateau" (the paper's rule) divides by 10 when the validation error has not
    improved for ``patience`` epochs, at most ``max_reductions`` times (the paper: 3).
    An improvement must beat the best by more than ``plateau_threshold`` and by two
    standard errors of the validation error on ``n_val`` images (optim.py says why).
    "budget" divides by 10 after fixed fractions of the run (``step_fractions`` of
    ``epochs``, default 0.5, 0.75, 0.9): for experiments with a time budget.
    "step" divides by 10 every ``step_epochs``; "none" keeps the rate."""
    kind = cfg["schedule"]
    if kind == "plateau":
        return ReduceLROnPlateau(optimizer, patience=cfg["patience"],
                                 max_reductions=cfg["max_reductions"],
                                 threshold=cfg.get("plateau_threshold", 0.0), noise_n=n_val)
    if kind == "budget":
        return StepLR.at_fractions(optimizer, cfg["epochs"],
                                   cfg.get("step_fractions", (0.5, 0.75, 0.9)))
    if kind == "step":
        # every=, not milestones up to --epochs: a resumed run may extend --epochs
        return StepLR(optimizer, every=cfg["step_epochs"])
    if kind == "none":
        return None
    raise ConfigError(f"unknown schedule {kind!r}: {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    """The config the command line asks for."""
    return parse_options(argv)[0]


# argparse dests whose config key has another name.
DEST_KEYS = {"layers": "model_kwargs", "no_flip": "flip", "no_progress": "progress",
             "no_figures": "figures"}


def parse_options(argv=None):
    """(config, the config keys set on the command line): ``run`` needs to know, on
    resume, which settings were asked for rather than defaulted."""
    p = _parser()
    cfg = _config_of(p, p.parse_args(argv))
    unset = object()                      # parsed again, no defaults: what was given
    names = argparse.Namespace(**{a.dest: unset for a in p._actions if a.dest != "help"})
    p.parse_args(argv, namespace=names)
    given = {DEST_KEYS.get(d, d) for d, v in vars(names).items() if v is not unset}
    return cfg, given


def _parser():
    d = default_config()
    p = argparse.ArgumentParser(
        prog="python -m minialexnet.train", formatter_class=cli.HelpFormatter,
        description="Train AlexNet or its small-input family the paper's way (section 5).")
    p.add_argument("--backend", choices=["numpy", "cupy"], default=d["backend"],
                   help="numpy (CPU) or cupy (NVIDIA GPUs)")
    p.add_argument("--devices", type=cli.devices, default=None,
                   help="device per tower, e.g. 0,1 (two GPUs) or 0,0 (both towers on one); "
                        "default: every tower on device 0")
    p.add_argument("--dataset", choices=list(DATASET_SIZES), default=d["dataset"],
                   help="synthetic: the built-in shapes (offline)")
    p.add_argument("--data-dir", default=None, help="default: $MINIALEXNET_DATA or ./data")
    p.add_argument("--model", default=d["model"],
                   help="alexnet, alexnet-1tower, alexnet-half, torchvision-alexnet, "
                        "small-alexnet, fournet")
    p.add_argument("--model-kwargs", default="{}",
                   help='JSON keyword arguments of the model, e.g. \'{"width": 2}\'')
    p.add_argument("--layers", choices=["fast", "reference"], default=None,
                   help="fast (default): the tuned layers; reference: minialexnet/reference, "
                        "the paper's equations (same numbers, slower)")
    p.add_argument("--epochs", type=cli.positive_int, default=None,
                   help="passes over the training set (default: 4 on the built-in set, 30 on "
                        "the others)")
    p.add_argument("--dropout", type=cli.fraction, default=None,
                   help="dropout probability of fc6 and fc7 (default: 0 on the built-in set, "
                        "the paper's 0.5 on the others)")
    p.add_argument("--batch-size", type=cli.positive_int, default=d["batch_size"],
                   help="images per step (paper: 128)")
    p.add_argument("--lr", type=cli.positive_float, default=None,
                   help="learning rate; default: the model's recipe "
                        f"({_recipe_help()})")
    p.add_argument("--momentum", type=cli.fraction, default=d["momentum"], help="paper: 0.9")
    p.add_argument("--weight-decay", type=cli.nonnegative_float, default=d["weight_decay"],
                   help="paper: 0.0005")
    p.add_argument("--input-scale", choices=INPUT_SCALES, default=d["input_scale"],
                   help="unit: (pixel - mean) / std, std about 1 (NOT the paper's; see "
                        "data/transforms.py); paper: raw mean-subtracted 0..255 pixels")
    p.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"],
                   help="plateau: lr/10 when val error stops improving (paper); budget: "
                        "lr/10 at --step-fractions of --epochs; step: every --step-epochs; "
                        "none: constant")
    p.add_argument("--patience", type=cli.positive_int, default=d["patience"],
                   help="plateau: epochs without improvement before lr/10")
    p.add_argument("--plateau-threshold", type=cli.nonnegative_float,
                   default=d["plateau_threshold"],
                   help="plateau: an improvement must beat the best val error by this much "
                        "(and always by 2 standard errors of the val error)")
    p.add_argument("--step-epochs", type=cli.positive_int, default=d["step_epochs"],
                   help="step: epochs between lr/10")
    p.add_argument("--step-fractions", type=cli.fractions, default=d["step_fractions"],
                   help="budget: fractions of --epochs after which lr/10, e.g. 0.5,0.75,0.9")
    p.add_argument("--pca", action="store_true", help="PCA colour augmentation (section 4.1)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal reflections")
    p.add_argument("--n-train", type=cli.positive_int, default=None,
                   help="use a random subset of this many training images (default: all; "
                        "the built-in set makes 20000)")
    p.add_argument("--n-val", type=cli.positive_int, default=None,
                   help="use a random subset of this many held-out images (default: all)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=d["seed"],
                   help="seeds the init, the shuffling, the crops and dropout")
    p.add_argument("--out", default=d["out"], help="run directory: checkpoint, metrics, curves")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out bit-identically, as it was saved.  It "
                        "keeps its model (--model, --model-kwargs, --layers, --dropout), data "
                        "(--dataset, --n-train, --n-val, --input-scale, --pca, --no-flip), "
                        "--batch-size, --lr, --momentum, --weight-decay, the schedule and its "
                        "state, and --seed: any of these given with another value is refused. "
                        "It keeps --epochs, --checkpoint-every, --health-every, --backend, "
                        "--devices and --data-dir unless given anew (a larger --epochs trains "
                        "longer).  --max-steps, --workers, --no-progress, --no-figures and "
                        "--distributed are this command's own.  A complete run says so and writes nothing. "
                        "Files go to --out, never to where the checkpoint was first written")
    p.add_argument("--max-steps", type=cli.positive_int, default=None,
                   help="stop after this many steps (default: no limit)")
    p.add_argument("--checkpoint-every", type=cli.nonnegative_int, default=d["checkpoint_every"],
                   help="also save every this many steps (0: only at epoch ends and on Ctrl-C)")
    p.add_argument("--health-every", type=cli.nonnegative_int, default=d["health_every"],
                   help="record update/weight ratios, activation stats and dead ReLUs every "
                        "this many steps (0: off); see health.png in the run directory")
    p.add_argument("--workers", type=cli.positive_int, default=d["workers"],
                   help="background threads that decode and augment batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figures", action="store_true",
                   help="do not redraw curves.png and health.png each epoch (drawing them "
                        "costs about half a second: most of a tiny run's time)")
    p.add_argument("--distributed", nargs="?", const="auto", choices=["auto", "mpi", "nccl"],
                   help="data parallel over the ranks of an MPI job (mpiexec -n K ...): "
                        "--batch-size is the global batch; mpi: host buffers; nccl: "
                        "CuPy on GPUs; auto: nccl where the backend has it")
    p.add_argument("--rank-timeout", type=cli.positive_float, default=d["rank_timeout"],
                   help="seconds to wait for a rank at a collective before naming it "
                        "and stopping the job (before training starts at least "
                        f"{distributed.STARTUP_TIMEOUT:g})")
    return p


def _config_of(p, a):
    try:
        model_kwargs = json.loads(a.model_kwargs)
    except json.JSONDecodeError as e:
        p.error(f"--model-kwargs is not JSON: {e}")
    if not isinstance(model_kwargs, dict):
        p.error(f"--model-kwargs must be a JSON object like '{{\"width\": 2}}', got {a.model_kwargs!r}")
    lr = default_lr(a.model) if a.lr is None else a.lr
    if a.layers:                 # a model argument: the checkpoint's model config keeps it
        model_kwargs = {**model_kwargs, "layers": a.layers}
    return default_config(
        dataset=a.dataset, data_dir=a.data_dir, n_train=a.n_train, n_val=a.n_val,
        pca=a.pca, flip=not a.no_flip, input_scale=a.input_scale, model=a.model,
        model_kwargs=model_kwargs, dropout=a.dropout, epochs=a.epochs, batch_size=a.batch_size, lr=lr,
        momentum=a.momentum, weight_decay=a.weight_decay, schedule=a.schedule,
        patience=a.patience, plateau_threshold=a.plateau_threshold,
        step_epochs=a.step_epochs, step_fractions=a.step_fractions, seed=a.seed,
        backend=a.backend, devices=a.devices, out=a.out, resume=a.resume,
        max_steps=a.max_steps, checkpoint_every=a.checkpoint_every,
        health_every=a.health_every, workers=a.workers, progress=not a.no_progress,
        figures=not a.no_figures,
        distributed=a.distributed, rank_timeout=a.rank_timeout)


def make_model(cfg, num_classes):
    kwargs = dict(cfg["model_kwargs"])
    if cfg.get("dropout") is not None and model_has_dropout(cfg["model"]):
        kwargs.setdefault("dropout", cfg["dropout"])
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("input_size", cfg["crop"])
    if cfg["devices"] is not None:
        kwargs.setdefault("devices", tuple(cfg["devices"]))
    # Training never needs dL/d(image): skip conv1's most expensive product.
    kwargs.setdefault("input_grad", False)
    return build_model(cfg["model"], **kwargs)


def run(cfg, log=print, given=None):
    """Everything the command does; returns the Trainer (tests call this directly).

    ``given``: the config keys set on the command line (``parse_options``); None (from
    Python): see ``_given_in``.  On resume they say which settings the caller asked
    for (``resume_config``).
    With ``cfg["distributed"]`` every rank of the MPI job runs this: rank 0 alone
    reads the checkpoint to resume from (and sends it to the others) and writes
    files and logs; errors at start-up on any rank stop every rank with one line."""
    comm = distributed.connect(cfg["distributed"], cfg["rank_timeout"])   # issue 13
    if comm.size > 1:
        comm.install_stop_handlers()
        comm.check_same({"minialexnet source": distributed.code_version(), "config": cfg})
        log = log if comm.is_root else _quiet
    ckpt = os.path.join(cfg["out"], "checkpoint.npz") if cfg["out"] else None
    loaded = comm.together(_read_resume if comm.is_root else _nothing, cfg, ckpt, errors=USER_ERRORS)
    loaded = comm.broadcast_object(loaded)
    if loaded:
        given = _given_in(cfg) if given is None else set(given)
        cfg = comm.together(resume_config, loaded[1]["config"], cfg, given, errors=USER_ERRORS)
    # Before the data is read: an --out that cannot take the run's files.
    comm.together(check_run_dir if comm.is_root else _nothing, cfg["out"], errors=USER_ERRORS)
    train, val, mean, std, pca, model, cfg = comm.together(_prepare, cfg, comm,
                                                           errors=USER_ERRORS)
    comm = distributed.with_devices(comm, model.devices)    # NCCL where the backend has it
    if comm.size > 1:
        comm.check_same(_run_identity(train, val, mean, model))
    trainer = comm.together(_make_trainer, model, train, val, mean, std, cfg, pca, log, comm,
                            ckpt, loaded, errors=USER_ERRORS)
    if loaded and not trainer.has_work(cfg["epochs"], cfg["max_steps"]):
        log(_complete(trainer, cfg))         # and nothing is written
        trainer.resumed_complete = True
        return trainer
    if loaded:
        log(f"resumed {ckpt} at epoch {trainer.epoch}, step {trainer.step}")
    elif comm.size > 1:
        comm.broadcast_arrays(model.params().values())    # rank 0's initial weights
    log(f"{cfg['model']} on {train!r}; validating on {len(val)} images; backend "
        f"{cfg['backend']}, devices {cfg['devices'] or [0]}; run directory {cfg['out']}")
    if comm.size > 1:
        log(f"distributed: {comm.describe()}; global batch {cfg['batch_size']} = "
            f"{comm.size} x {cfg['batch_size'] // comm.size}; " + "; ".join(
                comm.allgather_object(f"rank {comm.rank} pid {os.getpid()} on "
                                      f"{platform.node()} GPUs {_gpus(model.devices)}")))
    comm.start_training()           # distributed: --rank-timeout from here on
    trainer.run()
    return trainer


def _make_trainer(model, train, val, mean, std, cfg, pca, log, comm, ckpt, loaded):
    trainer = Trainer(model, train, val, mean, cfg, pca=pca, log=log, std=std, comm=comm)
    if loaded:
        trainer.load(ckpt, loaded)
    return trainer


def _nothing(*args):
    return None


def _read_resume(cfg, ckpt):
    """(arrays, meta) of the checkpoint to resume from, or None for a fresh run."""
    if not cfg["resume"]:
        return None
    if not ckpt or not os.path.exists(ckpt):
        raise CheckpointError(f"{ckpt}: nothing to resume (no checkpoint in --out {cfg['out']})")
    arrays, meta = load_checkpoint(ckpt)          # read once: AlexNet's is 0.5 GB
    check_training_meta(meta, ckpt)
    return arrays, meta


def _complete(trainer, cfg):
    """The line for a resumed run that has nothing left to do."""
    done = f"the run in {cfg['out']} is already complete"
    if cfg["max_steps"] and trainer.step >= cfg["max_steps"]:
        return (f"{done} up to --max-steps {cfg['max_steps']} (it is at step {trainer.step}); "
                "nothing was written (give a larger --max-steps to train on)")
    return (f"{done}: {trainer.epoch} of {cfg['epochs']} epochs, step {trainer.step}; nothing "
            f"was written (to train longer: --resume --epochs N with N > {cfg['epochs']})")


# ---------------------------------------------------------------- what resume keeps
# The one place that says what --resume does with each setting (--help and the
# README say the same).  A resumed run is the run it was: every setting not named
# below is the checkpoint's, and giving it another value is refused.
# These the saved run keeps unless given again (to extend it, or to move it):
RESUME_MAY_CHANGE = ("epochs", "checkpoint_every", "health_every", "backend", "devices",
                     "data_dir")
# These are this command's own, never the checkpoint's: where the run is (the
# checkpoint's saved "out" is never a place to write), and how this process runs.
RESUME_THIS_COMMAND = ("out", "resume", "max_steps", "progress", "figures", "workers",
                       "distributed", "rank_timeout")
# Config keys whose option has another name (the others: --batch-size for batch_size).
OPTION_NAMES = {"model_kwargs": "--model-kwargs/--layers", "flip": "--no-flip",
                "progress": "--no-progress", "figures": "--no-figures", "image_size": "image_size",
                "crop": "crop", "max_reductions": "max_reductions"}


def resume_config(saved, cfg, given):
    """The config of a resumed run: the checkpoint's ``saved`` config, with this
    command's RESUME_THIS_COMMAND settings and the ``given`` ones of RESUME_MAY_CHANGE.
    A ConfigError names every other ``given`` setting whose value differs from the run's."""
    free = RESUME_MAY_CHANGE + RESUME_THIS_COMMAND
    differ = [k for k in sorted(given) if k in saved and k not in free
              and cfg.get(k) is not None and _plain(cfg[k]) != _plain(saved[k])]
    if differ:
        raise ConfigError(
            f"--resume continues the run in {cfg['out']} with its own settings, and these "
            "differ from them: " + ", ".join(
                f"{_option(k)} {_shown(cfg[k])} (the run has {_shown(saved[k])})" for k in differ)
            + "; leave them out, or start a new run with another --out")
    return {**saved, **{k: cfg[k] for k in RESUME_THIS_COMMAND},
            **{k: cfg[k] for k in RESUME_MAY_CHANGE if k in given}}


def _plain(value):
    """``value`` as the checkpoint's JSON gives it back (tuples become lists, ...)."""
    return json.loads(json.dumps(value, default=str))


def _shown(value):
    return json.dumps(_plain(value)) if isinstance(value, (dict, list, tuple)) else f"{value}"


def _option(key):
    return OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def _given_in(cfg):
    """From Python, what a config asks for: its RESUME_MAY_CHANGE settings (so
    ``epochs=4`` extends a 2-epoch run even though 4 is the default), and the keys
    whose value is not what ``default_config`` would give (so a config that leaves
    the model alone does not contradict the run's)."""
    base = default_config(dataset=cfg["dataset"], model=cfg["model"])
    given = {k for k in cfg if k in base and _plain(cfg[k]) != _plain(base[k])}
    plain = default_config()
    return (given | set(RESUME_MAY_CHANGE) |
            {k for k in ("dataset", "model") if cfg[k] != plain[k]})


# ---------------------------------------------------------------- before the first step
# Every file a run writes in its directory.
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "metrics.csv", "curves.png", "health.png")


def check_run_dir(out):
    """Make sure the run directory ``out`` (None: no files) can take the run's files
    before anything is trained, and remove the temps that killed saves left there.
    A ConfigError in one line: ``out`` is a file, or cannot be made or written."""
    if not out:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a directory: give a directory for "
                          "the run's files")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write the run's files there "
                          f"({describe_os_error(e)})") from None
    for name in RUN_FILES:
        remove_stale_temps(os.path.join(out, name))


def check_splits(train, val):
    """Before the first step, what would otherwise fail (or silently mislead) only
    after an epoch of work: validation images unlike the training images, labels out
    of range, classes the two splits do not share.  A DataError in one line."""
    src = f"the validation set ({val.name} {val.split})"
    if len(val) == 0:
        raise DataError(f"{src} is empty")
    check_labels(np.asarray(train.y), train.num_classes, f"the training set ({train.name})",
                 n=len(train.x))
    if isinstance(val.x, np.ndarray):
        check_images(val.x, src)
        if val.x.dtype != np.uint8:
            raise DataError(f"{src}: images are {val.x.dtype}; expected uint8 (N, H, W, 3) "
                            "like the training images")
    for path in getattr(val.x, "paths", ()):          # lazy files: at least there
        if not os.path.isfile(path):
            raise DataError(f"{src}: image {path}: file not found")
    if tuple(val.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise DataError(f"{src}: images are {tuple(val.x.shape[1:])}, the training images "
                        f"{tuple(train.x.shape[1:])}: both splits need one image size")
    if list(val.class_names) != list(train.class_names):
        i = next((i for i, (a, b) in enumerate(zip(val.class_names, train.class_names))
                  if a != b), min(len(val.class_names), len(train.class_names)))
        raise DataError(f"{src}: its classes are not the training set's (class {i}: "
                        f"{_name(val.class_names, i)} vs {_name(train.class_names, i)})")
    y = check_labels(np.asarray(val.y), train.num_classes, src, n=len(val.x))
    missing = np.setdiff1d(np.unique(y), np.unique(np.asarray(train.y)))
    if len(missing):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{src}: class {train.class_names[missing[0]]!r} (label {missing[0]}) "
                        f"has no training images{more}: the net could never learn it")


def _name(names, i):
    return repr(names[i]) if i < len(names) else "none"


def _prepare(cfg, comm):
    """Backend, data and model of this rank (distributed: rank r's towers on GPUs shifted
    by r's place on its machine times the GPUs a rank uses, e.g. 2r, 2r+1)."""
    offset = comm.local_rank * (max(cfg["devices"] or [0]) + 1)
    backend.use(cfg["backend"], seed=cfg["seed"], devices=cfg["devices"], device_offset=offset)
    if cfg["batch_size"] % comm.size:
        raise ConfigError(f"--batch-size {cfg['batch_size']} (the global batch) does not split "
                         f"into {comm.size} equal shares, one per rank")
    train, val, mean, std, pca = prepare_data(cfg)
    cfg = fit_sizes(cfg, train)
    if len(val) < comm.size:
        raise ConfigError(f"{len(val)} validation images cannot be shared by {comm.size} ranks")
    return train, val, mean, std, pca, make_model(cfg, train.num_classes), cfg


def _run_identity(train, val, mean, model):
    """What must be equal on every rank beyond the config: data and model."""
    return {"training data": f"{len(train)} images, classes {train.class_names}",
            "validation data": f"{len(val)} images",
            "mean image": distributed.array_digest(mean),
            "model": {k: v for k, v in model.config.items() if k != "devices"}}


def _gpus(devices):
    """The GPUs the model's ``devices`` are on this rank (for the log), or "none"."""
    ids = backend.current().gpu_ids(devices)
    return "none" if ids is None else ids


def _quiet(*args, **kwargs):
    pass


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main(argv=None):
    cfg, given = parse_options(argv)
    # A SIGTERM (a job scheduler stopping us) is treated like Ctrl-C: before training
    # it stops at once; during training Trainer.run saves at a step boundary first.
    before = signal.signal(signal.SIGTERM, _interrupt)
    # Distributed: rank 0 prints what every rank found; a rank alone with an error
    # prints it and stops the job (distributed.report).
    try:
        trainer = run(cfg, given=given)
    except KeyboardInterrupt as e:
        return 128 + getattr(e, "signum", signal.SIGINT)
    except TrainingDiverged as e:           # distributed: every rank, at the same step
        return distributed.report(f"stopped: {e}", 1, collective=True)
    except USER_ERRORS as e:
        return distributed.report(f"error: {e}", 2, getattr(e, "collective", False))
    finally:
        signal.signal(signal.SIGTERM, before)
    if trainer.history and trainer.comm.is_root and not trainer.resumed_complete:
        last = trainer.history[-1]
        print(f"done: {trainer.epoch} epochs, {trainer.step} steps; val top-1 error "
              f"{last['val_top1']:.3f}, top-5 {last['val_top5']:.3f}; files in {cfg['out']}")
        if cfg["out"]:
            ckpt = os.path.join(cfg["out"], "checkpoint.npz")
            print(f"next: python -m minialexnet.evaluate {ckpt}\n"
                  f"      python -m minialexnet.predict {ckpt} IMAGE...\n"
                  f"      curves: {os.path.join(cfg['out'], 'curves.png')}, training health: "
                  f"{os.path.join(cfg['out'], 'health.png')}; the chapters: "
                  "jupyter lab chapters/ (README: The chapters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
