"""im2col and col2im: the one trick behind convolution.

A convolution slides a KH x KW window over a C-channel image.  If every window
(C*KH*KW numbers) is copied out as a column, all the sliding becomes one matrix
multiply: ``W.reshape(C_out, C*KH*KW) @ cols``.  That is what cuda-convnet did on
the paper's GPUs, and what BLAS does best on a CPU.

Layout (chosen so that each GEMM in forward and backward is a single call):

    x     (N, C, H, W)                  image batch, already padded
    cols  (C*KH*KW, N*OH*OW)             row (c, kh, kw), column (n, oh, ow)

    OH = (H - KH) // stride + 1,  OW = (W - KW) // stride + 1

``im2col`` is one strided *view* of ``x`` (no Python loop over windows) and one
copy.  ``col2im`` is its adjoint: every column entry is added back to the pixel
it came from.  Windows overlap when stride < kernel, so a pixel receives several
contributions; rather than a slow scatter (``add.at``) we loop over the KH*KW
kernel offsets and add a strided slice each time, which sums overlaps exactly.
"""

from . import backend


def conv_output_size(size, kernel, stride, padding=0):
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


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


def im2col(x, kh, kw, stride=1, out=None):
    """Columns of all KH x KW windows of ``x``.

    x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW).  ``out``, if given, is a reusable
    buffer of at least that many elements (big column arrays are expensive to
    allocate afresh on every call).
    """
    xp = backend.xp()
    N, C = x.shape[:2]
    view = windows(xp.ascontiguousarray(x), kh, kw, stride)
    oh, ow = view.shape[4:]
    size = C * kh * kw * N * oh * ow
    if out is None or out.size < size or out.dtype != x.dtype:
        out = xp.empty(size, dtype=x.dtype)
    cols = out[:size].reshape(C, kh, kw, N, oh, ow)
    # One copy: move (c, kh, kw) to the front, then flatten to 2-D.
    cols[...] = view.transpose(1, 2, 3, 0, 4, 5)
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


# ----------------------------------------------------------------------------------
# Channels-last versions: what Conv2D uses inside.
#
# With the channels of a pixel next to each other in memory, x (N, H, W, C), the
# KW neighbouring pixels of one window row are KW*C consecutive numbers, so every
# window row is copied as one run instead of KW*C scattered elements.  Columns are
# then rows of a matrix:
#
#     cols  (N*OH*OW, KH*KW*C)     row (n, oh, ow), column (kh, kw, c)
#
# and ``cols @ W2.T`` (W2 of shape (C_out, KH*KW*C)) is already the output in the
# same channels-last layout, (N*OH*OW, C_out) = (N, OH, OW, C_out): no transpose.

def windows_nhwc(x, kh, kw, stride):
    """A strided view (N, OH, OW, KH, KW, C) of all windows of ``x`` (N, H, W, C).

    ``view[n, oh, ow, i, j, c] == x[n, oh*stride + i, ow*stride + j, c]``; no copy.
    """
    N, H, W, C = x.shape
    oh = conv_output_size(H, kh, stride)
    ow = conv_output_size(W, kw, stride)
    sn, sh, sw, sc = x.strides
    return backend.as_strided(
        x, (N, oh, ow, kh, kw, C), (sn, sh * stride, sw * stride, sh, sw, sc))


def im2col_nhwc(x, kh, kw, stride=1, out=None):
    """x: (N, H, W, C) -> cols: (N*OH*OW, KH*KW*C), one strided copy.

    ``out``, if given, is a contiguous buffer of at least that many elements.
    """
    view = windows_nhwc(x, kh, kw, stride)
    N, oh, ow, _, _, C = view.shape
    size = N * oh * ow * kh * kw * C
    if out is None or out.size < size or out.dtype != x.dtype:
        out = backend.xp().empty(size, dtype=x.dtype)
    cols = out[:size].reshape(view.shape)
    cols[...] = view
    return cols.reshape(N * oh * ow, kh * kw * C)


def col2im_nhwc(cols, x_shape, kh, kw, stride=1, out=None):
    """Adjoint of ``im2col_nhwc``: cols (N*OH*OW, KH*KW*C) -> dx (N, H, W, C).

    ``out``, if given, is an (N, H, W, C) array that is overwritten.  As in
    ``col2im``, a loop over the KH*KW kernel offsets adds one strided slice each.
    """
    N, H, W, C = x_shape
    oh = conv_output_size(H, kh, stride)
    ow = conv_output_size(W, kw, stride)
    c6 = cols.reshape(N, oh, ow, kh, kw, C)
    if out is None:
        out = backend.xp().zeros(x_shape, dtype=cols.dtype)
    else:
        out[...] = 0
    s = stride
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + s * oh:s, j:j + s * ow:s, :] += c6[:, :, :, i, j, :]
    return out
