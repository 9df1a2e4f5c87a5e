"""im2col and col2im in channels-last order: what the fast Conv2D runs.

The readable NCHW versions, with the explanation of the trick, are in
``minialexnet/reference/im2col.py`` (chapter 5 shows them); the reference Conv2D
runs those.  Here the same windows are laid out for speed.

``conv_output_size`` is the output length rule both use.
"""

from . import backend


def conv_output_size(size, kernel, stride, padding=0):
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


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

    ``out``, if given, is an (N, H, W, C) array that is overwritten.  As in the
    reference ``col2im``, a loop over the KH*KW kernel offsets adds one strided
    slice each.
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
