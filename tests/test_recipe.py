"""The training recipe (issue 10): unit-scale inputs, health records, schedules that
use their budget, and the sanity check that a fresh net can memorise a few images."""

import json
import math

import numpy as np
import pytest

from minialexnet import backend, data, train
from minialexnet.health import HealthMonitor
from minialexnet.layers import SoftmaxCrossEntropy
from minialexnet.models import build_model
from minialexnet.optim import SGD, ReduceLROnPlateau, StepLR


@pytest.fixture(autouse=True)
def numpy_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


def _images(n=40, size=12, seed=0):
    rng = np.random.default_rng(seed)
    # Channels with different spreads, so a wrong axis or a missing division shows.
    x = rng.normal([120, 100, 80], [10, 40, 70], (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ unit input scale
def test_channel_std_is_the_std_of_mean_subtracted_pixels(tmp_path):
    x = _images()
    mean = data.mean_image(x)
    std = data.channel_std(x, mean)
    want = (x.astype(np.float64) - mean).reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(std, want, rtol=1e-5)
    cache = str(tmp_path / "std.npy")
    np.testing.assert_array_equal(data.channel_std(x, mean, cache), std)
    # Read back from the cache, not recomputed: other images, same file.
    np.testing.assert_array_equal(data.channel_std(_images(seed=1), mean, cache), std)


def test_unit_scale_transforms_give_unit_std_and_agree():
    x = _images()
    mean, std = data.mean_image(x), data.channel_std(x, data.mean_image(x))
    ev = data.EvalTransform(None, mean, std)(x)                    # (N, 3, H, W)
    np.testing.assert_allclose(ev.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(ev.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    raw = data.EvalTransform(None, mean)(x)
    np.testing.assert_allclose(ev, raw / std[None, :, None, None], rtol=1e-5, atol=1e-6)
    # Training crops of the full size without flips are the evaluation images.
    tr = data.TrainTransform(12, mean, flip=False, std=std)(x, np.random.default_rng(0))
    np.testing.assert_allclose(tr, ev, rtol=1e-6)
    tc = data.ten_crop(x, 12, mean, std)[0]
    np.testing.assert_allclose(tc, ev, rtol=1e-6)


TINY = dict(dataset="synthetic", n_train=128, n_val=64, batch_size=32, model="fournet",
            epochs=1, progress=False, workers=1, checkpoint_every=0)


def test_trainer_feeds_unit_inputs_by_default_and_raw_pixels_on_request(tmp_path):
    seen = {}
    for scale in ("unit", "paper"):
        cfg = train.default_config(**TINY, out=str(tmp_path / scale), input_scale=scale,
                                   max_steps=1)
        t = train.run(cfg, log=lambda *a: None)
        x, _ = next(iter(data.Loader(t.train_set.x, t.train_set.y, 32, t.loader.transform,
                                     seed=0, drop_last=True, workers=1)))
        seen[scale] = float(np.std(x))
        arrays = np.load(tmp_path / scale / "checkpoint.npz")
        assert ("data.std" in arrays.files) == (scale == "unit")
    assert 0.7 < seen["unit"] < 1.3 and seen["paper"] > 20


def test_cli_has_input_scale_and_rejects_other_values(capsys):
    assert train.parse_args([])["input_scale"] == "unit"
    assert train.parse_args(["--input-scale", "paper"])["input_scale"] == "paper"
    with pytest.raises(SystemExit):
        train.parse_args(["--input-scale", "huge"])


# ------------------------------------------------------------------ health records
def test_health_monitor_records_update_ratios_activations_and_dead_units():
    model = build_model("fournet", widths=(4, 4, 8), input_size=16)
    opt = SGD(model, lr=0.1)
    crit = SoftmaxCrossEntropy()
    x = backend.rng().standard_normal((8, 3, 16, 16)).astype(np.float32)
    y = np.arange(8) % 10
    # Kill conv1's channel 0: its ReLU units are dead on every image.
    model.params()["conv1.W"][0] = 0
    model.params()["conv1.b"][0] = -1
    mon = HealthMonitor(every=2)
    records, acts = [], {}
    for step in (1, 2, 3):
        def spy(name, out, hook=mon.hook(step)):
            acts[name] = out[0] if isinstance(out, list) else out
            if hook:
                hook(name, out)
        w_before = model.params()["conv2.W"].copy()
        logits = model.forward(x, record=spy)
        crit.forward(logits, y)
        model.backward(crit.backward())
        opt.step()
        rec = mon.after_update(step, opt)
        if step == 3:
            assert rec is None                      # not a recorded step
            continue
        records.append(rec)
        layers = rec["layers"]
        dw = model.params()["conv2.W"] - w_before
        assert layers["conv2"]["update_ratio"] == pytest.approx(
            np.linalg.norm(dw) / np.linalg.norm(model.params()["conv2.W"]), rel=1e-4)
        a = acts["conv3"].astype(np.float64)
        assert layers["conv3"]["act_std"] == pytest.approx(a.std(), rel=1e-4)
        assert layers["conv3"]["act_mean"] == pytest.approx(a.mean(), rel=1e-4, abs=1e-9)
        r1 = acts["relu1"]
        assert layers["relu1"]["dead"] == pytest.approx((~(r1 > 0).any(axis=0)).mean())
        assert layers["relu1"]["dead"] >= 0.25      # channel 0 of 4 at least
    assert [r["step"] for r in records] == [1, 2]


def test_tanh_saturation_is_recorded():
    model = build_model("fournet", widths=(4, 4, 8), input_size=16, activation="tanh",
                        init_std=3.0)                 # so large that tanh saturates
    mon = HealthMonitor(every=1)
    x = backend.rng().standard_normal((4, 3, 16, 16)).astype(np.float32)
    model.forward(x, record=mon.hook(1))
    rec = mon.after_update(1, SGD(model))
    assert rec["layers"]["tanh1"]["saturated"] > 0.8


def test_trainer_writes_health_rows_and_plot_and_resumes_them(tmp_path):
    cfg = train.default_config(**{**TINY, "epochs": 2}, out=str(tmp_path / "run"), health_every=2)
    t = train.run(cfg, log=lambda *a: None)
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    health = [r for r in rows if r["type"] == "health"]
    assert [r["step"] for r in health] == [1, 2, 4, 6, 8]
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1, 2]
    assert {"conv1", "conv2", "conv3", "fc4"} <= set(health[0]["layers"])
    assert all(math.isfinite(r["layers"]["conv1"]["update_ratio"]) for r in health)
    assert (tmp_path / "run" / "health.png").stat().st_size > 0
    # A resumed run keeps the records it had.
    again = train.run(dict(cfg, epochs=3, resume=True), log=lambda *a: None)
    assert [r["step"] for r in again.health][:5] == [1, 2, 4, 6, 8]
    assert again.health[-1]["step"] == 12


def test_on_step_sees_every_step(tmp_path):
    cfg = train.default_config(**TINY, out=None)
    tr_set = data.load_dataset("synthetic", n=128)
    val = data.load_dataset("synthetic", split="test", n=64)
    model = build_model("fournet", input_size=28)
    t = train.Trainer(model, tr_set, val, data.mean_image(tr_set.x), cfg, log=lambda *a: None)
    seen = []
    t.run(on_step=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert all(isinstance(l, float) for _, l in seen)


# ------------------------------------------------------------------ sanity check
def test_a_fresh_net_memorises_64_images():
    """The first check of any training recipe: with no augmentation and no
    regularisation, a fresh net drives 64 training images to near-zero loss."""
    ds = data.load_dataset("synthetic", n=64, size=28)
    mean = data.mean_image(ds.x)
    x = data.EvalTransform(None, mean, data.channel_std(ds.x, mean))(ds.x)
    model = build_model("fournet", input_size=28, lrn=False, input_grad=False)
    opt = SGD(model, lr=0.01, weight_decay=0.0)
    crit = SoftmaxCrossEntropy()
    for _ in range(150):
        loss = crit.forward(model.forward(x), ds.y)
        model.backward(crit.backward())
        opt.step()
    assert float(loss) < 0.05


# ------------------------------------------------------------------ schedules
class _Opt:
    lr = 0.1


def test_plateau_ignores_improvements_within_the_validation_noise():
    # 2 standard errors of a 40 % error on 2,000 images: 2.2 points.
    s = ReduceLROnPlateau(_Opt(), patience=2, noise_n=2000)
    s.step(0.40)
    assert s.margin() == pytest.approx(2 * math.sqrt(0.4 * 0.6 / 2000))
    assert not s.step(0.39)               # 1 point better: noise, a bad epoch
    assert s.step(0.395)                  # second bad epoch: lr / 10
    assert s.optimizer.lr == pytest.approx(0.01)
    s2 = ReduceLROnPlateau(_Opt(), patience=2, noise_n=2000)
    s2.step(0.40)
    s2.step(0.37)                         # 3 points: a real improvement
    assert s2.best == 0.37 and s2.bad_epochs == 0
    # Without noise_n the paper's literal rule: any improvement counts.
    s3 = ReduceLROnPlateau(_Opt(), patience=1)
    s3.step(0.40)
    assert not s3.step(0.399)
    state = s.state_dict()
    assert ReduceLROnPlateau(_Opt()).load_state_dict(state).margin() == s.margin()


def test_budget_schedule_cuts_at_fractions_of_the_run_and_follows_new_epochs():
    opt = _Opt()
    s = StepLR.at_fractions(opt, 20, (0.5, 0.75, 0.9))
    assert s.milestones == [10, 15, 18]
    lrs = [s.step() for _ in range(20)]
    assert lrs[8] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.01)
    assert lrs[14] == pytest.approx(0.001) and lrs[17] == pytest.approx(1e-4)
    # Resumed with more epochs: the milestones follow the new length.
    opt2 = _Opt()
    s2 = StepLR.at_fractions(opt2, 40, (0.5, 0.75, 0.9)).load_state_dict(
        StepLR.at_fractions(_Opt(), 20).state_dict())
    assert s2.milestones == [20, 30, 36] and opt2.lr == pytest.approx(0.1)
    with pytest.raises(ValueError):
        StepLR.at_fractions(_Opt(), 10, (0.5, 1.0))


def test_cli_schedules_and_their_options(capsys):
    a = train.parse_args(["--schedule", "budget", "--step-fractions", "0.6,0.8"])
    assert a["schedule"] == "budget" and a["step_fractions"] == (0.6, 0.8)
    sched = train.make_schedule(dict(a, epochs=10), _Opt())
    assert sched.milestones == [6, 8]
    for bad in (["--step-fractions", "0.8,0.6"], ["--step-fractions", "1.5"],
                ["--patience", "0"], ["--lr", "nan"], ["--lr", "-1"], ["--momentum", "1"],
                ["--epochs", "0"], ["--n-train", "0"], ["--batch-size", "-3"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("python -m minialexnet.train: error: argument " + bad[0])


def test_help_shows_defaults_and_text_for_every_option(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    for opt in ("--epochs", "--patience", "--step-epochs", "--seed", "--workers", "--n-val",
                "--input-scale", "--health-every", "--step-fractions"):
        line = out[out.index(opt):].split("\n--")[0]
        assert "default" in line or opt in ("--n-val",), opt


def test_the_main_job_defaults_and_dropout_per_dataset():
    from minialexnet.models import build_model as bm
    main = train.default_config()
    assert (main["dataset"], main["epochs"], main["n_train"], main["dropout"]) == \
        ("synthetic", 4, 20000, 0.0)
    assert train.make_model(main, 10).config["dropout"] == 0.0
    cifar = train.default_config(dataset="cifar10")
    assert cifar["epochs"] == 30 and cifar["dropout"] is None
    assert train.make_model(cifar, 10).config["dropout"] == 0.5       # the paper's
    # An explicit model argument wins, and fournet (no dropout) is left alone.
    mine = train.default_config(model_kwargs={"dropout": 0.3})
    assert train.make_model(mine, 10).config["dropout"] == 0.3
    assert "dropout" not in train.make_model(train.default_config(model="fournet"), 10).config
    assert train.parse_args(["--dropout", "0.5"])["dropout"] == 0.5
