"""Every layer: finite-difference gradient checks (float64), properties, bad input.

Each test marked with the ``L`` fixture runs on both implementations: the fast layers
(minialexnet.layers) and the reference ones (minialexnet.reference);
tests/test_reference.py checks that the two compute the same numbers."""

import numpy as np
import pytest

from minialexnet import backend, layers, reference
from minialexnet.gradcheck import gradcheck
from minialexnet.layers import (Conv2D, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2D,
                               ReLU, ShapeError, SoftmaxCrossEntropy, Tanh)

TOL = 1e-6  # max relative error of any gradient, float64 central differences


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)


@pytest.fixture(params=[layers, reference], ids=["fast", "reference"])
def L(request):
    """The layer module under test: fast or reference."""
    return request.param


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def assert_grads_ok(errors):
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"gradient check failed (relative error >= {TOL}): {bad}"


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("cin,cout,k,stride,pad,shape", [
    (3, 4, 3, 1, 0, (2, 3, 7, 7)),
    (3, 4, 3, 1, 1, (2, 3, 6, 9)),      # padding, non-square
    (3, 5, 11, 4, 0, (2, 3, 19, 23)),   # conv1's 11x11 stride 4, non-square
    (2, 3, 5, 2, 2, (1, 2, 9, 8)),      # conv2-like padding 2, stride 2
    (4, 2, (3, 2), 1, 0, (2, 4, 5, 6)),  # rectangular kernel
])
def test_conv_gradients(L, cin, cout, k, stride, pad, shape):
    layer = L.Conv2D(cin, cout, k, stride=stride, padding=pad, bias=0.3)
    layer.params["W"] = layer.params["W"] * 100  # std 1: a stronger test than std 0.01
    assert_grads_ok(gradcheck(layer, rnd(*shape)))


# Conv2D has three ways through a batch: all columns built once and kept for
# backward (small batches), chunks rebuilt in backward (large ones), and two ways
# to dx (transposed convolution, col2im).  Each must give the same numbers.
CONV_PATHS = {
    "kept": dict(keep_columns_bytes=1 << 30),
    "chunked": dict(keep_columns_bytes=0, chunk_bytes=1),          # one image a chunk
    "chunked-col2im": dict(keep_columns_bytes=0, chunk_bytes=2000, dx_method="col2im"),
    "kept-transposed": dict(keep_columns_bytes=1 << 30, dx_method="transposed"),
}


@pytest.mark.parametrize("path", sorted(CONV_PATHS))
@pytest.mark.parametrize("cin,cout,k,stride,pad", [(3, 4, 3, 1, 1), (4, 2, 5, 1, 2),
                                                   (3, 5, 3, 2, 0)])
def test_conv_paths_agree_and_check(path, cin, cout, k, stride, pad):
    x = rnd(5, cin, 9, 8)
    ref = Conv2D(cin, cout, k, stride=stride, padding=pad, bias=0.3, dtype=np.float64)
    layer = Conv2D(cin, cout, k, stride=stride, padding=pad, dtype=np.float64)
    for name, value in CONV_PATHS[path].items():
        setattr(layer, name, value)
    layer.params = {k: v.copy() for k, v in ref.params.items()}
    dy = rnd(*ref.forward(x).shape, seed=1)
    y_ref, dx_ref = ref.forward(x), ref.backward(dy)
    np.testing.assert_allclose(layer.forward(x), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=1e-10, atol=1e-12)
    for g in ("W", "b"):
        np.testing.assert_allclose(layer.grads[g], ref.grads[g], rtol=1e-10, atol=1e-12)
    assert_grads_ok(gradcheck(layer, x[:3]))


@pytest.mark.parametrize("fwd,bwd", [(False, True), (True, False)])
def test_conv_chunking_may_change_between_forward_and_backward(fwd, bwd):
    """needs_input_grad set by hand between forward and backward changes the chunk
    size (with the transposed dx): kept columns must only be used when they fit.
    (Models fix it when they are built: tests/test_models.py.)"""
    x = rnd(5, 2, 9, 8)
    ref, layer = Conv2D(2, 6, 3, dtype=np.float64), Conv2D(2, 6, 3, dtype=np.float64)
    layer.params = {k: v.copy() for k, v in ref.params.items()}
    layer.dx_method, layer.keep_columns_bytes, layer.chunk_bytes = "transposed", 100_000, 40_000
    dy = rnd(*ref.forward(x).shape, seed=1)
    ref.backward(dy)
    layer.needs_input_grad = fwd
    layer.forward(x)
    layer.needs_input_grad = bwd
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-10)


@pytest.mark.parametrize("dx_method", ["transposed", "col2im"])
@pytest.mark.parametrize("kept", [True, False])
def test_conv_input_grad_is_backward_s_dx(dx_method, kept):
    """input_grad(dy, shape) computes backward's dx without a forward; between a
    forward and its backward it leaves the weight gradient right (col2im writes its
    dcols into the column buffer that may hold the kept columns)."""
    x = rnd(5, 2, 9, 8)
    ref, layer = Conv2D(2, 6, 3, padding=1, dtype=np.float64), Conv2D(2, 6, 3, padding=1, dtype=np.float64)
    layer.params = {k: v.copy() for k, v in ref.params.items()}
    layer.dx_method = dx_method
    if not kept:
        layer.keep_columns_bytes, layer.chunk_bytes = 0, 3_000      # chunks of a few images
    dy = rnd(*ref.forward(x).shape, seed=1)
    dx = ref.backward(dy)
    np.testing.assert_allclose(layer.input_grad(dy, x.shape), dx, rtol=1e-12, atol=1e-14)
    layer.forward(x)
    np.testing.assert_allclose(layer.input_grad(dy, x.shape), dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.backward(dy), dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-12)
    with pytest.raises(layers.ShapeError, match="expected \\(5, 6, 9, 8\\)"):
        layer.input_grad(dy[:, :3], x.shape)


def test_conv_kept_columns_follow_the_last_forward():
    """Two forwards, then backward: the gradient is the second input's."""
    layer, ref = Conv2D(3, 4, 3, padding=1), Conv2D(3, 4, 3, padding=1)
    ref.params = {k: v.copy() for k, v in layer.params.items()}
    x1, x2 = rnd(2, 3, 6, 6).astype(np.float32), rnd(2, 3, 6, 6, seed=2).astype(np.float32)
    dy = rnd(2, 4, 6, 6, seed=3).astype(np.float32)
    layer.forward(x1)
    layer.forward(x2)
    ref.forward(x2)
    np.testing.assert_array_equal(layer.backward(dy), ref.backward(dy))
    np.testing.assert_array_equal(layer.grads["W"], ref.grads["W"])


@pytest.mark.parametrize("z,s,shape", [(3, 2, (2, 3, 9, 9)), (3, 1, (2, 2, 6, 7)),
                                       (2, 2, (2, 3, 8, 6)), (3, 2, (1, 2, 13, 8))])
def test_maxpool_gradients(L, z, s, shape):
    assert_grads_ok(gradcheck(L.MaxPool2D(z, s), rnd(*shape)))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1.0, 0.75, 2.0), (5, 1e-4, 0.75, 2.0),
                                               (3, 0.5, 0.6, 1.0), (4, 1.0, 0.75, 2.0)])
def test_lrn_gradients(L, size, alpha, beta, k):
    # alpha = 1.0: at the paper's 1e-4 the normalisation is so weak that a wrong
    # window would hide inside the tolerance.
    assert_grads_ok(gradcheck(L.LocalResponseNorm(size, alpha, beta, k), rnd(2, 9, 3, 4)))


def test_relu_tanh_flatten_linear_gradients(L):
    x = rnd(3, 2, 5, 4)
    assert_grads_ok(gradcheck(L.ReLU(), x))
    assert_grads_ok(gradcheck(L.Tanh(), x))
    assert_grads_ok(gradcheck(L.Flatten(), x))
    assert_grads_ok(gradcheck(L.Linear(7, 5, weight_std=1.0, bias=0.1), rnd(4, 7)))


@pytest.mark.parametrize("inverted", [False, True])
def test_dropout_gradients_with_fixed_mask(L, inverted):
    x = rnd(4, 6)
    mask = np.random.default_rng(1).random(x.shape) >= 0.5
    assert_grads_ok(gradcheck(L.Dropout(0.5, inverted=inverted), x, mask=mask))
    assert_grads_ok(gradcheck(L.Dropout(0.5, inverted=inverted).eval(), x))


def test_softmax_cross_entropy_gradients():
    logits = rnd(5, 7) * 3
    labels = np.array([0, 6, 3, 3, 1])
    assert_grads_ok(gradcheck(SoftmaxCrossEntropy(), logits, labels))


# ---------------------------------------------------------------- forward properties
def test_conv_matches_direct_loops(L):
    layer = L.Conv2D(2, 3, 3, stride=2, padding=1, bias=0.5)
    x = rnd(2, 2, 5, 6).astype(np.float32)
    y = layer.forward(x)
    W, b = layer.params["W"], layer.params["b"]
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros(y.shape, np.float32)
    for n in range(2):
        for o in range(3):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    ref[n, o, i, j] = (W[o] * xp_[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]).sum() + b[o]
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_float32_default_and_float64_kept(L):
    layer = L.Conv2D(3, 4, 3)
    assert layer.params["W"].dtype == np.float32
    assert layer.forward(rnd(1, 3, 5, 5).astype(np.float32)).dtype == np.float32
    for l in (L.ReLU(), L.Tanh(), L.LocalResponseNorm(), L.MaxPool2D(), L.Dropout()):
        assert l.forward(rnd(1, 3, 5, 5).astype(np.float32)).dtype == np.float32
        assert l.forward(rnd(1, 3, 5, 5)).dtype == np.float64
    assert L.Linear(4, 2).forward(rnd(3, 4).astype(np.float32)).dtype == np.float32


def test_lrn_uses_paper_alpha_not_alpha_over_n(L):
    x = rnd(1, 7, 2, 2)
    lrn = L.LocalResponseNorm(size=5, alpha=0.1, beta=0.75, k=2.0)
    y = lrn.forward(x)
    i = 3  # a middle channel: window = channels 1..5
    s = 2.0 + 0.1 * (x[0, 1:6] ** 2).sum(axis=0)
    np.testing.assert_allclose(y[0, i], x[0, i] / s ** 0.75, rtol=1e-12)
    # Edge channel 0: the window is clipped to channels 0..2.
    s0 = 2.0 + 0.1 * (x[0, 0:3] ** 2).sum(axis=0)
    np.testing.assert_allclose(y[0, 0], x[0, 0] / s0 ** 0.75, rtol=1e-12)


def test_overlapping_pool_backward_accumulates(L):
    # One large value in the centre of a 5x5 map is the max of all four 3x3/2 windows.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 9.0
    pool = L.MaxPool2D(3, 2)
    y = pool.forward(x)
    assert y.shape == (1, 1, 2, 2) and (y == 9).all()
    dx = pool.backward(np.ones_like(y))
    assert dx[0, 0, 2, 2] == 4.0 and dx.sum() == 4.0


def test_pool_ties_go_to_first_maximum(L):
    x = np.ones((1, 1, 3, 3))
    pool = L.MaxPool2D(3, 2)
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    assert dx[0, 0, 0, 0] == 1 and dx.sum() == 1


@pytest.mark.parametrize("inverted", [False, True])
def test_dropout_expectation_matches_between_modes(L, inverted):
    backend.use("numpy", seed=3)
    x = np.abs(rnd(200, 500)).astype(np.float32) + 0.5
    d = L.Dropout(0.5, inverted=inverted)
    train = d.forward(x)
    kept = (train != 0).mean()
    assert abs(kept - 0.5) < 0.01
    test = d.eval().forward(x)
    # The mean over 100k units of a train pass equals the deterministic test pass.
    assert abs(train.mean() / test.mean() - 1) < 0.01
    if not inverted:  # paper 4.2: test-time output is the input times 0.5
        np.testing.assert_allclose(test, 0.5 * x)
        assert set(np.unique(train / x)) <= {0.0, 1.0}


def test_dropout_draws_a_new_mask_each_call(L):
    d = L.Dropout(0.5)
    x = np.ones((10, 100), np.float32)
    assert (d.forward(x) != d.forward(x)).any()


@pytest.mark.parametrize("k,n", [(2, 8), (3, 7)])        # 7 = 2 + 2 + 3 rows: uneven
def test_dropout_on_a_shard_applies_its_rows_of_the_whole_batch_s_mask(L, k, n):
    """K ranks, each with rows lo..hi of a batch of n and ``rows=(lo, n)``, drop
    exactly what one process drops on the whole batch (distributed training)."""
    x, dy = rnd(n, 6, 5) + 10, rnd(n, 6, 5, seed=1)
    whole = L.Dropout(0.5, name="drop6.tower1")
    whole.draw = 4
    want = whole.forward(x)
    got = []
    for r in range(k):
        lo, hi = r * n // k, (r + 1) * n // k
        d = L.Dropout(0.5, name="drop6.tower1")
        d.draw, d.rows = 4, (lo, n)
        got.append(d.forward(x[lo:hi]))
        np.testing.assert_array_equal(d.mask, whole.mask[lo:hi])
        np.testing.assert_array_equal(d.backward(dy[lo:hi]), (dy * whole.mask)[lo:hi])
        assert d.draw == 5
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert 0 < (want == 0).mean() < 1


def test_dropout_rows_that_do_not_fit_the_global_batch_are_one_line(L):
    d = L.Dropout(0.5, name="drop7")
    d.rows = (6, 8)
    with pytest.raises(ShapeError, match=r"^drop7: 3 rows from row 6 do not fit in a global "
                                         r"batch of 8 \(rows=\(6, 8\)\)$"):
        d.forward(np.ones((3, 4)))


def test_softmax_cross_entropy_is_stable_for_large_logits():
    loss = SoftmaxCrossEntropy()
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 0.0]], np.float32)
    value = loss.forward(logits, np.array([0, 2]))
    assert np.isfinite(value) and abs(value - 1000.0) < 1e-3  # (0 + 2000) / 2
    assert np.isfinite(loss.backward()).all()


def test_softmax_cross_entropy_value():
    logits = rnd(4, 3)
    labels = np.array([0, 1, 2, 1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = -np.log(p[np.arange(4), labels]).mean()
    assert abs(SoftmaxCrossEntropy().forward(logits, labels) - ref) < 1e-12


def test_linear_shapes_and_init(L):
    backend.use("numpy", seed=0)
    fc = L.Linear(300, 400, bias=1.0)
    assert fc.params["W"].shape == (400, 300) and fc.params["b"].shape == (400,)
    assert abs(fc.params["W"].std() - 0.01) < 0.0005 and (fc.params["b"] == 1).all()


def test_seeded_init_is_reproducible(L):
    backend.use("numpy", seed=7)
    a = L.Conv2D(3, 8, 3).params["W"]
    backend.use("numpy", seed=7)
    b = L.Conv2D(3, 8, 3).params["W"]
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(L):
    conv = L.Conv2D(3, 4, 5, name="conv2")
    with pytest.raises(ShapeError, match="4-D"):
        conv.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="expected 3 input channels, got 4"):
        conv.forward(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ShapeError, match="smaller than the 5x5 kernel"):
        conv.forward(np.zeros((1, 3, 4, 8), np.float32))
    with pytest.raises(ShapeError, match="smaller than the 3x3 window"):
        L.MaxPool2D(3, 2).forward(np.zeros((1, 3, 2, 8), np.float32))
    with pytest.raises(ShapeError, match="4-D"):
        L.LocalResponseNorm().forward(np.zeros((3, 8), np.float32))
    with pytest.raises(ShapeError, match="expected 10 input features, got 9"):
        L.Linear(10, 2).forward(np.zeros((2, 9), np.float32))
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ShapeError, match=r"labels must lie in \[0, 2\]"):
        loss.forward(np.zeros((2, 3), np.float32), np.array([0, 3]))
    with pytest.raises(ShapeError, match=r"labels must lie in \[0, 2\]"):
        loss.forward(np.zeros((2, 3), np.float32), np.array([-1, 0]))
    with pytest.raises(ShapeError, match="integer"):
        loss.forward(np.zeros((2, 3), np.float32), np.array([0.0, 1.0]))
    with pytest.raises(ShapeError, match=r"shape \(2,\)"):
        loss.forward(np.zeros((2, 3), np.float32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="p must be"):
        L.Dropout(1.0)


# ---------------------------------------------------------------- backend capabilities
def capable(name, host_threads=True, blocking=True):
    """A NumPy backend named ``name`` that says it can (or cannot) do these things."""
    b = backend.Backend(name, np)
    b.host_threads, b.prefers_cache_blocking = host_threads, blocking
    return backend.use(b)


@pytest.mark.parametrize("name", ["numpy", "cupy"])
def test_threads_follow_the_backend_capability_not_its_name(name, monkeypatch):
    from minialexnet import parallel
    monkeypatch.setattr(parallel, "_threads", 2)
    for threads in (True, False):
        capable(name, host_threads=threads)
        calls = []
        parallel.parallel_for(8, lambda lo, hi: calls.append((lo, hi)))
        assert len(calls) == (2 if threads else 1), (name, threads)


@pytest.mark.parametrize("name", ["numpy", "cupy"])
def test_cache_blocking_follows_the_backend_capability_not_its_name(name, monkeypatch):
    """Blocked on a CPU, one pass over the whole batch where the backend does not
    prefer cache blocking (CuPy): LRN, pooling, col2im, Conv2D's chunks, SGD."""
    from minialexnet import layers, optim, parallel
    monkeypatch.setattr(parallel, "_threads", 1)
    x = rnd(8, 64, 32, 32).astype(np.float32)      # 256 KB an image
    counts, outputs = {}, {}

    def spy(owner, attr, key):
        real = getattr(owner, attr)

        def counted(*a, **k):
            counts[key] = counts.get(key, 0) + 1
            return real(*a, **k)
        monkeypatch.setattr(owner, attr, staticmethod(counted) if isinstance(
            owner.__dict__.get(attr), staticmethod) else counted)
    spy(LocalResponseNorm, "_window_sum", "lrn")
    spy(MaxPool2D, "_slice", "pool")
    spy(layers, "col2im_nhwc", "col2im")
    spy(Conv2D, "_columns", "conv")
    for blocking in (True, False):
        capable(name, blocking=blocking)
        counts.clear()
        lrn, pool = LocalResponseNorm(), MaxPool2D()
        conv = Conv2D(64, 4, 3, stride=2)
        conv.keep_columns_bytes, conv.chunk_bytes, conv.col2im_block_bytes = 0, 1, 1
        out = [lrn.forward(x), pool.forward(x), conv.forward(x)]
        out += [lrn.backward(out[0]), pool.backward(out[1]), conv.backward(out[2])]
        outputs[blocking] = out
        opt = optim.SGD({"w": np.zeros(10, np.float32)})
        assert (opt.block is not None) == blocking
        if blocking:    # 1 MB blocks of 256 KB images; chunks of one image
            assert counts == {"lrn": 2 * 2, "pool": 1 + 2 * 9 + 2 * 9, "conv": 8 + 8,
                              "col2im": 8}, counts
        else:           # one pass each
            assert counts == {"lrn": 2, "pool": 1 + 9 + 9, "conv": 1, "col2im": 1}, counts
    for a, b in zip(outputs[True], outputs[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # float32 GEMM order


# ---------------------------------------------------------------- B6: no aliasing, modes
@pytest.mark.parametrize("inverted", [False, True])
def test_dropout_returns_new_arrays_in_eval_mode(inverted):
    x, dy = rnd(3, 5), rnd(3, 5, seed=1)
    d = Dropout(0.5, inverted=inverted).eval()
    y = d.forward(x)
    dx = d.backward(dy)
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(y, x if inverted else 0.5 * x)
    np.testing.assert_array_equal(dx, dy if inverted else 0.5 * dy)


@pytest.mark.parametrize("inverted", [False, True])
def test_dropout_backward_uses_the_mode_forward_used(inverted):
    x, dy = np.abs(rnd(4, 50)) + 0.1, rnd(4, 50, seed=1)
    d = Dropout(0.5, inverted=inverted)
    y = d.forward(x)                          # training: a mask
    d.eval()
    np.testing.assert_array_equal(d.backward(dy), dy * (y / x))      # the same mask
    y = d.forward(x)                          # eval: no mask
    d.train()
    np.testing.assert_array_equal(d.backward(dy), dy * (y / x))


def test_linear_gives_fresh_gradients_each_step():
    fc = Linear(6, 4)
    fc.forward(rnd(3, 6))
    fc.backward(rnd(3, 4, seed=1))
    kept = fc.grads["W"]
    before = kept.copy()
    fc.forward(rnd(3, 6, seed=2))
    fc.backward(rnd(3, 4, seed=3))
    assert fc.grads["W"] is not kept
    np.testing.assert_array_equal(kept, before)     # a caller's grads stay as they were


# ---------------------------------------------------------------- misuse of the Python API
# Every layer class, with an input it accepts.  A new layer must be added here: the
# test below checks the table covers layers.__all__.
from minialexnet.layers import HyperparameterError, LayerStateError  # noqa: E402

EVERY_LAYER = {
    "Conv2D": (lambda: Conv2D(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "ReLU": (ReLU, (2, 3, 4, 4)),
    "Tanh": (Tanh, (2, 5)),
    "LocalResponseNorm": (LocalResponseNorm, (2, 6, 4, 4)),
    "MaxPool2D": (lambda: MaxPool2D(3, 2), (2, 3, 7, 7)),
    "Dropout": (lambda: Dropout(0.5), (2, 3, 4, 4)),
    "Dropout-inverted-eval": (lambda: Dropout(0.5, inverted=True).eval(), (2, 8)),
    "Linear": (lambda: Linear(5, 3), (2, 5)),
    "Flatten": (Flatten, (2, 3, 4, 4)),
    "SoftmaxCrossEntropy": (SoftmaxCrossEntropy, (2, 10)),
}


def _run_forward(layer, x):
    if isinstance(layer, SoftmaxCrossEntropy):
        return layer.forward(x, np.array([1, 7])[:len(x)] if hasattr(x, "__len__") else 0)
    return layer.forward(x)


def _run_backward(layer, dy):
    return layer.backward() if isinstance(layer, SoftmaxCrossEntropy) else layer.backward(dy)


def test_the_table_covers_every_layer_class():
    classes = {n for n in layers.__all__ if isinstance(getattr(layers, n), type)
               and issubclass(getattr(layers, n), layers.Layer) and n != "Layer"}
    assert classes == {k.split("-")[0] for k in EVERY_LAYER}


def _bad_input(kind, shape):
    x = rnd(*shape).astype(np.float32)
    return {"int32": x.astype(np.int32), "int64": x.astype(np.int64), "bool": x > 0,
            "complex": x.astype(np.complex64), "object": x.astype(object),
            "list": x.tolist(), "scalar": 3.0, "empty batch": x[:0],
            "0-d": np.float32(1.0)}[kind]


INPUT_MISTAKES = {"int32": "floating-point input", "int64": "floating-point input",
                  "bool": "floating-point input", "complex": "floating-point input",
                  "object": "floating-point input", "list": "as an array",
                  "scalar": "as an array", "empty batch": "empty batch", "0-d": "empty batch"}


@pytest.mark.parametrize("mistake", sorted(INPUT_MISTAKES))
@pytest.mark.parametrize("which", sorted(EVERY_LAYER))
def test_bad_inputs_raise_shape_error_naming_the_layer(which, mistake):
    make, shape = EVERY_LAYER[which]
    layer = make()
    with pytest.raises(ShapeError) as e:
        _run_forward(layer, _bad_input(mistake, shape))
    assert str(e.value).startswith(layer.name + ": ") and INPUT_MISTAKES[mistake] in str(e.value)
    _run_forward(layer, rnd(*shape).astype(np.float32))     # and a good one still works


@pytest.mark.parametrize("which", sorted(EVERY_LAYER))
def test_backward_before_forward_and_twice(which):
    make, shape = EVERY_LAYER[which]
    layer = make()
    with pytest.raises(LayerStateError, match=rf"^{layer.name}: backward\(\) called before forward"):
        _run_backward(layer, rnd(*shape))
    y = _run_forward(layer, rnd(*shape))
    dy = np.ones_like(y)
    _run_backward(layer, dy)
    with pytest.raises(LayerStateError, match=rf"^{layer.name}: backward\(\) called twice"):
        _run_backward(layer, dy)
    _run_forward(layer, rnd(*shape))                      # a new forward: fine again
    _run_backward(layer, dy)
    # A forward that fails leaves nothing for backward to use.
    with pytest.raises(ShapeError):
        _run_forward(layer, rnd(*shape).astype(np.int64))
    with pytest.raises(LayerStateError, match="before forward"):
        _run_backward(layer, dy)
    assert isinstance(LayerStateError("x"), RuntimeError)


GRAD_MISTAKES = {
    "one row more": (lambda y: np.ones((y.shape[0] + 1,) + y.shape[1:], y.dtype), "the gradient has shape"),
    "flattened": (lambda y: np.ones(y.size, y.dtype), "the gradient has shape"),
    "transposed": (lambda y: np.ones(y.shape[::-1] + (1,), y.dtype), "the gradient has shape"),
    "int": (lambda y: np.ones(y.shape, np.int64), "floating-point gradient"),
    "list": (lambda y: np.ones(y.shape).tolist(), "the gradient as an array"),
    "None": (lambda y: None, "the gradient as an array"),
}


@pytest.mark.parametrize("mistake", sorted(GRAD_MISTAKES))
@pytest.mark.parametrize("which", sorted(set(EVERY_LAYER) - {"SoftmaxCrossEntropy"}))
def test_wrong_gradients_raise_shape_error(which, mistake):
    make, shape = EVERY_LAYER[which]
    layer = make()
    y = layer.forward(rnd(*shape).astype(np.float32))
    bad, words = GRAD_MISTAKES[mistake]
    with pytest.raises(ShapeError) as e:
        layer.backward(bad(y))
    assert str(e.value).startswith(layer.name + ": ") and words in str(e.value), str(e.value)
    layer.backward(np.ones_like(y))                       # the forward is still usable


BAD_HYPERPARAMETERS = [
    (lambda: Conv2D(3, 4, 0), "kernel_size"),
    (lambda: Conv2D(3, 4, (3, 0)), "kernel_size"),
    (lambda: Conv2D(3, 4, (3,)), "kernel_size"),
    (lambda: Conv2D(3, 4, "3"), "kernel_size"),
    (lambda: Conv2D(3, 4, 3, stride=0), "stride"),
    (lambda: Conv2D(3, 4, 3, stride=1.5), "stride"),
    (lambda: Conv2D(3, 4, 3, padding=-1), "padding"),
    (lambda: Conv2D(0, 4, 3), "in_channels"),
    (lambda: Conv2D(3, 2.5, 3), "out_channels"),
    (lambda: Conv2D(3, True, 3), "out_channels"),
    (lambda: MaxPool2D(0, 2), "kernel_size"),
    (lambda: MaxPool2D(3, 0), "stride"),
    (lambda: MaxPool2D(3, -2), "stride"),
    (lambda: Linear(0, 3), "in_features"),
    (lambda: Linear(5, -3), "out_features"),
    (lambda: Linear(5, 1e9), "out_features"),
    (lambda: LocalResponseNorm(size=0), "size"),
    (lambda: LocalResponseNorm(alpha=float("nan")), "alpha"),
    (lambda: LocalResponseNorm(beta=float("inf")), "beta"),
    (lambda: LocalResponseNorm(k=0), "k"),
    (lambda: Dropout(1.0), "p"),
    (lambda: Dropout(-0.1), "p"),
]


@pytest.mark.parametrize("make,what", BAD_HYPERPARAMETERS)
def test_impossible_hyperparameters_are_refused_when_the_layer_is_built(make, what):
    with pytest.raises(HyperparameterError, match=rf"^\w+: {what} must be"):
        make()


def test_repr_shows_the_hyperparameters(L):
    assert repr(L.LocalResponseNorm()) == \
        "LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=2.0, name='LocalResponseNorm')"
    r = repr(L.Conv2D(3, 4, 5, stride=2, padding=1))
    assert "kernel_size=(5, 5)" in r and "stride=2" in r and "padding=1" in r
    assert repr(L.MaxPool2D(3, 2)) == "MaxPool2D(kernel_size=3, stride=2, name='MaxPool2D')"
    assert "p=0.5" in repr(L.Dropout(0.5))
