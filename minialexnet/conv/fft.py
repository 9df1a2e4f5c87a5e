"""Convolution by FFT (Mathieu, Henaff & LeCun 2013): a product of spectra.

A convolution layer computes, for every image n and output map o (stride 1),

    y[n, o, i, j] = b[o] + sum_c sum_{u, v} W[o, c, u, v] * xpad[n, c, i + u, j + v]

a *correlation* of each padded input map with each kernel.  The correlation
theorem turns it into a product: with hats for 2-D discrete Fourier transforms of
size F_h x F_w (the kernel zero-padded to that size), and * the complex conjugate,

    yhat[n, o, f] = sum_c  xhat[n, c, f] * What*[o, c, f]        for every frequency f

so for each frequency f the channel sum is one small complex matrix product,

    Yhat_f (N, C_out) = Xhat_f (N, C_in) @ What*_f (C_in, C_out),

and y is the inverse transform of Yhat, cropped to OH x OW.  The transforms are
circular; F_h >= H + 2p makes every output we keep free of wrap-around (i + u <=
H + 2p - 1 < F_h), so F_h is the padded height rounded up to a length with only
factors 2, 3 and 5, which FFT libraries do fastest.  Real inputs have Hermitian
spectra, so ``rfft2`` keeps only F_h x (F_w // 2 + 1) frequencies.

Why it pays: per image and map pair the direct convolution does OH*OW*KH*KW
multiply-adds, the product F_h*(F_w//2 + 1) complex ones (4 real each).  AlexNet's
conv2 (5x5 on 27x27, padding 2: 31 -> F = 32): 18,225 against 544 x 4 = 2,176,
about 8x fewer; 3x3 kernels on 13x13 maps gain only about 2x, and the transforms
cost extra memory passes.  Which wins is measured, not assumed (``autotune``).

The gradients are the same kind of product (dy zero-padded to F_h x F_w too):

    dW:  dWhat_f (C_in, C_out) = Xhat_f^T @ dYhat*_f     (x correlated with dy)
         dW = irfft2(dWhat)[:KH, :KW]
    dx:  dXhat_f (N, C_in)     = dYhat_f @ What_f^T      (dy convolved with W)
         dx = irfft2(dXhat)[p:p + H, p:p + W]

Neither wraps around either: dW keeps lags u < KH, whose terms i + u stay below
H + 2p; in dx a negative a - u lands at F_h + a - u >= OH, where dy is zero.
Forward keeps Xhat for dW.  Everything runs in the layer's dtype (float32:
complex64 spectra) on NumPy's ``numpy.fft`` or CuPy's ``cupy.fft`` (cuFFT).
Stride 1 only: a strided output samples the correlation, and the spectra of the
skipped positions would be computed for nothing.
"""

import math

from .. import backend

__all__ = ["applies", "forward", "backward", "flops", "fast_length"]


def fast_length(n):
    """The smallest length >= n whose only prime factors are 2, 3 and 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def applies(kernel_size, stride):
    """None if FFT convolution computes this layer, else why not (one phrase)."""
    return None if stride == 1 else f"stride {stride} (FFT convolution needs stride 1)"


def _sizes(x_shape, w_shape, padding):
    N, C, H, W = x_shape
    co, _, kh, kw = w_shape
    hp, wp = H + 2 * padding, W + 2 * padding
    return N, C, H, W, co, kh, kw, hp - kh + 1, wp - kw + 1, fast_length(hp), fast_length(wp)


def forward(x, W, b, padding):
    """y (N, C_out, OH, OW), stored channels last, and what ``backward`` needs."""
    xp = backend.xp()
    N, C, H, Wd, co, kh, kw, oh, ow, fh, fw = _sizes(x.shape, W.shape, padding)
    p = padding
    # Channels last: the transforms run along axes 1 and 2, and each frequency's
    # (N, C) matrix is then a slice with unit stride along C (no copy for matmul).
    xpad = xp.zeros((N, H + 2 * p, Wd + 2 * p, C), dtype=x.dtype)
    xpad[:, p:p + H, p:p + Wd, :] = x.transpose(0, 2, 3, 1)
    xhat = xp.fft.rfft2(xpad, s=(fh, fw), axes=(1, 2))            # (N, fh, fr, C)
    fr = xhat.shape[2]
    what = xp.fft.rfft2(W.transpose(2, 3, 1, 0), s=(fh, fw), axes=(0, 1))   # (fh, fr, C, Co)
    xf = xhat.reshape(N, fh * fr, C).transpose(1, 0, 2)              # (F, N, C)
    wf = what.reshape(fh * fr, C, co)                                 # (F, C, Co)
    yf = xp.matmul(xf, wf.conj())                                     # (F, N, Co)
    yfull = xp.fft.irfft2(yf.transpose(1, 0, 2).reshape(N, fh, fr, co), s=(fh, fw),
                          axes=(1, 2))                                # (N, fh, fw, Co)
    y = xp.empty((N, oh, ow, co), dtype=x.dtype)
    y[...] = yfull[:, :oh, :ow, :]                                    # crop
    y += b
    return y.transpose(0, 3, 1, 2), (xf, wf, x.shape, padding, (kh, kw), (fh, fw))


def backward(dy, saved, needs_input_grad=True):
    """(dW, db, dx) of the forward that returned ``saved``; dx is None if not needed."""
    xp = backend.xp()
    xf, wf, (N, C, H, Wd), p, (kh, kw), (fh, fw) = saved
    co = dy.shape[1]
    dyhat = xp.fft.rfft2(dy.transpose(0, 2, 3, 1), s=(fh, fw), axes=(1, 2))   # zero-padded
    fr = dyhat.shape[2]
    df = dyhat.reshape(N, fh * fr, co).transpose(1, 0, 2)             # (F, N, Co)
    gf = xp.matmul(xf.transpose(0, 2, 1), df.conj())                  # (F, C, Co)
    g = xp.fft.irfft2(gf.reshape(fh, fr, C, co), s=(fh, fw), axes=(0, 1))
    dW = xp.ascontiguousarray(g[:kh, :kw].transpose(3, 2, 0, 1)).astype(dy.dtype, copy=False)
    db = dy.sum(axis=(0, 2, 3))
    if not needs_input_grad:
        return dW, db, None
    dxf = xp.matmul(df, wf.transpose(0, 2, 1))                        # (F, N, C)
    dfull = xp.fft.irfft2(dxf.transpose(1, 0, 2).reshape(N, fh, fr, C), s=(fh, fw),
                          axes=(1, 2))                                # (N, fh, fw, C)
    dx = xp.empty((N, H, Wd, C), dtype=dy.dtype)
    dx[...] = dfull[:, p:p + H, p:p + Wd, :]
    return dW, db, dx.transpose(0, 3, 1, 2)


def flops(x_shape, w_shape, padding, needs_input_grad=True):
    """(forward, backward) floating-point operations this module performs: 8 per
    complex multiply-add of the products, and 2.5 L log2 L per real transform of
    L = F_h*F_w points (half the usual 5 L log2 L of a complex one)."""
    N, C, H, W, co, kh, kw, oh, ow, fh, fw = _sizes(x_shape, w_shape, padding)
    freq, L = fh * (fw // 2 + 1), fh * fw
    t = 2.5 * L * math.log2(L)
    fwd = 8 * freq * N * C * co + t * (N * C + C * co + N * co)
    bwd = 8 * freq * C * co * N + t * (N * co + C * co)               # dy's, dW's
    if needs_input_grad:
        bwd += 8 * freq * N * co * C + t * N * C
    return fwd, bwd
