"""Decoding image files into uint8 RGB arrays, and the paper's rescale-and-crop.

Paper section 2: "we down-sampled the images to a fixed resolution of 256 x 256: given
a rectangular image, we first rescaled the image such that the shorter side was of
length 256, and then cropped out the central 256x256 patch".  ``fit_square`` does that
for one PIL image; ``decode`` opens any JPEG (grayscale "L" and "CMYK" files are
converted to RGB, as are palette and RGBA images).

Corrupt files: we **stop** with a DataError naming the file rather than skip it.  A
skipped image silently changes the dataset (its size, its class balance, the meaning
of a random seed); stopping makes the user delete or replace the one bad file.  A
missing or unreadable file is called missing or unreadable, not corrupt.

16-bit images (PNG, TIFF) are scaled to 8 bits (value / 257), not clipped to white;
32-bit integer and float images are refused (no range to trust).  Images larger than
Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89 Mpixel) are refused
with one line before they are decoded.
"""

import concurrent.futures
import io
import os
import threading
import warnings

from PIL import Image

from ..backend import np
from .common import DataError, unreadable

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is in requirements, but a missing progress bar is no reason to fail
    tqdm = None

RESAMPLE = Image.BILINEAR  # Pillow's resize antialiases when it shrinks


def fit_square(img, size):
    """Rescale a PIL image so its shorter side is ``size``, then crop the central
    size x size patch (paper section 2).  Returns a PIL image."""
    w, h = img.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), RESAMPLE)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Image.open warns about huge images; catch_warnings changes process-wide state, so
# our threads take turns around the (cheap, header-only) open.
_open_lock = threading.Lock()


def _open(f, name):
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(f)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise DataError(f"{name}: image too large to decode safely ({e}); shrink it "
                            "first") from None


def _to_rgb(img, name):
    """A PIL image of any mode as an 8-bit RGB image."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG"):
        # convert("RGB") would clip 0..65535 to 0..255: almost all white.
        a = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")
    elif mode in ("I", "F"):
        raise DataError(f"{name}: a 32-bit {'float' if mode == 'F' else 'integer'} image "
                        f"(mode {mode}); expected 8- or 16-bit RGB or grey: convert it first")
    # "L" (grayscale), "CMYK", "P", "RGBA"... all become 3-channel RGB.
    return img.convert("RGB")


def decode(source, size=None, name=None):
    """Decode one image (a path or the encoded bytes) to uint8 (H, W, 3) RGB.

    ``size``: if given, rescale the shorter side to ``size`` and centre-crop to
    (size, size).  ``name`` is used in error messages (defaults to the path).
    Raises DataError for a missing, unreadable, corrupt, huge or 32-bit file.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or (os.fspath(source) if not is_bytes else "<bytes>")
    try:
        f = io.BytesIO(source) if is_bytes else open(source, "rb")
    except OSError as e:
        raise DataError(unreadable(name, e)) from None
    try:
        with f, _open(f, name) as img:
            if size is not None and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the file is much
                # bigger than needed: several times faster, and still >= size.
                img.draft("RGB", (size, size))
            img.load()  # force the decode here, so truncation errors surface inside try
            rgb = _to_rgb(img, name)
        if size is not None:
            rgb = fit_square(rgb, size)
        return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except OSError as e:
        if e.errno is not None:       # the disk (EIO...), not the file's contents
            raise DataError(unreadable(name, e)) from None
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e}); "
                        "the file is corrupt or not an image: delete or replace it") from None
    except Exception as e:  # PIL.UnidentifiedImageError, SyntaxError, ValueError
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e}); "
                        "the file is corrupt or not an image: delete or replace it") from None


def progress(iterable, total, desc, enable=True, unit="img"):
    """A tqdm bar when asked for and available, else the plain iterable."""
    if enable and tqdm is not None:
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                    mininterval=0.5)
    return iterable


def decode_many(items, size=None, names=None, threads=None, desc="decoding", progress_bar=True):
    """Decode a list of image sources (paths or bytes) into one uint8 (N, S, S, 3) array.

    Images must all end up the same shape: pass ``size`` to rescale-and-crop, or have
    files that already share a size.  Runs on ``threads`` threads (default: the CPU
    count): Pillow releases the GIL while it decodes, so threads give real speed-up.
    """
    n = len(items)
    if n == 0:
        raise DataError("no images to decode")
    names = names if names is not None else [None] * n
    first = decode(items[0], size, names[0])
    out = np.empty((n,) + first.shape, np.uint8)
    out[0] = first

    def work(i):
        a = decode(items[i], size, names[i])
        if a.shape != first.shape:
            raise DataError(f"{names[i] or f'image {i}'}: size {a.shape} differs from the "
                            f"first image's {first.shape}; pass size= to rescale")
        out[i] = a

    threads = threads or os.cpu_count() or 1
    chunk = 256  # one task per chunk keeps the thread-pool overhead small
    starts = range(1, n, chunk)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(lambda s: [work(i) for i in range(s, min(s + chunk, n))], s)
                for s in starts]
        bar = progress(None, n, desc, progress_bar and n > 2000)
        for s, j in zip(starts, jobs):
            j.result()  # re-raises the first DataError
            if bar is not None and hasattr(bar, "update"):
                bar.update(min(chunk, n - s))
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    return out


def decode_container(arrays, indices=None, size=None, src="", threads=None, progress_bar=True):
    """Decode images of a packed "JPEG container" npz (see shared/data/README.md).

    ``arrays``: the dict of the file's arrays (``data`` uint8 all files concatenated,
    ``offsets`` int64 (N+1,)), read once.  ``indices``: which images (default all).
    Returns uint8 (n, H, W, 3).
    """
    data, off = arrays["data"], arrays["offsets"]
    idx = range(len(off) - 1) if indices is None else indices
    items = [data[off[i]:off[i + 1]].tobytes() for i in idx]
    paths = arrays.get("src_paths")
    names = [f"{src}[{i}]" + (f" ({paths[i]})" if paths is not None else "") for i in idx]
    return decode_many(items, size, names, threads,
                       desc=f"decoding {os.path.basename(src)}", progress_bar=progress_bar)


class ImageFiles:
    """A lazy uint8 (N, size, size, 3) "array" of image files, decoded when indexed.

    For datasets too big for memory (ILSVRC: 1.2 M images, ~240 GB as 256x256 uint8).
    ``files[i]`` gives one (size, size, 3) image; ``files[index_array]`` a batch,
    decoded with ``threads`` threads.  The ``Loader`` indexes it from its worker
    thread, so decoding overlaps training (paper section 4.1).
    """

    def __init__(self, paths, size=256, threads=None):
        self.paths = list(paths)
        self.size = int(size)
        self.threads = threads
        self.dtype = np.uint8

    @property
    def shape(self):
        return (len(self.paths), self.size, self.size, 3)

    @property
    def ndim(self):
        return 4

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return decode(self.paths[index], self.size)
        idx = np.arange(len(self))[index]
        return decode_many([self.paths[i] for i in idx], self.size,
                           [self.paths[i] for i in idx], self.threads, progress_bar=False)

    def __repr__(self):
        return f"<ImageFiles {len(self)} files at {self.size}x{self.size}>"


def resize_many(x, size):
    """Rescale-and-crop each uint8 (N, H, W, 3) image to (size, size) (``fit_square``)."""
    out = np.empty((len(x), size, size, 3), np.uint8)
    for i in range(len(x)):
        out[i] = np.asarray(fit_square(Image.fromarray(x[i]), size))
    return out
