"""SGD with momentum and weight decay (paper 5), and the learning-rate schedules."""

import numpy as np
import pytest

from minialexnet import backend
from minialexnet.models import build_model
from minialexnet.optim import SGD, ReduceLROnPlateau, StepLR


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("block", [None, 7, "auto"])
def test_sgd_is_the_papers_update(block, monkeypatch):
    from minialexnet import parallel
    monkeypatch.setattr(parallel, "_threads", 2)   # c.W with block 7: 23 blocks, threaded
    w0 = {"a.W": rnd(5, 4), "a.b": rnd(5, seed=1), "c.W": rnd(20, 8, seed=2)}
    params = {k: v.copy() for k, v in w0.items()}
    opt = SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0005, block=block)
    w = {k: v.astype(np.float64) for k, v in w0.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for step in range(3):
        grads = {k: rnd(*x.shape, seed=10 + step) for k, x in w0.items()}
        ref = params["a.W"]
        opt.step(grads)
        assert params["a.W"] is ref                             # in place
        for k in w:                                             # by hand, float64
            v[k] = 0.9 * v[k] - 0.0005 * 0.01 * w[k] - 0.01 * grads[k]
            w[k] = w[k] + v[k]
            np.testing.assert_allclose(params[k], w[k], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(opt.velocity[k], v[k], rtol=1e-5, atol=1e-8)
    assert opt.steps == 3


def test_weight_decay_applies_to_biases_unless_filtered():
    params = {"l.W": np.ones(3, np.float32), "l.b": np.ones(3, np.float32)}
    opt = SGD(params, lr=1.0, momentum=0.0, weight_decay=0.5)
    opt.step({k: np.zeros(3, np.float32) for k in params})
    assert np.allclose(params["l.b"], 0.5) and np.allclose(params["l.W"], 0.5)
    params = {"l.W": np.ones(3, np.float32), "l.b": np.ones(3, np.float32)}
    opt = SGD(params, lr=1.0, momentum=0.0, weight_decay=0.5,
              decay_filter=lambda name: name.endswith(".W"))
    opt.step({k: np.zeros(3, np.float32) for k in params})
    assert np.allclose(params["l.b"], 1.0) and np.allclose(params["l.W"], 0.5)


def test_sgd_on_a_model_updates_its_live_parameters():
    model = build_model("fournet")
    x = rnd(2, 3, 32, 32)
    before = {k: v.copy() for k, v in model.params().items()}
    opt = SGD(model, lr=0.1)
    model.backward(model.forward(x))
    opt.step()
    after = model.params()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert all(opt.velocity[k].dtype == after[k].dtype for k in after)
    with pytest.raises(TypeError, match="grads="):
        SGD({"w": np.zeros(2)}).step()


def test_resume_is_bit_identical():
    def run(opt, params, steps, seed0):
        for s in range(steps):
            opt.step({k: rnd(*v.shape, seed=seed0 + s) for k, v in params.items()})

    params = {"x.W": rnd(40, 30), "x.b": rnd(40, seed=2)}
    opt = SGD(params, lr=0.05)
    run(opt, params, 2, 100)
    saved_params = {k: v.copy() for k, v in params.items()}
    saved = opt.state_dict()
    assert set(saved) == {"lr", "momentum", "weight_decay", "steps", "velocity"}
    run(opt, params, 3, 200)

    params2 = {k: v.copy() for k, v in saved_params.items()}
    opt2 = SGD(params2, lr=999.0, momentum=0.0).load_state_dict(saved)
    assert opt2.lr == 0.05 and opt2.momentum == 0.9 and opt2.steps == 2
    run(opt2, params2, 3, 200)
    for k in params:
        assert np.array_equal(params[k], params2[k])


def test_plateau_divides_by_ten_at_most_three_times():
    opt = SGD({"w": np.zeros(1, np.float32)}, lr=0.01)
    sched = ReduceLROnPlateau(opt, patience=2, max_reductions=3)
    lrs, cuts = [], []
    for err in [0.9, 0.8, 0.8, 0.81, 0.7, 0.75, 0.72, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]:
        cuts.append(sched.step(err))
        lrs.append(opt.lr)
    assert cuts == [False, False, False, True, False, False, True, False, False, True,
                    False, False, False, False, False]
    np.testing.assert_allclose(lrs, [0.01] * 3 + [1e-3] * 3 + [1e-4] * 3 + [1e-5] * 6)
    assert sched.reductions == 3 and sched.finished


def test_plateau_state_resumes():
    opt = SGD({"w": np.zeros(1, np.float32)}, lr=0.01)
    sched = ReduceLROnPlateau(opt, patience=2)
    for err in (0.5, 0.6):
        sched.step(err)
    state = sched.state_dict()
    opt2 = SGD({"w": np.zeros(1, np.float32)}, lr=0.01)
    sched2 = ReduceLROnPlateau(opt2, patience=9).load_state_dict(state)
    assert sched2.step(0.55) and sched.step(0.55)
    assert opt2.lr == opt.lr == pytest.approx(0.001)


def test_step_schedule_and_resume():
    opt = SGD({"w": np.zeros(1, np.float32)}, lr=0.01)
    sched = StepLR(opt, milestones=(2, 4), gamma=0.1)
    lrs = [sched.step() for _ in range(5)]
    np.testing.assert_allclose(lrs, [0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    opt2 = SGD({"w": np.zeros(1, np.float32)}, lr=5.0)
    sched2 = StepLR(opt2, milestones=(2, 4)).load_state_dict(sched.state_dict())
    assert opt2.lr == pytest.approx(1e-4) and sched2.epoch == 5
    assert sched2.step() == pytest.approx(1e-4)


def test_step_schedule_every_k_epochs_has_no_last_cut():
    opt = SGD({"w": np.zeros(1, np.float32)}, lr=1.0)
    sched = StepLR(opt, every=2)
    lrs = [sched.step() for _ in range(7)]
    np.testing.assert_allclose(lrs, [1, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    opt2 = SGD({"w": np.zeros(1, np.float32)}, lr=5.0)
    # The schedule is what it is built as; the state carries the epoch and base rate.
    sched2 = StepLR(opt2, every=2).load_state_dict(sched.state_dict())
    assert sched2.every == 2 and sched2.step() == pytest.approx(1e-4)
