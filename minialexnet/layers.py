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

These are the fast layers, what training runs.  ``minialexnet/reference/`` has each
layer as the paper writes it, with the same contract and the same numbers (tested:
tests/test_reference.py); each class below says what it does differently and what
that gained (measured on a 2-core AVX-512 CPU, NumPy against PyTorch 2.13).
"""

import functools
import inspect
import math
import numbers
import zlib

from . import backend, conv as conv_algorithms
from .conv import autotune
from .errors import ConfigError, MinialexnetError, ShapeError
from .im2col import col2im_nhwc, conv_output_size, im2col_nhwc
from .parallel import parallel_for

__all__ = ["Layer", "Conv2D", "ReLU", "Tanh", "LocalResponseNorm", "MaxPool2D",
           "Dropout", "Linear", "Flatten", "SoftmaxCrossEntropy", "ShapeError",
           "HyperparameterError", "LayerStateError"]


class HyperparameterError(MinialexnetError, ValueError):
    """A layer built with an impossible setting (a kernel or stride of 0, negative
    padding, a fractional channel count...)."""


class LayerStateError(MinialexnetError, RuntimeError):
    """backward() called before forward(), or twice after one forward()."""


# ---------------------------------------------------------------- the checks every layer gets
# Every subclass's forward and backward are wrapped (Layer.__init_subclass__) with the
# checks all layers need, so that each layer's own code shows only its maths: the
# input is a non-empty floating-point array of the backend; backward comes after a
# forward, once, with a gradient shaped like that forward's output.  They cost a few
# attribute reads per call (no data is scanned).

def _check_array(layer, x, what):
    if not (hasattr(x, "dtype") and hasattr(x, "shape") and hasattr(x, "ndim")):
        raise ShapeError(f"{layer.name}: expected the {what} as an array "
                         f"({backend.current().name}), got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise ShapeError(f"{layer.name}: expected a floating-point {what} (float32 or "
                         f"float64), got dtype {x.dtype}")
    xp = backend.xp()
    if isinstance(x, backend.np.ndarray) and not isinstance(x, getattr(xp, "ndarray", ())):
        raise ShapeError(f"{layer.name}: the {what} is a NumPy array but the backend is "
                         f"{backend.current().name}: copy it with backend.to_device(x, device)")


def _checked_forward(forward):
    @functools.wraps(forward)
    def checked(self, x, *args, **kwargs):
        self._pending = None                 # a failed forward leaves nothing for backward
        _check_array(self, x, "input")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ShapeError(f"{self.name}: empty batch (input shape {tuple(x.shape)}); "
                             "expected at least one example along axis 0")
        y = forward(self, x, *args, **kwargs)
        self._pending = tuple(y.shape)
        return y
    checked._checked = True
    return checked


def _checked_backward(backward):
    @functools.wraps(backward)
    def checked(self, *args, **kwargs):
        pending = self._pending
        if pending is None:
            raise LayerStateError(f"{self.name}: backward() called before forward(); "
                                  "backward needs what forward keeps")
        if pending is False:
            raise LayerStateError(f"{self.name}: backward() called twice after one "
                                  "forward(); run forward again first")
        if self.grad_of_output:
            dy = args[0] if args else kwargs.get("dy")
            _check_array(self, dy, "gradient")
            if tuple(dy.shape) != pending:
                raise ShapeError(f"{self.name}: the gradient has shape {tuple(dy.shape)}, "
                                 f"expected the shape of forward's output {pending}")
        dx = backward(self, *args, **kwargs)
        self._pending = False
        return dx
    checked._checked = True
    return checked


def _integer(layer, what, v, low=1):
    """``v`` as an int >= ``low``, or a HyperparameterError naming the layer."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise HyperparameterError(f"{layer.name}: {what} must be an integer >= {low}, "
                                  f"got {v!r}")
    return int(v)


def _real(layer, what, v, positive=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
            or (positive and v <= 0):
        raise HyperparameterError(f"{layer.name}: {what} must be a finite "
                                  f"{'positive ' if positive else ''}number, got {v!r}")
    return float(v)


class Layer:
    """Base class: parameter bookkeeping and train/eval mode.

    Subclasses write ``forward`` and ``backward``; the checks every layer needs are
    added around them (see ``_checked_forward``): a non-empty floating-point array
    in, backward once per forward, a gradient shaped like the output.  Mistakes
    raise ShapeError or LayerStateError naming the layer.
    """

    #: backward's argument is dL/d(output), shaped like forward's output (the loss
    #: layer, whose backward takes a scalar, sets this False).
    grad_of_output = True
    _pending = None      # forward's output shape; None: no forward yet; False: used

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method, wrap in (("forward", _checked_forward), ("backward", _checked_backward)):
            f = cls.__dict__.get(method)
            if f is not None and not getattr(f, "_checked", False):
                setattr(cls, method, wrap(f))

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
        """``LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=2.0, name='norm1')``:
        the constructor's hyperparameters that the layer keeps under the same names."""
        skip = ("self", "name", "dtype", "weight_std", "bias")
        args = [f"{k}={getattr(self, k)!r}"
                for k in inspect.signature(type(self).__init__).parameters
                if k not in skip and hasattr(self, k)]
        return f"{type(self).__name__}({', '.join(args + [f'name={self.name!r}'])})"


def _channels_last(x):
    """True if the NCHW-shaped ``x`` is stored channels last (as Conv2D outputs are)."""
    return x.ndim == 4 and x.shape[1] > 1 and x.strides[1] == x.itemsize and \
        x.strides[3] >= x.shape[1] * x.itemsize


def _empty4(shape, dtype, channels_last):
    """An uninitialised NCHW-shaped array, stored channels last if asked."""
    xp = backend.xp()
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    N, C, H, W = shape
    return xp.empty((N, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)


def _nhwc(x):
    """The NCHW-shaped ``x`` as a C-contiguous (N, H, W, C) array: a view of a
    channels-last ``x`` (what Conv2D outputs), else a copy."""
    xh = x.transpose(0, 2, 3, 1)
    return xh if xh.flags.c_contiguous else backend.xp().ascontiguousarray(xh)


def _min_rows(x, min_bytes=1 << 18):
    """Rows of ``x`` per thread below which threads cost more than they save."""
    row = max(1, x[0].size * x.itemsize) if x.ndim and x.shape[0] else 1
    return max(1, min_bytes // row)


def _blocks(x, lo, hi, nbytes=1 << 20):
    """Slices of images lo..hi of about ``nbytes`` each (cache-sized): layers that
    make several passes over their data do all passes on one block, then the next.
    One slice where the backend does not prefer cache blocking (a GPU: one kernel per
    pass, not one per image; AlexNet's LRN1 at batch 128 made about 1,660 launches)."""
    if not backend.current().prefers_cache_blocking:
        return [slice(lo, hi)]
    per = max(1, nbytes // max(1, x[0].size * x.itemsize))
    return [slice(i, min(hi, i + per)) for i in range(lo, hi, per)]


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

    How it runs fast (the maths above is unchanged; only the memory order differs):

    - Channels last inside.  The input is read as (N, H, W, C) and the columns are
      the transpose of the matrix above, cols (N*OH*OW, KH*KW*C), built by
      ``im2col_nhwc`` with one run of KW*C numbers per window row.  Then
      Y = cols @ W2.T is (N*OH*OW, C_out), which *is* the output in channels-last
      order.  It is returned as an (N, C_out, OH, OW) array whose memory is
      channels-last (a transposed view, like PyTorch's ``channels_last``), so
      the next Conv2D reads it without any copy.  Shapes and values are NCHW.
    - When the whole batch's columns fit in ``keep_columns_bytes`` (small images,
      small batches) they are built once, in one buffer, and backward reuses
      them.  Otherwise the batch goes through in chunks of about ``chunk_bytes``
      of columns: the column buffer is reused (no 500 MB array per call), and
      backward rebuilds the columns of each chunk from the cached input.  On a
      backend that does not prefer cache blocking (CuPy) the batch is one chunk.
    - Copies in and out of columns run on ``parallel.threads()`` threads, split
      over the images of the chunk; the matrix multiplies use BLAS's threads.

    ``needs_input_grad = False`` (for a network's first layer, whose input is the
    image) makes ``backward`` skip dx and return None.  ``input_grad(dy, shape)``
    computes dx alone, without a forward (``towers.SharedInputConvs``).

    Against the reference (one NCHW im2col, GEMM and col2im on fresh arrays): reused
    column buffers took conv1 from 1.45x to 1.11x torch's time (a fresh 100-200 MB
    array page-faults on every call); chunks cut conv columns at batch 128 from 855 MB
    to tens of MB at the same speed; channels last makes the GEMM output the next
    layer's input with no transpose; threaded copies (with pooling and ReLU) took the
    AlexNet step from 1.12x to 1.04x torch's.

    ``algorithm`` says how the convolution is computed (``minialexnet/conv/``):

    - "im2col" (the default): all of the above; any kernel and stride.
    - "fft": products of spectra per frequency (conv/fft.py); stride 1.
    - "winograd" / "winograd4": Winograd F(2x2, 3x3) / F(4x4, 3x3) (conv/winograd.py);
      stride 1 and 3x3 kernels.
    - "auto": on the first forward of each new input shape, time every algorithm
      that applies and run the fastest from then on; the choice is kept per shape
      for the whole process (conv/autotune.py: save, load, and what the Trainer's
      checkpoints record).
    Asking for an algorithm that does not apply is a HyperparameterError.  The
    environment variable ``MINIALEXNET_CONV_ALGO`` (one of the names above)
    overrides every layer's setting: that algorithm wherever it applies, im2col
    elsewhere.  ``last_algorithm`` is what the last forward ran.

    Why "im2col" stays the default and "auto" is opted into: the algorithms agree
    only to float32 rounding (tests/test_conv_algorithms.py states the bounds), so
    which one runs changes the low bits of every number after it.  With im2col a
    run is the same computation on every machine and every resume, and the tests,
    chapters and bit-identical resumes keep meaning what they meant; a choice by
    timing depends on how busy the machine was at that moment (one timed run per
    candidate).  "auto" is there for speed, made reproducible by the saved choices.
    """

    chunk_bytes = 24 << 20
    keep_columns_bytes = 128 << 20
    col2im_block_bytes = 1 << 20
    needs_input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 weight_std=0.01, bias=0.0, dtype=None, name=None, algorithm="im2col"):
        super().__init__(name)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) \
            else tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) \
            and len(kernel_size) == 2 else (kernel_size, None)
        kh, kw = _integer(self, "kernel_size", kh), _integer(self, "kernel_size", kw)
        in_channels = _integer(self, "in_channels", in_channels)
        out_channels = _integer(self, "out_channels", out_channels)
        stride, padding = _integer(self, "stride", stride), _integer(self, "padding", padding, 0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        dtype = dtype or backend.dtype()
        xp = backend.xp()
        self.params["W"] = _normal((out_channels, in_channels, kh, kw), weight_std, dtype)
        self.params["b"] = xp.full((out_channels,), bias, dtype=dtype)
        self._buffers = {}
        self._kept = None
        self.algorithm = algorithm
        self._check_algorithm(algorithm)
        self.last_algorithm = None     # what the last forward ran

    def _check_algorithm(self, setting):
        """A HyperparameterError unless ``setting`` is an algorithm this layer can run."""
        if setting not in conv_algorithms.SETTINGS:
            raise HyperparameterError(f"{self.name}: algorithm must be one of "
                                      f"{', '.join(conv_algorithms.SETTINGS)}, got {setting!r}")
        if setting != "auto":
            why = conv_algorithms.get(setting).applies(self.kernel_size, self.stride)
            if why:
                raise HyperparameterError(f"{self.name}: algorithm {setting!r} does not apply "
                                          f"to {why}; use 'im2col' or 'auto'")

    def _resolve(self, x):
        """The algorithm this forward runs: ``MINIALEXNET_CONV_ALGO`` if set (where
        it applies, else im2col), else ``algorithm``; "auto" asks the autotune cache,
        which times the candidates on ``x`` the first time it sees this shape."""
        forced = autotune.override()
        setting = forced or self.algorithm
        if not forced:
            self._check_algorithm(setting)
        candidates = conv_algorithms.applicable(self.kernel_size, self.stride)
        if setting != "auto":
            return setting if setting in candidates else "im2col"
        if len(candidates) == 1:
            return candidates[0]
        key = autotune.key(x.shape, self.params["W"].shape, self.stride, self.padding,
                           x.dtype, self.training, self.needs_input_grad)
        timed = autotune.choice(key) is None
        name = autotune.choose(key, candidates, lambda name: self._measure(name, x))
        if timed and name != "im2col":
            self._buffers = {}          # im2col's column buffers, made only for the timing
        return name

    def _measure(self, name, x):
        """Seconds of algorithm ``name`` on ``x``: forward, and backward (with the
        output as the gradient: only its shape matters) in training mode."""
        grads = dict(self.grads)

        def run():
            y = self._forward_with(name, x)
            if self.training:
                self._backward_with(name, y)
        seconds = autotune.time_call(run)
        self.grads = grads                       # the caller's gradients, untouched
        return seconds

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

    def _buffer(self, name, shape, dtype, zero=False):
        """A reused work array: allocated once per shape, not on every call."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            xp = backend.xp()
            buf = xp.zeros(shape, dtype=dtype) if zero else xp.empty(shape, dtype=dtype)
            self._buffers[name] = buf
        return buf

    def _w2(self):
        """W as (C_out, KH*KW*C_in), columns in the (kh, kw, c) order of the columns."""
        W = self.params["W"]
        return W.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)  # a small copy

    def _plan(self, x):
        return self._plan_of(x.shape, x.dtype)

    def _plan_of(self, shape, dtype):
        """How a batch of inputs of ``shape`` (N, C, H, W) goes through: its sizes and
        ``nb``, the images per chunk of columns."""
        N, C, H, W = shape
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        _, oh, ow = self.output_shape((C, H, W))
        # Bytes of columns per image: of x (forward, dW) and, for dx by the
        # transposed convolution (see backward), of dy.
        per_image = oh * ow * kh * kw * C
        if self._transposed_ok():
            per_image = max(per_image, H * W * kh * kw * self.out_channels)
        per_image *= dtype.itemsize
        # A GPU takes the batch in one chunk (one GEMM, not one per cache-sized chunk).
        if N * per_image <= self.keep_columns_bytes or not backend.current().prefers_cache_blocking:
            nb = N                                       # one chunk, kept for backward
        else:
            nb = max(1, min(N, self.chunk_bytes // max(1, per_image)))
        return N, C, H, W, kh, kw, s, p, oh, ow, nb

    # How backward computes dx: "transposed" (stride 1 only), "col2im" or "auto".
    # The transposed convolution copies KH*KW*C_out numbers per input pixel, col2im
    # adds KH*KW*C_in scattered ones: "auto" takes the transposed one when C_out is
    # not larger than C_in (conv4, conv5), col2im otherwise (measured: about equal).
    dx_method = "auto"

    def _transposed_ok(self):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        if not (self.needs_input_grad and s == 1 and p <= min(kh, kw) - 1):
            return False
        if self.dx_method == "auto":
            return self.out_channels <= self.in_channels
        return self.dx_method == "transposed"

    def _columns(self, x, n0, n1, plan, name="cols", pad_by=None):
        """Columns of images n0..n1 of ``x`` (channels last), in a reused buffer.

        ``pad_by`` = (ph, pw) pads differently from the layer (used for dy)."""
        N, C, H, W, kh, kw, s, p, oh, ow, nb = plan
        C, H, W = x.shape[1:]
        ph, pw = pad_by or (p, p)
        xh = x.transpose(0, 2, 3, 1)                     # (N, H, W, C): a view
        m = n1 - n0
        oh = conv_output_size(H, kh, s, ph)
        ow = conv_output_size(W, kw, s, pw)
        k = kh * kw * C
        buf = self._buffer(name, (nb * oh * ow * k,), x.dtype)
        cols = buf[:m * oh * ow * k].reshape(m * oh * ow, k)
        direct = ph == pw == 0 and xh.flags.c_contiguous
        if not direct:
            # Padding (and NCHW memory) need one copy into a zero-bordered buffer.
            pad = self._buffer(name + ".pad", (nb, H + 2 * ph, W + 2 * pw, C), x.dtype, zero=True)

        def work(lo, hi):
            if direct:
                src = xh[n0 + lo:n0 + hi]
            else:
                src = pad[lo:hi]
                src[:, ph:ph + H, pw:pw + W, :] = xh[n0 + lo:n0 + hi]
            im2col_nhwc(src, kh, kw, s, out=cols[lo * oh * ow:hi * oh * ow].reshape(-1))
        parallel_for(m, work)
        return cols

    def forward(self, x):
        self._check(x)
        name = self._resolve(x)
        y = self._forward_with(name, x)
        self.last_algorithm = name
        return y

    def backward(self, dy):
        return self._backward_with(self.last_algorithm, dy)

    def _forward_with(self, name, x):
        if name == "im2col":
            return self._forward_im2col(x)
        y, self.cache = conv_algorithms.get(name).forward(x, self.params["W"],
                                                          self.params["b"], self.padding)
        self._kept = None
        return y

    def _backward_with(self, name, dy):
        if name == "im2col":
            return self._backward_im2col(dy)
        dW, db, dx = conv_algorithms.get(name).backward(dy, self.cache, self.needs_input_grad)
        self.grads["W"], self.grads["b"] = dW, db
        self.cache = None
        return dx

    def _forward_im2col(self, x):
        xp = backend.xp()
        plan = N, C, H, W, kh, kw, s, p, oh, ow, nb = self._plan(x)
        w2t = self._w2().T                               # (K, C_out), a transposed view
        b = self.params["b"]
        y = xp.empty((N, oh, ow, self.out_channels), dtype=x.dtype)
        y2 = y.reshape(N * oh * ow, self.out_channels)
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            cols = self._columns(x, n0, n1, plan)
            rows = y2[n0 * oh * ow:n1 * oh * ow]
            xp.matmul(cols, w2t, out=rows)               # Y = cols @ W2.T
            rows += b                                    # while the chunk is in cache
        self.cache = x
        self._kept = cols if nb == N else None           # backward's columns, built
        return y.transpose(0, 3, 1, 2)                   # NCHW shape, channels-last memory

    def _backward_im2col(self, dy):
        """dW2 = dY.T @ cols (chunk by chunk), db = sum(dY), and dx (``_dx_chunks``)
        chunk by chunk too, while the chunk's columns are at hand."""
        xp = backend.xp()
        x = self.cache
        plan = N, C, H, W, kh, kw, s, p, oh, ow, nb = self._plan(x)
        co = self.out_channels
        dyh = _nhwc(dy)                                  # (N, OH, OW, C_out)
        dy2 = dyh.reshape(N * oh * ow, co)
        # dW2.T = cols.T @ dY, of shape (K, C_out): measured up to 8x faster in
        # OpenBLAS than dY.T @ cols for conv1's chunks (C_out small, K*N large);
        # on a whole batch's columns the two orders were within 10 %.
        k = kh * kw * C
        dw2t = xp.zeros((k, co), dtype=x.dtype)
        part = xp.empty((k, co), dtype=x.dtype)
        dx, dx_chunk = self._dx_chunks(dyh, plan) if self.needs_input_grad else (None, None)
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            cols = self._kept if nb == N and self._kept is not None \
                else self._columns(x, n0, n1, plan)
            xp.matmul(cols.T, dy2[n0 * oh * ow:n1 * oh * ow], out=part)  # dW2.T += cols.T @ dY
            dw2t += part
            if dx is not None:
                dx_chunk(n0, n1, work=cols)              # cols is used: col2im's dcols go there
        self.grads["W"] = dw2t.reshape(kh, kw, C, co).transpose(3, 2, 0, 1).copy()
        self.grads["b"] = dy2.sum(axis=0)
        self.cache = self._kept = None
        return None if dx is None else dx.transpose(0, 3, 1, 2)

    def input_grad(self, dy, input_shape):
        """dL/dx alone: dy (N, C_out, OH, OW) -> dx (N, C_in, H, W) for an input of
        ``input_shape`` (N, C_in, H, W), computed as backward computes it.

        dx depends on the weights, not on the input's values, so no forward is
        needed and no weight gradient is made; it runs im2col's dx paths whatever
        ``algorithm`` says.  ``towers.SharedInputConvs`` makes the weight gradients
        of several towers in one stacked backward and each tower's own dx with this."""
        N = input_shape[0]
        if tuple(dy.shape) != (N,) + self.output_shape(tuple(input_shape[1:])):
            raise ShapeError(f"{self.name}: the gradient has shape {tuple(dy.shape)}, expected "
                             f"{(N,) + self.output_shape(tuple(input_shape[1:]))} for input "
                             f"{tuple(input_shape)}")
        plan = self._plan_of(tuple(input_shape), dy.dtype)
        # col2im writes its dcols into the column buffer: kept columns would be lost
        # (a backward after this rebuilds them from its cached input).
        self._kept = None
        dx, dx_chunk = self._dx_chunks(_nhwc(dy), plan)
        nb = plan[-1]
        for n0 in range(0, N, nb):
            dx_chunk(n0, min(N, n0 + nb))
        return dx.transpose(0, 3, 1, 2)

    def _dx_chunks(self, dyh, plan):
        """(dx, dx_chunk): dx (N, H, W, C_in) to fill, and ``dx_chunk(n0, n1, work)``
        that fills its images n0..n1 from dyh (N, OH, OW, C_out), one of two ways:

        - stride 1 (conv2-5; ``_transposed_ok``): the transposed convolution -- dx is
          the convolution of dy, padded by KH-1-p, with W flipped in space and with
          in/out channels swapped -- one more im2col and GEMM, no scattered adds;
        - otherwise dcols = dY @ W2 and col2im.  dcols are written into ``work``, a
          (rows, K) buffer of the chunk's columns' size (backward hands it the
          chunk's columns, used by then); None: the layer's column buffer.
        """
        xp = backend.xp()
        N, C, H, W, kh, kw, s, p, oh, ow, nb = plan
        dx = xp.empty((N, H, W, C), dtype=dyh.dtype)
        if self._transposed_ok():
            # Wf[c, i, j, o] = W[o, c, KH-1-i, KW-1-j], as (KH*KW*C_out, C_in).
            wf2t = self.params["W"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(-1, C)
            dyn = dyh.transpose(0, 3, 1, 2)              # NCHW view of channels-last dy
            dx2 = dx.reshape(N * H * W, C)

            def dx_chunk(n0, n1, work=None):
                dcols = self._columns(dyn, n0, n1, plan, name="dcols",
                                      pad_by=(kh - 1 - p, kw - 1 - p))
                xp.matmul(dcols, wf2t, out=dx2[n0 * H * W:n1 * H * W])
            return dx, dx_chunk
        w2 = self._w2()
        dy2 = dyh.reshape(N * oh * ow, -1)
        k = w2.shape[1]

        def dx_chunk(n0, n1, work=None):
            d = dy2[n0 * oh * ow:n1 * oh * ow]
            if work is None:
                work = self._buffer("cols", (nb * oh * ow * k,), dx.dtype)[:d.shape[0] * k]
                work = work.reshape(d.shape[0], k)
            self._col2im(xp.matmul(d, w2, out=work), dx, n0, n1, plan)   # dcols = dY @ W2
        return dx, dx_chunk

    def _col2im(self, dcols, dx, n0, n1, plan):
        N, C, H, W, kh, kw, s, p, oh, ow, nb = plan
        if p:
            pad = self._buffer("dpad", (nb, H + 2 * p, W + 2 * p, C), dx.dtype)

        def work(lo, hi):
            # A few images at a time, so that the KH*KW adds into them hit the cache.
            for blk in _blocks(dx, lo, hi, nbytes=self.col2im_block_bytes):
                a, z = blk.start, blk.stop
                part = dcols[a * oh * ow:z * oh * ow]
                if p:
                    g = col2im_nhwc(part, (z - a, H + 2 * p, W + 2 * p, C), kh, kw, s,
                                    out=pad[a:z])
                    dx[n0 + a:n0 + z] = g[:, p:p + H, p:p + W, :]   # drop the padding
                else:
                    col2im_nhwc(part, (z - a, H, W, C), kh, kw, s, out=dx[n0 + a:n0 + z])
        parallel_for(n1 - n0, work)


class ReLU(Layer):
    """Rectified linear unit, f(x) = max(0, x) (paper 3.1).

    x: any shape -> y: same shape.  dy/dx = 1 where x > 0, else 0.
    Keeps its output y, not a mask: y > 0 exactly where x > 0 (zeros, -0.0 and NaN
    included), so backward reads dx = dy * (y > 0) from the output, as PyTorch's
    ``threshold_backward`` does.

    Against the reference (which keeps the mask x > 0): one pass in forward instead
    of two (no mask to write; where the next layer keeps its input -- conv, LRN,
    Linear -- keeping y costs no memory, before pooling and dropout 4 bytes an
    element instead of 1), backward's comparison and product a cache-sized block at
    a time, all in arrays of x's memory order, split over threads along the
    batch (memory-bound work; with pooling and the conv copies, threads took the
    AlexNet step from 1.12x to 1.04x torch's).
    """

    def forward(self, x):
        xp = backend.xp()
        y = xp.empty_like(x)                     # keeps x's memory order

        def work(lo, hi):                        # memory-bound: split over threads
            xp.maximum(x[lo:hi], 0, out=y[lo:hi])
        parallel_for(x.shape[0], work, min_per_thread=_min_rows(x))
        self.y = y
        return y

    def backward(self, dy):
        xp = backend.xp()
        y, self.y = self.y, None
        dx = xp.empty_like(dy)

        def work(lo, hi):
            for b in _blocks(y, lo, hi):         # the mask of a block is still in cache
                xp.multiply(dy[b], y[b] > 0, out=dx[b])
        parallel_for(dy.shape[0], work, min_per_thread=_min_rows(dy))
        return dx


class Tanh(Layer):
    """The saturating nonlinearity ReLU replaced, f(x) = tanh(x) (paper 3.1, Figure 1).

    x: any shape -> y: same shape.  dy/dx = 1 - tanh(x)^2, computed from the cached y.
    No faster version: ``minialexnet.reference`` uses this class too.
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

    How it runs: ``M @ v`` is computed without M, as a running sum of n shifted
    copies of v along the channel axis (``_window_sum``: n - 1 slice adds, no
    matrix multiply); ``M.T @ v`` is the same with the window mirrored.  The batch
    is split over threads and each thread works on about a megabyte of images at
    a time, so that the ten or so passes over the data hit the cache, not memory.
    For beta = 0.75, S^-beta is 1 / (sqrt(S) * sqrt(sqrt(S))), much cheaper than
    ``power``.  Forward keeps x and S; backward recomputes S^-beta from S.

    Against the reference (the band matrix M as a matrix multiply over the whole
    batch, ``**`` for the power): shifted adds, cache blocks, threads and the square
    roots above.  Measured: LRN at 0.12-0.14x torch's time (torch's LRN is slow); an
    early probe found the band GEMM 2x faster than shifted adds, and no head-to-head
    of this layer against the reference is recorded.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
        super().__init__(name)
        self.size, self.alpha = _integer(self, "size", size), _real(self, "alpha", alpha)
        self.beta, self.k = _real(self, "beta", beta), _real(self, "k", k, positive=True)
        self._band = {}

    def band(self, channels, dtype):
        """The (C, C) 0/1 matrix that sums each channel's window (for reference:
        ``_window_sum(v) == M @ v`` along channels; the layer does not use M)."""
        key = (channels, dtype)
        if key not in self._band:
            xp = backend.xp()
            i = xp.arange(channels)[:, None]
            j = xp.arange(channels)[None, :]
            m = (j >= i - self.size // 2) & (j <= i + (self.size - 1) // 2)
            self._band[key] = m.astype(dtype)
        return self._band[key]

    @staticmethod
    def _window_sum(a, out, before, after):
        """out[:, i] = sum of a[:, j] for i - before <= j <= i + after (clipped)."""
        out[...] = a
        for d in range(1, before + 1):
            out[:, d:] += a[:, :-d]
        for d in range(1, after + 1):
            out[:, :-d] += a[:, d:]
        return out

    def _pow(self, s, out):
        """out = s ** -beta."""
        xp = backend.xp()
        if self.beta == 0.75:
            xp.sqrt(s, out=out)
            root4 = xp.sqrt(out)
            out *= root4
            return xp.reciprocal(out, out=out)
        return xp.power(s, -s.dtype.type(self.beta), out=out)

    def forward(self, x):
        self._expect_rank(x, 4, "(N, C, H, W)")
        xp = backend.xp()
        t = x.dtype.type
        y, s = xp.empty_like(x), xp.empty_like(x)        # keep x's memory order
        before, after = self.size // 2, (self.size - 1) // 2

        def work(lo, hi):
            for b in _blocks(x, lo, hi):
                xs, ss, ys = x[b], s[b], y[b]
                sq = xp.multiply(xs, xs, out=ys)         # a^2, in y's space for now
                self._window_sum(sq, ss, before, after)  # M @ a^2
                ss *= t(self.alpha)
                ss += t(self.k)                          # S
                self._pow(ss, out=ys)
                ys *= xs                                 # y = a * S^-beta
        parallel_for(x.shape[0], work)
        self.cache = (x, s)
        return y

    def backward(self, dy):
        xp = backend.xp()
        x, s = self.cache
        t = x.dtype.type
        dx = xp.empty_like(x)
        before, after = (self.size - 1) // 2, self.size // 2   # M.T: mirrored window

        def work(lo, hi):
            for b in _blocks(x, lo, hi):
                xs, ss, dys, dxs = x[b], s[b], dy[b], dx[b]
                sp = self._pow(ss, out=xp.empty_like(xs))       # S^-beta
                q = xp.multiply(dys, xs)
                q *= sp
                q /= ss                                         # dy * y / S
                win = self._window_sum(q, xp.empty_like(xs), before, after)
                win *= xs
                win *= t(2 * self.alpha * self.beta)
                xp.multiply(dys, sp, out=dxs)
                dxs -= win
        parallel_for(x.shape[0], work)
        self.cache = None
        return dx


class MaxPool2D(Layer):
    """Max pooling; overlapping when stride < kernel_size (paper 3.4: z=3, s=2).

    x: (N, C, H, W) -> y: (N, C, OH, OW),  OH = (H - z) // s + 1
        y[n, c, i, j] = max_{u, v < z} x[n, c, s*i + u, s*j + v]

    Forward records, for each output, which of the z*z window offsets held the
    maximum (the first one, on ties, as PyTorch does).  Backward sends each
    gradient to that input; where windows overlap an input can be the maximum of
    several windows, and its gradients add up.

    Against the reference (im2col of every window, argmax, col2im): no columns;
    z*z strided passes with a branch-free uint8 argmax (arg = maximum(arg, k *
    better), since k only grows: forward 84 -> 24 ms), in cache blocks, on threads
    (pool1 69 -> 35 ms), keeping the input's memory order.
    """

    def __init__(self, kernel_size=3, stride=2, name=None):
        super().__init__(name)
        self.kernel_size = _integer(self, "kernel_size", kernel_size)
        self.stride = _integer(self, "stride", stride)

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
        first = self._slice(x, 0, 0, oh, ow)
        # empty_like keeps x's memory order (channels last stays channels last).
        y = xp.empty_like(first)
        arg = xp.empty_like(first, dtype=xp.uint8)

        def work(lo, hi):
            # A few images at a time, so that the z*z passes below run in cache.
            for b in _blocks(x, lo, hi):
                xs, ys, args = x[b], y[b], arg[b]
                ys[...] = self._slice(xs, 0, 0, oh, ow)
                args[...] = 0
                better = xp.empty_like(ys, dtype=xp.bool_)
                code = xp.empty_like(ys, dtype=xp.uint8)
                for k in range(1, z * z):
                    win = self._slice(xs, k // z, k % z, oh, ow)
                    xp.greater(win, ys, out=better)
                    # k only grows, so "arg = k where better" is a branch-free maximum.
                    xp.multiply(better.view(xp.uint8), xp.uint8(k), out=code)
                    xp.maximum(args, code, out=args)
                    xp.maximum(ys, win, out=ys)
        parallel_for(N, work)        # memory-bound: split the batch over threads
        self.cache = (arg, x.shape, _channels_last(x))
        return y

    def backward(self, dy):
        xp = backend.xp()
        arg, x_shape, last = self.cache
        z = self.kernel_size
        oh, ow = dy.shape[2:]
        dx = _empty4(x_shape, dy.dtype, last)

        def work(lo, hi):
            for b in _blocks(dx, lo, hi):
                dxs, dys, args = dx[b], dy[b], arg[b]
                dxs[...] = 0
                hit = xp.empty_like(args, dtype=xp.bool_)
                part = xp.empty_like(dys)
                for k in range(z * z):
                    xp.equal(args, xp.uint8(k), out=hit)
                    xp.multiply(dys, hit, out=part)      # dy where offset k held the max
                    self._slice(dxs, k // z, k % z, oh, ow)[...] += part
        parallel_for(dy.shape[0], work)
        self.cache = None
        return dx


def batch_rows(layer, x):
    """(lo, n): x is rows lo..lo+len(x) of a global batch of n, by ``layer.rows``
    ((0, len(x)) when None); a ShapeError if they do not fit.  Dropout's, fast and
    reference alike."""
    lo, n = (0, len(x)) if layer.rows is None else (int(layer.rows[0]), int(layer.rows[1]))
    if not 0 <= lo <= lo + len(x) <= n:
        raise ShapeError(f"{layer.name}: {len(x)} rows from row {lo} do not fit in a "
                         f"global batch of {n} (rows={layer.rows})")
    return lo, n


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
    Nothing here is tuned: the reference's Dropout is the same computation.

    The mask of a training forward is fixed by (the backend's seed, the layer's
    ``name``, ``draw``), as the Loader's crops are by (seed, epoch, batch): nothing
    depends on what was drawn before, so a resumed run draws what the straight run
    drew.  Each drawn mask counts ``draw`` on by one; the Trainer sets it to the
    optimiser step (``Network.set_draw``).  Layers with the same name draw the same
    masks: the models name each tower's dropout (``drop6.tower0``).

    ``rows = (lo, n)``: x is rows lo..lo+len(x) of a global batch of n (a rank's
    shard, ``data.Loader(shard=...)``).  The mask is drawn for all n rows and x's
    rows kept, so K ranks apply exactly the masks one process applies to the same
    images, whatever K.  The cost: K times the random numbers of x's own mask, cheap
    where the models drop (fc6, fc7).  None (the default): x is the whole batch.
    """

    draw = 0
    rows = None

    def __init__(self, p=0.5, inverted=False, name=None):
        super().__init__(name)
        if not 0 <= p < 1:
            raise HyperparameterError(f"{self.name}: p must be in [0, 1), got {p!r}")
        self.p, self.inverted = p, inverted

    def forward(self, x, mask=None):
        keep = 1.0 - self.p
        if self.training:
            if mask is None:
                mask = self._draw_mask(x)
            scale = 1.0 / keep if self.inverted else 1.0
        else:
            mask, scale = None, 1.0 if self.inverted else keep
        # Cached: the mode forward ran in, so backward does not read ``training``
        # (which may have changed since).
        self.mask, self.scale = mask, x.dtype.type(scale)
        return self._apply(x)

    def backward(self, dy):
        return self._apply(dy)          # y = x * mask * scale is linear: dx = dy * mask * scale

    def _draw_mask(self, x):
        """Mask number ``draw`` for x: its rows of the global batch's (see ``rows``)."""
        lo, n = batch_rows(self, x)
        rng = backend.keyed_rng(zlib.crc32(self.name.encode()), self.draw)
        self.draw += 1
        return (rng.random((n,) + x.shape[1:], dtype=x.dtype) >= self.p)[lo:lo + len(x)]

    def _apply(self, a):
        """a * mask * scale, always a new array (never ``a`` itself, even in eval mode)."""
        out = a * self.mask if self.mask is not None else a.copy()
        if self.scale != 1:
            out *= self.scale
        return out


class Linear(Layer):
    """Fully-connected layer (paper 3.5: fc6, fc7, fc8).

    x: (N, in_features) -> y: (N, out_features),   y = x @ W.T + b
    dW = dy.T @ x,  db = sum_n dy,  dx = dy @ W
    params: W (out_features, in_features), b (out_features,).
    Against the reference: the same products; only memory handling differs (at
    batch 32 the FC layers are memory-bound: reused buffers helped a little).
    """

    def __init__(self, in_features, out_features, weight_std=0.01, bias=0.0,
                 dtype=None, name=None):
        super().__init__(name)
        in_features = _integer(self, "in_features", in_features)
        out_features = _integer(self, "out_features", out_features)
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
        y = x @ self.params["W"].T               # BLAS reads W.T in place (no copy)
        y += self.params["b"]
        return y

    def backward(self, dy):
        W = self.params["W"]
        # A fresh array every step: a caller keeping last step's grads must not see
        # them change.  Last step's is let go first, so that under cpu.tune() (the
        # command-line tools and the benchmark keep freed memory) the new one reuses
        # its pages: no page faults for fc6's 150 MB.  Without tune(), glibc maps
        # blocks this large fresh, a page-fault pass over 150 MB per step, small
        # next to a CPU AlexNet step of seconds; correctness first.
        self.grads.pop("W", None)
        self.grads["W"] = dy.T @ self.x
        self.grads["b"] = dy.sum(axis=0)
        self.x = None
        return dy @ W


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W): the seam between conv5 and fc6.

    No faster version: ``minialexnet.reference`` uses this class too.
    """

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
    No faster version: ``minialexnet.reference`` uses this class too.
    """

    grad_of_output = False      # backward(dloss): a scalar, not an array like the loss

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
