"""What every dataset module shares: the error type, where data lives, the Dataset record.

A dataset in minialexnet is three things (see ``Dataset``):

* ``x``: images as **uint8, NHWC** (N, H, W, 3), RGB.  uint8 because storage should be
  small (a 256x256 image is 192 KiB as uint8, 768 KiB as float32); the float32 NCHW
  arrays the network eats are made per batch by ``transforms`` (paper section 2: the
  net sees mean-centred raw RGB).  ``x`` is either an in-memory ``ndarray`` (CIFAR-10,
  packed npz, synthetic) or a lazy ``ImageFiles`` array that decodes JPEGs when indexed
  (ImageNet-style folders, too big to hold in memory).  Both support ``len(x)``,
  ``x.shape`` and ``x[index_array]``.
* ``y``: int64 (N,) class indices.
* ``class_names``: list of C strings, ``class_names[y[i]]`` names image i.
"""

import dataclasses
import errno
import hashlib
import os

from ..backend import np
from ..errors import DataError
from ..files import atomic_write, describe_os_error

ENV_DATA = "MINIALEXNET_DATA"
ENV_CACHE = "MINIALEXNET_CACHE"


@dataclasses.dataclass
class Dataset:
    """Images, labels and class names of one split (see the module docstring).

    ``key`` is a short string naming this exact data (dataset, split, size, source
    file fingerprint); ``transforms.mean_image`` and ``pca_fit`` use it to name their
    cache files.  ``extra`` holds dataset-specific facts (e.g. ``wnids``,
    ``imagenet_index`` for Imagenette, ``src_paths``).
    """
    x: object
    y: object
    class_names: list
    name: str
    split: str
    key: str
    extra: dict = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.y)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        """(H, W, 3) of one stored image."""
        return tuple(self.x.shape[1:])

    def __repr__(self):
        return (f"<Dataset {self.name} {self.split}: {len(self)} images "
                f"{'x'.join(map(str, self.image_shape))} uint8, {self.num_classes} classes>")


def data_dir(arg=None, must_exist=True):
    """The data directory: ``arg`` (from ``--data-dir``), else $MINIALEXNET_DATA, else
    ``./data``.  Raises DataError when it does not exist (and ``must_exist``)."""
    d = arg or os.environ.get(ENV_DATA) or "data"
    d = os.path.abspath(os.path.expanduser(str(d)))
    if must_exist and not os.path.isdir(d):
        how = ("--data-dir" if arg else f"${ENV_DATA}" if os.environ.get(ENV_DATA)
               else f"the default ./data (set --data-dir or ${ENV_DATA})")
        raise DataError(f"{d}: data directory does not exist (from {how})")
    return d


def cache_dir():
    """Where decoded arrays, mean images and PCA results are cached:
    $MINIALEXNET_CACHE if set, else $XDG_CACHE_HOME/minialexnet (~/.cache/minialexnet).

    Never inside the data directory: data is often a read-only or shared copy.
    """
    d = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "minialexnet")
    os.makedirs(d, exist_ok=True)
    return d


def file_fingerprint(*paths):
    """A short hash of file paths, sizes and modification times: a cache key that
    changes when the source files change."""
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def save_npy_atomic(path, array):
    """np.save through ``files.atomic_write``: a crash never leaves a half-written
    cache file that a later run would trust."""
    with atomic_write(path) as f:
        np.save(f, array, allow_pickle=False)


def unreadable(path, e):
    """One line for an OSError met while reading ``path``: missing, a symlink loop,
    permission denied... (never "corrupt": the file may be fine)."""
    if e.errno == errno.ENOENT:
        return f"{path}: file not found"
    if e.errno == errno.EISDIR:
        return f"{path}: is a directory, not a file"
    return f"{path}: cannot read ({describe_os_error(e)})"


# ---------------------------------------------------------------- checking arrays from files
def check_images(x, src):
    """``x`` as uint8 (N, H, W, 3) RGB, or a DataError saying what it is instead and
    what to do.  Integer arrays whose values all lie in 0..255 are cast; floats are
    refused (is 1.0 white, or almost black?), as are channels-first and grey arrays."""
    shape = tuple(getattr(x, "shape", ()))
    want = "expected uint8 images of shape (N, H, W, 3), RGB, channels last"
    if len(shape) == 4 and shape[3] != 3 and shape[1] == 3:
        raise DataError(f"{src}: images are channels-first {shape}; {want} "
                        "(x.transpose(0, 2, 3, 1) converts them)")
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        raise DataError(f"{src}: images are grey {shape}; {want} "
                        "(np.repeat(x.reshape(x.shape[:3] + (1,)), 3, axis=3) converts them)")
    if len(shape) != 4 or shape[3] != 3 or 0 in shape:
        raise DataError(f"{src}: images have shape {shape}; {want}")
    kind = x.dtype.kind
    if x.dtype == np.uint8:
        return x
    if kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{src}: {x.dtype} pixel values {lo}..{hi} do not fit 0..255; "
                            f"{want} (16-bit data: x // 257)")
        return x.astype(np.uint8)
    if kind == "f":
        hi = float(np.nanmax(x)) if x.size else 0.0
        hint = ("(x * 255).round().astype(np.uint8)" if hi <= 1.0
                else "np.clip(x, 0, 255).round().astype(np.uint8)")
        raise DataError(f"{src}: images are {x.dtype} (largest value {hi:g}); {want}: "
                        f"floats are ambiguous (0..1 or 0..255?), convert them yourself, "
                        f"e.g. {hint}")
    raise DataError(f"{src}: images have dtype {x.dtype}; {want}")


def check_labels(y, num_classes, src, n=None):
    """``y`` as int64 (N,) class indices in 0..num_classes-1 (``n``: the number of
    images), or a DataError.  Whole-number floats are accepted; fractional, NaN,
    negative or too large labels are not."""
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 1 or (n is not None and shape[0] != n):
        raise DataError(f"{src}: labels have shape {shape}; expected ({n if n is not None else 'N'},)"
                        " integer class indices")
    kind = y.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{src}: label {i} is {y[i].item()!r}; expected whole class indices "
                            f"0..{num_classes - 1}")
    elif kind not in "iu":
        raise DataError(f"{src}: labels have dtype {y.dtype}; expected integer class indices")
    if len(y):
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= num_classes:
            i = int(np.argmax((y < 0) | (y >= num_classes)))
            raise DataError(f"{src}: labels lie in {lo:g}..{hi:g} (label {i} is {y[i]:g}); "
                            f"expected 0..{num_classes - 1} for {num_classes} classes")
    return y.astype(np.int64)


def load_npz_arrays(path, required):
    """Read every array of an .npz once (an NpzFile re-reads an array on every
    ``[...]``, see shared/data/README.md), with ``allow_pickle=False``.

    Raises DataError naming the file for a missing file, a corrupt file, or one
    without the ``required`` keys.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(unreadable(path, e)) from None
    try:
        head = f.read(6)
        f.seek(0)
        if not head.startswith(b"PK"):      # np.load would try to unpickle anything else
            what = "a single .npy array" if head == b"\x93NUMPY" else "not a zip archive"
            raise DataError(f"{path}: not an .npz file ({what})")
        z = np.load(f, allow_pickle=False)
        if not hasattr(z, "files"):
            raise DataError(f"{path}: not the expected format: a single array, not an .npz")
        with z:
            missing = [k for k in required if k not in z.files]
            if missing:
                raise DataError(f"{path}: not the expected format: missing arrays "
                                f"{missing} (has {sorted(z.files)})")
            return {k: z[k] for k in z.files}
    except DataError:
        raise
    except OSError as e:
        if e.errno is None:      # zipfile/numpy's "corrupt" OSErrors carry no errno
            raise DataError(f"{path}: cannot read npz ({type(e).__name__}: {e})") from None
        raise DataError(unreadable(path, e)) from None
    except Exception as e:  # BadZipFile, ValueError (object arrays), EOFError
        if "pickle" in str(e):
            raise DataError(f"{path}: holds pickled objects (object arrays); refusing to "
                            "unpickle them (data files hold plain arrays only)") from None
        raise DataError(f"{path}: cannot read npz ({type(e).__name__}: {e})") from None
    finally:
        f.close()


def subset_indices(n_total, n, seed):
    """A seeded random subset of ``n`` of ``range(n_total)``, kept in original order."""
    if n is None or n >= n_total:
        return None
    if n <= 0:
        raise DataError(f"n={n}: need at least one image")
    idx = np.random.default_rng(seed).choice(n_total, size=n, replace=False)
    return np.sort(idx)
