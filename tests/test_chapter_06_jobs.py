"""The rules of chapter 06's experiments (chapters/jobs.py, "chapter 06"), fixed before
their runs: the PCA arms differ only in the colour noise, the crops-and-flips arms only
in the augmentation (same 28-px net), what is measured after training, and the paired
verdict for the ten-crop test."""

import math
import pathlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")

from minialexnet import data, train   # noqa: E402
from minialexnet.models import build_model   # noqa: E402


def without(cfg, *keys):
    return {k: v for k, v in cfg.items() if k not in keys}


# ---------------------------------------------------------------- PCA colour
def test_ch06_pca_arms_differ_only_in_the_colour_noise():
    jobs_ = jobs.ch06_jobs()
    assert len({j.name for j in jobs_}) == len(jobs_)
    seeds = {j.describe["seed"] for j in jobs_}
    assert len(seeds) >= 2
    for seed in seeds:
        pair = [j for j in jobs_ if j.describe["seed"] == seed]
        assert sorted(j.describe["arm"] for j in pair) == sorted(jobs.CH06_ARMS)
        a, b = (without(j.cfg, "pca") for j in pair)
        assert a == b and a["seed"] == seed
        assert {j.cfg["pca"] for j in pair} == {True, False}
        for j in pair:      # the arm's name and its config agree
            assert j.cfg["pca"] is (j.describe["arm"] == "crops+flips+PCA") is j.describe["pca"]


def test_ch06_pca_jobs_follow_the_recipe():
    for j in jobs.ch06_jobs():
        c = j.cfg
        assert (c["model"], c["crop"], c["image_size"], c["flip"]) == ("small-alexnet", 56, 64, True)
        assert (c["momentum"], c["weight_decay"], c["schedule"], c["lr"]) == (0.9, 0.0005, "budget", 0.01)
        # unit inputs, He init and the model's dropout: left to the library's defaults
        assert not {"input_scale", "dropout"} & set(c)
        assert not {"init_std", "init_bias"} & set(c["model_kwargs"])
        full = train.default_config(**c, out=None)
        assert full["input_scale"] == "unit" and full["dropout"] is None
    model = build_model("small-alexnet", input_size=jobs.CH06_CROP)
    assert model.config["dropout"] == 0.5


def test_ch06_only_the_pca_arm_gets_a_colour_pca(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path))
    ds = data.load_dataset("synthetic", split="train", size=64, n=16)
    for j in jobs.ch06_jobs()[:2]:
        pca = train.colour_pca(ds, train.default_config(**j.cfg, out=None))
        assert (pca is not None) is j.cfg["pca"]


def test_ch06_final_measures_centre_ten_crop_and_training_error(monkeypatch):
    calls = []

    def fake_evaluate(model, ds, crop, mean, ten_crop=False, std=None, **kw):
        calls.append((ds.split, crop, ten_crop))
        return {"top1": {("test", False): 0.40, ("test", True): 0.37, ("train", False): 0.25}[(ds.split, ten_crop)],
                "top5": 0.1}
    monkeypatch.setattr(jobs.inference, "evaluate", fake_evaluate)
    train_set = data.Dataset(np.zeros((3, 64, 64, 3), np.uint8), np.zeros(3, int), ["a"], "x", "train", "k")
    test_set = data.Dataset(np.zeros((5, 64, 64, 3), np.uint8), np.zeros(5, int), ["a"], "x", "test", "k")
    trainer = SimpleNamespace(model=None, mean=None, std=None, cfg={"crop": 56})
    out = jobs.ch06_final(train_set, test_set)(trainer)
    assert sorted(calls) == [("test", 56, False), ("test", 56, True), ("train", 56, False)]
    assert (out["n_test"], out["n_train"]) == (5, 3)
    assert math.isclose(out["ten_minus_centre"], 0.37 - 0.40)      # ten-crop minus centre crop
    assert math.isclose(out["gap"], 0.40 - 0.25)                   # test minus training, centre crop


@pytest.mark.parametrize("deltas, verdict", [
    # ten-crop lower by 1 point in every run, sd 0.2 points: s.e. 0.08, far beyond 2 s.e.
    ([-0.010, -0.012, -0.008, -0.011, -0.009, -0.010], "ten-crop lower"),
    # the same mean with a spread of 2 points: s.e. 0.8 points, within noise
    ([-0.03, 0.01, -0.02, 0.01, -0.03, 0.0], "within noise"),
    ([0.010, 0.012, 0.008], "ten-crop higher"),
    # at the edge: deviations of +-1 point over 4 runs, sd 1.155, s.e. 0.577, 2 s.e. 1.155 points
    ([-0.002, -0.022, -0.002, -0.022], "ten-crop lower"),          # mean -1.2 points
    ([-0.001, -0.021, -0.001, -0.021], "within noise"),            # mean -1.1 points
])
def test_ch06_ten_crop_verdict_needs_two_standard_errors(deltas, verdict):
    assert jobs.paired_change(deltas, ("ten-crop lower", "ten-crop higher"))["verdict"] == verdict


def test_ch06_paired_change_numbers():
    out = jobs.paired_change([-0.01, -0.02, -0.03])
    assert math.isclose(out["mean"], -0.02) and math.isclose(out["sd"], 0.01)
    assert math.isclose(out["se"], 0.01 / math.sqrt(3)) and math.isclose(out["z"], -0.02 / (0.01 / math.sqrt(3)))
    assert jobs.paired_change([-0.5])["verdict"].startswith("not enough runs")


def test_ch06_pca_verdict_reuses_compare_arms():
    # PCA arm first: a positive difference (no PCA minus PCA) means PCA is lower
    out = jobs.compare_arms([0.40, 0.41, 0.39], [0.42, 0.43, 0.425], labels=("PCA", "no PCA"))
    assert out["verdict"] == "PCA lower" and math.isclose(out["diff"], 0.025)


# ---------------------------------------------------------------- crops and flips
def test_ch06_crops_arms_differ_only_in_the_augmentation():
    jobs_ = jobs.ch06_aug_jobs()
    assert len({j.name for j in jobs_}) == len(jobs_)
    for seed in {j.describe["seed"] for j in jobs_}:
        aug, none = sorted((j for j in jobs_ if j.describe["seed"] == seed),
                           key=lambda j: jobs.CH06_AUG_ARMS.index(j.describe["arm"]))
        assert (aug.cfg["flip"], aug.cfg["image_size"]) == (True, 32)
        assert (none.cfg["flip"], none.cfg["image_size"]) == (False, jobs.CH06_AUG_CROP)
        assert without(aug.cfg, "flip", "image_size") == without(none.cfg, "flip", "image_size")
        assert aug.cfg["crop"] == jobs.CH06_AUG_CROP == aug.cfg["model_kwargs"]["input_size"]


def test_ch06_no_augmentation_sees_the_pixels_of_the_centre_crop_test():
    ds = data.load_dataset("synthetic", split="train", size=32, n=8)
    view = jobs.centre_view(ds)
    assert view.image_shape == (28, 28, 3) and view.key != ds.key
    assert np.array_equal(view.x, data.center_crop(ds.x, 28))
    assert np.array_equal(view.y, ds.y)
    # and the arm's transform cuts nothing more: the whole view, never flipped
    job = jobs.ch06_aug_job("none", 0)
    t = data.TrainTransform(job.cfg["crop"], flip=job.cfg["flip"])
    assert np.array_equal(t(view.x, np.random.default_rng(0)),
                          data.EvalTransform(28)(ds.x))


def test_ch06_crops_views_train_on_the_right_images():
    ds = data.load_dataset("synthetic", split="train", size=32, n=8)
    sets = (ds, ds, ds)
    aug, none = (jobs.ch06_aug_views(jobs.ch06_aug_job(arm, 0), *sets) for arm in jobs.CH06_AUG_ARMS)
    assert all(v is ds for v in aug)
    assert all(v.image_shape == (28, 28, 3) for v in none)


def test_ch06_unknown_arm_is_one_clear_error():
    with pytest.raises(ValueError, match="arm must be one of"):
        jobs.ch06_job("pca", 0)
    with pytest.raises(ValueError, match="arm must be one of"):
        jobs.ch06_aug_job("flips", 0)


def test_ch06_paired_change_with_no_spread_is_not_nan():
    same = jobs.paired_change([0.0, 0.0, 0.0])
    assert same["z"] == 0.0 and same["verdict"] == "within noise"
    assert jobs.paired_change([-0.01, -0.01])["verdict"] == "lower"
