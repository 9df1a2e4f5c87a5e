"""Finite-difference gradient checks: is a layer's backward its forward's derivative?

For a layer f and a fixed random direction r we test the scalar L = sum(f(x) * r).
Backward with dy = r gives the analytic dL/dx and dL/dW; central differences

    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

give the numerical ones.  In float64 with eps = 1e-6 the two agree to about 1e-9
unless backward is wrong (or an input sits within eps of a kink of ReLU or max).
The error reported is the relative error of the whole gradient,
||analytic - numeric|| / (||analytic|| + ||numeric||), so tiny entries cannot
inflate it and one wrong entry in a large array still shows.
"""

from . import backend


def _loss(layer, x, r, args, kwargs):
    y = layer.forward(x, *args, **kwargs)
    return float((y * r).sum()) if r is not None else float(y)


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar function f() with respect to array a (in place)."""
    xp = backend.xp()
    g = xp.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def relative_error(a, b):
    xp = backend.xp()
    num = float(xp.linalg.norm((a - b).ravel()))
    den = float(xp.linalg.norm(a.ravel()) + xp.linalg.norm(b.ravel()))
    return 0.0 if den == 0 else num / den


def gradcheck(layer, x, *args, eps=1e-6, seed=0, **kwargs):
    """Check ``layer``'s backward against central differences, in float64.

    ``x`` is the input; ``args``/``kwargs`` go to ``forward`` unchanged (labels
    for SoftmaxCrossEntropy, a fixed ``mask`` for Dropout).  The layer is cast
    to float64 in place.  Returns ``{"x": err, "W": err, ...}``: the relative
    error of the input gradient and of each parameter's gradient.
    """
    xp = backend.xp()
    layer.astype(xp.float64)
    x = x.astype(xp.float64)
    y = layer.forward(x, *args, **kwargs)
    scalar = y.ndim == 0
    r = None if scalar else xp.random.default_rng(seed).standard_normal(y.shape)
    dx = layer.backward() if scalar else layer.backward(r)
    analytic = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}

    errors = {}
    errors["x"] = relative_error(
        analytic["x"], numerical_grad(lambda: _loss(layer, x, r, args, kwargs), x, eps))
    for name, p in layer.params.items():
        num = numerical_grad(lambda: _loss(layer, x, r, args, kwargs), p, eps)
        errors[name] = relative_error(analytic[name], num)
    return errors
