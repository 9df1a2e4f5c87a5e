"""Winograd convolution F(m x m, 3 x 3) (Lavin & Gray 2015): fewer multiplies per tile.

Winograd's minimal filtering algorithm computes m outputs of a 3-tap correlation
from a = m + 2 inputs d with a multiplies instead of 3m:

    y = A^T [ (G g) . (B^T d) ]          (. elementwise; g the 3 kernel taps)

and nested in 2-D, on an a x a input tile d giving an m x m output tile,

    Y = A^T [ U . V ] A,     U = G g G^T  (a x a),  V = B^T d B  (a x a).

The matrices (Lavin & Gray, section 4), for F(2x2, 3x3) (a = 4):

    B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
          [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
          [0 -1  1  0]         [1/2 -1/2  1/2]
          [0  1  0 -1]         [ 0    0    1 ]

and for F(4x4, 3x3) (a = 6) in ``MATRICES`` below.  In a layer, the channel sum
moves inside the transforms (they are linear), so for each of the a*a positions
(xi, nu) of a tile the work is one matrix product over channels,

    M[xi, nu] (P, C_out) = V[xi, nu] (P, C_in) @ U[xi, nu] (C_in, C_out),

P = N * tiles per image; then Y = A^T M A per tile, and the m x m output tiles
are laid side by side.  Input tiles start every m pixels and overlap by 2: they
are the windows of size a and stride m of the padded input (``windows_nhwc``), and
the input is padded at the bottom and right so that whole tiles cover it.

Why it pays: a direct 3x3 convolution does 9 multiply-adds per output and channel
pair, Winograd a*a / (m*m): 16/4 = 4 for F(2x2) (2.25x fewer), 36/16 = 2.25 for
F(4x4) (4x fewer).  The transforms are a few passes over the data each, and the
transformed tiles take (a/m)^2 times the input's memory (4x, 2.25x).  F(4x4)'s
larger entries (up to 8 and 1/24) cost float32 accuracy: about 10x F(2x2)'s error.

The gradients follow by transposing each linear step (the adjoint of X -> P X Q is
D -> P^T D Q^T), with V and U kept from forward:

    dM = A dYtile A^T           (dy cut into m x m tiles, zero beyond the output)
    dU = V^T dM,   dW = G^T dU G           (summed over the a*a positions' products)
    dV = dM U^T,   dtile = B dV B^T,   dx = the tiles added back where they were
                                            read (overlaps add up: ``col2im_nhwc``)

Stride 1 and 3x3 kernels only (other sizes have their own matrices; AlexNet's
3x3 layers are conv3-conv5).  Products with the small matrices are ``tensordot``
(one GEMM with a short inner dimension each); all in the layer's dtype, on NumPy
or CuPy.
"""

from .. import backend
from ..im2col import col2im_nhwc, windows_nhwc

__all__ = ["MATRICES", "applies", "forward", "backward", "flops"]

MATRICES = {   # m: (B^T, G, A^T) of F(m x m, 3 x 3)
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
         [0, 1, -1, 8, -8, 1]]),
}


def applies(kernel_size, stride):
    """None if Winograd F(m x m, 3 x 3) computes this layer, else why not."""
    if tuple(kernel_size) != (3, 3):
        return f"a {kernel_size[0]}x{kernel_size[1]} kernel (Winograd here needs 3x3)"
    if stride != 1:
        return f"stride {stride} (Winograd needs stride 1)"
    return None


def _sizes(x_shape, padding, m):
    N, C, H, W = x_shape
    oh, ow = H + 2 * padding - 2, W + 2 * padding - 2
    th, tw = -(-oh // m), -(-ow // m)                    # tiles down and across
    return N, C, H, W, oh, ow, th, tw


def _matrices(m, dtype):
    xp = backend.xp()
    return tuple(xp.asarray(a, dtype=dtype) for a in MATRICES[m])


def forward(x, W, b, padding, m=2):
    """y (N, C_out, OH, OW), stored channels last, and what ``backward`` needs."""
    xp = backend.xp()
    BT, G, AT = _matrices(m, x.dtype)
    a = m + 2
    N, C, H, Wd, oh, ow, th, tw = _sizes(x.shape, padding, m)
    co, p, P = W.shape[0], padding, N * th * tw
    # Padded by p, and at the bottom and right up to whole tiles.
    xpad = xp.zeros((N, th * m + 2, tw * m + 2, C), dtype=x.dtype)
    xpad[:, p:p + H, p:p + Wd, :] = x.transpose(0, 2, 3, 1)
    d = windows_nhwc(xpad, a, a, m)                     # (N, th, tw, a, a, C): the tiles
    V = xp.tensordot(BT, d, axes=([1], [3]))            # B^T d:     (a, N, th, tw, a, C)
    V = xp.tensordot(V, BT, axes=([4], [1]))            # (B^T d) B: (a, N, th, tw, C, a)
    V = xp.ascontiguousarray(V.transpose(0, 5, 1, 2, 3, 4)).reshape(a * a, P, C)
    U = xp.tensordot(G, W, axes=([1], [2]))             # G g:       (a, Co, C, 3)
    U = xp.tensordot(U, G, axes=([3], [1]))             # G g G^T:   (a, Co, C, a)
    U = xp.ascontiguousarray(U.transpose(0, 3, 2, 1)).reshape(a * a, C, co)
    M = xp.matmul(V, U).reshape(a, a, P, co)            # per position: (P, C) @ (C, Co)
    Y = xp.tensordot(AT, M, axes=([1], [0]))            # A^T M:     (m, a, P, Co)
    Y = xp.tensordot(Y, AT, axes=([1], [1]))            # A^T M A:   (m, P, Co, m)
    Y = Y.reshape(m, N, th, tw, co, m).transpose(1, 2, 0, 3, 5, 4)   # (N, th, m, tw, m, Co)
    y = xp.empty((N, oh, ow, co), dtype=x.dtype)
    y[...] = Y.reshape(N, th * m, tw * m, co)[:, :oh, :ow, :]         # tiles side by side
    y += b
    return y.transpose(0, 3, 1, 2), (V, U, x.shape, padding, m)


def backward(dy, saved, needs_input_grad=True):
    """(dW, db, dx) of the forward that returned ``saved``; dx is None if not needed."""
    xp = backend.xp()
    V, U, x_shape, p, m = saved
    BT, G, AT = _matrices(m, dy.dtype)
    a = m + 2
    N, C, H, Wd, oh, ow, th, tw = _sizes(x_shape, p, m)
    co, P = dy.shape[1], N * th * tw
    dyp = xp.zeros((N, th * m, tw * m, co), dtype=dy.dtype)
    dyp[:, :oh, :ow, :] = dy.transpose(0, 2, 3, 1)
    t = dyp.reshape(N, th, m, tw, m, co).transpose(2, 4, 0, 1, 3, 5)  # (m, m, N, th, tw, Co)
    dM = xp.tensordot(AT, t, axes=([0], [0]))           # A dY:      (a, m, N, th, tw, Co)
    dM = xp.tensordot(dM, AT, axes=([1], [0]))          # A dY A^T:  (a, N, th, tw, Co, a)
    dM = xp.ascontiguousarray(dM.transpose(0, 5, 1, 2, 3, 4)).reshape(a * a, P, co)
    dU = xp.matmul(V.transpose(0, 2, 1), dM).reshape(a, a, C, co)    # V^T dM
    dW = xp.tensordot(G, dU, axes=([0], [0]))           # G^T dU:    (3, a, C, Co)
    dW = xp.tensordot(dW, G, axes=([1], [0]))           # G^T dU G:  (3, C, Co, 3)
    dW = xp.ascontiguousarray(dW.transpose(2, 1, 0, 3))
    db = dy.sum(axis=(0, 2, 3))
    if not needs_input_grad:
        return dW, db, None
    dV = xp.matmul(dM, U.transpose(0, 2, 1)).reshape(a, a, P, C)     # dM U^T
    dd = xp.tensordot(BT, dV, axes=([0], [0]))          # B dV:      (a, a, P, C)
    dd = xp.tensordot(dd, BT, axes=([1], [0]))          # B dV B^T:  (a, P, C, a)
    cols = xp.ascontiguousarray(dd.transpose(1, 0, 3, 2)).reshape(P, a * a * C)
    dxpad = col2im_nhwc(cols, (N, th * m + 2, tw * m + 2, C), a, a, m)   # overlaps add
    dx = xp.empty((N, H, Wd, C), dtype=dy.dtype)
    dx[...] = dxpad[:, p:p + H, p:p + Wd, :]
    return dW, db, dx.transpose(0, 3, 1, 2)


def flops(x_shape, w_shape, padding, needs_input_grad=True, m=2):
    """(forward, backward) floating-point operations this module performs, the small
    transforms counted as the dense products ``tensordot`` runs."""
    N, C, H, W, oh, ow, th, tw = _sizes(x_shape, padding, m)
    co, a = w_shape[0], m + 2
    P = N * th * tw
    prod = 2 * a * a * P * C * co                                     # one V U product
    v_t = 2 * a * a * a * P * C * 2                                   # B^T d B
    u_t = 2 * a * 3 * co * C * 3 + 2 * a * a * 3 * co * C             # G g G^T
    y_t = 2 * m * a * a * P * co + 2 * m * m * a * P * co             # A^T M A
    fwd = v_t + u_t + prod + y_t
    bwd = (2 * a * m * m + 2 * a * a * m) * P * co + prod + u_t       # dM, dU, dW
    if needs_input_grad:
        bwd += prod + v_t                                             # dV, B dV B^T
    return fwd, bwd
