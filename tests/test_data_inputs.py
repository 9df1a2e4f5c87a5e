"""Data that must never be read silently wrong: planted pickles are never unpickled,
arrays of the wrong dtype, range or layout and labels that are not class indices are
refused with one line, 16-bit images keep their brightness, huge images are refused,
missing or unreadable files are called so, and statistics caches follow the images."""

import os
import pathlib
import pickle
import time

import numpy as np
import pytest
from PIL import Image

from minialexnet import data
from minialexnet.data import DataError, load_dataset
from minialexnet.data.__main__ import main as data_main
from data_fixtures import (CIFAR_NAMES, make_cifar_batches, make_class_folders,
                           make_jpeg_container, png_bytes, rgb_images)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIALEXNET_DATA", raising=False)


# ---------------------------------------------------------------- class 1: planted pickles
class _Evil:
    """Unpickling this writes MARKER: code from the data folder would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _plant(path, marker, wrapped=True):
    obj = {b"data": _Evil(marker), b"labels": [0]} if wrapped else _Evil(marker)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


PLANTED = ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("where", PLANTED)
def test_a_planted_batch_never_runs_when_loading(tmp_path, where, split):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder, per_batch=2)
    _plant(folder / where, tmp_path / "MARKER")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path), split=split)
    assert "python -m minialexnet.data convert-cifar10" in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("where", PLANTED)
def test_a_planted_batch_never_runs_when_converting(tmp_path, capsys, where, wrapped):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder, per_batch=2)
    _plant(folder / where, tmp_path / "MARKER", wrapped)
    assert data_main(["convert-cifar10", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("warning: ") and len(err) == 2
    assert err[1].startswith("error: ") and "refusing to load __builtin__.exec" in err[1]
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "cifar10").exists()          # nothing half converted


@pytest.mark.parametrize("name", ["cifar10_train.npz", "cifar10_train_jpeg.npz",
                                  "cifar10_test.npz"])
def test_a_pickle_named_like_a_packed_file_never_runs(tmp_path, name):
    (tmp_path / "cifar10").mkdir()
    _plant(tmp_path / "cifar10" / name, tmp_path / "MARKER", wrapped=False)
    with pytest.raises(DataError, match="not an .npz file"):
        load_dataset("cifar10", str(tmp_path), split="test" if "test" in name else "train")
    assert not (tmp_path / "MARKER").exists()


def test_an_object_array_in_a_packed_file_is_refused(tmp_path):
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "cifar10_train.npz",
             x=np.array([_Evil(tmp_path / "MARKER")], dtype=object), y=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match="holds pickled objects"):
        load_dataset("cifar10", str(tmp_path))
    assert not (tmp_path / "MARKER").exists()


# ---------------------------------------------------------------- class 8: arrays and labels
X = rgb_images(6, seed=3)
Y = np.array([0, 3, 9, 9, 2, 5])

BAD_ARRAYS = {
    "floats in 0..1": (X / 255.0, Y, "largest value 1\\); expected uint8 .* \\(x \\* 255\\)"),
    "floats in 0..255": (X.astype(np.float32), Y, "largest value 255\\); .*np.clip"),
    "ints above 255": (X.astype(np.int32) * 4, Y, "int32 pixel values 0..1020 do not fit 0..255"),
    "negative ints": (X.astype(np.int16) - 128, Y, "pixel values -128..127 do not fit"),
    "bools": (X > 127, Y, "dtype bool"),
    "complex": (X.astype(np.complex64), Y, "dtype complex64"),
    "channels first": (X.transpose(0, 3, 1, 2), Y, "channels-first \\(6, 3, 32, 32\\).*transpose"),
    "grey (N, H, W)": (X[..., 0], Y, "grey \\(6, 32, 32\\)"),
    "grey (N, H, W, 1)": (X[..., :1], Y, "grey \\(6, 32, 32, 1\\)"),
    "one image, no batch axis": (X[0], Y, "grey \\(32, 32, 3\\)"),
    "RGBA": (np.concatenate([X, X[..., :1]], axis=3), Y, "shape \\(6, 32, 32, 4\\)"),
    "fractional labels": (X, Y + 0.5, "label 0 is 0.5; expected whole class indices 0..9"),
    "NaN label": (X, np.where(Y == 9, np.nan, Y), "label 2 is nan"),
    "label too large": (X, np.where(Y == 9, 10, Y), "labels lie in 0..10 .*expected 0..9"),
    "negative label": (X, np.where(Y == 9, -1, Y), "label 2 is -1.*expected 0..9"),
    "2-D labels": (X, Y[:, None], "labels have shape \\(6, 1\\)"),
    "string labels": (X, Y.astype(str), "labels have dtype <U"),
    "bool labels": (X, Y > 3, "labels have dtype bool"),
    "fewer labels": (X, Y[:5], "6 images but 5 labels"),
}


def _plain(tmp_path, x, y, name="cifar10_train.npz"):
    d = tmp_path / "cifar10"
    d.mkdir(exist_ok=True)
    np.savez(d / name, x=x, y=y, class_names=np.array(CIFAR_NAMES))
    np.savez(d / "cifar10_test.npz", x=X, y=Y, class_names=np.array(CIFAR_NAMES))


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_arrays_that_would_be_read_wrong_are_refused(tmp_path, case):
    x, y, words = BAD_ARRAYS[case]
    _plain(tmp_path, x, y)
    with pytest.raises(DataError, match=words) as e:
        load_dataset("cifar10", str(tmp_path))
    assert "cifar10_train.npz" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("x,y", [
    (X.astype(np.int64), Y),                    # ints that fit: cast
    (X.astype(np.uint16), Y.astype(np.float32)),  # whole-number float labels: fine
    (X, Y.astype(np.uint8)),
])
def test_arrays_that_mean_what_they_say_load(tmp_path, x, y):
    _plain(tmp_path, x, y)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.x.dtype == np.uint8 and np.array_equal(ds.x, X)
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, Y)


@pytest.mark.parametrize("labels,words", [
    ([0, 1, 2, 10], "labels lie in 0..10"), ([0.0, 1.5, 2, 3], "label 1 is 1.5"),
    ([0, -3, 1, 1], "label 1 is -3")])
def test_labels_of_jpeg_containers_are_checked_too(tmp_path, labels, words):
    (tmp_path / "cifar10").mkdir()
    make_jpeg_container(tmp_path / "cifar10" / "cifar10_train_jpeg.npz", X[:4], [0, 0, 0, 0],
                        CIFAR_NAMES, extra={"y": np.asarray(labels)})
    with pytest.raises(DataError, match=words):
        load_dataset("cifar10", str(tmp_path), progress_bar=False)


# ---------------------------------------------------------------- images: bit depth, size, files
RAMP = (np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)   # 0..64484


@pytest.mark.parametrize("kind", ["grey16", "rgb16", "grey8", "rgb8"])
def test_16_bit_images_keep_their_brightness(tmp_path, kind):
    grey = RAMP if kind.startswith("grey") else None
    a = RAMP if grey is not None else np.stack([RAMP, 65535 - RAMP, RAMP // 2], axis=2)
    bits = 16 if kind.endswith("16") else 8
    if bits == 8:
        a = (a // 257).astype(np.uint8)
    p = tmp_path / f"{kind}.png"
    p.write_bytes(png_bytes(a, bits))
    got = data.decode(str(p)).astype(int)
    want = (a.astype(int) + 128) // 257 if bits == 16 else a.astype(int)
    want = np.repeat(want[..., None], 3, axis=2) if want.ndim == 2 else want
    assert got.shape == (48, 48, 3)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_images_are_refused(tmp_path, mode):
    p = tmp_path / "deep.tif"
    Image.new(mode, (8, 8)).save(p)
    with pytest.raises(DataError, match=f"a 32-bit .* image \\(mode {mode}\\)"):
        data.decode(str(p))


@pytest.mark.parametrize("side", [40, 100])          # above the warning, above the error
def test_decompression_bombs_are_refused_in_one_line(tmp_path, monkeypatch, recwarn, side):
    p = tmp_path / "big.png"
    Image.new("RGB", (side, side)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="big.png: image too large to decode safely"):
        data.decode(str(p), size=32)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.undo()
    assert data.decode(str(p), size=32).shape == (32, 32, 3)


def _loop(p):
    os.symlink(p.parent / "other.jpg", p)
    os.symlink(p, p.parent / "other.jpg")


UNREADABLE = {
    "missing": (lambda p: None, "file not found"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "symlink loop": (_loop, "symlink loop"),
    "broken symlink": (lambda p: os.symlink(p.parent / "gone.jpg", p), "file not found"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_missing_and_unreadable_images_are_not_called_corrupt(tmp_path, case):
    make, words = UNREADABLE[case]
    p = tmp_path / "img.jpg"
    make(p)
    with pytest.raises(DataError) as e:
        data.decode(str(p))
    assert words in str(e.value) and "corrupt" not in str(e.value), str(e.value)


def test_an_unreadable_image_says_permission_denied(tmp_path, monkeypatch):
    import builtins
    p = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(p)
    real = builtins.open

    def denied(f, *a, **k):
        if str(f) == str(p):
            raise PermissionError(13, "Permission denied")
        return real(f, *a, **k)
    monkeypatch.setattr(builtins, "open", denied)            # root ignores chmod
    with pytest.raises(DataError, match=r"img.png: cannot read \(permission denied\)"):
        data.decode(str(p))


def test_a_text_file_is_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello")
    with pytest.raises(DataError, match="notes.jpg: cannot decode image .* not an image"):
        data.decode(str(p))


# ---------------------------------------------------------------- caches follow the content
REPLACEMENTS = {
    # how an image is replaced under the same name
    "bigger file": lambda p, img: Image.fromarray(img).save(p, quality=100),
    "same size, new time": lambda p, img: _same_size(p, img),
}


def _same_size(p, img):
    # A file of exactly the old size with other pixels, and a later mtime.
    old = p.stat()
    for q in range(100, 1, -1):
        Image.fromarray(img).save(p, format="JPEG", quality=q)
        if p.stat().st_size <= old.st_size:
            break
    with open(p, "ab") as f:
        f.write(b"\0" * (old.st_size - p.stat().st_size))
    os.utime(p, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000))
    assert p.stat().st_size == old.st_size


@pytest.mark.parametrize("how", sorted(REPLACEMENTS))
def test_the_mean_image_cache_follows_replaced_images(tmp_path, how):
    root = make_class_folders(str(tmp_path / "imgs"), size=(32, 32))
    ds = data.load_image_folder(root, size=32)
    m1 = data.mean_image(ds.x, data.stats_file(ds, "mean"), progress_bar=False)
    first = ds.x.paths[0]
    white = np.full((32, 32, 3), 255, np.uint8)
    REPLACEMENTS[how](pathlib.Path(first), white)
    ds2 = data.load_image_folder(root, size=32)
    assert data.stats_file(ds2, "mean") != data.stats_file(ds, "mean")
    m2 = data.mean_image(ds2.x, data.stats_file(ds2, "mean"), progress_bar=False)
    fresh = data.mean_image(ds2.x, None, progress_bar=False)
    np.testing.assert_array_equal(m2, fresh)
    assert not np.array_equal(m1, m2)


def test_in_memory_caches_are_keyed_by_the_pixels_and_labels():
    a = data.Dataset(X.copy(), Y.copy(), CIFAR_NAMES, "cifar10", "train", "same-key")
    b = data.Dataset(X.copy(), Y.copy(), CIFAR_NAMES, "cifar10", "train", "same-key")
    assert data.stats_file(a, "mean") == data.stats_file(b, "mean")
    c = data.Dataset(X.copy(), Y.copy(), CIFAR_NAMES, "cifar10", "train", "same-key")
    c.x[3, 4, 5, 1] ^= 1                                        # one bit of one pixel
    d = data.Dataset(X.copy(), np.roll(Y, 1), CIFAR_NAMES, "cifar10", "train", "same-key")
    assert len({data.stats_file(ds, "std") for ds in (a, c, d)}) == 3


def test_the_content_key_of_the_main_job_costs_little():
    ds = load_dataset("synthetic", n=10000)
    t = time.perf_counter()
    data.content_key(ds)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("args,words", [
    (["info", "synthetic", "--n", "0"], "--n: expected an integer >= 1, got '0'"),
    (["info", "synthetic", "--n", "-3"], "--n"),
    (["info", "mnist"], "invalid choice"),
    (["convert-cifar10"], "folder"),
])
def test_data_cli_mistakes_are_one_line(capsys, args, words):
    with pytest.raises(SystemExit) as e:
        data_main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert words in err, err
