"""The rules of chapter 01's experiment (chapters/jobs.py), fixed before its runs:
the sweep's winner, when the sweep extends to lower rates, when a seed run stops."""

import math
import os
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "chapters"))
jobs = pytest.importorskip("jobs")


def sweep(*points):
    """Complete sweep records from (lr, training error, loss) after one epoch."""
    return [{"describe": {"lr": lr}, "status": "complete",
             "history": [{"epoch": 1, "train_error": err, "train_loss": loss}]}
            for lr, err, loss in points]


@pytest.mark.parametrize("points, winner", [
    ([(0.001, 0.60, 1.8), (0.01, 0.50, 1.5), (0.1, 0.90, 2.3)], 0.01),
    # equal to the point: the lower loss wins
    ([(0.003, 0.512, 1.40), (0.01, 0.508, 1.45)], 0.003),
    # all at chance: the loss still says which one learns
    ([(0.001, 0.90, 3.9), (0.003, 0.90, 3.6), (0.01, 0.90, 4.6)], 0.003),
    # a NaN loss never wins
    ([(0.01, 0.40, float("nan")), (0.03, 0.60, 1.7)], 0.03),
])
def test_best_lr(points, winner):
    assert jobs.best_lr(sweep(*points)) == winner


@pytest.mark.parametrize("points, extend", [
    ([(0.001, 0.63, 1.8), (0.01, 0.53, 1.5), (0.1, 0.90, 2.3)], False),   # interior winner
    ([(0.001, 0.50, 1.4), (0.01, 0.60, 1.6)], True),                      # winner at the lower edge
    ([(0.001, 0.90, 3.9), (0.003, 0.90, 3.6), (0.1, 0.90, 6e3)], True),   # nothing left chance
    ([(0.001, 0.86, 2.2), (0.01, 0.84, 2.1)], False),                     # 0.01 has left chance
])
def test_sweep_extends_downwards_only_at_its_edge_or_at_chance(points, extend):
    assert jobs.needs_lower_lr(sweep(*points)) is extend


@pytest.mark.parametrize("epoch, err, stop", [
    (1, 0.50, False), (3, 0.25, True), (7, 0.2501, False),
    (jobs.STALL_EPOCHS - 1, 0.90, False), (jobs.STALL_EPOCHS, 0.90, True),
    (jobs.STALL_EPOCHS, 0.80, False),
])
def test_seed_runs_stop_at_the_target_or_stalled_at_chance(epoch, err, stop):
    assert jobs.seed_stop({"epoch": epoch, "train_error": err}) is stop


def test_ch01_sweep_winner_sees_the_records_another_queue_finished(tmp_path, monkeypatch):
    """A sweep run skipped because another queue held it comes back "running"; once
    that queue has finished it, the winner is chosen and its seeds run."""
    import json
    monkeypatch.setattr(jobs, "dirs", lambda chapter: (str(tmp_path), str(tmp_path / "runs")))
    trained = []

    def run_job(job, *args, **kwargs):
        trained.append(job.name)
        lr = job.describe["lr"]
        rec = {"name": job.name, "status": "complete", "describe": job.describe,
               "history": [{"epoch": 1, "train_error": 0.5 - lr, "train_loss": 1.0}]}
        (tmp_path / f"{job.name}.json").write_text(json.dumps(rec))     # the other queue's
        return dict(rec, status="running") if job.name.startswith("sweep-") else rec
    monkeypatch.setattr(jobs.experiments, "run_job", run_job)
    out = jobs.run_ch01(["fan-in"], log=lambda *a: None, data_sets=(None, None))["fan-in"]["relu"]
    assert out["lr"] == max(jobs.LRS)
    assert [r["name"] for r in out["seeds"]] == [j.name for j in jobs.ch01_seed_jobs("fan-in", "relu", max(jobs.LRS))]


def test_the_settings_are_named_and_both_activations_present():
    settings = jobs.ch01_settings()
    assert list(settings) == ["fan-in", "cuda-convnet", "saturating", "deep", "deep-fc8-zero"]
    for acts in settings.values():
        assert {kw["activation"] for _, kw in acts.values()} == {"relu", "tanh"}
    # the saturating init is three times the fan-in std, layer by layer
    sat = settings["saturating"]["tanh"][1]["init_std"]
    fan = jobs.fan_in_stds("fournet", lrn=False)
    assert all(math.isclose(sat[k], jobs.SATURATING_GAIN * fan[k]) for k in fan)


def test_raw_pixel_jobs_are_the_old_recipe():
    fan = jobs.fan_in_stds("fournet", lrn=False)
    for job in jobs.ch01_raw_jobs():
        stds = job.cfg["model_kwargs"]["init_std"]
        assert job.cfg["input_scale"] == "paper"
        assert math.isclose(stds["conv1"], fan["conv1"] / 64) and math.isclose(stds["fc4"], fan["fc4"])


# ---------------------------------------------------------------- chapter 04
def test_ch04_arms_have_the_same_maps_and_parameters_at_31_px():
    (maps_a, params_a), (maps_b, params_b) = (jobs.ch04_shapes(p) for p in jobs.CH04_POOLS)
    assert jobs.CH04_CROP == 31
    assert maps_a == maps_b == [(32, 15, 15), (32, 7, 7), (64, 3, 3)]
    assert params_a == params_b
    # ...which they do not at 32 px: the confound the 31-px crops remove
    assert jobs.ch04_shapes("2/2", 32)[1] > jobs.ch04_shapes("3/2", 32)[1]


def test_ch04_jobs_differ_only_in_the_pooling():
    jobs_ = jobs.ch04_jobs()
    assert len({j.name for j in jobs_}) == len(jobs_)
    for seed in {j.describe["seed"] for j in jobs_}:
        pair = [j for j in jobs_ if j.describe["seed"] == seed]
        assert sorted(j.describe["pool"] for j in pair) == sorted(jobs.CH04_POOLS)
        a, b = (dict(j.cfg, model_kwargs={k: v for k, v in j.cfg["model_kwargs"].items() if k != "pool"})
                for j in pair)
        assert a == b and a["crop"] == jobs.CH04_CROP and a["seed"] == seed
        assert {j.cfg["model_kwargs"]["pool"] for j in pair} == set(jobs.CH04_POOLS)


@pytest.mark.parametrize("a, b, verdict", [
    # 3/2 lower by 2.5 points, s.e. 0.65: more than 2 s.e.
    ([0.40, 0.41, 0.39], [0.42, 0.43, 0.425], "3/2 lower"),
    # the same difference with seed spreads of 2 points: s.e. 1.6, within noise
    ([0.40, 0.42, 0.38], [0.445, 0.405, 0.425], "within noise"),
    # 2/2 lower
    ([0.45, 0.46, 0.455], [0.40, 0.41, 0.405], "2/2 lower"),
    # at the edge: two seeds each, sd 0.0141, s.e. 0.0141, 2 s.e. 0.0283
    ([0.40, 0.42], [0.427, 0.447], "within noise"),      # diff 0.027
    ([0.40, 0.42], [0.429, 0.449], "3/2 lower"),         # diff 0.029
])
def test_ch04_verdict_needs_two_standard_errors(a, b, verdict):
    out = jobs.compare_arms(a, b, what="lower")
    assert out["verdict"] == verdict


def test_ch04_verdict_numbers():
    out = jobs.compare_arms([0.40, 0.41, 0.39], [0.42, 0.43, 0.425])
    assert math.isclose(out["mean_a"], 0.40) and math.isclose(out["mean_b"], 0.425)
    assert math.isclose(out["sd_a"], 0.01) and math.isclose(out["sd_b"], 0.005)
    assert math.isclose(out["diff"], 0.025)
    assert math.isclose(out["se"], math.sqrt(0.01 ** 2 / 3 + 0.005 ** 2 / 3))
    assert jobs.compare_arms([0.4], [0.5, 0.6])["verdict"].startswith("not enough seeds")


def test_identical_seeds_give_a_finite_verdict():
    """Seeds without spread (fast mode, a deterministic toy): z is 0 for equal arms and
    infinite with the difference's sign otherwise, never NaN."""
    same = jobs.compare_arms([0.5, 0.5], [0.5, 0.5])
    assert same["z"] == 0.0 and same["verdict"] == "within noise"
    apart = jobs.compare_arms([0.4, 0.4], [0.5, 0.5])
    assert apart["z"] == math.inf and apart["verdict"] == "3/2 lower"


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_deep_fc8_zero_is_the_deep_net_with_a_uniform_first_softmax(act):
    """Setting (e): the same initial weights as (d) at the same seed, but fc8's at zero,
    so the first logits are 0 for any image (loss ln 10) for both activations."""
    from minialexnet import backend
    from minialexnet.models import build_model
    settings = jobs.ch01_settings()
    nets = []
    for setting in ("deep", "deep-fc8-zero"):
        backend.use("numpy", seed=3)
        name, kw = settings[setting][act]
        nets.append(build_model(name, **kw))
    (a, b) = (n.params() for n in nets)
    assert [k for k in a if not np.array_equal(a[k], b[k])] == ["fc8.W"]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.abs(nets[1].eval().forward(x)).max() == 0.0
    assert np.abs(nets[0].eval().forward(x)).max() > 0.1     # (d): logits far from uniform


@pytest.mark.parametrize("where, says", [
    ("training", "jobs.py: stopped by SIGINT"),
    # a finished job's final evaluation: the Trainer's handler is not installed there
    ("final evaluation", "jobs.py: stopped by Ctrl-C outside training")])
def test_jobs_py_stopped_by_ctrl_c_says_one_line(where, says, monkeypatch):
    """Ctrl-C while a job trains (the job has saved its checkpoint: the Trainer's
    business) or outside training: jobs.py ends with one line saying how to resume,
    no traceback."""
    import runpy
    from minialexnet import experiments, train

    def interrupted(*args, **kwargs):
        raise train.Interrupted() if where == "training" else KeyboardInterrupt
    monkeypatch.setattr(sys, "argv", ["jobs.py", "04"])
    monkeypatch.setattr(experiments, "run_job", interrupted)
    monkeypatch.setenv("MINIALEXNET_FAST", "1")
    monkeypatch.setenv("MINIALEXNET_DATA", "/nonexistent-data-dir")
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(pathlib.Path(jobs.__file__)), run_name="__main__")
    assert str(e.value).startswith(says) and "resume" in str(e.value)


def test_jobs_py_tunes_the_cpu_and_checks_every_key_before_training():
    """From a terminal, jobs.py applies cpu.tune() before NumPy loads (the jobs train
    25-30 % faster, same numbers), and a mistyped key after a valid one stops it at
    once, in one line, instead of after hours of the valid one's training."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "MINIALEXNET_CPU_TUNING")}
    p = subprocess.run([sys.executable, "jobs.py", "01:deep", "0l:deep"], cwd=pathlib.Path(jobs.__file__).parent,
                       capture_output=True, text=True, timeout=120, env={**env, "MINIALEXNET_FAST": "1"})
    assert p.returncode == 1
    # the tuning's line, and nothing trained before the bad key was found
    assert p.stdout.splitlines() == ["jobs.py: OpenBLAS threads sleep when idle; freed memory kept by malloc"]
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]          # one line, no traceback
    assert p.stderr.startswith("jobs.py: unknown chapter '0l:deep'") and "01:deep-fc8-zero" in p.stderr
