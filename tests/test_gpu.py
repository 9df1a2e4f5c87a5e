"""What only a GPU runs, against NumPy: skipped without a CUDA GPU.

On CuPy the layers take other paths than on NumPy (no host threads, no cache blocks:
one kernel per pass, the whole batch in one conv chunk; per-device generators), so
these run the GPU's paths end to end: both ways to a convolution's dx, the FFT
and Winograd convolutions (cupy.fft) and their autotune, a whole
AlexNet forward and backward, SGD, Trainer steps with --devices 0,0 (and resume),
and the two-device exchange when two GPUs exist.  ``benchmarks/gpu_check.sh`` runs
them with the CuPy benchmark.

``MINIALEXNET_GPU_STANDIN=1`` runs them on tests/fake_devices.py instead of CuPy: a
check of the tests themselves on a machine without a GPU, not of CuPy.
"""

import os

import numpy as np
import pytest

from minialexnet import backend, train
from minialexnet.layers import Conv2D
from minialexnet.models import AlexNet
from minialexnet.optim import SGD

STANDIN = os.environ.get("MINIALEXNET_GPU_STANDIN") == "1"


def gpu_count():
    if STANDIN:
        return 2
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or CUDARuntimeError (a RuntimeError) with no driver
        return 0


pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="no CUDA GPU on this machine")
two_gpus = pytest.mark.skipif(gpu_count() < 2, reason="fewer than two GPUs")


@pytest.fixture(autouse=True)
def gpu_backend(monkeypatch):
    """backend.use("cupy", ...) is the GPU (or, as a stand-in, two fake devices)."""
    if STANDIN:
        from fake_devices import FakeDevices
        real_use = backend.use

        def use(name="numpy", seed=0, devices=None):
            return real_use(FakeDevices(2, seed=seed) if name == "cupy" else name, seed, devices)
        monkeypatch.setattr(backend, "use", use)
    yield
    backend.use("numpy", seed=0)


def on_gpu(a, device=0):
    """A host array on GPU ``device`` (of the backend in use)."""
    with backend.device(device):
        return backend.to_device(backend.xp().asarray(a), device)


def host(a):
    return backend.to_numpy(a)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(got, want, what=""):
    scale = max(1e-6, float(np.abs(want).max()))
    np.testing.assert_allclose(host(got) / scale, want / scale, rtol=1e-3, atol=2e-4,
                               err_msg=what)


# ---------------------------------------------------------------- layers
@pytest.mark.parametrize("dx_method,cin,cout,k,stride,pad", [
    ("transposed", 16, 8, 3, 1, 1),     # conv4/conv5's way (stride 1, C_out <= C_in)
    ("col2im", 16, 8, 3, 1, 1),
    ("col2im", 3, 8, 11, 4, 0),         # conv1's stride 4
    ("col2im", 8, 16, 5, 1, 2),         # conv2's 5x5, C_out > C_in
])
def test_conv_dx_paths_match_numpy(dx_method, cin, cout, k, stride, pad):
    x, seed = rnd(4, cin, 23, 19), 3
    backend.use("numpy", seed=seed)
    ref = Conv2D(cin, cout, k, stride=stride, padding=pad, weight_std=0.1, bias=0.2)
    ref.dx_method = dx_method
    y = ref.forward(x)
    dy = rnd(*y.shape, seed=1)
    dx = ref.backward(dy)
    backend.use("cupy", seed=seed)
    conv = Conv2D(cin, cout, k, stride=stride, padding=pad, bias=0.2)
    conv.dx_method = dx_method
    conv.params = {k_: on_gpu(v) for k_, v in ref.params.items()}
    assert conv._transposed_ok() == (dx_method == "transposed")
    close(conv.forward(on_gpu(x)), y, "y")
    close(conv.backward(on_gpu(dy)), dx, "dx")
    for g in ("W", "b"):
        close(conv.grads[g], ref.grads[g], g)


@pytest.mark.parametrize("algorithm,k,pad", [("fft", 5, 2), ("winograd", 3, 1),
                                              ("winograd4", 3, 1), ("auto", 3, 1)])
def test_conv_algorithms_match_numpy(algorithm, k, pad):
    """FFT (cupy.fft, cuFFT) and Winograd on the GPU equal NumPy's im2col; "auto"
    times them on the GPU (synchronised) and runs its choice."""
    x, seed = rnd(4, 16, 13, 11), 3
    backend.use("numpy", seed=seed)
    ref = Conv2D(16, 8, k, padding=pad, weight_std=0.1, bias=0.2)
    y = ref.forward(x)
    dy = rnd(*y.shape, seed=1)
    dx = ref.backward(dy)
    backend.use("cupy", seed=seed)
    conv = Conv2D(16, 8, k, padding=pad, bias=0.2, algorithm=algorithm)
    conv.params = {k_: on_gpu(v) for k_, v in ref.params.items()}
    close(conv.forward(on_gpu(x)), y, "y")
    assert conv.last_algorithm in ("im2col", "fft", "winograd", "winograd4")
    close(conv.backward(on_gpu(dy)), dx, "dx")
    for g in ("W", "b"):
        close(conv.grads[g], ref.grads[g], g)


# ---------------------------------------------------------------- the model, SGD
def tiny_alexnet(devices=(0, 0)):
    # conv1 11x11/4 (col2im dx), conv2 5x5 C_out > C_in (col2im), conv3-5 3x3 with
    # C_out <= C_in for conv4/conv5 (the transposed dx): the paper's paths, small.
    return AlexNet(num_classes=10, input_size=67, widths=(8, 16, 24, 24, 16), fc=(32, 32),
                   init_std=0.05, devices=devices)


def test_model_forward_and_backward_match_numpy():
    x = rnd(4, 3, 67, 67)
    dlogits = rnd(4, 10, seed=1)
    backend.use("numpy", seed=0)
    ref = tiny_alexnet().eval()
    want = ref.forward(x)
    want_dx = ref.backward(dlogits)
    want_grads = {k: v.copy() for k, v in ref.grads().items()}
    backend.use("cupy", seed=0)
    model = tiny_alexnet().eval()
    model.load_state_dict(ref.state_dict())
    close(model.forward(on_gpu(x)), want, "logits")
    close(model.backward(on_gpu(dlogits)), want_dx, "dx")
    for name, g in model.grads().items():
        close(g, want_grads[name], name)


def test_sgd_matches_numpy():
    w, g = rnd(1000, 7), rnd(1000, 7, seed=1)
    backend.use("numpy", seed=0)
    opt = SGD({"w": w.copy()}, lr=0.1)
    for _ in range(3):
        opt.step({"w": g})
    backend.use("cupy", seed=0)
    gw = on_gpu(w)
    gopt = SGD({"w": gw}, lr=0.1)
    assert gopt.block is None                # whole arrays on a GPU
    for _ in range(3):
        gopt.step({"w": on_gpu(g)})
    close(gw, opt.params()["w"], "w")
    close(gopt.velocity["w"], opt.velocity["w"], "velocity")


# ---------------------------------------------------------------- the Trainer
def run_cfg(tmp_path, **kw):
    return train.default_config(**{
        "dataset": "synthetic", "n_train": 64, "n_val": 32, "batch_size": 16,
        "model": "small-alexnet", "model_kwargs": {"width": 0.5}, "epochs": 5,
        "progress": False, "workers": 1, "checkpoint_every": 0, "backend": "cupy",
        "devices": [0, 0], "out": str(tmp_path / "run"), **kw})


def test_trainer_steps_with_devices_0_0_and_a_bit_identical_resume(tmp_path):
    """A few steps with --devices 0,0 (dropout on, crossing an epoch's end), and B4 on
    the GPU: stopped and resumed, the weights equal a straight run's bit for bit."""
    from minialexnet.checkpoint import load_checkpoint
    quiet = {"log": lambda *a: None}
    t = train.run(run_cfg(tmp_path / "a", max_steps=6), **quiet)
    assert t.step == 6 and len(t.history) == 1
    assert np.isfinite(t.history[0]["train_loss"]) and 0 <= t.history[0]["val_top1"] <= 1
    train.run(run_cfg(tmp_path / "b", max_steps=2), **quiet)
    train.run(run_cfg(tmp_path / "b", max_steps=6, resume=True), **quiet)
    wa, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.npz")
    wb, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.npz")
    for k in wa:
        if k.startswith(("model.", "optim.")):
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


# ---------------------------------------------------------------- two GPUs
@two_gpus
def test_two_devices_compute_what_one_device_computes():
    """The exchange steps between two GPUs (paper 3.2): the same numbers as both
    towers on GPU 0, parameters and gradients each on its own GPU."""
    x, dlogits = rnd(3, 3, 67, 67), rnd(3, 10, seed=1)
    backend.use("cupy", seed=0)
    one = tiny_alexnet((0, 0)).eval()
    want = host(one.forward(on_gpu(x)))
    want_dx = host(one.backward(on_gpu(dlogits)))
    want_grads = {k: host(v) for k, v in one.grads().items()}
    two = tiny_alexnet((0, 1)).eval()
    two.load_state_dict(one.state_dict())
    placed = two.param_devices()
    assert set(placed.values()) == {0, 1}
    logits = two.forward(on_gpu(x))
    assert backend.get_device_id(logits) == 0
    close(logits, want, "logits")
    close(two.backward(on_gpu(dlogits)), want_dx, "dx")
    for name, g in two.grads().items():
        assert backend.get_device_id(g) == placed[name], name
        close(g, want_grads[name], name)
