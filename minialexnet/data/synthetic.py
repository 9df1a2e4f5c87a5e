"""A built-in, offline, deterministic image dataset: ten classes of simple shapes.

Every image is one shape in a random colour, position, scale and orientation over a
textured background of random colours (smooth colour blobs plus pixel noise).  The
class is the shape, never the colour, so a net must learn edges and their layout,
which is what the first layers of AlexNet learn (paper section 6.1, Figure 3).  Some
pairs are deliberately close (a bar and a cross, a ring and a disc, a square frame and
a checkerboard), so the task is learnable but not trivial.

Everything is vectorised over the images of a class: one image is the same formula as
10 000.  ``make_synthetic(10000, 32)`` takes about a second.
"""

import math

from ..backend import np
from ..errors import DataError

CLASS_NAMES = [
    "horizontal bar", "vertical bar", "diagonal bar", "cross", "ring",
    "disc", "square frame", "triangle", "checkerboard", "stripes",
]


def _soft(d):
    """Signed distance (pixels, positive inside) -> coverage in [0, 1], antialiased."""
    return np.clip(d + 0.5, 0.0, 1.0)


def _bar(u, v, length, width):
    return _soft(np.minimum(length / 2 - np.abs(u), width / 2 - np.abs(v)))


def _shape_mask(cls, u, v, r, w, rng):
    """Coverage (n, S, S) of shape ``cls``.  (u, v): pixel coordinates (n, S, S) in the
    shape's rotated frame; r: (n, 1, 1) radius in pixels; w: (n, 1, 1) stroke width."""
    d = np.sqrt(u * u + v * v)
    if cls in (0, 1, 2):                      # bars: the angle is set by the caller
        return _bar(u, v, 2 * r, w * 1.3)
    if cls == 3:                              # cross: two perpendicular bars
        return np.maximum(_bar(u, v, 2 * r, w), _bar(v, u, 2 * r, w))
    if cls == 4:                              # ring
        return _soft(w / 2 - np.abs(d - r * 0.75))
    if cls == 5:                              # disc (an ellipse, a "blob")
        return _soft(r * 0.8 - np.sqrt(u * u + (v * 1.3) ** 2))
    if cls == 6:                              # square frame
        m = np.maximum(np.abs(u), np.abs(v))
        return _soft(w / 2 - np.abs(m - r * 0.75))
    if cls == 7:                              # triangle: inside three half-planes
        e = r * 0.45
        ds = [e - (u * math.cos(a) + v * math.sin(a))
              for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        return _soft(np.minimum(np.minimum(ds[0], ds[1]), ds[2]))
    if cls == 8:                              # checkerboard inside a square
        cell = r / 2
        chk = (np.floor(u / cell) + np.floor(v / cell)) % 2
        inside = _soft(r * 0.95 - np.maximum(np.abs(u), np.abs(v)))
        return chk * inside
    if cls == 9:                              # stripes (a grating) inside a disc
        period = r / 1.8
        stripes = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
        return stripes * _soft(r - d)
    raise ValueError(cls)


def _angles(cls, n, rng):
    """Orientation per image: fixed-ish for the three bar classes (that IS the class),
    free for everything else."""
    jitter = rng.uniform(-0.25, 0.25, n)       # about +-15 degrees
    if cls == 0:
        return jitter
    if cls == 1:
        return math.pi / 2 + jitter
    if cls == 2:
        return rng.choice([math.pi / 4, -math.pi / 4], n) + jitter * 0.6
    return rng.uniform(0, 2 * math.pi, n)


def _background(n, size, rng):
    """Textured backgrounds, float32 (n, S, S, 3) in [0, 255]: a random base colour plus
    smooth colour variation (a 4x4 random grid bilinearly upsampled) plus pixel noise."""
    g = 4
    grid = rng.normal(0, 40, (n, g, g, 3)).astype(np.float32)
    t = np.linspace(0, g - 1, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), g - 2)
    f = t - i0
    # Interpolation matrix (S, g): each output row mixes two grid rows.
    m = np.zeros((size, g), np.float32)
    m[np.arange(size), i0] = 1 - f
    m[np.arange(size), i0 + 1] = f
    smooth = np.einsum("yi,nijc,xj->nyxc", m, grid, m, optimize=True)
    base = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0, 12, (n, size, size, 3)).astype(np.float32)
    return base + smooth + noise, base


def _render_class(cls, n, size, rng):
    """n images of class ``cls``: float32 (n, S, S, 3)."""
    bg, base = _background(n, size, rng)
    r = rng.uniform(0.22, 0.40, (n, 1, 1)).astype(np.float32) * size
    w = np.maximum(1.5, rng.uniform(0.07, 0.13, (n, 1, 1)) * size).astype(np.float32)
    margin = r * 0.6
    cx = rng.uniform(0, 1, (n, 1, 1)) * (size - 2 * margin) + margin
    cy = rng.uniform(0, 1, (n, 1, 1)) * (size - 2 * margin) + margin
    th = _angles(cls, n, rng).reshape(n, 1, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(th), np.sin(th)
    u = (c * dx + s * dy).astype(np.float32)   # along the shape's axis
    v = (-s * dx + c * dy).astype(np.float32)
    mask = _shape_mask(cls, u, v, r, w, rng)[..., None]
    # A foreground colour far from the background's base colour, so shapes are visible.
    fg = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
    far = np.linalg.norm(fg - base, axis=-1, keepdims=True) < 110
    fg = np.where(far, 255 - base, fg)
    img = bg * (1 - mask) + (fg + rng.normal(0, 6, (n, size, size, 3))) * mask
    return img


def make_synthetic(n=10000, size=32, seed=0):
    """Generate ``n`` images of ``size`` x ``size`` px, balanced over the ten classes.

    Returns ``(x, y)``: x uint8 (n, size, size, 3) RGB, y int64 (n,) in 0..9 (class names
    in ``CLASS_NAMES``), in a shuffled order.  The same (n, size, seed) always gives
    the same arrays.
    """
    if n < 1 or size < 8:
        raise DataError(f"make_synthetic: need n >= 1 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng([seed, size, n, 20120])
    y = np.arange(n) % len(CLASS_NAMES)
    y = rng.permutation(y).astype(np.int64)
    x = np.empty((n, size, size, 3), np.uint8)
    for cls in range(len(CLASS_NAMES)):
        where = np.flatnonzero(y == cls)
        # Render in chunks: bounded temporary memory for big n or size.
        step = max(1, 2 ** 20 // (size * size))
        for i in range(0, len(where), step):
            part = where[i:i + step]
            img = _render_class(cls, len(part), size, rng)
            x[part] = np.clip(img, 0, 255).astype(np.uint8)
    return x, y
