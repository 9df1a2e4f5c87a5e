"""Every AlexNet layer as a small class with an explicit forward and backward.

Conventions (all layers):
- Images are NCHW: (batch, channels, height, width).  Vectors are (N, features).
- ``forward(x)`` returns the output and caches exactly what ``backward`` needs;
  ``backward(dy)`` takes dL/d(output) and returns dL/d(input).
- Learnable layers keep ``params`` and ``grads``: dicts with the same keys
  (``"W"``, ``"b"``); ``backward`` fills ``grads``.
- ``train()`` / ``eval()`` set ``training`` (only Dropout cares).
- float32 by default; float64 input stays float64 (gradient checks call
  ``astype(float64)`` on the layer first).
- Arrays and array functions come from ``backend.xp()``, never from an import,
  so the same code runs on NumPy and CuPy.
"""

from . import backend
from .im2col import col2im, conv_output_size, im2col

__all__ = ["Layer", "Conv2D", "ReLU", "Tanh", "LocalResponseNorm", "MaxPool2D",
           "Dropout", "Linear", "Flatten", "SoftmaxCrossEntropy", "ShapeError"]


class ShapeError(ValueError):
    """An input of the wrong rank, size or channel count, or labels out of range."""


class Layer:
    """Base class: parameter bookkeeping and train/eval mode."""

    def __init__(self, name=None):
        self.name = name or type(self).__name__
        self.params = {}
        self.grads = {}
        self.training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Cast parameters (and any gradients) to ``dtype`` in place; returns self."""
        for d in (self.params, self.grads):
            for k in d:
                d[k] = d[k].astype(dtype)
        return self

    def _expect_rank(self, x, rank, what):
        if x.ndim != rank:
            raise ShapeError(f"{self.name}: expected a {rank}-D input {what}, "
                             f"got shape {tuple(x.shape)}")

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


def _normal(shape, std, dtype):
    """N(0, std^2) weights drawn from the backend's seeded generator (paper 5)."""
    return backend.rng().standard_normal(shape, dtype=dtype) * dtype(std)


class Conv2D(Layer):
    """2-D convolution by im2col and one matrix multiply (paper 3.5).

    x: (N, C_in, H, W) -> y: (N, C_out, OH, OW),  OH = (H + 2p - KH) // s + 1

        y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xpad[n, c, s*i + u, s*j + v]

    As matrices, with cols = im2col(xpad) of shape (C_in*KH*KW, N*OH*OW):
        Y = W2 @ cols + b,      W2 = W.reshape(C_out, C_in*KH*KW)
        dW2 = dY @ cols.T,  db = sum(dY),  dcols = W2.T @ dY,  dx = col2im(dcols)

    params: W (C_out, C_in, KH, KW), b (C_out,).  Initialised W ~ N(0, weight_std^2),
    b = bias (paper 5: std 0.01; the model sets b = 1 for conv2, conv4, conv5).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 weight_std=0.01, bias=0.0, dtype=None, name=None):
        super().__init__(name)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        dtype = dtype or backend.dtype()
        xp = backend.xp()
        self.params["W"] = _normal((out_channels, in_channels, kh, kw), weight_std, dtype)
        self.params["b"] = xp.full((out_channels,), bias, dtype=dtype)
        self._cols_buffer = None

    def output_shape(self, input_shape):
        """(C_out, OH, OW) for an input of shape (C_in, H, W)."""
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        _, h, w = input_shape
        return (self.out_channels, conv_output_size(h, kh, s, p), conv_output_size(w, kw, s, p))

    def _check(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ShapeError(f"{self.name}: expected {self.in_channels} input channels, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")
        (kh, kw), p = self.kernel_size, self.padding
        if x.shape[2] + 2 * p < kh or x.shape[3] + 2 * p < kw:
            raise ShapeError(f"{self.name}: input {x.shape[2]}x{x.shape[3]} (padding {p}) "
                             f"is smaller than the {kh}x{kw} kernel")

    def forward(self, x):
        self._check(x)
        xp = backend.xp()
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        N, C, H, W = x.shape
        if p:
            xpad = xp.zeros((N, C, H + 2 * p, W + 2 * p), dtype=x.dtype)
            xpad[:, :, p:p + H, p:p + W] = x
        else:
            xpad = x
        cols = im2col(xpad, kh, kw, s, out=self._cols_buffer)
        self._cols_buffer = cols.reshape(-1)  # reused by the next call: no page faults
        w2 = self.params["W"].reshape(self.out_channels, -1)
        y = xp.matmul(w2, cols)                          # (C_out, N*OH*OW)
        y += self.params["b"][:, None]
        _, oh, ow = self.output_shape((C, H, W))
        self.cache = (cols, xpad.shape, x.shape)
        # GEMM output is (C_out, N, OH, OW); NCHW is the public layout.
        return y.reshape(self.out_channels, N, oh, ow).transpose(1, 0, 2, 3).copy()

    def backward(self, dy):
        xp = backend.xp()
        cols, pad_shape, x_shape = self.cache
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        dy2 = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(self.out_channels, -1)
        w2 = self.params["W"].reshape(self.out_channels, -1)
        self.grads["W"] = xp.matmul(dy2, cols.T).reshape(self.params["W"].shape)
        self.grads["b"] = dy2.sum(axis=1)
        dxpad = col2im(xp.matmul(w2.T, dy2), pad_shape, kh, kw, s)
        self.cache = None
        H, W = x_shape[2:]
        return dxpad[:, :, p:p + H, p:p + W] if p else dxpad


class ReLU(Layer):
    """Rectified linear unit, f(x) = max(0, x) (paper 3.1).

    x: any shape -> y: same shape.  dy/dx = 1 where x > 0, else 0.
    Caches only the boolean mask (1 byte per element).
    """

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class Tanh(Layer):
    """The saturating nonlinearity ReLU replaced, f(x) = tanh(x) (paper 3.1, Figure 1).

    x: any shape -> y: same shape.  dy/dx = 1 - tanh(x)^2, computed from the cached y.
    """

    def forward(self, x):
        self.y = backend.xp().tanh(x)
        return self.y

    def backward(self, dy):
        return dy * (1 - self.y * self.y)


class LocalResponseNorm(Layer):
    """Local response normalisation across channels (paper 3.3).

        b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ^ beta

    x: (N, C, H, W) -> y: same shape; defaults n=5, k=2, alpha=1e-4, beta=0.75.

    The paper's alpha multiplies the plain sum.  PyTorch's ``local_response_norm``
    (and Caffe's LRN) divide alpha by n, so the paper's layer equals torch's with
    ``alpha_torch = n * alpha``.  We follow the paper.

    The window sum over channels is a product with a banded 0/1 matrix M (C x C),
    M[i, j] = 1 if j is in i's window; the window is clipped at the edges because
    M simply has fewer ones there.  With S = k + alpha * M @ a^2:
        y  = a * S^-beta
        dx = dy * S^-beta - 2 alpha beta * a * (M.T @ (dy * y / S))
    For even n the window is [i - n//2, i + (n-1)//2], as in PyTorch.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self._band = {}

    def band(self, channels, dtype):
        """The (C, C) 0/1 matrix that sums each channel's window."""
        key = (channels, dtype)
        if key not in self._band:
            xp = backend.xp()
            i = xp.arange(channels)[:, None]
            j = xp.arange(channels)[None, :]
            m = (j >= i - self.size // 2) & (j <= i + (self.size - 1) // 2)
            self._band[key] = m.astype(dtype)
        return self._band[key]

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        xp = backend.xp()
        N, C, H, W = x.shape
        m = self.band(C, x.dtype)
        s = xp.matmul(m, (x * x).reshape(N, C, H * W)).reshape(x.shape)
        s *= x.dtype.type(self.alpha)
        s += x.dtype.type(self.k)
        s_pow = s ** -self.beta
        self.cache = (x, s, s_pow)
        return x * s_pow

    def backward(self, dy):
        xp = backend.xp()
        x, s, s_pow = self.cache
        N, C, H, W = x.shape
        m = self.band(C, x.dtype)
        t = (dy * x * s_pow / s).reshape(N, C, H * W)    # dy * y / S
        win = xp.matmul(m.T, t).reshape(x.shape)
        self.cache = None
        return dy * s_pow - x.dtype.type(2 * self.alpha * self.beta) * x * win


class MaxPool2D(Layer):
    """Max pooling; overlapping when stride < kernel_size (paper 3.4: z=3, s=2).

    x: (N, C, H, W) -> y: (N, C, OH, OW),  OH = (H - z) // s + 1
        y[n, c, i, j] = max_{u, v < z} x[n, c, s*i + u, s*j + v]

    Forward records, for each output, which of the z*z window offsets held the
    maximum (the first one, on ties, as PyTorch does).  Backward sends each
    gradient to that input; where windows overlap an input can be the maximum of
    several windows, and its gradients add up.
    """

    def __init__(self, kernel_size=3, stride=2, name=None):
        super().__init__(name)
        self.kernel_size, self.stride = kernel_size, stride

    def _slice(self, a, u, v, oh, ow):
        s = self.stride
        return a[:, :, u:u + s * oh:s, v:v + s * ow:s]

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        z, s = self.kernel_size, self.stride
        N, C, H, W = x.shape
        if H < z or W < z:
            raise ShapeError(f"{self.name}: input {H}x{W} is smaller than the {z}x{z} window")
        xp = backend.xp()
        oh, ow = conv_output_size(H, z, s), conv_output_size(W, z, s)
        y = self._slice(x, 0, 0, oh, ow).copy()
        arg = xp.zeros(y.shape, dtype=xp.uint8)
        for k in range(1, z * z):
            win = self._slice(x, k // z, k % z, oh, ow)
            better = win > y
            # k only grows, so "arg = k where better" is a branch-free maximum.
            xp.maximum(arg, better.astype(xp.uint8) * xp.uint8(k), out=arg)
            xp.maximum(y, win, out=y)
        self.cache = (arg, x.shape)
        return y

    def backward(self, dy):
        xp = backend.xp()
        arg, x_shape = self.cache
        z = self.kernel_size
        oh, ow = dy.shape[2:]
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        for k in range(z * z):
            self._slice(dx, k // z, k % z, oh, ow)[...] += dy * (arg == k)
        self.cache = None
        return dx


class Dropout(Layer):
    """Dropout (paper 4.2): in training, each unit is kept with probability 1 - p.

    x: any shape -> y: same shape.
    Paper scaling (default, ``inverted=False``), as the paper states it:
        training:  y = x * mask,            mask ~ Bernoulli(1 - p)
        test:      y = x * (1 - p)          ("multiply their outputs by 0.5")
    Inverted scaling (``inverted=True``), the modern habit, same expectations:
        training:  y = x * mask / (1 - p);  test: y = x
    Either way E[y_train] = y_test.  ``forward(x, mask=...)`` reuses a given mask
    (gradient checks need the same mask on every call).
    """

    def __init__(self, p=0.5, inverted=False, name=None):
        super().__init__(name)
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.inverted = p, inverted

    def forward(self, x, mask=None):
        keep = 1.0 - self.p
        if not self.training:
            self.scale = None
            return x if self.inverted else x * x.dtype.type(keep)
        if mask is None:
            mask = backend.rng().random(x.shape, dtype=x.dtype) >= self.p
        self.mask = mask
        self.scale = x.dtype.type(1.0 / keep) if self.inverted else None
        y = x * mask
        return y * self.scale if self.inverted else y

    def backward(self, dy):
        if not self.training:
            return dy if self.inverted else dy * dy.dtype.type(1.0 - self.p)
        dx = dy * self.mask
        return dx * self.scale if self.inverted else dx


class Linear(Layer):
    """Fully-connected layer (paper 3.5: fc6, fc7, fc8).

    x: (N, in_features) -> y: (N, out_features),   y = x @ W.T + b
    dW = dy.T @ x,  db = sum_n dy,  dx = dy @ W
    params: W (out_features, in_features), b (out_features,).
    """

    def __init__(self, in_features, out_features, weight_std=0.01, bias=0.0,
                 dtype=None, name=None):
        super().__init__(name)
        self.in_features, self.out_features = in_features, out_features
        dtype = dtype or backend.dtype()
        self.params["W"] = _normal((out_features, in_features), weight_std, dtype)
        self.params["b"] = backend.xp().full((out_features,), bias, dtype=dtype)

    def forward(self, x):
        self._expect_rank(x, 2, "(N, features)")
        if x.shape[1] != self.in_features:
            raise ShapeError(f"{self.name}: expected {self.in_features} input features, "
                             f"got {x.shape[1]}")
        self.x = x
        return x @ self.params["W"].T + self.params["b"]

    def backward(self, dy):
        self.grads["W"] = dy.T @ self.x
        self.grads["b"] = dy.sum(axis=0)
        self.x = None
        return dy @ self.params["W"]


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W): the seam between conv5 and fc6."""

    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.shape)


class SoftmaxCrossEntropy(Layer):
    """Softmax over classes and the mean negative log-likelihood (paper 3.5).

    forward(logits (N, K), labels (N,) integer class indices) -> scalar loss
        p = softmax(logits),   loss = -(1/N) sum_n log p[n, labels[n]]
    backward() -> dlogits (N, K) = (p - onehot(labels)) / N

    Stable for large logits: the row maximum is subtracted before exp
    (log-sum-exp), which changes nothing mathematically.
    """

    def forward(self, logits, labels):
        xp = backend.xp()
        self._expect_rank(logits, 2, "(N, classes)")
        labels = xp.asarray(labels)
        N, K = logits.shape
        if labels.shape != (N,):
            raise ShapeError(f"{self.name}: expected labels of shape ({N},), got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise ShapeError(f"{self.name}: labels must be integer class indices, got {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= K:
            raise ShapeError(f"{self.name}: labels must lie in [0, {K - 1}], got values in [{lo}, {hi}]")
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        rows = xp.arange(N)
        self.cache = (xp.exp(logp), labels, rows)
        return -logp[rows, labels].mean()

    def backward(self, dloss=1.0):
        p, labels, rows = self.cache
        dx = p.copy()
        dx[rows, labels] -= 1
        dx *= dx.dtype.type(dloss / p.shape[0])
        return dx
