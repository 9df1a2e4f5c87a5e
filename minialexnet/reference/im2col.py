"""im2col and col2im: the one trick behind convolution (paper 3.5), in NCHW.

A convolution slides a KH x KW window over a C-channel image.  If every window
(C*KH*KW numbers) is copied out as a column, all the sliding becomes one matrix
multiply: ``W.reshape(C_out, C*KH*KW) @ cols``.  That is what cuda-convnet did on
the paper's GPUs, and what BLAS does best on a CPU.

    x     (N, C, H, W)                  image batch, already padded
    cols  (C*KH*KW, N*OH*OW)            row (c, kh, kw), column (n, oh, ow)

    OH = (H - KH) // stride + 1,  OW = (W - KW) // stride + 1

``im2col`` is one strided *view* of ``x`` (no Python loop over windows) and one
copy.  ``col2im`` is its adjoint: every column entry is added back to the pixel
it came from.  Windows overlap when stride < kernel, so a pixel receives several
contributions; rather than a slow scatter (``add.at``) we loop over the KH*KW
kernel offsets and add a strided slice each time, which sums overlaps exactly.

The fast convolution (``minialexnet/layers.py``) uses the channels-last versions
in ``minialexnet/im2col.py``: the same windows, another memory order.
"""

from .. import backend
from ..im2col import conv_output_size

__all__ = ["conv_output_size", "windows", "im2col", "col2im"]


def windows(x, kh, kw, stride):
    """A strided view (N, C, KH, KW, OH, OW) of all windows of ``x``; no copy.

    ``view[n, c, i, j, oh, ow] == x[n, c, oh*stride + i, ow*stride + j]``.
    """
    N, C, H, W = x.shape
    oh = conv_output_size(H, kh, stride)
    ow = conv_output_size(W, kw, stride)
    sn, sc, sh, sw = x.strides
    return backend.as_strided(
        x, (N, C, kh, kw, oh, ow), (sn, sc, sh, sw, sh * stride, sw * stride))


def im2col(x, kh, kw, stride=1):
    """Columns of all KH x KW windows of ``x``: (N, C, H, W) -> (C*KH*KW, N*OH*OW)."""
    N, C = x.shape[:2]
    view = windows(x, kh, kw, stride)
    oh, ow = view.shape[4:]
    # One copy: move (c, kh, kw) to the front, then flatten to 2-D.
    cols = backend.xp().ascontiguousarray(view.transpose(1, 2, 3, 0, 4, 5))
    return cols.reshape(C * kh * kw, N * oh * ow)


def col2im(cols, x_shape, kh, kw, stride=1):
    """Adjoint of ``im2col``: sum each column entry back into its pixel.

    cols: (C*KH*KW, N*OH*OW) -> dx: ``x_shape`` = (N, C, H, W).
    """
    xp = backend.xp()
    N, C, H, W = x_shape
    oh = conv_output_size(H, kh, stride)
    ow = conv_output_size(W, kw, stride)
    c6 = cols.reshape(C, kh, kw, N, oh, ow)
    dx = xp.zeros((N, C, H, W), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # All output positions' contributions at kernel offset (i, j) land on
            # one strided sub-grid of dx; overlapping windows simply add up.
            dx[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += \
                c6[:, i, j].transpose(1, 0, 2, 3)
    return dx
