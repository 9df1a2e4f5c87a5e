"""Every AlexNet layer as the paper writes it: the version to read.

Same contract as the fast layers of ``minialexnet/layers.py`` (what training runs
by default), and tested equal to them in float64 (tests/test_reference.py):

- Images are NCHW: (batch, channels, height, width).  Vectors are (N, features).
- ``forward(x)`` returns the output and caches what ``backward`` needs;
  ``backward(dy)`` takes dL/d(output) and returns dL/d(input).
- Learnable layers keep ``params`` and ``grads``, dicts with the keys ``"W"`` and
  ``"b"``; ``backward`` puts fresh gradient arrays there.
- ``train()`` / ``eval()`` set ``training`` (only Dropout cares).
- float32 by default; float64 input stays float64.
- Arrays come from ``backend.xp()``, so the same code runs on NumPy and CuPy.

No threads, no reused buffers, no memory-order tricks: each layer is its equation.
Tanh, Flatten and SoftmaxCrossEntropy have no faster version, so the fast module's
classes are the reference ones too (imported below).
"""

import zlib

from .. import backend
from ..im2col import conv_output_size
from ..layers import Flatten, Layer, ShapeError, SoftmaxCrossEntropy, Tanh, batch_rows
from .im2col import col2im, im2col

__all__ = ["Conv2D", "ReLU", "Tanh", "LocalResponseNorm", "MaxPool2D", "Dropout",
           "Linear", "Flatten", "SoftmaxCrossEntropy"]


def _normal(shape, std, dtype):
    """N(0, std^2) weights from the backend's seeded generator (paper 5)."""
    return backend.rng().standard_normal(shape, dtype=dtype) * dtype(std)


class Conv2D(Layer):
    """2-D convolution by im2col, one matrix multiply and col2im (paper 3.5).

    x: (N, C_in, H, W) -> y: (N, C_out, OH, OW),  OH = (H + 2p - KH) // s + 1

        y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xpad[n, c, s*i + u, s*j + v]

    As matrices, with cols = im2col(xpad) of shape (C_in*KH*KW, N*OH*OW) and
    W2 = W.reshape(C_out, C_in*KH*KW):
        Y = W2 @ cols + b                          (C_out, N*OH*OW)
        dW2 = dY @ cols.T,   db = sum of dY over n, i, j,
        dcols = W2.T @ dY,   dx = col2im(dcols) with the padding cut off

    params: W (C_out, C_in, KH, KW) ~ N(0, weight_std^2), b (C_out,) = bias.
    ``needs_input_grad = False`` (the first layer: its input is the image) makes
    ``backward`` skip dx and return None.
    """

    needs_input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 weight_std=0.01, bias=0.0, dtype=None, name=None):
        super().__init__(name)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        dtype = dtype or backend.dtype()
        self.params["W"] = _normal((out_channels, in_channels, kh, kw), weight_std, dtype)
        self.params["b"] = backend.xp().full((out_channels,), bias, dtype=dtype)

    def output_shape(self, input_shape):
        """(C_out, OH, OW) for an input of shape (C_in, H, W)."""
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        _, h, w = input_shape
        return (self.out_channels, conv_output_size(h, kh, s, p), conv_output_size(w, kw, s, p))

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ShapeError(f"{self.name}: expected {self.in_channels} input channels, "
                             f"got {C} (input shape {tuple(x.shape)})")
        if H + 2 * p < kh or W + 2 * p < kw:
            raise ShapeError(f"{self.name}: input {H}x{W} (padding {p}) "
                             f"is smaller than the {kh}x{kw} kernel")
        _, oh, ow = self.output_shape((C, H, W))
        xpad = backend.xp().pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        cols = im2col(xpad, kh, kw, s)                            # (C_in*KH*KW, N*OH*OW)
        W2 = self.params["W"].reshape(self.out_channels, -1)
        Y = W2 @ cols + self.params["b"][:, None]                 # (C_out, N*OH*OW)
        self.cache = (cols, xpad.shape)
        return Y.reshape(self.out_channels, N, oh, ow).transpose(1, 0, 2, 3)

    def backward(self, dy):
        cols, xpad_shape = self.cache
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        W2 = self.params["W"].reshape(self.out_channels, -1)
        dY = dy.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)   # (C_out, N*OH*OW)
        self.grads["W"] = (dY @ cols.T).reshape(self.params["W"].shape)
        self.grads["b"] = dY.sum(axis=1)
        self.cache = None
        if not self.needs_input_grad:
            return None
        dxpad = col2im(W2.T @ dY, xpad_shape, kh, kw, s)
        h, w = xpad_shape[2] - 2 * p, xpad_shape[3] - 2 * p
        return dxpad[:, :, p:p + h, p:p + w]


class ReLU(Layer):
    """Rectified linear unit, f(x) = max(0, x) (paper 3.1).

    x: any shape -> y: same shape.  dy/dx = 1 where x > 0, else 0.
    """

    def forward(self, x):
        self.mask = x > 0
        return backend.xp().maximum(x, 0)

    def backward(self, dy):
        return dy * self.mask


class LocalResponseNorm(Layer):
    """Local response normalisation across channels (paper 3.3).

        b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ^ beta

    x: (N, C, H, W) -> y: same shape; defaults n=5, k=2, alpha=1e-4, beta=0.75.
    The paper's alpha multiplies the plain sum (PyTorch and Caffe divide it by n).

    The window sum over channels is a product with the band matrix M (C x C),
    M[i, j] = 1 if j is in i's window, else 0 (fewer ones at the edges: the clipped
    window).  For even n the window is [i - n//2, i + (n-1)//2], as in PyTorch.
    With S = k + alpha * M @ a^2, at every pixel:
        y  = a * S^-beta
        dx = dy * S^-beta - 2 alpha beta * a * (M.T @ (dy * a * S^(-beta-1)))
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def band(self, channels, dtype):
        """The (C, C) 0/1 matrix M that sums each channel's window."""
        xp = backend.xp()
        i = xp.arange(channels)[:, None]
        j = xp.arange(channels)[None, :]
        return ((j >= i - self.size // 2) & (j <= i + (self.size - 1) // 2)).astype(dtype)

    @staticmethod
    def _channel_matmul(M, v):
        """M @ v along the channel axis of v (N, C, H, W), at every pixel."""
        N, C = v.shape[:2]
        return (M @ v.reshape(N, C, -1)).reshape(v.shape)

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        M = self.band(x.shape[1], x.dtype)
        S = self.k + self.alpha * self._channel_matmul(M, x * x)
        self.cache = (x, S, M)
        return x * S ** -self.beta

    def backward(self, dy):
        x, S, M = self.cache
        S_beta = S ** -self.beta
        back = self._channel_matmul(M.T, dy * x * S_beta / S)
        self.cache = None
        return dy * S_beta - 2 * self.alpha * self.beta * x * back


class MaxPool2D(Layer):
    """Max pooling; overlapping when stride < kernel_size (paper 3.4: z=3, s=2).

    x: (N, C, H, W) -> y: (N, C, OH, OW),  OH = (H - z) // s + 1
        y[n, c, i, j] = max_{u, v < z} x[n, c, s*i + u, s*j + v]

    Every channel is an image of its own: im2col of the (N*C, 1, H, W) batch puts
    each z x z window in a column, and the column's argmax is the input that wins
    (the first one on ties, as in PyTorch).  Backward sends each gradient to that
    input (col2im); where windows overlap, an input can win several windows and
    its gradients add up.
    """

    def __init__(self, kernel_size=3, stride=2, name=None):
        super().__init__(name)
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        z, s = self.kernel_size, self.stride
        N, C, H, W = x.shape
        if H < z or W < z:
            raise ShapeError(f"{self.name}: input {H}x{W} is smaller than the {z}x{z} window")
        cols = im2col(x.reshape(N * C, 1, H, W), z, z, s)    # (z*z, N*C*OH*OW)
        arg = cols.argmax(axis=0)                             # the winner of each window
        self.cache = (arg, x.shape)
        return cols.max(axis=0).reshape(N, C, conv_output_size(H, z, s),
                                        conv_output_size(W, z, s))

    def backward(self, dy):
        arg, (N, C, H, W) = self.cache
        z, s = self.kernel_size, self.stride
        xp = backend.xp()
        dcols = xp.zeros((z * z, arg.size), dtype=dy.dtype)
        dcols[arg, xp.arange(arg.size)] = dy.reshape(-1)     # each gradient to its winner
        self.cache = None
        return col2im(dcols, (N * C, 1, H, W), z, z, s).reshape(N, C, H, W)


class Dropout(Layer):
    """Dropout (paper 4.2): in training, each unit is kept with probability 1 - p.

    x: any shape -> y: same shape,  y = x * mask * scale;  dx = dy * mask * scale
    Paper scaling (default, ``inverted=False``), as the paper states it:
        training:  mask ~ Bernoulli(1 - p), scale 1
        test:      no mask, scale 1 - p     ("multiply their outputs by 0.5")
    Inverted scaling (``inverted=True``), the modern habit:
        training:  mask ~ Bernoulli(1 - p), scale 1 / (1 - p);   test: scale 1
    Either way E[y_train] = y_test.  ``backward`` uses the mask and scale of the
    last forward, whatever the mode is now.  ``forward(x, mask=...)`` reuses a given
    mask (gradient checks need the same mask on every call).  Mask number ``draw``
    of the layer called ``name`` comes from a generator keyed on (seed, name, draw),
    so a resumed run draws the masks the straight run drew.  ``rows = (lo, n)``: x is
    rows lo.. of a global batch of n (a rank's shard); the mask is drawn for all n
    rows (K times x's random numbers) and x's rows kept, so K ranks apply the masks
    of one process.  None: x is the whole batch.
    """

    draw = 0
    rows = None

    def __init__(self, p=0.5, inverted=False, name=None):
        super().__init__(name)
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.inverted = p, inverted

    def forward(self, x, mask=None):
        keep = 1.0 - self.p
        if not self.training:
            self.mask, self.scale = None, x.dtype.type(1.0 if self.inverted else keep)
            return x * self.scale
        if mask is None:
            lo, n = batch_rows(self, x)
            rng = backend.keyed_rng(zlib.crc32(self.name.encode()), self.draw)
            self.draw += 1
            mask = (rng.random((n,) + x.shape[1:], dtype=x.dtype) >= self.p)[lo:lo + len(x)]
        self.mask, self.scale = mask, x.dtype.type(1.0 / keep if self.inverted else 1.0)
        return x * mask * self.scale

    def backward(self, dy):
        dx = dy if self.mask is None else dy * self.mask
        return dx * self.scale


class Linear(Layer):
    """Fully-connected layer (paper 3.5: fc6, fc7, fc8).

    x: (N, in_features) -> y: (N, out_features),   y = x @ W.T + b
    dW = dy.T @ x,  db = sum_n dy,  dx = dy @ W
    params: W (out_features, in_features) ~ N(0, weight_std^2), b (out_features,) = bias.
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
