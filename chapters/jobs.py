"""The chapters' long runs as resumable jobs (``minialexnet.experiments``).

A notebook's full mode calls the functions here: each trains what is missing and
returns the records of what exists, so re-running a notebook only renders.  The same
jobs run from a terminal, in the background, with checkpoints and a log:

    cd chapters && MINIALEXNET_DATA=../../shared/data nohup python jobs.py 08 > ../runs/jobs-08.log 2>&1 &

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

from minialexnet import data, experiments, notebook, train   # noqa: E402

FAST = notebook.fast_mode()


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
        centre = train.evaluate(trainer.model, test_set, crop, m, std=s)
        ten = train.evaluate(trainer.model, test_set, crop, m, ten_crop=True, std=s)
        return {"n_test": len(test_set), "centre": centre, "ten_crop": ten}
    return after


def run_ch08(jobs=None, log=print):
    train_set, val_set, test = ch08_data()
    results, runs = dirs("08_full_training")
    out = {}
    for job in jobs or [ch08_job()]:
        out[job.name] = experiments.run_job(job, train_set, val_set, results, runs, log=log,
                                            after=ch08_final(test))
    return out


if __name__ == "__main__":
    which = sys.argv[1:] or ["08"]
    for chapter in which:
        if chapter == "08":
            run_ch08()
        else:
            sys.exit(f"jobs.py: unknown chapter {chapter!r} (have: 08)")
