"""im2col / col2im in both layouts: the readable NCHW one (minialexnet/reference,
chapter 5) and the channels-last one the fast layers run on.  Each col2im must be its im2col's adjoint,
and the two layouts must hold the same windows."""

import numpy as np
import pytest

from minialexnet import backend
from minialexnet.im2col import col2im_nhwc, im2col_nhwc
from minialexnet.reference.im2col import col2im, im2col
from minialexnet.layers import Conv2D


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)


@pytest.mark.parametrize("shape,k,s", [((2, 3, 9, 7), (3, 3), 1), ((1, 2, 11, 13), (5, 3), 2),
                                       ((2, 3, 19, 23), (11, 11), 4)])
def test_both_layouts_hold_the_same_windows_and_col2im_is_the_adjoint(shape, k, s):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    kh, kw = k
    cols = im2col(x, kh, kw, s)                                   # (C*KH*KW, N*OH*OW)
    cols_nhwc = im2col_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), kh, kw, s)
    N, C = shape[:2]
    P = cols.shape[1]
    # Reorder (c, kh, kw) x (n, oh, ow) into (n, oh, ow) x (kh, kw, c) and compare.
    same = cols.reshape(C, kh, kw, P).transpose(3, 1, 2, 0).reshape(P, -1)
    np.testing.assert_array_equal(same, cols_nhwc)
    # <im2col(x), c> == <x, col2im(c)> for any c: col2im sums overlaps exactly.
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose((cols * c).sum(), (x * col2im(c, shape, kh, kw, s)).sum(), rtol=1e-12)
    cn = rng.standard_normal(cols_nhwc.shape)
    xn = x.transpose(0, 2, 3, 1)
    back = col2im_nhwc(cn, xn.shape, kh, kw, s)
    np.testing.assert_allclose((cols_nhwc * cn).sum(), (xn * back).sum(), rtol=1e-12)


def test_readable_im2col_gemm_equals_conv2d():
    x = np.random.default_rng(1).standard_normal((2, 3, 10, 9))
    conv = Conv2D(3, 4, 3, stride=2, weight_std=1.0, bias=0.5, dtype=np.float64)
    y = conv.forward(x)
    cols = im2col(x, 3, 3, 2)
    y2 = conv.params["W"].reshape(4, -1) @ cols + conv.params["b"][:, None]
    np.testing.assert_allclose(y2.reshape(4, 2, *y.shape[2:]).transpose(1, 0, 2, 3), y, rtol=1e-12)
