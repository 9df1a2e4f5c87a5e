"""Chapter 03's experiment (chapters/jobs.py, "chapter 03"): the three arms, the LRN
constants converted from cuda-convnet, and the competition measure, fixed before the runs."""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")

from minialexnet.layers import LocalResponseNorm   # noqa: E402


def test_ch03_arms_differ_only_in_the_lrn_layers():
    jobs_ = jobs.ch03_jobs()
    assert len({j.name for j in jobs_}) == len(jobs_)
    for seed in {j.describe["seed"] for j in jobs_}:
        triple = {j.describe["arm"]: j for j in jobs_ if j.describe["seed"] == seed}
        assert sorted(triple) == sorted(jobs.CH03_ARMS)
        rest = [dict(j.cfg, model_kwargs={k: v for k, v in j.cfg["model_kwargs"].items()
                                          if k not in ("lrn", "lrn_args")}) for j in triple.values()]
        assert all(r == rest[0] for r in rest) and rest[0]["seed"] == seed
        assert rest[0]["lr"] == jobs.CH03_LR and rest[0]["schedule"] == "budget"
        kw = {arm: j.cfg["model_kwargs"] for arm, j in triple.items()}
        assert kw["none"]["lrn"] is False and "lrn_args" not in kw["none"]
        assert kw["lrn"]["lrn_args"] == jobs.CH03_LRN
        # the control: the same layers, alpha = 0 (b = a / k^beta), nothing else changed
        assert kw["alpha0"]["lrn_args"] == dict(jobs.CH03_LRN, alpha=0.0)


def test_ch03_arms_start_from_the_same_weights():
    # LRN has no parameters: at one seed the three nets must begin identical
    first = [jobs.ch03_initial_model(jobs.ch03_job(arm, 1)) for arm in jobs.CH03_ARMS]
    p0 = first[0].state_dict()
    for m in first[1:]:
        p = m.state_dict()
        assert p.keys() == p0.keys() and all(np.array_equal(p[k], p0[k]) for k in p0)
    other = jobs.ch03_initial_model(jobs.ch03_job("lrn", 2)).state_dict()
    assert not np.array_equal(other["conv1.W"], p0["conv1.W"])


def test_ch03_lrn_is_cuda_convnets_layer_on_raw_pixels():
    """Our layer on unit inputs (x / 64) with CH03_LRN, times 64, is cuda-convnet's
    cmrnorm on raw pixels x: b = x (k + scale / size * sum_window x^2)^-pow."""
    cc = jobs.CUDA_CONVNET_CMRNORM
    assert math.isclose(jobs.CH03_LRN["alpha"], 0.001 / 9 * 64 ** 2)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0, 40, (2, 32, 3, 3)), 0)       # raw-pixel-scale activities
    ours = LocalResponseNorm(**jobs.CH03_LRN).astype(np.float64).forward(x / jobs.RAW_PIXEL_STD)
    half = cc["size"] // 2
    window = np.stack([(x[:, max(0, c - half):c + half + 1] ** 2).sum(1) for c in range(x.shape[1])], 1)
    cuda_convnet = x * (jobs.CH03_LRN["k"] + cc["scale"] / cc["size"] * window) ** -cc["pow"]
    np.testing.assert_allclose(ours * jobs.RAW_PIXEL_STD, cuda_convnet, rtol=1e-12)


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
