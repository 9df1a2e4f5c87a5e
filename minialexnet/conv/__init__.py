"""Convolution three ways: im2col, FFT and Winograd, chosen per layer.

    Conv2D(48, 128, 5, padding=2, algorithm="fft")        # in minialexnet.layers
    MINIALEXNET_CONV_ALGO=auto python -m minialexnet.train ...   # time them, every layer

``ALGORITHMS`` names them; each but im2col is a short module with its idea and
equations in the docstring:

    im2col      columns of windows and one GEMM (layers.Conv2D itself; any shape)
    fft         products of spectra, per frequency (fft.py; stride 1)
    winograd    Winograd F(2x2, 3x3) (winograd.py; stride 1, 3x3 kernels)
    winograd4   Winograd F(4x4, 3x3): fewer multiplies, less float32 accuracy
    auto        the fastest applicable one, timed once per layer shape on first use
                and remembered (autotune.py), as ``torch.backends.cudnn.benchmark``

conv1 (11x11, stride 4) is left to im2col: FFT and Winograd compute every stride-1
position, 16x the outputs a stride of 4 keeps.  What im2col can reach there is its
GEMM: columns (N*55*55, 363) times (363, 96), 211 MFLOP per image forward, whose
copy blows the image up 7x (4.4 MB of columns per image) and whose 96 output
columns and 363-long rows keep OpenBLAS below its peak; bench_torch.py's "floor"
column times exactly those GEMMs on random operands, the best ratio to torch an
im2col conv1 can have.  (A way past it, not built here: split the stride-4 11x11
convolution into its 16 phases, "space to depth", giving a stride-1 3x3 convolution
of 48 channels on 57x57 maps, kernel padded to 12x12 -- where Winograd applies,
about 1.9x fewer multiplies net.)

Every algorithm keeps the Conv2D contract (forward, dW, db and dx; float32 or
float64; NumPy or CuPy) and equals the reference Conv2D to the bounds stated in
tests/test_conv_algorithms.py.
"""

import functools
from collections import namedtuple

from . import fft, winograd

__all__ = ["ALGORITHMS", "SETTINGS", "Algorithm", "get", "applicable"]

#: One algorithm's functions: ``applies(kernel_size, stride)`` -> None or why not;
#: ``forward(x, W, b, padding)`` -> (y, saved); ``backward(dy, saved,
#: needs_input_grad)`` -> (dW, db, dx); ``flops(x_shape, w_shape, padding,
#: needs_input_grad)`` -> (forward, backward) FLOPs the algorithm itself performs.
Algorithm = namedtuple("Algorithm", "name applies forward backward flops")


def _im2col_flops(x_shape, w_shape, padding, needs_input_grad=True, stride=1):
    N, C, H, W = x_shape
    co, _, kh, kw = w_shape
    oh, ow = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    direct = 2 * N * co * oh * ow * C * kh * kw
    return direct, direct * (1 + needs_input_grad)


ALGORITHMS = {
    # im2col's forward and backward are Conv2D's own methods (layers.py).
    "im2col": Algorithm("im2col", lambda kernel_size, stride: None, None, None,
                        _im2col_flops),
    "fft": Algorithm("fft", fft.applies, fft.forward, fft.backward, fft.flops),
    "winograd": Algorithm("winograd", winograd.applies,
                          functools.partial(winograd.forward, m=2), winograd.backward,
                          functools.partial(winograd.flops, m=2)),
    "winograd4": Algorithm("winograd4", winograd.applies,
                           functools.partial(winograd.forward, m=4), winograd.backward,
                           functools.partial(winograd.flops, m=4)),
}

#: What ``Conv2D(algorithm=...)`` and ``MINIALEXNET_CONV_ALGO`` accept.
SETTINGS = ("auto",) + tuple(ALGORITHMS)


def get(name):
    return ALGORITHMS[name]


def applicable(kernel_size, stride):
    """The algorithms that compute a layer of this kernel and stride, im2col first."""
    return [n for n, a in ALGORITHMS.items() if a.applies(tuple(kernel_size), stride) is None]
