"""Tiny data files in the real formats, made inside tests (tmp_path): no /work/shared,
no network."""

import io
import os
import pickle
import tarfile

import numpy as np
from PIL import Image

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


def rgb_images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def make_cifar_batches(folder, per_batch=4, seed=0):
    """A miniature ``cifar-10-batches-py`` in the official pickle format (bytes keys).
    Returns (train x, train y, test x, test y) as NHWC uint8 / int."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        d = {b"batch_label": name.encode(), b"labels": y,
             b"data": x.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
             b"filenames": [b"f%d.png" % i for i in range(per_batch)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)
        xs[name], ys[name] = x, y
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES],
                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return (np.concatenate([xs[b] for b in train]), np.concatenate([ys[b] for b in train]),
            xs["test_batch"], np.asarray(ys["test_batch"]))


def make_cifar_targz(path, per_batch=4):
    """cifar-10-python.tar.gz in miniature: the archive holds cifar-10-batches-py/."""
    src = os.path.join(os.path.dirname(path), "_src")
    make_cifar_batches(os.path.join(src, "cifar-10-batches-py"), per_batch)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(os.path.join(src, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return path


def jpeg_bytes(img, mode="RGB", quality=95):
    """Encode a uint8 (H, W, 3) image as JPEG in ``mode`` ("RGB", "L" or "CMYK")."""
    im = Image.fromarray(img).convert(mode)
    b = io.BytesIO()
    im.save(b, format="JPEG", quality=quality)
    return b.getvalue()


def make_jpeg_container(path, images, labels, class_names, mode="RGB", extra=None):
    """A packed "JPEG container" npz (data, offsets, y, class_names, src_paths)."""
    blobs = [np.frombuffer(jpeg_bytes(im, mode), np.uint8) for im in images]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    arrays = dict(data=np.concatenate(blobs), offsets=offsets,
                  y=np.asarray(labels, np.uint8), class_names=np.asarray(class_names),
                  src_paths=np.asarray([f"img{i}.jpg" for i in range(len(images))]))
    arrays.update(extra or {})
    np.savez(path, **arrays)
    return path


def make_class_folders(root, split="train", classes=("n01440764", "n02102040"), per_class=3,
                       size=(40, 30), seed=0):
    """root/split/<class>/<i>.JPEG files of random RGB images of ``size`` (w, h)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        d = os.path.join(root, split, c)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            with open(os.path.join(d, f"{c}_{i}.JPEG"), "wb") as f:
                f.write(jpeg_bytes(img))
    return root


def truncated_jpeg(img):
    b = jpeg_bytes(img)
    return b[: len(b) // 2]


def png_bytes(a, bits=16):
    """A PNG written by hand (Pillow cannot write 16-bit RGB): ``a`` uint16 (H, W) grey
    or (H, W, 3) RGB, stored with ``bits`` bits per sample."""
    import struct
    import zlib
    a = np.asarray(a)
    h, w = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    dtype = ">u2" if bits == 16 else "u1"
    raw = b"".join(b"\0" + row.astype(dtype).tobytes() for row in a)

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
