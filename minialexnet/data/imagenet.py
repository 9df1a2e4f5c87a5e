"""ImageNet-style data: class folders (ILSVRC's training layout, Imagenette's layout),
the 1000-class synset list, and the packed Imagenette npz files.

Folder layout (what ``load_image_folder`` reads)::

    root/train/<wnid>/*.JPEG     one folder per class; class index = sorted folder order
    root/val/<wnid>/*.JPEG       (for all 1000 ILSVRC classes this equals the synset order)

Images are decoded lazily (``images.ImageFiles``): rescaled so the shorter side is
``size`` (256 by default) and centre-cropped to size x size, exactly the paper's
section 2 pre-processing, when a batch asks for them.

Packed Imagenette (shared/data): ``imagenette/imagenette224_train_0.npz``,
``_train_1.npz`` (the train split is every train shard present, in order) and
``_val.npz``; JPEG containers of 224x224 images, decoded once and cached.
"""

import glob
import os

from ..backend import np
from .common import (DataError, Dataset, cache_dir, check_labels, file_fingerprint,
                     load_npz_arrays, save_npy_atomic, subset_indices, unreadable)
from .images import ImageFiles, decode_container, resize_many

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
SYNSETS_FILE = "imagenet_synsets.txt"


def read_synsets(path):
    """Read ``imagenet_synsets.txt`` (``wnid words`` per line; line i = class i).

    Returns (wnids, words): two lists of 1000 strings, e.g. "n01440764",
    "tench, Tinca tinca".
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    except OSError as e:
        raise DataError(unreadable(path, e) + " (the synset list)") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text synset list ({e})") from None
    wnids, words = [], []
    for i, ln in enumerate(lines):
        wnid, _, w = ln.partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise DataError(f"{path}: line {i + 1} is not 'wnid words': {ln[:60]!r}")
        wnids.append(wnid)
        words.append(w.strip())
    return wnids, words


def short_name(words):
    """The first synonym: "tench, Tinca tinca" -> "tench"."""
    return words.split(",")[0].strip()


def find_synsets(*dirs):
    """The first ``imagenet_synsets.txt`` in ``dirs`` or their parents, or None."""
    for d in dirs:
        if d is None:
            continue
        for cand in (d, os.path.dirname(os.path.abspath(d))):
            p = os.path.join(cand, SYNSETS_FILE)
            if os.path.isfile(p):
                return p
    return None


def scan_class_folders(split_dir):
    """List ``split_dir/<class>/<image>`` files.

    Returns (paths, labels int64, class folder names), classes in sorted order and
    files sorted within a class.  Raises DataError for a missing folder, a folder with
    no class subfolders, or an empty class folder (which would silently shift nothing
    but leave a class that can never be seen: almost always a broken copy).
    """
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir}: folder not found")
    classes = sorted(e.name for e in os.scandir(split_dir)
                     if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders (expected {split_dir}/<class>/*.JPEG)")
    paths, labels = [], []
    for c, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        files = sorted(e.name for e in os.scandir(folder)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"{folder}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        paths += [os.path.join(folder, f) for f in files]
        labels += [c] * len(files)
    return paths, np.asarray(labels, np.int64), classes


def _names_for(folders, synsets_path):
    """Class names and, where the folders are wnids, their ILSVRC indices."""
    extra = {"wnids": list(folders)}
    if synsets_path is None:
        return list(folders), extra
    wnids, words = read_synsets(synsets_path)
    index = {w: i for i, w in enumerate(wnids)}
    if not all(f in index for f in folders):
        return list(folders), extra
    extra["imagenet_index"] = [index[f] for f in folders]
    extra["words"] = [words[index[f]] for f in folders]
    return [short_name(w) for w in extra["words"]], extra


def load_image_folder(root, split="train", size=256, n=None, seed=0, synsets=None, name="imagenet-folder"):
    """A class-folder split ``root/<split>/<class>/*`` as a lazy ``Dataset``.

    ``size``: side of the stored square images (shorter side -> size, central crop).
    ``synsets``: path of ``imagenet_synsets.txt`` for class names (default: looked for
    in ``root`` and its parent); without it, the folder names are the class names.
    ``x`` is an ``ImageFiles``; corrupt files raise DataError when they are decoded.
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: image folder root does not exist")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        have = sorted(e.name for e in os.scandir(root) if e.is_dir())
        raise DataError(f"{root}: no {split}/ folder (expected {root}/{split}/<class>/*.JPEG; "
                        f"found folders {have})")
    paths, y, folders = scan_class_folders(split_dir)
    idx = subset_indices(len(y), n, seed)
    if idx is not None:
        paths, y = [paths[i] for i in idx], y[idx]
    names, extra = _names_for(folders, synsets or find_synsets(root))
    key = f"{name}-{split}-{size}px-{file_fingerprint(split_dir)}-{len(paths)}"
    if idx is not None:
        key += f"-n{len(y)}s{seed}"
    return Dataset(ImageFiles(paths, size), y, names, name, split, key, extra)


# --- Imagenette -------------------------------------------------------------------

IMAGENETTE_FOLDERS = ("imagenette2-320", "imagenette2-160", "imagenette2", "imagenette")


def _packed_imagenette(root, split):
    for sub in ("imagenette", "."):
        d = os.path.join(root, sub)
        pattern = "imagenette*_train_*.npz" if split == "train" else "imagenette*_val.npz"
        files = sorted(glob.glob(os.path.join(d, pattern)))
        if files:
            return files
    return []


def load_imagenette(root, split="train", size=None, n=None, seed=0, progress_bar=True):
    """Imagenette (10 easy ImageNet classes): packed npz files if present, else an
    extracted ``imagenette2-320/`` (or -160, or full-size) class-folder tree.

    ``size``: None keeps the packed files' 224 px, or gives 256 for folders.
    """
    split = {"test": "val"}.get(split, split)
    if split not in ("train", "val"):
        raise DataError(f"imagenette: unknown split {split!r} (use 'train' or 'val')")
    files = _packed_imagenette(root, split)
    if not files:
        for sub in IMAGENETTE_FOLDERS:
            d = os.path.join(root, sub)
            if os.path.isdir(os.path.join(d, split)):
                return load_image_folder(d, split, size or 256, n, seed,
                                         find_synsets(root, d), "imagenette")
        raise DataError(f"{root}: no Imagenette found (looked for imagenette/imagenette224_"
                        f"{split}*.npz and {'|'.join(IMAGENETTE_FOLDERS)}/{split}/); run "
                        "`python -m minialexnet.data download imagenette`")
    cache = cache_dir()
    xs, ys, names, extra = [], [], None, {}
    for path in files:
        arrays = load_npz_arrays(path, ["data", "offsets", "y", "class_names"])
        fp = os.path.join(cache, f"{os.path.basename(path)[:-4]}_{file_fingerprint(path)}.npy")
        if os.path.isfile(fp):
            x = np.load(fp, mmap_mode="r")   # ~700 MB a shard: map it, don't copy it
        else:
            x = decode_container(arrays, src=path, progress_bar=progress_bar)
            save_npy_atomic(fp, x)
        names = [str(s) for s in np.atleast_1d(arrays["class_names"])]
        xs.append(x)
        ys.append(check_labels(arrays["y"], len(names), f"{path} labels", n=len(x)))
        for k in ("wnids", "imagenet_index"):
            if k in arrays:
                extra[k] = arrays[k].tolist()
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = np.concatenate(ys)
    key = f"imagenette-{split}-{file_fingerprint(*files)}"
    idx = subset_indices(len(y), n, seed)
    if idx is not None:
        x, y = x[idx], y[idx]
        key += f"-n{len(y)}s{seed}"
    if size is not None and size != x.shape[1]:
        x = resize_many(x, size)
        key += f"-{size}px"
    return Dataset(x, y, names, "imagenette", split, key, extra)
