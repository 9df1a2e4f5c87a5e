"""Pre-processing and data augmentation (paper sections 2 and 4.1), on host NumPy arrays.

Images arrive as uint8 NHWC batches (see ``data.common``) and leave as what the
network eats: **float32 NCHW**, mean-centred RGB.

* Section 2: the mean image over the training set is subtracted (``mean_image``,
  cached to a file keyed by the dataset).  The paper feeds the result as it is, in
  0..255 units (its standard deviation is about 64: "paper" input scale).  By default
  we also divide each channel by its standard deviation over the training set
  (``channel_std``, cached beside the mean): "unit" input scale, std about 1.  This is
  NOT the paper's section 2, and we depart from it on purpose: with raw pixels conv1's
  inputs are 64 times larger than every other layer's, so one learning rate moves
  conv1's weights about 64^2 = 4000 times faster, relative to their size, than the
  rest (chapter 01 measures it).  The paper's init compensated by hand; unit inputs
  make one learning rate fit every layer.  Pass ``std=None`` for the paper's scale.
  The shorter-side-256 / central-crop step is done when images are decoded
  (``images.fit_square``).
* Section 4.1 (a): random crops (224 or 227 of 256; 28 of 32, or 32 of 32 padded by 4,
  for small images) and horizontal reflections; at test time the centre crop
  (``EvalTransform``) or ten crops, corners + centre and their flips (``ten_crop``).
* Section 4.1 (b): PCA colour augmentation (``pca_fit``, ``pca_noise``).

Everything is vectorised over the batch: one fancy-indexing gather makes all the
crops, flips and mean subtraction of a batch at once.
"""

import os

from ..backend import np
from ..errors import ConfigError
from .common import save_npy_atomic
from .images import progress


# --- crops and flips ------------------------------------------------------------------

def crop_batch(x, size, ys, xs, flips=None, pad=0, mean=None, std=None):
    """Cut one size x size patch from each image: float32 (N, size, size, C) NHWC.

    x: uint8 (N, H, W, C).  ys, xs: (N,) int top-left corners in *padded* coordinates,
    0 <= ys <= H + 2*pad - size.  flips: (N,) bool, mirror left-right (paper 4.1).
    pad: zero padding (after mean subtraction, so the padding is "average colour").
    mean: float32 (H, W, C) mean image, subtracted pixel by pixel at the same place.
    std: float32 (C,) per-channel standard deviation, divided out after the mean
    ("unit" input scale); None keeps the paper's 0..255 units.
    """
    n, h, w, _ = x.shape
    k = np.arange(size)
    rows = np.asarray(ys)[:, None] + k - pad                     # (N, size)
    cols = np.asarray(xs)[:, None] + k - pad
    if flips is not None:
        # A flip is just reading the columns backwards: free inside the gather.
        cols = np.where(np.asarray(flips)[:, None], cols[:, ::-1], cols)
    valid = None
    if pad:
        valid = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
        rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r, c = rows[:, :, None], cols[:, None, :]
    out = x[np.arange(n)[:, None, None], r, c].astype(np.float32)  # (N, size, size, C)
    if mean is not None:
        out -= mean[r, c]
    if valid is not None:
        out *= valid[..., None]
    if std is not None:
        out *= (1.0 / np.asarray(std, np.float32))
    return out


def random_crop_params(n, in_shape, size, rng, pad=0, flip=True):
    """Random top-left corners (ys, xs) and flip flags for ``n`` crops of ``size`` from
    images of ``in_shape`` = (H, W), with ``pad`` zero padding.  Uses ``rng``
    (a NumPy Generator) only, so the same generator state gives the same crops."""
    h, w = in_shape
    if size > h + 2 * pad or size > w + 2 * pad:
        raise ConfigError(f"crop {size} does not fit in {h}x{w} images padded by {pad}")
    ys = rng.integers(0, h + 2 * pad - size + 1, n)
    xs = rng.integers(0, w + 2 * pad - size + 1, n)
    flips = rng.random(n) < 0.5 if flip else None
    return ys, xs, flips


def center_crop(x, size):
    """The central size x size patch of uint8/float (N, H, W, C) or (H, W, C): a view."""
    h, w = x.shape[-3], x.shape[-2]
    t, l = (h - size) // 2, (w - size) // 2
    return x[..., t:t + size, l:l + size, :]


def to_nchw(x):
    """float32 (N, H, W, C) -> contiguous float32 (N, C, H, W), the network's layout."""
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))


# --- mean image (section 2) ---------------------------------------------------------------

def _cached(cache_file, compute):
    if cache_file and os.path.isfile(cache_file):
        return np.load(cache_file, allow_pickle=False)
    value = compute()
    if cache_file:
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        save_npy_atomic(cache_file, value)
    return value


def mean_image(x, cache_file=None, chunk=512, progress_bar=True):
    """The mean over the training set of each pixel: float32 (H, W, C), 0..255 units.

    x: uint8 (N, H, W, C) array, memmap or lazy ``ImageFiles`` (read in chunks, with a
    progress bar).  ``cache_file``: a .npy path; computed once, then read back.
    """
    def compute():
        n = len(x)
        total = np.zeros(x.shape[1:], np.float64)
        starts = range(0, n, chunk)
        for s in progress(starts, len(starts), "mean image", progress_bar and n > 20 * chunk, "chunk"):
            total += np.asarray(x[s:s + chunk] if isinstance(x, np.ndarray)
                                else x[np.arange(s, min(s + chunk, n))]).sum(0, dtype=np.float64)
        return (total / n).astype(np.float32)
    return _cached(cache_file, compute)


def channel_std(x, mean, cache_file=None, chunk=512, progress_bar=True):
    """Per-channel standard deviation of the mean-subtracted training pixels:
    float32 (C,), 0..255 units, sqrt(mean over images and pixels of (x - mean)^2).

    Dividing by it ("unit" input scale, the default; see the module docstring) gives
    the network inputs of standard deviation 1.  ``mean``: the (H, W, C) mean image
    from ``mean_image``.  ``cache_file``: a .npy path; computed once, then read back.
    """
    def compute():
        n = len(x)
        total = np.zeros(x.shape[-1], np.float64)
        m = np.asarray(mean, np.float64)
        starts = range(0, n, chunk)
        for s in progress(starts, len(starts), "pixel std", progress_bar and n > 20 * chunk, "chunk"):
            part = np.asarray(x[s:s + chunk] if isinstance(x, np.ndarray)
                              else x[np.arange(s, min(s + chunk, n))], np.float64)
            total += ((part - m) ** 2).sum(axis=(0, 1, 2))
        std = np.sqrt(total / (n * x.shape[1] * x.shape[2]))
        return np.maximum(std, 1e-3).astype(np.float32)   # a constant channel: no blow-up
    return _cached(cache_file, compute)


# --- PCA colour augmentation (section 4.1 b) ---------------------------------------------

def pca_fit(x, max_images=2000, pixels_per_image=500, seed=0, cache_file=None):
    """Eigenvalues and eigenvectors of the 3x3 covariance of training RGB pixels.

    Pixels are scaled to [0, 1] first.  The paper's formula adds P (a * lambda) with
    a ~ N(0, 0.1), which only gives a sensible shift (a few grey levels) when lambda is
    measured in [0, 1] units, the convention of the public re-implementations; in
    0..255 units lambda would be 255 times bigger and the shift would swamp the image.

    Uses a seeded sample of up to ``max_images`` images and ``pixels_per_image``
    pixels of each (the covariance of 1e6 pixels is accurate to about 0.1 %).
    Returns (eigvals float32 (3,) descending, eigvecs float32 (3, 3), column i = p_i).
    """
    def compute():
        rng = np.random.default_rng(seed)
        n = len(x)
        idx = np.sort(rng.choice(n, min(n, max_images), replace=False))
        pix = []
        for s in range(0, len(idx), 256):
            part = np.asarray(x[idx[s:s + 256]]).reshape(len(idx[s:s + 256]), -1, 3)
            take = rng.integers(0, part.shape[1], (len(part), min(pixels_per_image, part.shape[1])))
            pix.append(np.take_along_axis(part, take[..., None], axis=1).reshape(-1, 3))
        p = np.concatenate(pix).astype(np.float64) / 255.0
        vals, vecs = np.linalg.eigh(np.cov(p, rowvar=False))
        order = np.argsort(vals)[::-1]
        return np.concatenate([vals[order][None], vecs[:, order]]).astype(np.float32)
    packed = _cached(cache_file, compute)   # (4, 3): eigenvalues, then eigenvectors
    return packed[0].copy(), packed[1:].copy()


def pca_noise(n, eigvals, eigvecs, rng, std=0.1):
    """The per-image colour shift of section 4.1: [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with
    a_i ~ N(0, std), drawn afresh for each of ``n`` images.  float32 (n, 3), in the
    units of the eigenvalues.  Its covariance is P diag(std^2 l^2) P^T."""
    a = rng.standard_normal((n, 3)) * std
    return ((a * eigvals) @ np.asarray(eigvecs).T).astype(np.float32)


# --- the training and evaluation pipelines --------------------------------------------------

class TrainTransform:
    """uint8 NHWC batch -> float32 NCHW: random crop (+ pad), flip, minus mean, PCA
    colour, divided by the channel std.

    ``crop``: output side (227 or 224 of 256; 28, or 32 with pad=4, of 32).
    ``mean``: (H, W, 3) mean image or None.  ``std``: (3,) from ``channel_std`` ("unit"
    input scale) or None (the paper's 0..255 units).  ``pca``: (eigvals, eigvecs) from
    ``pca_fit`` or None (off).  Call as ``t(x, rng)`` with a NumPy Generator;
    ``t(x, rng, rows=(lo, n))`` gives rows lo..lo+len(x) of what a batch of n images
    whose rows lo.. are ``x`` would give (a rank's shard of a global batch).
    """

    def __init__(self, crop, mean=None, pad=0, flip=True, pca=None, pca_std=0.1, std=None):
        self.crop, self.mean, self.pad, self.flip = crop, mean, pad, flip
        self.pca, self.pca_std, self.std = pca, pca_std, std

    def __call__(self, x, rng, rows=None):
        # rows=(lo, n): x is rows lo.. of a batch of n (a rank's shard, data/loader.py);
        # the draws are made for all n, in the same order, and our rows kept.
        lo, n = (0, len(x)) if rows is None else rows
        mine = slice(lo, lo + len(x))
        ys, xs, flips = random_crop_params(n, x.shape[1:3], self.crop, rng,
                                           self.pad, self.flip)
        out = crop_batch(x, self.crop, ys[mine], xs[mine],
                         None if flips is None else flips[mine], self.pad, self.mean)
        if self.pca is not None:
            shift = pca_noise(n, *self.pca, rng, self.pca_std)[mine] * 255.0  # [0,1] -> 0..255
            out += shift[:, None, None, :]
        if self.std is not None:
            out *= (1.0 / np.asarray(self.std, np.float32))
        return to_nchw(out)


class EvalTransform:
    """uint8 NHWC batch -> float32 NCHW: the centre crop minus the mean, divided by the
    channel std when ``std`` is given (no randomness).  ``crop`` None or equal to the
    image size means the whole image."""

    def __init__(self, crop=None, mean=None, std=None):
        self.crop, self.mean, self.std = crop, mean, std

    def __call__(self, x, rng=None):
        x = np.asarray(x)
        crop = self.crop or x.shape[1]
        out = center_crop(x, crop).astype(np.float32)
        if self.mean is not None:
            out -= center_crop(self.mean, crop)
        if self.std is not None:
            out *= (1.0 / np.asarray(self.std, np.float32))
        return to_nchw(out)


# --- ten-crop testing (section 4.1 a) -------------------------------------------------

def ten_crop(x, size, mean=None, std=None):
    """The paper's ten test patches of each image: four corners and the centre, then
    the same five mirrored.  x: uint8 (N, H, W, C).  Returns float32
    (10, N, C, size, size): ``crops[j]`` is a batch ready for the network."""
    n, h, w, _ = x.shape
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
               ((h - size) // 2, (w - size) // 2)]
    out = np.empty((10, n, x.shape[3], size, size), np.float32)
    for j, (t, l) in enumerate(corners):
        for flip in (False, True):
            ys, xs = np.full(n, t), np.full(n, l)
            patch = crop_batch(x, size, ys, xs, np.full(n, flip), 0, mean, std)
            out[j + 5 * flip] = to_nchw(patch)
    return out


def softmax(z):
    """Row-wise softmax of (N, K) scores on the host, float64 for stability."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ten_crop_predict(predict, x, size, mean=None, logits=True, std=None):
    """Average the softmax over the ten crops (paper 4.1): (N, K) float64 probabilities.

    predict: maps a float32 (N, C, size, size) batch to (N, K) scores (any backend's
    array; it is copied to the host).  ``logits``: True if predict returns
    unnormalised scores (softmax is applied), False if it returns probabilities.
    """
    from ..backend import to_numpy
    total = None
    for crops in ten_crop(x, size, mean, std):
        s = np.asarray(to_numpy(predict(crops)), np.float64)
        p = softmax(s) if logits else s
        total = p if total is None else total + p
    return total / 10.0
