"""Chapter 08's jobs (chapters/jobs.py): what a finished job records for Figure 3, the
rule that decides Figure 3 against the one-tower control, and the control's key."""

import pathlib
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")

from minialexnet import backend, data, train, viz  # noqa: E402


def small_net(towers):
    backend.use("numpy", seed=towers)
    return train.make_model(train.default_config(**jobs.ch08_job(towers=towers).cfg), 10)


@pytest.mark.parametrize("towers, keys", [(1, ["conv1.W"]), (2, ["conv1.tower0.W", "conv1.tower1.W"])])
def test_conv1_colourfulness_is_per_filter_per_tower(towers, keys):
    model = small_net(towers)
    col = jobs.conv1_colourfulness(model)
    assert list(col) == keys
    for k in keys:
        W = model.params()[k]
        assert col[k] == pytest.approx(viz.colourfulness(W).tolist(), abs=0)
        assert len(col[k]) == len(W)


def test_a_finished_08_job_records_its_errors_and_conv1_colourfulness():
    """The record keeps what Figure 3's verdict needs: the checkpoint is not committed."""
    model = small_net(2)
    rng = np.random.default_rng(0)
    test_set = data.Dataset(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 6),
                            [str(i) for i in range(10)], "x", "test", "k")
    trainer = types.SimpleNamespace(model=model, mean=np.zeros((32, 32, 3), np.float32), std=None,
                                    cfg={"crop": 28})
    final = jobs.ch08_final(test_set)(trainer)
    assert final["n_test"] == 6 and {"top1", "top5"} <= set(final["centre"]) and "top1" in final["ten_crop"]
    assert final["conv1_colourfulness"] == jobs.conv1_colourfulness(model)


def test_fig3_control_threshold_is_the_larger_of_halves_and_random_splits():
    rng = np.random.default_rng(3)
    same = rng.normal(0.7, 0.05, 32)
    out = jobs.fig3_control(same)
    perms = np.random.default_rng(7)
    brute = np.array([abs(same[p[:16]].mean() - same[p[16:]].mean())
                      for p in (perms.permutation(32) for _ in range(4000))])
    # the 95th percentile of random halvings, up to the sampling of 10,000 splits
    assert out["split_percentile"] == pytest.approx(np.percentile(brute, 95), rel=0.1)
    assert out["halves"] == pytest.approx(abs(same[:16].mean() - same[16:].mean()))
    assert out["threshold"] == max(out["halves"], out["split_percentile"])
    # a control whose halves differ (ordered filters) sets the threshold by its halves
    ordered = np.sort(same)
    out2 = jobs.fig3_control(ordered)
    assert out2["threshold"] == out2["halves"] > out2["split_percentile"]


def test_tower_gap():
    assert jobs.tower_gap([0.2, 0.4], [0.5, 0.9]) == pytest.approx(0.4)
    assert jobs.tower_gap([0.5, 0.9], [0.2, 0.4]) == pytest.approx(0.4)


def test_imagenette_control_key_trains_the_one_tower_net_with_the_main_recipe(monkeypatch):
    ran = []
    monkeypatch.setattr(jobs, "run_ch08b", lambda js=None, **kw: ran.append(js))
    jobs._chapter_runs()["08:imagenette:control"]()
    (control,), main = ran[0], jobs.ch08b_job()
    assert control.cfg["model_kwargs"]["towers"] == 1 and control.name != main.name
    same = lambda cfg: {k: v for k, v in cfg.items() if k != "model_kwargs"}
    assert same(control.cfg) == same(main.cfg)
    assert {k: v for k, v in control.cfg["model_kwargs"].items() if k != "towers"} == \
        {k: v for k, v in main.cfg["model_kwargs"].items() if k != "towers"}


def test_random_split_gaps_are_gaps_between_two_halves():
    """16 zeros and 16 ones: a half holding k ones has mean k / 16, the other half
    (16 - k) / 16, so every gap is |k - 8| / 8, and k follows the hypergeometric law."""
    c = np.repeat([0.0, 1.0], 16)
    gaps = jobs.random_split_gaps(c, 20_000, np.random.default_rng(0))
    k8 = gaps * 8
    assert np.allclose(k8, np.round(k8)) and k8.max() <= 8
    from math import comb
    p_even = comb(16, 8) ** 2 / comb(32, 16)          # the split puts 8 ones in each half
    assert (gaps == 0).mean() == pytest.approx(p_even, abs=0.01)


def test_recorded_colourfulness_reads_complete_records_only():
    col = {"conv1.tower0.W": [0.1, 0.2], "conv1.tower1.W": [0.5, 0.7]}
    rec = {"status": "complete", "final": {"conv1_colourfulness": col}}
    out = jobs.recorded_colourfulness(rec)
    assert set(out) == {"tower 0", "tower 1"}
    assert out["tower 1"].tolist() == [0.5, 0.7] and isinstance(out["tower 0"], np.ndarray)
    one = jobs.recorded_colourfulness({"status": "complete", "final": {"conv1_colourfulness": {"conv1.W": [0.3]}}})
    assert list(one) == ["one tower"]
    assert jobs.recorded_colourfulness(None) is None
    assert jobs.recorded_colourfulness({**rec, "status": "running"}) is None
    assert jobs.recorded_colourfulness({"status": "complete", "final": {"n_test": 6}}) is None   # an older record


def test_lr_phases_group_epochs_by_learning_rate():
    val = [0.9, 0.5, 0.4, 0.3, 0.28, 0.27]
    lrs = [1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4]
    phases = jobs.lr_phases([{"lr": lr, "val_top1": v} for lr, v in zip(lrs, val)])
    assert phases == [
        {"lr": 1e-2, "first": 1, "last": 3, "before": 0.9, "after": 0.4},
        {"lr": 1e-3, "first": 4, "last": 5, "before": 0.4, "after": 0.28},
        {"lr": 1e-4, "first": 6, "last": 6, "before": 0.28, "after": 0.27}]
    assert jobs.lr_phases([{"lr": 0.01, "val_top1": 0.5}]) == [
        {"lr": 0.01, "first": 1, "last": 1, "before": 0.5, "after": 0.5}]
