"""The training, evaluation and prediction tools: runs, files, resume, failures."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from minialexnet import backend, inference, train
from minialexnet.checkpoint import CheckpointError, load_checkpoint
from minialexnet.evaluate import main as evaluate_main
from minialexnet import data
from minialexnet.predict import load_model, predict_files
from minialexnet.predict import main as predict_main
from minialexnet.inference import predict_batches

TINY = dict(dataset="synthetic", n_train=128, n_val=64, batch_size=32, model="fournet",
            epochs=2, progress=False, workers=1, checkpoint_every=0)


def cfg(tmp_path, **kw):
    return train.default_config(**{**TINY, "out": str(tmp_path / "run"), **kw})


def weights(path):
    arrays, meta = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("model.", "optim."))}, meta


@pytest.fixture(autouse=True)
def numpy_backend():
    yield
    backend.use("numpy")


def test_run_writes_metrics_curves_and_checkpoint(tmp_path):
    t = train.run(cfg(tmp_path), log=lambda *a: None)
    out = tmp_path / "run"
    assert len(t.history) == 2 and t.step == 8
    for f in ("metrics.jsonl", "metrics.csv", "curves.png", "checkpoint.npz"):
        assert (out / f).stat().st_size > 0, f
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    rows = [r for r in rows if r["type"] == "epoch"]      # the others are health rows
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_error", "val_top1", "val_top5", "lr", "images_per_s",
                "data_wait_s"):
        assert key in rows[0]
    assert rows[0]["images_per_s"] > 0
    _, meta = weights(out / "checkpoint.npz")
    assert meta["epoch"] == 2 and meta["step"] == 8 and meta["config"]["model"] == "fournet"


def test_no_figures_writes_the_metrics_but_draws_nothing(tmp_path):
    # --no-figures is this command's own (like --no-progress): a resume may change it
    cfg_, given = train.parse_options(["--dataset", "synthetic", "--n-train", "64", "--model",
                                       "fournet", "--epochs", "1", "--no-figures"])
    assert cfg_["figures"] is False and "figures" in given
    assert "figures" in train.RESUME_THIS_COMMAND
    train.run(cfg(tmp_path, epochs=1, figures=False), log=lambda *a: None)
    out = tmp_path / "run"
    assert (out / "metrics.jsonl").stat().st_size > 0
    assert not (out / "curves.png").exists() and not (out / "health.png").exists()


@pytest.mark.parametrize("stop", [3, 4])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, stop):
    # 4 steps per epoch: stopping at 3 and resuming to 7 crosses an epoch boundary
    # (with its evaluation and schedule step) and uses dropout, shuffling and crops;
    # stopping at 4 stops exactly at an epoch's end.
    straight = cfg(tmp_path / "a", model="small-alexnet", max_steps=7, epochs=5, dropout=0.5)
    train.run(straight, log=lambda *a: None)
    first = cfg(tmp_path / "b", model="small-alexnet", max_steps=stop, epochs=5, dropout=0.5)
    train.run(first, log=lambda *a: None)
    resumed = cfg(tmp_path / "b", model="small-alexnet", max_steps=7, epochs=5, resume=True, dropout=0.5)
    train.run(resumed, log=lambda *a: None)
    wa, ma = weights(tmp_path / "a" / "run" / "checkpoint.npz")
    wb, mb = weights(tmp_path / "b" / "run" / "checkpoint.npz")
    assert ma["step"] == mb["step"] == 7
    assert wa.keys() == wb.keys() and len(wa) > 4
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # Timings differ between the runs; everything the model computed must not.
    assert [r["epoch"] for r in mb["history"]] == [r["epoch"] for r in ma["history"]] == [1]
    for key in ("train_loss", "train_error", "val_top1", "val_top5", "lr"):
        assert [r[key] for r in ma["history"]] == [r[key] for r in mb["history"]], key


def test_resume_is_bit_identical_on_fake_gpus(tmp_path, monkeypatch):
    """B4: with one generator per device (as on CuPy, re-seeded on resume) resume is
    still bit-identical: dropout masks come from (seed, layer, step), not from a
    generator's state.  Two towers on two fake devices."""
    from fake_devices import FakeDevices
    real_use = backend.use
    monkeypatch.setattr(backend, "use", lambda name, seed=0, devices=None, device_offset=0:
                        real_use(FakeDevices(2, seed=seed)))
    kw = dict(model="small-alexnet", devices=[0, 1], epochs=5, model_kwargs={"width": 0.25})
    train.run(cfg(tmp_path / "a", max_steps=3, **kw), log=lambda *a: None)
    train.run(cfg(tmp_path / "b", max_steps=1, **kw), log=lambda *a: None)
    train.run(cfg(tmp_path / "b", max_steps=3, resume=True, **kw), log=lambda *a: None)
    wa, ma = weights(tmp_path / "a" / "run" / "checkpoint.npz")
    wb, mb = weights(tmp_path / "b" / "run" / "checkpoint.npz")
    assert ma["step"] == mb["step"] == 3 and any(".tower1." in k for k in wa)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_step_schedule_follows_the_epochs_of_a_resumed_run(tmp_path):
    """B8: extending --epochs on resume extends the step schedule's cuts."""
    kw = dict(schedule="step", step_epochs=1, lr=0.01, n_train=64, n_val=16)
    train.run(cfg(tmp_path, epochs=1, **kw), log=lambda *a: None)
    t = train.run(cfg(tmp_path, epochs=3, resume=True, **kw), log=lambda *a: None)
    assert [r["lr"] for r in t.history] == pytest.approx([0.01, 0.001, 0.0001])
    assert t.optimizer.lr == pytest.approx(0.00001)          # cut after epochs 1, 2, 3


def test_a_keyboard_interrupt_inside_a_step_saves_nothing_torn(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt that lands inside a step (not the handler's flag: see
    test_resume.py) may have updated part of the model: nothing is saved, and one
    line says which checkpoint stands."""
    real = train.Trainer.train_step
    calls = {"n": 0}

    def step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, x, y)
    monkeypatch.setattr(train.Trainer, "train_step", step)
    out = tmp_path / "run"
    code = train.main(["--model", "fournet", "--n-train", "128", "--n-val", "32",
                       "--batch-size", "32", "--out", str(out), "--no-progress",
                       "--checkpoint-every", "2"])
    assert code == 130
    _, meta = weights(out / "checkpoint.npz")
    assert meta["step"] == 2 and meta["saved_because"] == "periodic"
    said = [l for l in capsys.readouterr().out.splitlines() if "step 3" in l]
    assert said == [f"stopped at once in the middle of step 3 (epoch 1): nothing saved; the "
                    f"last checkpoint, {out / 'checkpoint.npz'} (after 0 epochs, step 2), stands"]


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    base = ["--model", "fournet", "--n-train", "128", "--n-val", "32", "--batch-size", "32",
            "--out", str(out), "--no-progress", "--checkpoint-every", "0"]
    assert train.main(base + ["--epochs", "1"]) == 0
    good, _ = weights(out / "checkpoint.npz")
    real = train.Trainer.train_step

    def step(self, x, y):
        loss, logits = real(self, x, y)
        return (float("nan") if self.step == 5 else loss), logits
    monkeypatch.setattr(train.Trainer, "train_step", step)
    capsys.readouterr()
    assert train.main(base + ["--epochs", "3", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 6" in err[0] and "lower learning rate" in err[0]
    after, meta = weights(out / "checkpoint.npz")
    assert meta["step"] == 4
    for k in good:
        np.testing.assert_array_equal(good[k], after[k])


@pytest.mark.parametrize("args,expect", [
    (["--dataset", "cifar10", "--data-dir", "/no/such/dir"], "data directory does not exist"),
    (["--backend", "cupy"], "cupy backend:"),
    (["--devices", "0,1"], "only device 0"),
    (["--resume", "--out", "/no/such/run"], "nothing to resume"),
])
def test_bad_input_gets_one_line_not_a_traceback(args, expect, capsys):
    if args[:2] == ["--backend", "cupy"]:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() > 0:
                pytest.skip("a GPU is present")
        except Exception:
            pass
    code = train.main(args + ["--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0], err


@pytest.mark.parametrize("args,expect", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--model-kwargs", '{"bogus": 1}'], "unknown keyword argument bogus"),
    (["--model-kwargs", '{"width": 3}', "--model", "fournet"], "unknown keyword argument width"),
    # (--batch-size 0 is refused at parse time: test_recipe's CLI table)
    (["--n-train", "16", "--batch-size", "32"], "make no batch"),
])
def test_bad_settings_get_one_line_too(args, expect, capsys):
    code = train.main(args + ["--no-progress", "--out", "", "--n-val", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0], err


def test_every_user_error_is_a_minialexnet_error():
    """B5: the tools catch MinialexnetError only; each class keeps its old base."""
    from minialexnet import errors, layers, models
    from minialexnet.data.download import DownloadError
    bases = {data.DataError: ValueError, CheckpointError: ValueError,
             backend.BackendError: RuntimeError, layers.ShapeError: ValueError,
             models.StateDictError: ValueError, train.TrainingDiverged: RuntimeError,
             errors.ConfigError: ValueError, DownloadError: ValueError}
    for cls, old in bases.items():
        assert issubclass(cls, errors.MinialexnetError) and issubclass(cls, old), cls


BUG = ValueError("operands could not be broadcast together with shapes (2,3) (4,)")


def _a_bug(*args, **kwargs):
    raise BUG


def test_a_programming_error_in_train_keeps_its_traceback(monkeypatch):
    """B5: a ValueError that is not the library's (a bug) is not an "error:" line."""
    monkeypatch.setattr(train.Trainer, "train_step", _a_bug)
    with pytest.raises(ValueError) as e:
        train.main(["--model", "fournet", "--n-train", "64", "--n-val", "16",
                    "--batch-size", "32", "--out", "", "--no-progress"])
    assert e.value is BUG


def test_a_programming_error_in_evaluate_and_predict_keeps_its_traceback(tmp_path, monkeypatch):
    from minialexnet import predict
    t = train.run(cfg(tmp_path, epochs=1), log=lambda *a: None)
    monkeypatch.setattr(inference, "evaluate", _a_bug)
    with pytest.raises(ValueError) as e:
        evaluate_main([t.last_good_checkpoint, "--n", "8"])
    assert e.value is BUG
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    monkeypatch.setattr(predict, "iter_predictions", _a_bug)
    with pytest.raises(ValueError) as e:
        predict_main([t.last_good_checkpoint, str(img)])
    assert e.value is BUG


@pytest.mark.parametrize("model,devices", [("fournet", [1]), ("small-alexnet", [1, 1]),
                                           ("small-alexnet", [1, 0])])
def test_training_with_a_first_device_other_than_0(tmp_path, model, devices):
    """B1: the loss, its labels and dlogits live where the logits do (the model's
    first device), not on device 0.  Fake devices refuse any array met elsewhere."""
    from fake_devices import FakeDevices
    fake = backend.use(FakeDevices(2))
    c = cfg(tmp_path, model=model, devices=devices, epochs=1, n_train=64, n_val=16,
            out=None, model_kwargs={"width": 0.25} if model == "small-alexnet" else {})
    train_set, val, mean, std, pca = train.prepare_data(c)
    t = train.Trainer(train.make_model(c, train_set.num_classes), train_set, val, mean, c,
                      log=lambda *a: None, std=std)
    fake.transfers.clear()
    t.run()
    assert t.step == 2 and np.isfinite(t.history[0]["train_loss"])


def packed_imagenette(root, side=224):
    """A miniature of the packed Imagenette files (224-px JPEG containers)."""
    from data_fixtures import make_jpeg_container, rgb_images
    d = root / "imagenette"
    d.mkdir(parents=True)
    names = [f"class{i}" for i in range(10)]
    make_jpeg_container(d / "imagenette224_train_0.npz", rgb_images(4, side, 1), [0, 1, 2, 3], names)
    make_jpeg_container(d / "imagenette224_val.npz", rgb_images(2, side, 2), [0, 1], names)
    return root


def test_the_trainer_s_model_makes_no_image_gradient(tmp_path):
    """make_model builds with input_grad=False: training never needs dL/d(image)."""
    model = train.make_model(train.fit_sizes(cfg(tmp_path), types.SimpleNamespace(
        image_shape=(32, 32, 3))), 10)
    assert model.input_grad is False
    assert not any(l.needs_input_grad for l in model._input_layers())


def test_packed_imagenette_is_not_upscaled(tmp_path, monkeypatch):
    """B7: the 224-px packed files are used as stored (not upscaled to 256), with the
    paper's crop in proportion: 199 of 224 as 227 of 256."""
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    c = cfg(tmp_path, dataset="imagenette", data_dir=str(packed_imagenette(tmp_path / "d")),
            model="fournet", epochs=0, batch_size=2, out=None)
    t = train.run(c, log=lambda *a: None)
    assert t.train_set.image_shape == t.val_set.image_shape == (224, 224, 3)
    assert (t.cfg["image_size"], t.cfg["crop"], t.model.input_size) == (224, 199, 199)
    assert t.mean.shape == (224, 224, 3)
    with pytest.raises(train.ConfigError, match="does not fit the 224-px images"):
        train.run(dict(c, crop=227), log=lambda *a: None)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    t = train.run(cfg(tmp_path, epochs=1), log=lambda *a: None)
    other = train.run(cfg(tmp_path / "o", epochs=0, model="small-alexnet"), log=lambda *a: None)
    with pytest.raises(CheckpointError, match="was saved for architecture fournet"):
        other.load(t.last_good_checkpoint)


def test_evaluate_and_predict_tools(tmp_path, capsys):
    t = train.run(cfg(tmp_path, epochs=1), log=lambda *a: None)
    ckpt = t.last_good_checkpoint
    assert evaluate_main([ckpt, "--n", "40"]) == 0
    out = capsys.readouterr().out
    assert "centre crop" in out and "ten-crop" in out and "top-5 error" in out
    img = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), np.uint8)).save(img)
    gray = tmp_path / "g.jpg"
    Image.fromarray(np.full((40, 40), 128, np.uint8), mode="L").save(gray)
    assert predict_main([ckpt, str(img), str(gray)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this model knows 10 classes of the built-in shapes dataset")
    assert lines[1] == str(img) and len(lines) == 13 and lines[2].strip().endswith(tuple(t.train_set.class_names))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert evaluate_main([str(bad)]) == 2
    assert "bad.npz" in capsys.readouterr().err


def test_cli_defaults_follow_the_paper_and_the_recipe():
    from minialexnet import models
    paper = train.parse_args(["--model", "alexnet", "--dataset", "imagenet-folder"])
    assert paper["lr"] == 0.01 and paper["momentum"] == 0.9 and paper["weight_decay"] == 0.0005
    assert paper["batch_size"] == 128 and paper["model_kwargs"] == {} and paper["crop"] == 227
    # Imagenette's side is known once loaded: 256 from folders, 224 from the packed files
    assert train.parse_args(["--dataset", "imagenette"])["crop"] is None
    small = train.parse_args([])
    # The small nets' recipe lives in models.py (init) and models.DEFAULT_LR, once.
    assert small["model"] == "small-alexnet" and small["lr"] == models.default_lr("small-alexnet")
    assert small["model_kwargs"] == {} and small["input_scale"] == "unit"
    assert models.build_model("small-alexnet").config["init_std"] == "he"
    assert models.build_model("fournet").config["init_std"] == "fan-in"
    assert models.build_model("alexnet", widths=(8, 8, 8, 8, 8), fc=(8, 8)).config["init_std"] == 0.01
    mine = train.parse_args(["--lr", "0.02", "--model-kwargs", '{"init_std": 0.01}'])
    assert mine["lr"] == 0.02 and mine["model_kwargs"]["init_std"] == 0.01


@pytest.mark.parametrize("model,devices", [("fournet", [0]), ("small-alexnet", [0, 0])])
def test_tools_load_a_model_trained_with_devices(tmp_path, model, devices):
    """Any tower count, trained with --devices: evaluate/predict place every tower on
    the one device they are given."""
    t = train.run(cfg(tmp_path, epochs=1, model=model, devices=devices), log=lambda *a: None)
    backend.use("numpy")
    loaded, meta, mean, std = load_model(t.last_good_checkpoint)
    assert loaded.devices == (0,) * len(devices)
    x = t.val_set.x[:5]
    want = predict_batches(t.model, x, data.EvalTransform(meta["config"]["crop"], mean))
    got = predict_batches(loaded, x, data.EvalTransform(meta["config"]["crop"], mean))
    np.testing.assert_array_equal(got, want)


def test_predict_lists_the_most_probable_classes_first(tmp_path):
    t = train.run(cfg(tmp_path, epochs=1), log=lambda *a: None)
    model, meta, mean, std = load_model(t.last_good_checkpoint)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(t.val_set.x[i]).save(paths[-1])
    got = predict_files(model, meta, mean, paths, k=3, std=std)
    x = np.stack([data.decode(p, size=meta["config"]["image_size"]) for p in paths])
    probs = data.softmax(predict_batches(model, x, data.EvalTransform(meta["config"]["crop"], mean, std)))
    for (path, top), row in zip(got, probs):
        order = np.argsort(-row)[:3]
        assert [name for name, _ in top] == [meta["class_names"][i] for i in order]
        np.testing.assert_allclose([p for _, p in top], row[order], rtol=1e-6)
        assert top[0][1] >= top[1][1] >= top[2][1]


def test_ten_crop_evaluation_averages_the_ten_crops_softmax(tmp_path, monkeypatch):
    from minialexnet.metrics import topk_correct
    t = train.run(cfg(tmp_path, epochs=1), log=lambda *a: None)
    crop, mean, std = t.cfg["crop"], t.mean, t.std
    assert std is not None                  # the default "unit" input scale
    seen = []
    real = data.ten_crop_predict

    def spy(predict, x, size, m=None, logits=True, std=None):
        seen.append(real(predict, x, size, m, logits, std))
        return seen[-1]
    monkeypatch.setattr(data, "ten_crop_predict", spy)
    got = inference.evaluate(t.model, t.val_set, crop, mean, ten_crop=True, std=std)
    assert len(seen) == 1
    # By hand: the softmax of each of the ten crops, averaged.
    t.model.eval()
    probs = np.mean([data.softmax(backend.to_numpy(t.model.forward(c)).astype(np.float64))
                     for c in data.ten_crop(t.val_set.x, crop, mean, std)], axis=0)
    np.testing.assert_allclose(seen[0], probs, rtol=1e-5, atol=1e-7)
    assert got["top1"] == pytest.approx(1 - topk_correct(seen[0], t.val_set.y, 1).mean())
    assert got["top5"] == pytest.approx(1 - topk_correct(seen[0], t.val_set.y, 5).mean())
