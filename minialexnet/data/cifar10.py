"""CIFAR-10: 60 000 32x32 colour images in 10 classes (Krizhevsky 2009), the data set
of the paper's Figure 1 and section 3.3 CIFAR experiments.

What ``load_cifar10`` reads, under the data directory (``cifar10/`` or the directory
itself): packed npz files of plain arrays or JPEG containers (see data/README.md),

* ``cifar10_train.npz`` + ``cifar10_test.npz``: lossless arrays (x uint8 NHWC, y,
  class_names), as written by ``convert-cifar10`` below; or
* ``cifar10_train_jpeg.npz`` (a JPEG container) with ``cifar10_test_jpeg.npz``
  (encoded like the train set, so train and test see the same JPEG smoothing) or
  else the lossless ``cifar10_test.npz`` (the packed files of shared/data).

The official python version, ``cifar-10-batches-py/`` (``data_batch_1`` ..
``data_batch_5``, ``test_batch``, ``batches.meta``), is a set of *pickles*, and
unpickling a file can run any code it holds.  So the loader never reads them: it
asks for one explicit conversion,

    python -m minialexnet.data convert-cifar10 DATA/cifar-10-batches-py

which unpickles them once (with an unpickler that only rebuilds NumPy arrays and
refuses everything else) and writes the lossless npz pair.
``python -m minialexnet.data download cifar10`` converts by itself after the
archive's checksum proved it is the official one.

Decoded JPEG containers are cached as .npy files (see ``common.cache_dir``), so the
~10 s decode of the 50 000 training images happens once.
"""

import errno
import os
import pickle

from ..backend import np
from ..files import atomic_write
from .common import (DataError, Dataset, cache_dir, check_images, check_labels,
                     file_fingerprint, load_npz_arrays, save_npy_atomic, subset_indices,
                     unreadable)
from .images import decode_container, resize_many

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds what a CIFAR-10 batch holds (dicts, lists, bytes, NumPy uint8 arrays)
    and refuses every other global: a planted batch cannot call anything."""

    _NUMPY = {"_reconstruct": np.zeros(1).__reduce__()[0], "ndarray": np.ndarray,
              "dtype": np.dtype}
    _MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")

    def find_class(self, module, name):
        if module in self._MODULES and name in self._NUMPY:
            return self._NUMPY[name]
        if (module, name) == ("_codecs", "encode"):
            # How protocol 2 stores bytes from Python 3: str -> bytes, nothing more.
            import codecs
            return lambda s, encoding="utf-8": codecs.encode(s, "latin1" if encoding ==
                                                             "latin1" else "utf-8")
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch "
                                     "holds only arrays, lists and bytes")


def _unpickle(path):
    # The official CIFAR-10 python format IS a pickle (a dict with bytes keys, written
    # by Python 2): only ``convert_cifar10`` calls this, on an explicit command.
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(unreadable(path, e) + (" (incomplete cifar-10-batches-py?)"
                                               if e.errno == errno.ENOENT else "")) from None
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None


def load_python_batches(folder, split="train"):
    """Read the official ``cifar-10-batches-py`` folder (pickles: see the module
    docstring; ``convert_cifar10`` is the one caller).

    Returns (x uint8 (N, 32, 32, 3) RGB, y int64 (N,), class_names).  Each batch's
    ``b'data'`` is (10000, 3072) uint8: 1024 red, then 1024 green, then 1024 blue
    values, row-major, so it reshapes to (N, 3, 32, 32) and transposes to NHWC.
    """
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in (meta.get(b"label_names", []) if isinstance(meta, dict) else [])]
    names = names or list(CLASS_NAMES)
    xs, ys = [], []
    for name in BATCHES[split]:
        path = os.path.join(folder, name)
        d = _unpickle(path)
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise DataError(f"{path}: not a CIFAR-10 batch (no b'data'/b'labels' keys)")
        data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: expected data uint8 (N, 3072), got {data.dtype} "
                            f"{data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(check_labels(labels, len(names), f"{path} labels", n=len(data)))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), names


def convert_cifar10(folder, out_dir=None):
    """Unpickle the official ``cifar-10-batches-py`` ``folder`` once (arrays only, see
    ``_ArraysOnlyUnpickler``) and write the lossless ``cifar10_train.npz`` and
    ``cifar10_test.npz`` (x uint8 NHWC, y, class_names) into ``out_dir`` (default:
    ``cifar10/`` next to ``folder``), atomically.  Returns the two paths."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (expected cifar-10-batches-py/)")
    out_dir = out_dir or os.path.join(os.path.dirname(folder), "cifar10")
    splits = {split: load_python_batches(folder, split) for split in ("train", "test")}
    os.makedirs(out_dir, exist_ok=True)
    paths = []          # written only when both splits have been read
    for split, (x, y, names) in splits.items():
        path = os.path.join(out_dir, f"cifar10_{split}.npz")
        with atomic_write(path) as f:
            np.savez(f, x=x, y=y.astype(np.uint8), class_names=np.asarray(names))
        paths.append(path)
    return paths


def find_cifar10(root):
    """The folder under ``root`` that holds CIFAR-10's packed npz files, or a
    DataError listing the places looked at (and the conversion command when only the
    official pickled batches are there: they are never read implicitly)."""
    tried = []
    for sub in ("cifar10", "."):
        p = os.path.normpath(os.path.join(root, sub))
        tried.append(os.path.join(p, "cifar10_train*.npz"))
        if any(os.path.isfile(os.path.join(p, n)) for n in
               ("cifar10_train.npz", "cifar10_train_jpeg.npz", "cifar10_test.npz")):
            return p
    for sub in ("cifar-10-batches-py", os.path.join("cifar10", "cifar-10-batches-py")):
        p = os.path.join(root, sub)
        if os.path.isdir(p):
            raise DataError(
                f"{p}: the official CIFAR-10 python batches are pickles, and unpickling "
                "can run code, so minialexnet never reads them by itself; convert them "
                f"once with `python -m minialexnet.data convert-cifar10 {p}`")
    raise DataError(f"{root}: no CIFAR-10 found (looked for {', '.join(tried)}); run "
                    "`python -m minialexnet.data download cifar10` or copy the packed npz files")


def _npz_file(folder, split):
    # Train and test encoded alike: the lossless pair if the lossless train file is
    # there, else the JPEG train file with the JPEG test file (or the lossless one).
    lossless = os.path.isfile(os.path.join(folder, "cifar10_train.npz"))
    names = {"train": ["cifar10_train.npz", "cifar10_train_jpeg.npz"],
             "test": ["cifar10_test.npz"] if lossless
             else ["cifar10_test_jpeg.npz", "cifar10_test.npz"]}[split]
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, names[-1])


def load_packed(path, n=None, seed=0, cache=None, progress_bar=True):
    """Read a packed CIFAR-10 npz: either the plain array file (``x``, ``y``) or a JPEG
    container (``data``, ``offsets``, ``y``).  Returns (x uint8 NHWC, y int64, names, idx)
    where idx is the seeded subset of ``n`` images (None: all of them).

    ``cache``: a directory for the decoded array (used only when decoding all images).
    """
    arrays = load_npz_arrays(path, ["y"])   # each array read once
    names = [str(s) for s in np.atleast_1d(arrays.get("class_names", CLASS_NAMES))]
    y = check_labels(arrays["y"], len(names), f"{path} labels")
    idx = subset_indices(len(y), n, seed)
    if "x" in arrays:
        x = check_images(arrays["x"], path)
        if len(x) != len(y):
            raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
        x = x if idx is None else x[idx]
    elif "data" in arrays and "offsets" in arrays:
        if len(arrays["offsets"]) != len(y) + 1:
            raise DataError(f"{path}: {len(arrays['offsets']) - 1} images but {len(y)} labels")
        fp = None
        if cache is not None and idx is None:
            fp = os.path.join(cache, f"{os.path.basename(path)[:-4]}_{file_fingerprint(path)}.npy")
        if fp is not None and os.path.isfile(fp):
            x = np.load(fp, allow_pickle=False)
        else:
            x = decode_container(arrays, idx, src=path, progress_bar=progress_bar)
            if fp is not None:
                save_npy_atomic(fp, x)
    else:
        raise DataError(f"{path}: neither a plain array npz (x, y) nor a JPEG container "
                        f"(data, offsets, y); has {sorted(arrays)}")
    if idx is not None:
        y = y[idx]
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y, names, idx


def load_cifar10(root, split="train", n=None, seed=0, size=None, progress_bar=True):
    """Load one split ("train" or "test"; "val" means "test") as a ``Dataset``.

    ``n``: a seeded random subset of n images (kept in canonical order).  ``size``:
    rescale the 32x32 images (bilinear) to size x size; None keeps 32.
    """
    split = {"val": "test"}.get(split, split)
    if split not in BATCHES:
        raise DataError(f"cifar10: unknown split {split!r} (use 'train' or 'test')")
    folder = find_cifar10(root)
    path = _npz_file(folder, split)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found (CIFAR-10 {split} split)")
    x, y, names, idx = load_packed(path, n, seed, cache_dir(), progress_bar)
    key = f"cifar10-{split}-{os.path.basename(path)[:-4]}-{file_fingerprint(path)}"
    if idx is not None:
        key += f"-n{len(y)}s{seed}"
    if size is not None and size != x.shape[1]:
        x = resize_many(x, size)
        key += f"-{size}px"
    return Dataset(x, y, names, "cifar10", split, key)

