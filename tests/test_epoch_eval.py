"""The per-epoch evaluation hook (``Trainer(epoch_eval=...)``, ``run_job(epoch_eval=...)``,
``experiments.eval_mode_hook``): extra eval-mode numbers in every history row, measured
without disturbing training, checkpointed and resumed with the row."""

import math

import pytest

from minialexnet import backend, data, experiments, inference, train
from minialexnet.backend import np
from minialexnet.errors import ConfigError
from minialexnet.layers import SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def numpy_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy")


# A tiny small-alexnet with dropout 0.5: the case the hook is for (its training-mode
# loss is that of thinned nets, its eval-mode loss that of the scaled net).
CFG = dict(dataset="synthetic", model="small-alexnet", model_kwargs={"width": 0.125},
           dropout=0.5, crop=28, batch_size=32, epochs=2, checkpoint_every=0, workers=1,
           health_every=0)


def _sets():
    full = data.load_dataset("synthetic", n=96, size=32)
    return experiments.split_train_val(full, 32)


def _trainer(tmp_path, tr, val, epoch_eval=None, **kw):
    cfg = train.default_config(**{**CFG, "out": str(tmp_path), "progress": False, **kw})
    mean = data.mean_image(tr.x).astype(np.float32)
    model = train.make_model(cfg, tr.num_classes)
    return train.Trainer(model, tr, val, mean, cfg, log=lambda *a: None, epoch_eval=epoch_eval)


def test_hook_numbers_are_the_eval_mode_loss_and_error(tmp_path):
    tr, val = _sets()
    t = _trainer(tmp_path, tr, val)
    t.run(epochs=1)
    out = experiments.eval_mode_hook(fit=tr, held=val)(t)
    assert set(out) == {"fit_loss", "fit_top1", "held_loss", "held_top1"}
    # The same numbers another way: the loss layer on the eval-mode logits, and the
    # library's evaluate() for the error.
    for name, ds in (("fit", tr), ("held", val)):
        logits = inference.predict_batches(t.model, ds.x, data.EvalTransform(28, t.mean, t.std))
        ce = float(SoftmaxCrossEntropy().forward(logits.astype(np.float64), ds.y))
        assert math.isclose(out[f"{name}_loss"], ce, rel_tol=1e-6)
        assert out[f"{name}_top1"] == inference.evaluate(t.model, ds, 28, t.mean, std=t.std)["top1"]
    # Eval mode: the model's masks play no part, so a second call gives the same numbers,
    # and the model is left in the mode it was in.
    t.model.train()
    assert experiments.eval_mode_hook(fit=tr, held=val)(t) == out and t.model.training


def test_hook_rows_are_in_the_history_and_training_is_unchanged(tmp_path):
    tr, val = _sets()
    plain = _trainer(tmp_path / "a", tr, val)
    plain.run()
    backend.use("numpy", seed=0)
    hooked = _trainer(tmp_path / "b", tr, val, epoch_eval=experiments.eval_mode_hook(fit=tr))
    hooked.run()
    assert all({"fit_loss", "fit_top1"} <= set(row) for row in hooked.history)
    # The hook only looks: the training losses, errors and validation are the same.
    for key in ("train_loss", "train_error", "val_top1"):
        assert [r[key] for r in hooked.history] == [r[key] for r in plain.history]
    # ... and the last row's numbers are those of the final weights.
    assert hooked.history[-1]["fit_loss"] == experiments.eval_mode_hook(fit=tr)(hooked)["fit_loss"]


def test_a_hook_may_not_overwrite_the_row(tmp_path):
    tr, val = _sets()
    t = _trainer(tmp_path, tr, val, epoch_eval=lambda trainer: {"val_top1": 0.0})
    with pytest.raises(ConfigError, match="val_top1"):
        t.run(epochs=1)


def test_run_job_passes_the_hook_and_a_resumed_job_keeps_its_rows(tmp_path):
    tr, val = _sets()
    hook = experiments.eval_mode_hook(fit=tr)
    job = experiments.Job("j", CFG)
    straight = experiments.run_job(job, tr, val, str(tmp_path / "r1"), str(tmp_path / "k1"),
                                   log=lambda *a: None, epoch_eval=hook)
    assert all("fit_loss" in row for row in straight["history"])

    class Boom(Exception):
        pass

    def stop_once(row):
        if row["epoch"] == 1:
            raise Boom
        return False
    with pytest.raises(Boom):
        experiments.run_job(experiments.Job("j", CFG, stop=stop_once), tr, val, str(tmp_path / "r2"),
                            str(tmp_path / "k2"), log=lambda *a: None, epoch_eval=hook)
    resumed = experiments.run_job(job, tr, val, str(tmp_path / "r2"), str(tmp_path / "k2"),
                                  log=lambda *a: None, epoch_eval=hook)
    assert [r["fit_loss"] for r in resumed["history"]] == [r["fit_loss"] for r in straight["history"]]
