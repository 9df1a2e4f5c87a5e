"""Chapter 07's experiment (chapters/jobs.py, "chapter 07"), fixed before its runs: the
two arms differ only in dropout, the recipe, and the convergence criteria (first epoch
at an eval-mode loss level, epoch of the minimum held-out loss, censored runs as
lower bounds); the ensemble check on a tiny dropout net."""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")

from minialexnet import backend, data, inference, train   # noqa: E402
from minialexnet.backend import np   # noqa: E402


@pytest.fixture(autouse=True)
def numpy_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy")


def test_ch07_jobs_differ_only_in_dropout_and_start_from_the_same_weights():
    jobs_ = jobs.ch07_jobs()
    assert len({j.name for j in jobs_}) == len(jobs_) == 2 * len(jobs.CH07_SEEDS)
    for seed in jobs.CH07_SEEDS:
        pair = [j for j in jobs_ if j.describe["seed"] == seed]
        assert sorted(j.describe["dropout"] for j in pair) == sorted(jobs.CH07_ARMS)
        assert [j.cfg["model_kwargs"]["dropout"] for j in pair] == [j.describe["dropout"] for j in pair]
        a, b = (dict(j.cfg, model_kwargs={k: v for k, v in j.cfg["model_kwargs"].items() if k != "dropout"})
                for j in pair)
        assert a == b and a["seed"] == seed
    # Same seed, same initial weights: dropout has no parameters and draws nothing at build.
    models = []
    for job in jobs_[:2]:
        backend.use("numpy", seed=job.cfg["seed"])
        models.append(train.make_model(train.default_config(**{**job.cfg, "out": None}), 10))
    wa, wb = (m.state_dict() for m in models)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert [s.name for s in models[0].steps if s.name.startswith("drop")] == ["drop6", "drop7"]
    assert not [s.name for s in models[1].steps if s.name.startswith("drop")]


def test_ch07_recipe_is_the_issue_s():
    cfg = jobs.ch07_job(0.5, 0).cfg
    full = train.default_config(**{**cfg, "out": None})
    assert (full["schedule"], full["lr"], full["batch_size"], full["momentum"], full["weight_decay"]) == \
        ("budget", 0.01, 128, 0.9, 0.0005)
    assert tuple(full["step_fractions"]) == (0.5, 0.75, 0.9) and full["input_scale"] == "unit"
    assert full["epochs"] == jobs.CH07_EPOCHS == 40 and full["flip"] and full["crop"] == 28
    assert cfg["model_kwargs"]["width"] == 1.0 and jobs.CH07_SEEDS == (0, 1, 2)
    assert jobs.CH07_LEVEL in jobs.CH07_LEVELS


def test_ch07_long_jobs_are_the_40_epoch_pairs_at_3x_the_epochs():
    """The longer budget (named after the 40-epoch runs) changes the epochs, and
    with them the schedule's milestones, and nothing else; its names are new, so the
    40-epoch records are neither reused nor overwritten."""
    short, long_ = jobs.ch07_jobs(), jobs.ch07_jobs(long=True)
    assert jobs.CH07_LONG_EPOCHS == 3 * jobs.CH07_EPOCHS
    assert [j.name + "-e120" for j in short] == [j.name for j in long_]
    for a, b in zip(short, long_):
        assert b.cfg["epochs"] == jobs.CH07_LONG_EPOCHS and dict(b.cfg, epochs=a.cfg["epochs"]) == a.cfg
        assert b.describe == dict(a.describe, long=True)
    assert jobs._chapter_runs()["07:long"] is not jobs._chapter_runs()["07"]


def rows(fit, held):
    return [{"epoch": i + 1, "fit_loss": f, "heldout_loss": h} for i, (f, h) in enumerate(zip(fit, held))]


def test_convergence_criteria():
    h = rows([2.0, 1.3, 1.25, 1.1, 0.9], [2.1, 1.6, 1.5, 1.5, 1.7])
    assert jobs.first_epoch_at(h, 1.25) == 3            # "reaching" includes the level itself
    assert jobs.first_epoch_at(h, 1.0) == 5
    assert jobs.first_epoch_at(h, 0.5) is None          # not within the run
    assert jobs.epoch_of_min(h) == 3                    # the first of two equal minima
    assert jobs.epoch_of_min(h, "fit_loss") == 5
    assert jobs.epochs_or_bound(None, 40) == (41, True) and jobs.epochs_or_bound(7, 40) == (7, False)


def test_ratios_of_censored_runs_are_bounds():
    out = jobs.paired_ratios([(12, False), (41, True), (41, True), (6, False)],
                             [(6, False), (10, False), (41, True), (41, True)])
    assert out[0] == (2.0, "exact")
    assert out[1] == (4.1, ">=")           # dropout never reached it: at least 41 / 10
    assert out[2] == (None, None)          # neither did: no ratio
    assert out[3][1] == "<="


def test_fit_subset_is_fixed_and_drawn_from_the_training_images():
    full = data.load_dataset("synthetic", n=60, size=32)
    a, b = jobs.ch07_fit_subset(full, 20), jobs.ch07_fit_subset(full, 20)
    assert len(a) == 20 and (a.x == b.x).all() and (a.y == b.y).all()
    have = {x.tobytes() for x in full.x}
    assert all(x.tobytes() in have for x in a.x)
    assert len({x.tobytes() for x in a.x}) == 20      # no image twice


def test_ensemble_check_on_a_tiny_dropout_net():
    ds = data.load_dataset("synthetic", n=64, size=32)
    mean = data.mean_image(ds.x).astype(np.float32)
    model = train.make_model(train.default_config(model="small-alexnet", model_kwargs={"width": 0.125},
                                                  dropout=0.5, crop=28, out=None), ds.num_classes)
    model.train()
    out = jobs.ch07_ensemble(model, ds, 28, mean, None, k=8)
    assert model.training                                   # the mode is restored
    assert out["err_scaled"] == inference.evaluate(model, ds, 28, mean)["top1"]
    assert [c["k"] for c in out["curve"]][-1] == 8 and out["n"] == 64
    # The thinned nets differ (fresh masks per pass), so single nets' errors spread and
    # the ensembles are not the scaled pass.
    assert out["err_single_sd"] > 0 and out["curve"][-1]["kl_arith"] > 0
    assert all(math.isfinite(c["kl_geo"]) and c["kl_geo"] >= -1e-12 for c in out["curve"])
    # Deterministic: masks are drawn from draw 0 every time.
    assert jobs.ch07_ensemble(model, ds, 28, mean, None, k=8) == out
