"""CIFAR-10: 60 000 32x32 colour images in 10 classes (Krizhevsky 2009), the data set
of the paper's Figure 1 and section 3.3 CIFAR experiments.

Two on-disk forms are understood, looked for in this order under the data directory:

1. The official python version, ``cifar-10-batches-py/`` (also under ``cifar10/``):
   ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``, as
   extracted from cifar-10-python.tar.gz (``python -m minialexnet.data download cifar10``).
2. The packed npz files of shared/data (see data/README.md): ``cifar10/cifar10_train_jpeg.npz``
   (a JPEG container) and for the test split ``cifar10/cifar10_test_jpeg.npz`` (encoded
   like the train set, so train and test see the same JPEG smoothing) or else the
   lossless ``cifar10/cifar10_test.npz``.

Decoded JPEG containers are cached as .npy files (see ``common.cache_dir``), so the
~10 s decode of the 50 000 training images happens once.
"""

import os
import pickle

from ..backend import np
from .common import (DataError, Dataset, cache_dir, file_fingerprint, load_npz_arrays,
                     save_npy_atomic, subset_indices)
from .images import decode_container, resize_many

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _unpickle(path):
    # The official CIFAR-10 python format IS a pickle (a dict with bytes keys, written
    # by Python 2), so pickle.load(..., encoding="bytes") is the documented way to read
    # it.  Only load files you downloaded from the official URL (checksum-verified by
    # ``download``): unpickling runs code from the file.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (incomplete cifar-10-batches-py?)") from None
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None


def load_python_batches(folder, split="train"):
    """Read the official ``cifar-10-batches-py`` folder.

    Returns (x uint8 (N, 32, 32, 3) RGB, y int64 (N,), class_names).  Each batch's
    ``b'data'`` is (10000, 3072) uint8: 1024 red, then 1024 green, then 1024 blue
    values, row-major, so it reshapes to (N, 3, 32, 32) and transposes to NHWC.
    """
    xs, ys = [], []
    for name in BATCHES[split]:
        path = os.path.join(folder, name)
        d = _unpickle(path)
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise DataError(f"{path}: not a CIFAR-10 batch (no b'data'/b'labels' keys)")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(d[b"labels"]) != len(data):
            raise DataError(f"{path}: expected data (N, 3072) and N labels, got "
                            f"{data.shape} and {len(d[b'labels'])} labels")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    names = [n.decode() for n in meta.get(b"label_names", [])] or list(CLASS_NAMES)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), names


def find_cifar10(root):
    """Where CIFAR-10 lives under ``root``: ("python", folder), ("npz", folder), or a
    DataError listing the places looked at."""
    tried = []
    for sub in ("cifar-10-batches-py", os.path.join("cifar10", "cifar-10-batches-py")):
        p = os.path.join(root, sub)
        tried.append(p)
        if os.path.isdir(p):
            return "python", p
    for sub in ("cifar10", "."):
        p = os.path.join(root, sub)
        tried.append(os.path.join(p, "cifar10_train_jpeg.npz"))
        if os.path.isfile(os.path.join(p, "cifar10_train_jpeg.npz")) or \
                os.path.isfile(os.path.join(p, "cifar10_test.npz")):
            return "npz", os.path.normpath(p)
    raise DataError(f"{root}: no CIFAR-10 found (looked for {', '.join(tried)}); run "
                    "`python -m minialexnet.data download cifar10` or copy the packed npz files")


def _npz_file(folder, split):
    if split == "train":
        return os.path.join(folder, "cifar10_train_jpeg.npz")
    for name in ("cifar10_test_jpeg.npz", "cifar10_test.npz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, "cifar10_test_jpeg.npz")


def load_packed(path, n=None, seed=0, cache=None, progress_bar=True):
    """Read a packed CIFAR-10 npz: either the plain array file (``x``, ``y``) or a JPEG
    container (``data``, ``offsets``, ``y``).  Returns (x uint8 NHWC, y int64, names, idx)
    where idx is the seeded subset of ``n`` images (None: all of them).

    ``cache``: a directory for the decoded array (used only when decoding all images).
    """
    arrays = load_npz_arrays(path, ["y"])   # each array read once
    y = arrays["y"].astype(np.int64)
    names = [str(s) for s in arrays.get("class_names", CLASS_NAMES)]
    idx = subset_indices(len(y), n, seed)
    if "x" in arrays:
        x = arrays["x"] if idx is None else arrays["x"][idx]
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
    kind, folder = find_cifar10(root)
    if kind == "python":
        x, y, names = load_python_batches(folder, split)
        idx = subset_indices(len(y), n, seed)
        if idx is not None:
            x, y = x[idx], y[idx]
        key = f"cifar10-{split}-py-{file_fingerprint(*[os.path.join(folder, b) for b in BATCHES[split]])}"
    else:
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

