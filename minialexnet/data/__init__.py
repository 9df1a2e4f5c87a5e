"""Datasets, pre-processing and augmentation, and the background batch loader.

    from minialexnet import data
    train = data.load_dataset("cifar10", split="train")       # or "synthetic", ...
    train.x        # uint8 (N, H, W, 3) RGB (NHWC), or a lazy ImageFiles for folders
    train.y        # int64 (N,)
    train.class_names
    mean = data.mean_image(train.x, data.stats_file(train, "mean"))
    std = data.channel_std(train.x, mean, data.stats_file(train, "std"))   # "unit" scale
    loader = data.Loader(train.x, train.y, 128,
                         data.TrainTransform(28, mean, std=std), seed=0, drop_last=True)
    for x, y in loader: ...                                   # x float32 (B, 3, 28, 28)

Images are stored uint8 NHWC; the network's float32 NCHW comes out of the transforms.
Dataset names: "synthetic" (built in, offline), "cifar10", "imagenette",
"imagenet-folder" (any root/train/<class>/*.JPEG tree).  The data directory is
``--data-dir``, else $MINIALEXNET_DATA, else ./data (``data_dir``).
"""

import hashlib
import os

from ..backend import np
from .common import DataError, Dataset, cache_dir, data_dir
from .images import ImageFiles, decode, fit_square
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASSES, make_synthetic
from .cifar10 import convert_cifar10, load_cifar10
from .imagenet import load_image_folder, load_imagenette, read_synsets
from .transforms import (EvalTransform, TrainTransform, center_crop, channel_std, crop_batch, mean_image,
                         pca_fit, pca_noise, random_crop_params, softmax, ten_crop,
                         ten_crop_predict, to_nchw)
from .loader import Loader
from .download import DownloadError, download

DATASETS = ("synthetic", "cifar10", "imagenette", "imagenet-folder")

__all__ = [
    "DATASETS", "DataError", "DownloadError", "Dataset", "ImageFiles", "Loader",
    "EvalTransform", "TrainTransform", "SYNTHETIC_CLASSES", "cache_dir", "center_crop",
    "channel_std", "content_key", "convert_cifar10", "crop_batch", "data_dir", "decode",
    "download", "fit_square", "load_cifar10", "load_dataset", "load_image_folder",
    "load_imagenette", "make_synthetic", "mean_image", "pca_fit", "pca_noise",
    "random_crop_params", "read_synsets", "softmax", "stats_file", "ten_crop",
    "ten_crop_predict", "to_nchw",
]


def load_dataset(name, data_dir=None, split="train", size=None, n=None, seed=0,
                 progress_bar=True):
    """Load one split of a dataset.  Returns a ``Dataset`` (x uint8 NHWC, y int64,
    class_names, key).

    name: "synthetic" | "cifar10" | "imagenette" | "imagenet-folder".
    data_dir: the data directory (``--data-dir``); None: $MINIALEXNET_DATA or ./data.
        For "imagenet-folder" it is the class-folder root itself (holding train/, val/).
        Not used by "synthetic".
    split: "train", or the held-out split: "test" or "val" (synonyms everywhere).
    size: side of the stored square images.  None: the dataset's own (synthetic 32,
        CIFAR-10 32, packed Imagenette 224, folders 256: shorter side to 256 then
        the central crop, paper section 2).
    n: synthetic: how many images (default 10000 train / 2000 test); others: a seeded
        random subset of n images, kept in the dataset's order (None: all).
    seed: synthetic: generator seed (test uses a different stream); others: subset seed.
    """
    if name == "synthetic":
        held_out = split in ("test", "val")
        if split not in ("train", "test", "val"):
            raise DataError(f"synthetic: unknown split {split!r} (use 'train' or 'test')")
        n = n or (2000 if held_out else 10000)
        size = size or 32
        # A different seed stream for the held-out split, so no image is shared.
        x, y = make_synthetic(n, size, seed * 2 + int(held_out))
        split = "test" if held_out else "train"
        return Dataset(x, y, list(SYNTHETIC_CLASSES), "synthetic", split,
                       f"synthetic-{split}-{size}px-n{n}-s{seed}")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    root = _data_dir(data_dir)
    if name == "cifar10":
        return load_cifar10(root, split, n, seed, size, progress_bar)
    if name == "imagenette":
        return load_imagenette(root, split, size, n, seed, progress_bar)
    split = {"test": "val"}.get(split, split)
    return load_image_folder(root, split, size or 256, n, seed)


_data_dir = data_dir  # load_dataset's argument shadows the function's name


def stats_file(ds, what):
    """A cache path (in ``cache_dir()``) for statistics of dataset ``ds``, e.g. "mean",
    "std" or "pca": pass it as ``cache_file`` to ``mean_image``/``pca_fit``.

    The one place cache names are made: keyed by ``ds.key`` and by ``content_key(ds)``,
    a hash of what the dataset holds, so a cache is never stale when images are
    replaced under the same names."""
    return os.path.join(cache_dir(), f"{ds.key}-{content_key(ds)}-{what}.npy")


def content_key(ds):
    """A short hash of what ``ds`` holds: for images in memory, of their bytes and the
    labels; for image files (``ImageFiles``), of every file's path, size and
    modification time (reading 1.2 M ImageNet files to hash them would take longer
    than the statistics).  Computed once per Dataset (kept in ``ds.extra``)."""
    if "content_key" not in ds.extra:
        h = hashlib.blake2b(digest_size=8)
        x = ds.x
        h.update(repr((tuple(x.shape), str(getattr(x, "dtype", "")))).encode())
        if isinstance(x, ImageFiles):
            for p in x.paths:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            for i in range(0, len(x), 4096):      # contiguous slices: no copy
                h.update(memoryview(np.ascontiguousarray(x[i:i + 4096])).cast("B"))
        h.update(np.ascontiguousarray(np.asarray(ds.y, np.int64)).tobytes())
        ds.extra["content_key"] = h.hexdigest()
    return ds.extra["content_key"]
