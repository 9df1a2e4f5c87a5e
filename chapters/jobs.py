"""The chapters' long runs as resumable jobs (``minialexnet.experiments``).

A notebook's full mode calls the functions here: each trains what is missing and
returns the records of what exists, so re-running a notebook only renders.  The same
jobs run from a terminal, in the background, with checkpoints and a log:

    cd chapters && MINIALEXNET_DATA=../../shared/data nohup python jobs.py 08 > ../runs/jobs-08.log 2>&1 &
    cd chapters && MINIALEXNET_DATA=../../shared/data nohup python jobs.py 08:control > ../runs/jobs-08c.log 2>&1 &

Records (per-epoch history, health, config, time) are committed in
``chapters/results/<chapter>/``; checkpoints go to ``runs/jobs/<chapter>/`` (git-ignored).
In fast mode (MINIALEXNET_FAST=1) records go to ``runs/jobs-fast/`` instead, so a CI
run never touches the committed ones.
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minialexnet import data, experiments, inference, notebook, train   # noqa: E402
from minialexnet.backend import np   # noqa: E402

FAST = notebook.fast_mode()
# MINIALEXNET_RENDER_ONLY=1: train nothing, render the records that exist (a chapter
# executed while its jobs are still running in the background says how far they are).
RENDER_ONLY = os.environ.get("MINIALEXNET_RENDER_ONLY", "").strip() not in ("", "0")


def dirs(chapter):
    """(results dir, checkpoints dir) of a chapter's jobs."""
    if FAST:
        base = ROOT / "runs" / "jobs-fast" / chapter
        return str(base / "results"), str(base / "runs")
    return str(ROOT / "chapters" / "results" / chapter), str(ROOT / "runs" / "jobs" / chapter)


# ------------------------------------------------------------------ chapter 08
CH08_EPOCHS = 50
CH08_N_VAL = 5000


def ch08_data():
    """All 50,000 CIFAR-10 training images minus a seeded 5,000-image validation
    split, and the 10,000 official test images (fast mode: a few hundred)."""
    full, test = notebook.chapter_data("cifar10", n_train=notebook.pick(None, 600),
                                       n_val=notebook.pick(None, 200))
    train_set, val_set = experiments.split_train_val(full, notebook.pick(CH08_N_VAL, 100))
    return train_set, val_set, test


def ch08_job(seed=0, towers=2):
    """The small AlexNet on CIFAR-10 with the recipe: unit inputs, He init, 28-px crops
    and flips, dropout 0.5, the paper's SGD (batch 128, momentum 0.9, weight decay
    5e-4, lr 0.01) and lr / 10 after 50 %, 75 % and 90 % of the epochs."""
    name = f"small-alexnet-t{towers}-s{seed}"
    cfg = dict(dataset="cifar10", model="small-alexnet", crop=28, image_size=32,
               model_kwargs={"towers": towers}, epochs=notebook.pick(CH08_EPOCHS, 1),
               batch_size=128, lr=0.01, schedule="budget", seed=seed,
               checkpoint_every=100, health_every=100, workers=2)
    return experiments.Job(name, cfg, describe={"towers": towers, "seed": seed})


def ch08_final(test_set):
    """After training: centre-crop and ten-crop top-1/top-5 on the test set."""
    def after(trainer):
        m, s, crop = trainer.mean, trainer.std, trainer.cfg["crop"]
        centre = inference.evaluate(trainer.model, test_set, crop, m, std=s)
        ten = inference.evaluate(trainer.model, test_set, crop, m, ten_crop=True, std=s)
        return {"n_test": len(test_set), "centre": centre, "ten_crop": ten}
    return after


def ch08_control():
    """Figure 3's control, same recipe and data as the main job: a one-tower net of
    the same width (its 32 conv1 filters split into two arbitrary halves stand in for
    towers that cannot specialise), and the two-tower net with a second seed (does a
    split, or its absence, repeat?).  About 100 min each on 2 CPU cores."""
    return [ch08_job(towers=1), ch08_job(seed=1)]


def ch08_checkpoint(name):
    """Where job ``name``'s checkpoint is (it may not exist yet)."""
    return os.path.join(dirs("08_full_training")[1], name, "checkpoint.npz")


def run_ch08(jobs=None, log=print, data_sets=None):
    """{job name: record or None} for ``jobs`` (default: the main job; pass
    ``ch08_control()`` for Figure 3's control); trains what is missing unless
    MINIALEXNET_RENDER_ONLY is set (then a job not yet trained is None)."""
    train_set, val_set, test = data_sets or ch08_data()
    results, runs = dirs("08_full_training")
    out = {}
    for job in jobs or [ch08_job()]:
        out[job.name] = experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                            after=ch08_final(test), train_missing=not RENDER_ONLY)
    return out


# ------------------------------------------------------------------ chapter 08, part 2
# The paper's own two-tower AlexNet (section 3.5) trained from scratch on real
# ImageNet photos: Imagenette's 9,469 training photos of 10 ImageNet classes, validated
# on its 3,925 official validation photos.  Departures, each stated in the chapter:
# fc8 has 10 outputs (not 1000); the packed photos are 224 px, so the crops are 199 px
# (227 of 256 in proportion; photos are never upscaled) and pool5's maps 5x5, not
# 6x6; He init with zero biases, because on unit-scale inputs the paper's N(0, 0.01^2)
# shrinks the signal about 5x a layer (chapter 01's std table) and at this budget
# the net would sit at chance; 15 epochs, lr / 10 after 50, 75 and 90 % of them.
CH08B_EPOCHS = 15


def ch08b_data():
    """Imagenette's training photos and its official validation photos (fast mode:
    a few dozen, or the built-in images when Imagenette is absent)."""
    return notebook.chapter_data("imagenette", n_train=notebook.pick(None, 96),
                                 n_val=notebook.pick(None, 32), size=notebook.pick(None, 72))


def ch08b_job(seed=0, towers=2):
    """AlexNet (two towers, 10 classes) on Imagenette with the recipe: unit inputs, He
    init and zero biases, 199-px crops and flips, PCA colour noise, dropout 0.5, the
    paper's SGD (batch 128, momentum 0.9, weight decay 5e-4, lr 0.01), checkpoints every
    25 steps (a third of an epoch: at about 25 images/s an epoch is some 6 minutes)."""
    kwargs = {"towers": towers, "init_std": "he", "init_bias": {}}
    if FAST:
        kwargs["input_size"] = 67               # the smallest AlexNet: fast mode only
    cfg = dict(dataset="imagenette", model="alexnet", model_kwargs=kwargs,
               crop=notebook.pick(199, 67), image_size=notebook.pick(224, 72), pca=True,
               epochs=notebook.pick(CH08B_EPOCHS, 1), batch_size=notebook.pick(128, 16),
               lr=0.01, schedule="budget", seed=seed, checkpoint_every=25, health_every=25,
               workers=2)
    return experiments.Job(f"alexnet-imagenette-t{towers}-s{seed}", cfg,
                           describe={"towers": towers, "seed": seed})


def run_ch08b(jobs=None, log=print, data_sets=None):
    """{job name: record or None} of the Imagenette jobs (default: the main one);
    centre-crop and ten-crop errors on the validation photos when a job completes."""
    train_set, val_set = data_sets or ch08b_data()
    results, runs = dirs("08_imagenette")
    return {job.name: experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                          after=ch08_final(val_set),
                                          train_missing=not RENDER_ONLY)
            for job in jobs or [ch08b_job()]}


# ------------------------------------------------------------------ chapter 01
# Figure 1: epochs to 25 % training error, ReLU against tanh, all 50,000 CIFAR-10
# training images, no augmentation, no regularisation (no LRN, dropout or weight
# decay), unit inputs, SGD momentum 0.9, batch 128.  Four settings, named before the
# runs; in each, a learning-rate sweep per activation (one epoch at each of LRS, the
# lowest training error wins), then SEEDS at the chosen rate, each until 25 % or
# CH01_MAX_EPOCHS (the paper's axis stops at 36 epochs).
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
SEEDS = (0, 1, 2)
CH01_MAX_EPOCHS = 36
TARGET = 0.25
SATURATING_GAIN = 3.0
# Two rules fixed before the seed runs, both about rates that do not learn at all:
# - the sweep extends downwards (by the grid's factor of about 3, at most EXTRA_LRS
#   times) while every rate of it is still at chance after its epoch, or its winner is
#   the lowest rate tried: the grid's edge is not an optimum;
# - a seed run still at chance after STALL_EPOCHS epochs is stopped and counted as not
#   reaching the target (reported as "stalled"), not run on to CH01_MAX_EPOCHS.
AT_CHANCE = 0.85          # training error of a 10-class net that has not left chance
EXTRA_LRS = (3e-4, 1e-4, 3e-5)
STALL_EPOCHS = 5


def fan_in_stds(model_name, gain=1.0, **kwargs):
    """{layer: gain / sqrt(fan_in)} for every weight layer of a model."""
    from minialexnet.models import build_model
    m = build_model(model_name, **kwargs)
    out = {}
    for name, w in m.params().items():
        if name.endswith(".W"):
            out[name.split(".")[0]] = gain * float(np.prod(w.shape[1:])) ** -0.5
    return out


def ch01_settings():
    """{setting: {activation: model config}}: the four settings of the chapter.

    (a) "fan-in": the four-layer net, N(0, 1/fan_in) for both activations.
    (b) "cuda-convnet": fixed small stds, cuda-convnet's 2012 CIFAR-10 style: conv1 1e-4
        on raw pixels, i.e. 6.4e-3 on unit inputs, 0.01 elsewhere.
    (c) "saturating": N(0, 9/fan_in), three times the fan-in std, so that conv1's
        pre-activations on unit inputs have std about 3 and most tanh units sit where
        |x| > 2 (slope below 0.08): the regime paper 3.1 argues against.
    (d) "deep": the eight-layer small AlexNet (no LRN, no dropout), each activation
        with the init that suits it: He's N(0, 2/fan_in) for ReLU, N(0, 1/fan_in) for
        tanh (unit slope at 0 keeps the variance)."""
    four = dict(lrn=False, input_size=32)
    deep = dict(lrn=False, dropout=0.0, input_size=32)
    cc = {"conv1": 6.4e-3, "conv2": 0.01, "conv3": 0.01, "fc4": 0.01}
    return {
        "fan-in": {a: ("fournet", dict(four, activation=a, init_std="fan-in")) for a in ("relu", "tanh")},
        "cuda-convnet": {a: ("fournet", dict(four, activation=a, init_std=cc)) for a in ("relu", "tanh")},
        "saturating": {a: ("fournet", dict(four, activation=a,
                                           init_std=fan_in_stds("fournet", SATURATING_GAIN, lrn=False)))
                       for a in ("relu", "tanh")},
        "deep": {"relu": ("small-alexnet", dict(deep, activation="relu", init_std="he")),
                 "tanh": ("small-alexnet", dict(deep, activation="tanh", init_std="fan-in"))},
    }


def _ch01_cfg(model, kwargs, lr, seed, epochs):
    return dict(dataset="cifar10", model=model, model_kwargs=kwargs, crop=32, image_size=32,
                flip=False, weight_decay=0.0, momentum=0.9, batch_size=128, lr=lr,
                schedule="none", seed=seed, epochs=epochs, checkpoint_every=100,
                health_every=50, workers=2)


def reached(row):
    return row["train_error"] <= TARGET


def stalled(row):
    return row["epoch"] >= STALL_EPOCHS and row["train_error"] >= AT_CHANCE


def seed_stop(row):
    """A seed run ends when it reaches the target or stalls at chance."""
    return reached(row) or stalled(row)


def ch01_sweep_jobs(setting, act, lrs=None):
    model, kw = ch01_settings()[setting][act]
    return [experiments.Job(f"sweep-{setting}-{act}-lr{lr:g}", _ch01_cfg(model, kw, lr, 0, 1),
                            describe={"setting": setting, "activation": act, "lr": lr})
            for lr in (lrs or notebook.pick(LRS, LRS[1:3]))]


def _final(record):
    return record["history"][-1]


def needs_lower_lr(records):
    """The sweep-extension rule: every rate still at chance, or the winner the lowest
    rate tried (records: complete sweep records)."""
    ok = [r for r in records if r["history"] and np.isfinite(_final(r)["train_loss"])]
    if all(_final(r)["train_error"] >= AT_CHANCE for r in ok):
        return True
    return best_lr(records) == min(r["describe"]["lr"] for r in records)


def best_lr(records):
    """The sweep's winner: the lowest training error after its epoch, to the point
    (a tenth of a point is noise), then the lowest loss: where no rate has left
    chance yet (90 % error), the loss still tells which one learns.  NaN loses."""
    ok = [r for r in records if r["history"] and np.isfinite(r["history"][-1]["train_loss"])]
    return min(ok, key=lambda r: (round(r["history"][-1]["train_error"], 2),
                                  r["history"][-1]["train_loss"]))["describe"]["lr"]


def ch01_seed_jobs(setting, act, lr):
    model, kw = ch01_settings()[setting][act]
    epochs = notebook.pick(CH01_MAX_EPOCHS, 1)
    return [experiments.Job(f"{setting}-{act}-lr{lr:g}-s{seed}", _ch01_cfg(model, kw, lr, seed, epochs),
                            stop=seed_stop, describe={"setting": setting, "activation": act,
                                                    "lr": lr, "seed": seed})
            for seed in notebook.pick(SEEDS, SEEDS[:1])]


RAW_LRS = (0.01, 0.001)


def ch01_raw_jobs():
    """The old recipe, for its health records: the paper's raw mean-subtracted pixels
    (std about 64), the four-layer ReLU net with 1/sqrt(fan-in) stds and conv1's cut
    by a further 64 to keep its outputs at unit scale; one epoch at lr 0.01 (the
    unit-input sweep's winner) and at 0.001 (the old chapter's largest usable rate),
    health every step at 0.01 (it may not last long) and every 10 at 0.001.  Their
    twins on unit inputs are the sweep runs sweep-fan-in-relu-lr0.01 and -lr0.001."""
    stds = fan_in_stds("fournet", lrn=False)
    stds["conv1"] /= 64.0
    kw = dict(lrn=False, input_size=32, activation="relu", init_std=stds)
    return [experiments.Job(f"raw-pixels-relu-lr{lr:g}",
                            dict(_ch01_cfg("fournet", kw, lr, 0, 1), input_scale="paper",
                                 health_every=1 if lr >= 0.01 else 10),
                            describe={"setting": "raw pixels, conv1 / 64", "activation": "relu", "lr": lr})
            for lr in RAW_LRS]


def run_ch01_raw(log=print, data_sets=None):
    """{lr: record} of the raw-pixel runs (None where missing in render-only mode)."""
    train_set, val_set = data_sets or ch01_data()
    results, runs = dirs("01_relu")
    return {job.describe["lr"]: experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                                    train_missing=not RENDER_ONLY)
            for job in ch01_raw_jobs()}


def ch01_data():
    return notebook.chapter_data("cifar10", n_train=notebook.pick(None, 512),
                                 n_val=notebook.pick(1000, 128))


def run_ch01(settings=None, log=print, data_sets=None):
    """Sweep, then seeds, setting by setting: returns {setting: {act: {"lr", "sweep",
    "seeds"}}} of records.  What is complete is read back; the rest is trained."""
    train_set, val_set = data_sets or ch01_data()
    results, runs = dirs("01_relu")
    out = {}
    for setting in settings or ch01_settings():
        out[setting] = {}
        for act in ("relu", "tanh"):
            run = dict(log=log, train_missing=not RENDER_ONLY)
            sweep, extra = [], list(notebook.pick(EXTRA_LRS, EXTRA_LRS[:1]))
            jobs = ch01_sweep_jobs(setting, act)
            while jobs:
                sweep += [experiments.run_job(j, train_set, val_set, results, runs, **run) for j in jobs]
                complete = all(r and r["status"] == "complete" for r in sweep)
                jobs = (ch01_sweep_jobs(setting, act, [extra.pop(0)])
                        if complete and extra and needs_lower_lr(sweep) else [])
            if not complete:
                out[setting][act] = {"lr": None, "sweep": sweep, "seeds": []}
                continue
            lr = best_lr(sweep)
            seeds = [experiments.run_job(j, train_set, val_set, results, runs, **run)
                     for j in ch01_seed_jobs(setting, act, lr)]
            out[setting][act] = {"lr": lr, "sweep": sweep, "seeds": seeds}
    return out


# ------------------------------------------------------------------ chapter 04
# Section 3.4: overlapping 3/2 pooling against non-overlapping 2/2 in the four-layer
# net.  At 31 px (pad-2 5x5 convolutions keep the side) both give 31 -> 15 -> 7 -> 3,
# so the two arms have the same map sizes and the same 85,098 parameters: only the
# windows differ (at 32 px 2/2 gives 16 -> 8 -> 4 and a fc layer 16/9 as large).
# The recipe: unit inputs, fan-in init, no LRN, random 31-px crops of the 32-px images
# and horizontal flips, centre 31-px crops for evaluation; SGD batch 128, momentum 0.9,
# weight decay 5e-4, lr 0.01 (chapter 01's sweep winner for this net) divided by 10
# after 50 %, 75 % and 90 % of the epochs (fixed in advance: no decision is taken on
# held-out data).  CH04_N_TRAIN images, a fixed CH04_N_VAL-image validation split for
# the per-epoch held-out curve, the 10,000 official test images for the reported error.
CH04_POOLS = ("3/2", "2/2")
CH04_SEEDS = (0, 1, 2)
CH04_CROP = 31
CH04_N_TRAIN = 8000
CH04_N_VAL = 1000
CH04_EPOCHS = 10
CH04_LR = 0.01
PAPER_04_TOP1 = 0.004        # 3.4: 3/2 lowers top-1 error by 0.4 %
PAPER_04_TOP5 = 0.003        # ... and top-5 error by 0.3 %


def ch04_data():
    """(train, val, test): CH04_N_TRAIN + CH04_N_VAL CIFAR-10 training images split
    with a fixed seed, and the 10,000 official test images (fast mode: a few hundred)."""
    full, test = notebook.chapter_data("cifar10", n_train=notebook.pick(CH04_N_TRAIN + CH04_N_VAL, 500),
                                       n_val=notebook.pick(10000, 200))
    train_set, val_set = experiments.split_train_val(full, notebook.pick(CH04_N_VAL, 100))
    return train_set, val_set, test


def ch04_model_kwargs(pool):
    return {"pool": pool, "lrn": False, "input_size": CH04_CROP}


def ch04_job(pool, seed):
    name = f"fournet31-pool{pool.replace('/', 'x')}-s{seed}"
    cfg = dict(dataset="cifar10", model="fournet", model_kwargs=ch04_model_kwargs(pool),
               crop=CH04_CROP, image_size=32, flip=True, epochs=notebook.pick(CH04_EPOCHS, 2),
               batch_size=128, lr=CH04_LR, momentum=0.9, weight_decay=0.0005, schedule="budget",
               seed=seed, checkpoint_every=100, health_every=100, workers=2)
    return experiments.Job(name, cfg, describe={"pool": pool, "seed": seed})


def ch04_jobs():
    """Seed by seed, both arms at each seed: a run cut short leaves whole pairs."""
    return [ch04_job(pool, seed) for seed in notebook.pick(CH04_SEEDS, CH04_SEEDS[:2])
            for pool in CH04_POOLS]


def ch04_shapes(pool, side=CH04_CROP):
    """(pool1, pool2, pool3 output shapes (C, H, W), parameter count) of an arm."""
    from minialexnet.models import build_model
    m = build_model("fournet", **dict(ch04_model_kwargs(pool), input_size=side))
    x = np.zeros((1, 3, side, side), np.float32)
    shapes = [tuple(int(d) for d in m.features(x, f"pool{i}").shape[1:]) for i in (1, 2, 3)]
    return shapes, m.num_params()


def ch04_final(train_set, test_set):
    """After training: test-mode top-1 error (centre 31-px crops) on the 10,000 test
    images and on the training images; their difference is the overfitting gap."""
    def after(trainer):
        m, s, crop = trainer.mean, trainer.std, trainer.cfg["crop"]
        test = inference.evaluate(trainer.model, test_set, crop, m, std=s)
        tr = inference.evaluate(trainer.model, train_set, crop, m, std=s)
        return {"n_test": len(test_set), "n_train": len(train_set), "test": test, "train": tr,
                "gap": test["top1"] - tr["top1"]}
    return after


def compare_arms(a, b, labels=("3/2", "2/2"), what="lower"):
    """The verdict rule, fixed before the runs.  ``a``, ``b``: per-seed values of a
    quantity where lower is better (test error, overfitting gap) for arms
    ``labels``.  The difference of the means b - a (positive: a is lower) and its
    standard error sqrt(s_a^2 / n_a + s_b^2 / n_b) across seeds (s: the sample std);
    "<a> lower" only if the difference exceeds 2 standard errors, "<b> lower" if it is
    below -2, else "within noise".  Fewer than 2 seeds in an arm: no verdict."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    out = {"n_a": len(a), "n_b": len(b), "values_a": a, "values_b": b,
           "mean_a": float(np.mean(a)) if a else None, "mean_b": float(np.mean(b)) if b else None,
           "sd_a": float(np.std(a, ddof=1)) if len(a) > 1 else None,
           "sd_b": float(np.std(b, ddof=1)) if len(b) > 1 else None,
           "diff": None, "se": None, "z": None}
    if len(a) < 2 or len(b) < 2:
        out["verdict"] = f"not enough seeds ({len(a)} and {len(b)}; 2 per arm at least)"
        return out
    out["diff"] = out["mean_b"] - out["mean_a"]
    out["se"] = float(np.sqrt(out["sd_a"] ** 2 / len(a) + out["sd_b"] ** 2 / len(b)))
    out["z"] = out["diff"] / out["se"] if out["se"] > 0 else float("inf") * np.sign(out["diff"])
    if out["diff"] > 2 * out["se"]:
        out["verdict"] = f"{labels[0]} {what}"
    elif out["diff"] < -2 * out["se"]:
        out["verdict"] = f"{labels[1]} {what}"
    else:
        out["verdict"] = "within noise"
    return out


def run_ch04(log=print, data_sets=None):
    """{job name: record or None}: both arms at every seed; trains what is missing
    unless MINIALEXNET_RENDER_ONLY is set."""
    train_set, val_set, test = data_sets or ch04_data()
    results, runs = dirs("04_overlapping_pooling")
    return {job.name: experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                          after=ch04_final(train_set, test),
                                          train_missing=not RENDER_ONLY)
            for job in ch04_jobs()}


# ------------------------------------------------------------------ chapter 07
# Section 4.2: dropout 0.5 in fc6 and fc7 against none, in the small AlexNet (width 1,
# 28-px random crops + flips of the 32-px images, centre crops for evaluation).  The
# recipe: unit inputs, He init, biases 0; SGD batch 128, momentum 0.9, weight decay
# 5e-4, lr 0.01 divided by 10 after 50 %, 75 % and 90 % of the CH07_EPOCHS epochs
# (fixed in advance).  CH07_N_TRAIN training images (few enough that the net without
# dropout overfits within the budget), a fixed CH07_N_VAL-image validation split for
# the per-epoch held-out curves, the 10,000 official test images for the final errors.
# Seeds 0, 1, 2: with one seed both arms start from the same weights (dropout has
# none) and see the same batches and crops.
#
# Convergence, fixed here before the runs (the old chapter chose its loss level
# after them, and compared training-mode losses, which carry the masks' noise):
# (a) the first epoch at which the EVAL-MODE loss (dropout off, centre crops) on a
#     fixed CH07_N_FIT-image subset of the training images is <= CH07_LEVEL nats; the
#     other CH07_LEVELS are reported too, to show how the ratio depends on the level;
# (b) the epoch of the minimum held-out (validation) loss, where early stopping would
#     stop.  A run that never reaches a level counts as "not within CH07_EPOCHS": a
#     lower bound, said so wherever it enters a mean.
CH07_ARMS = (0.5, 0.0)                  # dropout p in fc6 and fc7
CH07_SEEDS = (0, 1, 2)
CH07_EPOCHS = 40
CH07_N_TRAIN = 3500
CH07_N_VAL = 1000
CH07_N_FIT = 1000
CH07_CROP = 28
CH07_LEVELS = (1.5, 1.25, 1.0)
CH07_LEVEL = 1.25                       # the primary level of criterion (a)
CH07_LR = 0.01
CH07_ENSEMBLE_K = 256                   # masks averaged in the ensemble check (section 4)
PAPER_07_RATIO = 2.0                    # 4.2: "roughly doubles the number of iterations"


def ch07_data():
    """(train, val, test): CH07_N_TRAIN + CH07_N_VAL CIFAR-10 training images split
    with a fixed seed, and the 10,000 official test images (fast mode: a few hundred)."""
    full, test = notebook.chapter_data("cifar10", n_train=notebook.pick(CH07_N_TRAIN + CH07_N_VAL, 500),
                                       n_val=notebook.pick(10000, 200))
    train_set, val_set = experiments.split_train_val(full, notebook.pick(CH07_N_VAL, 100))
    return train_set, val_set, test


def ch07_fit_subset(train_set, n=None, seed=0):
    """The fixed subset of the training images whose eval-mode loss criterion (a)
    watches: a seeded ``n`` of them (every run measures the same images)."""
    n = min(len(train_set), n or notebook.pick(CH07_N_FIT, 100))
    idx = np.sort(np.random.default_rng(seed).permutation(len(train_set))[:n])
    return data.Dataset(train_set.x[idx], train_set.y[idx], list(train_set.class_names), train_set.name,
                        "train", f"{train_set.key}-fit{n}-s{seed}", dict(train_set.extra))


def ch07_job(dropout, seed):
    """The small AlexNet, width 1, with dropout ``dropout`` in fc6 and fc7."""
    cfg = dict(dataset="cifar10", model="small-alexnet",
               model_kwargs={"width": 1.0, "dropout": dropout, "input_size": CH07_CROP},
               crop=CH07_CROP, image_size=32, flip=True, epochs=notebook.pick(CH07_EPOCHS, 2),
               batch_size=128, lr=CH07_LR, momentum=0.9, weight_decay=0.0005, schedule="budget",
               seed=seed, checkpoint_every=100, health_every=100, workers=2)
    return experiments.Job(f"small-alexnet-drop{dropout:g}-s{seed}", cfg,
                           describe={"dropout": dropout, "seed": seed})


def ch07_jobs():
    """Seed by seed, both arms at each seed: a run cut short leaves whole pairs."""
    return [ch07_job(p, seed) for seed in notebook.pick(CH07_SEEDS, CH07_SEEDS[:2]) for p in CH07_ARMS]


def first_epoch_at(history, level, key="fit_loss"):
    """Criterion (a): the first epoch whose ``key`` is <= ``level``, or None."""
    return next((row["epoch"] for row in history if row[key] <= level), None)


def epoch_of_min(history, key="heldout_loss"):
    """Criterion (b): the epoch of the minimum of ``key`` (the first, on ties)."""
    return min(history, key=lambda row: row[key])["epoch"] if history else None


def epochs_or_bound(epoch, epochs):
    """(value, censored): a reached epoch as it is; None (not reached within
    ``epochs``) as epochs + 1, a lower bound."""
    return (epochs + 1, True) if epoch is None else (epoch, False)


def paired_ratios(drop, none):
    """Per-seed ratios dropout / no dropout of (value, censored) pairs, as (ratio,
    kind): "exact", ">=" (only the dropout run censored: the ratio is at least this),
    "<=" (only the no-dropout run), or None (both censored: no ratio)."""
    out = []
    for (d, dc), (n, nc) in zip(drop, none):
        kind = None if dc and nc else ">=" if dc else "<=" if nc else "exact"
        out.append((None if kind is None else d / n, kind))
    return out


def ch07_ensemble(model, ds, crop, mean, std, k=None):
    """Section 4's check on a trained dropout net: the scaled test pass (all units,
    outputs x 0.5) against the arithmetic and the normalised geometric mean of ``k``
    thinned nets' softmax outputs on ``ds`` (masks drawn afresh, from draw 0).  The
    layers below drop6 do not depend on the mask, so they run once."""
    from minialexnet import backend
    k = k or notebook.pick(CH07_ENSEMBLE_K, 16)
    names = [s.name for s in model.steps]
    cut = names.index("drop6")
    head, tail = model.steps[:cut], model.steps[cut:]
    was_training = model.training
    model.eval()
    h = backend.to_device(backend.xp().asarray(data.EvalTransform(crop, mean, std)(ds.x), dtype=model.dtype), 0)
    for s in head:
        h = s.forward(h)

    def run_tail(training):
        out = h
        for s in tail:
            s.train(training)
            out = s.forward(out)
        z = backend.to_numpy(out).astype(np.float64)
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    try:
        scaled = run_tail(False)
        model.set_draw(0)
        logps = np.stack([run_tail(True) for _ in range(k)])         # (k, N, classes)
    finally:
        model.train(was_training)
    y = np.asarray(ds.y)

    def err(logp):
        return float((logp.argmax(1) != y).mean())

    def kl(p, q):                                 # mean over images of KL(p || q), nats
        return float((np.exp(p) * (p - q)).sum(1).mean())
    curve = []
    for kk in np.unique(np.round(np.geomspace(1, k, 12)).astype(int)):
        arith = np.log(np.exp(logps[:kk]).mean(0))
        geo = logps[:kk].mean(0)
        geo = geo - np.log(np.exp(geo).sum(1, keepdims=True))
        curve.append({"k": int(kk), "err_arith": err(arith), "err_geo": err(geo),
                      "kl_arith": kl(arith, scaled), "kl_geo": kl(geo, scaled)})
    single = [err(l) for l in logps]
    arith_all = np.exp(logps).mean(0)
    return {"n": len(y), "k": k, "err_scaled": err(scaled), "err_single_mean": float(np.mean(single)),
            "err_single_sd": float(np.std(single)), "curve": curve,
            "agree_arith": float((arith_all.argmax(1) == scaled.argmax(1)).mean())}


def ch07_final(train_set, val_set, test_set):
    """After training: eval-mode top-1/top-5 on the 10,000 test images and top-1 on all
    the training images (their difference: the overfitting gap); for a dropout net,
    the ensemble check on the validation images."""
    def after(trainer):
        m, s, crop = trainer.mean, trainer.std, trainer.cfg["crop"]
        test = inference.evaluate(trainer.model, test_set, crop, m, std=s)
        tr = inference.evaluate(trainer.model, train_set, crop, m, std=s)
        out = {"n_test": len(test_set), "n_train": len(train_set), "test": test, "train": tr,
               "gap": test["top1"] - tr["top1"]}
        if trainer.model.config.get("dropout"):
            out["ensemble"] = ch07_ensemble(trainer.model, val_set, crop, m, s)
        return out
    return after


def run_ch07(log=print, data_sets=None):
    """{job name: record or None}: both arms at every seed, each epoch's row with the
    eval-mode loss and error on the fixed training subset (fit_*) and on the validation
    images (heldout_*); trains what is missing unless MINIALEXNET_RENDER_ONLY is set."""
    train_set, val_set, test = data_sets or ch07_data()
    hook = experiments.eval_mode_hook(fit=ch07_fit_subset(train_set), heldout=val_set)
    results, runs = dirs("07_dropout")
    return {job.name: experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                          after=ch07_final(train_set, val_set, test), epoch_eval=hook,
                                          train_missing=not RENDER_ONLY)
            for job in ch07_jobs()}


if __name__ == "__main__":
    which = sys.argv[1:] or ["08"]
    for chapter in which:
        if chapter == "08":
            run_ch08()
        elif chapter == "08:control":            # Figure 3's control: one tower, seed 1
            run_ch08(ch08_control())
        elif chapter == "08:imagenette":         # the paper's AlexNet on real photos
            run_ch08b()
        elif chapter == "04":
            run_ch04()
        elif chapter == "07":
            run_ch07()
        elif chapter == "01":
            run_ch01()
        elif chapter == "01:raw":                # the raw-pixel health run
            run_ch01_raw()
        elif chapter.startswith("01:"):          # one setting: 01:deep
            run_ch01([chapter[3:]])
        else:
            sys.exit(f"jobs.py: unknown chapter {chapter!r} (have: 01, 01:<setting>, 01:raw, 04, 07, 08, "
                     "08:control, 08:imagenette)")
