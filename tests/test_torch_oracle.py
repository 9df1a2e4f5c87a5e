"""Every layer against PyTorch CPU: forward outputs and input/parameter gradients.

PyTorch is a test-only oracle (torch==2.13.0, CPU build); the library never imports it.
Every test runs on both implementations (the ``L`` fixture): the fast layers and the
reference ones (minialexnet.reference), which tests/test_reference.py ties together.
Tolerances are float32's: both sides compute in float32 with different summation orders.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from minialexnet import backend, layers, reference  # noqa: E402

RTOL, ATOL = 2e-4, 2e-5


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)


@pytest.fixture(params=[layers, reference], ids=["fast", "reference"])
def L(request):
    """The layer module under test: fast or reference."""
    return request.param


def rnd(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def close(ours, theirs, scale=1.0):
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL * scale)


def run_both(layer, torch_fn, x, dy, torch_params=()):
    """Forward and backward of ``layer`` and of ``torch_fn`` on the same x and dy."""
    y = layer.forward(x)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_fn(tx, *torch_params)
    ty.backward(torch.tensor(dy))
    return y, dx, ty, tx


@pytest.mark.parametrize("cin,cout,k,s,p,shape", [
    (3, 8, 11, 4, 0, (2, 3, 35, 27)),   # conv1-like, non-square
    (4, 6, 5, 1, 2, (2, 4, 9, 13)),     # conv2-like
    (5, 7, 3, 1, 1, (3, 5, 6, 5)),      # conv3-5-like, odd sizes
    (2, 3, 3, 2, 0, (1, 2, 8, 10)),
])
def test_conv2d(L, cin, cout, k, s, p, shape):
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, weight_std=0.1, bias=0.2)
    layer.params["b"] = rnd(cout, seed=3)
    x = rnd(*shape)
    W = torch.tensor(layer.params["W"], requires_grad=True)
    b = torch.tensor(layer.params["b"], requires_grad=True)
    out_shape = (shape[0],) + layer.output_shape(shape[1:])
    dy = rnd(*out_shape, seed=1)
    y, dx, ty, tx = run_both(layer, lambda t, W, b: F.conv2d(t, W, b, stride=s, padding=p),
                             x, dy, (W, b))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.grads["W"], W.grad, scale=10)
    close(layer.grads["b"], b.grad, scale=10)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (3, 96, 5, 5), (1, 4, 6, 11)])
@pytest.mark.parametrize("alpha", [1e-4, 1.0])
def test_local_response_norm_with_torch_alpha_times_n(L, shape, alpha):
    size = 5
    layer = L.LocalResponseNorm(size=size, alpha=alpha, beta=0.75, k=2.0)
    x = rnd(*shape, scale=3.0)
    dy = rnd(*shape, seed=1)
    # The paper's alpha is torch's alpha / n: torch must be given n * alpha.
    y, dx, ty, tx = run_both(
        layer, lambda t: F.local_response_norm(t, size, alpha=size * alpha, beta=0.75, k=2.0), x, dy)
    close(y, ty)
    close(dx, tx.grad)


def test_local_response_norm_differs_from_torch_with_same_alpha(L):
    """The paper's formula is not torch's with the same number: the difference is real."""
    x = rnd(2, 8, 4, 4, scale=3.0)
    ours = L.LocalResponseNorm(5, alpha=1.0).forward(x)
    theirs = F.local_response_norm(torch.tensor(x), 5, alpha=1.0, beta=0.75, k=2.0).numpy()
    assert np.abs(ours - theirs).max() > 0.1


@pytest.mark.parametrize("z,s,shape", [(3, 2, (2, 3, 13, 13)), (3, 2, (2, 2, 10, 7)),
                                       (3, 1, (1, 3, 6, 9)), (2, 2, (2, 2, 8, 9))])
def test_max_pool2d(L, z, s, shape):
    layer = L.MaxPool2D(z, s)
    x = rnd(*shape)
    dy = rnd(*((shape[0], shape[1]) + ((shape[2] - z) // s + 1, (shape[3] - z) // s + 1)), seed=2)
    y, dx, ty, tx = run_both(layer, lambda t: F.max_pool2d(t, z, s), x, dy)
    close(y, ty)
    close(dx, tx.grad)


@pytest.mark.parametrize("nin,nout,n", [(9216, 64, 4), (37, 11, 5), (10, 1000, 3)])
def test_linear(L, nin, nout, n):
    layer = L.Linear(nin, nout, weight_std=0.05)
    layer.params["b"] = rnd(nout, seed=4)
    W = torch.tensor(layer.params["W"], requires_grad=True)
    b = torch.tensor(layer.params["b"], requires_grad=True)
    x, dy = rnd(n, nin), rnd(n, nout, seed=1)
    y, dx, ty, tx = run_both(layer, F.linear, x, dy, (W, b))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.grads["W"], W.grad)
    close(layer.grads["b"], b.grad)


@pytest.mark.parametrize("ours,theirs", [("ReLU", torch.relu), ("Tanh", torch.tanh)])
def test_pointwise(L, ours, theirs):
    x, dy = rnd(3, 4, 5, 7, scale=2.0), rnd(3, 4, 5, 7, seed=1)
    y, dx, ty, tx = run_both(getattr(L, ours)(), theirs, x, dy)
    close(y, ty)
    close(dx, tx.grad)


def test_dropout_eval_is_paper_scaling_and_torch_is_inverted(L):
    x = rnd(4, 10)
    # torch's dropout is inverted (identity at eval), ours defaults to the paper's
    # "multiply by 0.5 at test time"; with inverted=True the two agree.
    t = F.dropout(torch.tensor(x), 0.5, training=False).numpy()
    np.testing.assert_allclose(L.Dropout(0.5, inverted=True).eval().forward(x), t)
    np.testing.assert_allclose(L.Dropout(0.5).eval().forward(x), 0.5 * t)


@pytest.mark.parametrize("n,k,scale", [(5, 10, 1.0), (8, 1000, 5.0), (3, 7, 100.0)])
def test_cross_entropy(L, n, k, scale):
    logits = rnd(n, k, scale=scale)
    labels = np.random.default_rng(2).integers(0, k, n)
    loss = L.SoftmaxCrossEntropy()
    value = loss.forward(logits, labels)
    dlogits = loss.backward()
    tl = torch.tensor(logits, requires_grad=True)
    tv = F.cross_entropy(tl, torch.tensor(labels))
    tv.backward()
    np.testing.assert_allclose(value, tv.item(), rtol=1e-5)
    close(dlogits, tl.grad)
