"""Chapter 03's experiment (chapters/jobs.py, "chapter 03"): the two arms and their
validation grids, the LRN constants converted from cuda-convnet, the alpha = 0 control,
and the competition measure, all fixed before the runs."""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")

from minialexnet.layers import LocalResponseNorm   # noqa: E402


def _strip_lrn(job):
    kw = {k: v for k, v in job.cfg["model_kwargs"].items() if k not in ("lrn", "lrn_args")}
    return dict(job.cfg, model_kwargs=kw)


def test_ch03_grids_differ_only_in_the_lrn_layers_and_the_validated_constants():
    grid = {arm: jobs.ch03_grid_jobs(arm) for arm in jobs.CH03_ARMS}
    assert sorted({j.describe["lr"] for j in grid["none"]}) == sorted(jobs.CH03_LRS)
    assert sorted({(j.describe["alpha"], j.describe["lr"]) for j in grid["lrn"]}) == \
        sorted((a, lr) for a in jobs.CH03_ALPHAS for lr in jobs.CH03_LRS)
    every = [j for g in grid.values() for j in g]
    assert len({j.name for j in every}) == len(every)
    for job in grid["lrn"]:
        (twin,) = [j for j in grid["none"] if j.cfg["lr"] == job.cfg["lr"]]
        assert _strip_lrn(job) == _strip_lrn(twin) and job.cfg["seed"] == 0
        assert job.cfg["schedule"] == "budget"
        assert twin.cfg["model_kwargs"]["lrn"] is False and "lrn_args" not in twin.cfg["model_kwargs"]
        assert job.cfg["model_kwargs"]["lrn_args"] == dict(jobs.CH03_LRN, alpha=job.describe["alpha"])
    assert jobs.CH03_LRN["k"] == 1.0 and jobs.CH03_ALPHAS == (jobs.CH03_LRN["alpha"], jobs.CH03_LRN["alpha"] / 10)


def test_ch03_arms_start_from_the_same_weights():
    # LRN has no parameters: at one seed the nets must begin identical
    first = [jobs.ch03_initial_model(jobs.ch03_job(arm, 1)) for arm in jobs.CH03_ARMS]
    p0 = first[0].state_dict()
    for m in first[1:]:
        p = m.state_dict()
        assert p.keys() == p0.keys() and all(np.array_equal(p[k], p0[k]) for k in p0)
    other = jobs.ch03_initial_model(jobs.ch03_job("lrn", 2)).state_dict()
    assert not np.array_equal(other["conv1.W"], p0["conv1.W"])


def test_ch03_alpha0_control_is_the_no_lrn_net():
    """With cuda-convnet's k = 1, LRN at alpha = 0 divides by 1^beta: the untrained
    control arm computes exactly what the none net computes."""
    from minialexnet import backend
    x = np.random.default_rng(0).standard_normal((4, 3, jobs.CH03_CROP, jobs.CH03_CROP)).astype(np.float32)
    outs = []
    for arm in ("none", "alpha0"):
        net = jobs.ch03_initial_model(jobs.ch03_job(arm, 0))
        net.eval()
        outs.append(backend.to_numpy(net.forward(x)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_ch03_lrn_is_cuda_convnets_layer_on_raw_pixels():
    """Our layer on unit inputs (x / 64) with CH03_LRN, times 64, is cuda-convnet's
    cmrnorm on raw pixels x: b = x (1 + scale / size * sum_window x^2)^-pow."""
    cc = jobs.CUDA_CONVNET_CMRNORM
    assert math.isclose(jobs.CH03_LRN["alpha"], 0.001 / 9 * 64 ** 2)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0, 40, (2, 32, 3, 3)), 0)       # raw-pixel-scale activities
    ours = LocalResponseNorm(**jobs.CH03_LRN).astype(np.float64).forward(x / jobs.RAW_PIXEL_STD)
    half = cc["size"] // 2
    window = np.stack([(x[:, max(0, c - half):c + half + 1] ** 2).sum(1) for c in range(x.shape[1])], 1)
    cuda_convnet = x * (1.0 + cc["scale"] / cc["size"] * window) ** -cc["pow"]
    np.testing.assert_allclose(ours * jobs.RAW_PIXEL_STD, cuda_convnet, rtol=1e-12)


def _record(job, val_top1, loss=1.0, status="complete"):
    return {"name": job.name, "status": status, "describe": job.describe,
            "history": [{"epoch": 1, "val_top1": 0.9, "train_loss": 2.0},
                        {"epoch": 2, "val_top1": val_top1, "train_loss": loss}]}


def test_ch03_winner_is_the_lowest_final_validation_error_and_nan_loses():
    grid = jobs.ch03_grid_jobs("lrn")
    recs = [_record(j, 0.40 - 0.01 * i) for i, j in enumerate(grid)]
    assert jobs.ch03_winner(recs)["name"] == grid[-1].name
    recs[-1] = _record(grid[-1], 0.10, loss=float("nan"))             # diverged: loses
    assert jobs.ch03_winner(recs)["name"] == grid[-2].name
    tie = [_record(grid[0], 0.3, loss=1.2), _record(grid[1], 0.3, loss=1.1)]
    assert jobs.ch03_winner(tie)["name"] == grid[1].name               # tie: the lower loss
    assert jobs.ch03_winner([None]) is None


def test_ch03_plan_runs_the_winners_seeds_only_after_the_whole_grid():
    grid = jobs.ch03_grid_jobs("none")
    recs = {j.name: _record(j, 0.5) for j in grid}
    recs[grid[1].name] = _record(grid[1], 0.3)
    recs[grid[2].name] = _record(grid[2], 0.2, status="running")      # not done yet: no winner
    assert jobs.ch03_plan(recs)["none"][1] is None
    assert [j.name for j in jobs.ch03_jobs(recs)] == [j.name for arm in jobs.CH03_ARMS
                                                     for j in jobs.ch03_grid_jobs(arm)]
    recs[grid[2].name] = _record(grid[2], 0.6)
    _, win, seeds = jobs.ch03_plan(recs)["none"]
    assert win["name"] == grid[1].name
    assert [j.cfg["seed"] for j in seeds] == list(jobs.CH03_SEEDS)
    assert seeds[0].name == grid[1].name                                # seed 0 is the grid run
    assert all(j.cfg["lr"] == grid[1].cfg["lr"] for j in seeds)
    names = [j.name for j in jobs.ch03_jobs(recs)]
    assert len(names) == len(set(names)) and seeds[2].name in names


class _Maps:
    """A stand-in net whose pool1/pool2 outputs are given arrays."""

    def __init__(self, pool1, pool2):
        self.maps = {"pool1": pool1, "pool2": pool2}

    def eval(self):
        pass

    def features(self, x, layer):
        return self.maps[layer]


def test_ch03_competition_measures_alpha_times_the_window_sum():
    lrn = {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}
    a = np.array([1.0, 2.0, 0.0, 3.0]).reshape(1, 4, 1, 1)
    # windows of 3 (clipped): ch0 1+4, ch1 1+4+0, ch3 0+9; ch2 is inactive (a = 0)
    out = jobs.ch03_competition(_Maps(a, 2 * a), None, lrn)
    terms = sorted([0.5 * 5, 0.5 * 5, 0.5 * 9])
    assert math.isclose(out["norm1"]["median"], np.median(terms))
    assert math.isclose(out["norm1"]["share_above_k"], 3 / 3)          # all above k = 2
    assert math.isclose(out["norm2"]["median"], 4 * np.median(terms))  # doubled a: 4x
    assert math.isclose(out["norm1"]["median_gain_vs_ceiling"], (1 + 2.5 / 2) ** -0.75)
    assert math.isclose(out["norm1"]["active"], 3 / 4)


@pytest.mark.parametrize("median_over_k, competes", [(0.019 / 2, False), (0.14, False),
                                                     (0.16, True), (1.4, True)])
def test_ch03_competes_when_the_median_unit_loses_a_tenth_of_its_gain(median_over_k, competes):
    # the old run's 0.019 against k = 2 did not compete; the rule's edge is 0.151 k
    assert jobs.ch03_competes({"median_gain_vs_ceiling": (1 + median_over_k) ** -0.75}) is competes


def test_fresh_rereads_records_another_queue_completed_after_this_one_skipped_them(tmp_path, monkeypatch):
    """A queue that skipped a locked grid run holds its record as it was ("running");
    before choosing a winner it must see the other queue's finished record."""
    import json
    monkeypatch.setattr(jobs, "dirs", lambda chapter: (str(tmp_path), str(tmp_path / "runs")))
    job = jobs.ch03_grid_jobs("none")[0]
    stale = _record(job, 0.5, status="running")
    (tmp_path / f"{job.name}.json").write_text(json.dumps(_record(job, 0.4)))
    got = jobs.fresh({job.name: stale, "never-written": None}, "03_local_response_normalization")
    assert got[job.name]["status"] == "complete" and got["never-written"] is None


@pytest.mark.parametrize("arm, alpha", [("lrn", jobs.CH03_ALPHAS[1]), ("lrn", jobs.CH03_ALPHAS[0]),
                                        ("none", None)])
def test_ch03_final_measures_competition_with_the_jobs_own_lrn_constants(arm, alpha, monkeypatch):
    """The trained lrn net's competition is measured with the alpha its grid chose (not
    the module default); the none net with what cuda-convnet's layer would do."""
    import types
    seen = []
    monkeypatch.setattr(jobs, "errors_after_training", lambda *a: lambda trainer: {})
    monkeypatch.setattr(jobs, "ch03_initial_model", lambda job, n: "initial")
    monkeypatch.setattr(jobs, "ch03_competition", lambda model, x, lrn: seen.append((model, lrn)))
    monkeypatch.setattr(jobs.data, "EvalTransform", lambda crop, m, std: (lambda x: x))
    job = jobs.ch03_job(arm, 0, jobs.CH03_LRS[0], alpha)
    trainer = types.SimpleNamespace(mean=0, std=1, cfg={"crop": 28}, model="trained")
    test_set = types.SimpleNamespace(x=np.zeros((jobs.CH03_N_PROBE + 5, 1)))
    out = jobs.ch03_final(job, types.SimpleNamespace(num_classes=10), test_set)(trainer)
    want = dict(jobs.CH03_LRN, alpha=alpha) if arm == "lrn" else jobs.CH03_LRN
    assert [m for m, _ in seen] == ["trained", "initial"]
    assert all(lrn == want for _, lrn in seen)
    assert out["n_probe"] == jobs.CH03_N_PROBE
