"""minialexnet/inference.py: batched prediction and evaluation, the tools' and the
Trainer's one way to run a trained model."""

import numpy as np
import pytest

from minialexnet import backend, data, evaluate, inference, predict, train
from minialexnet.models import build_model


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


def _model_and_images(n=5):
    model = build_model("fournet", widths=(4, 4, 4), input_size=16, num_classes=3)
    x = np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return model, x, data.EvalTransform(None, x.mean(0).astype(np.float32))


def test_predict_batches_runs_in_eval_mode_a_batch_at_a_time_and_restores_the_mode():
    model, x, transform = _model_and_images()
    seen, real = [], model.forward
    model.forward = lambda xb: (seen.append((len(xb), model.training)), real(xb))[1]
    logits = inference.predict_batches(model, x, transform, batch_size=2)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    assert seen == [(2, False), (2, False), (1, False)] and model.training
    np.testing.assert_allclose(inference.predict_batches(model, x, transform, batch_size=5),
                               logits, rtol=1e-5, atol=1e-6)


def test_evaluate_counts_top1_and_top5_errors():
    model, x, transform = _model_and_images(6)
    logits = inference.predict_batches(model, x, transform)
    y = logits.argmax(1)
    y[:2] = (y[:2] + 1) % 3                         # two of six wrong at top-1
    ds = data.Dataset(x, y, ["a", "b", "c"], "toy", "test", "toy")
    e = inference.evaluate(model, ds, None, transform.mean)
    assert e == {"top1": pytest.approx(2 / 6), "top5": 0.0}


def test_the_tools_and_the_trainer_run_inference_s_helpers():
    """One definition each, in inference.py: train.py, evaluate.py and predict.py
    define none of their own."""
    for module in (train, evaluate, predict):
        for name in ("predict_batches", "evaluate", "load_model_weights"):
            f = getattr(module, name, None)
            assert f is None or f is getattr(inference, name), (module.__name__, name)
