"""Datasets: synthetic, CIFAR-10 (official batches and packed npz), Imagenette npz,
class folders; bad input gives one clear DataError; the background Loader."""

import os
import time

import numpy as np
import pytest
from PIL import Image

from minialexnet import data
from minialexnet.data import DataError, Loader, load_dataset
from data_fixtures import (CIFAR_NAMES, jpeg_bytes, make_cifar_batches, make_class_folders,
                           make_jpeg_container, rgb_images, truncated_jpeg)

SHARED = "/work/shared/data"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Keep every cache file of these tests inside tmp_path."""
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIALEXNET_DATA", raising=False)


# --- data directory ---------------------------------------------------------------------

def test_data_dir_from_arg_env_and_missing(tmp_path, monkeypatch):
    assert data.data_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("MINIALEXNET_DATA", str(tmp_path))
    assert data.data_dir() == str(tmp_path)
    with pytest.raises(DataError, match="nope: data directory does not exist"):
        data.data_dir(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("synthetic", split="holdout")


# --- synthetic ----------------------------------------------------------------------------

def test_synthetic_is_deterministic_balanced_and_fast():
    t = time.perf_counter()
    a = load_dataset("synthetic", n=2000, size=32, seed=1)
    assert time.perf_counter() - t < 5
    b = load_dataset("synthetic", n=2000, size=32, seed=1)
    assert a.x.dtype == np.uint8 and a.x.shape == (2000, 32, 32, 3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert np.bincount(a.y).tolist() == [200] * 10
    assert len(a.class_names) == 10 and a.class_names[4] == "ring"
    c = load_dataset("synthetic", n=2000, size=32, seed=2)
    assert not np.array_equal(a.x, c.x)
    test = load_dataset("synthetic", split="test", n=200, seed=1)
    assert test.split == "test" and test.key != a.key
    assert not any((test.x[:50, None] == a.x[None, :50]).all(axis=(2, 3, 4)).ravel())


def test_synthetic_64px_and_not_trivial_by_colour():
    ds = load_dataset("synthetic", n=500, size=64)
    assert ds.x.shape == (500, 64, 64, 3)
    # The class is the shape, not the colour: mean colour alone says little about it.
    mean_rgb = ds.x.reshape(500, -1, 3).mean(1)
    per_class = np.stack([mean_rgb[ds.y == c].mean(0) for c in range(10)])
    assert per_class.std(0).max() < 20


def test_synthetic_learnable_by_nearest_centroid_of_edges():
    """A crude edge-orientation feature separates classes well above chance (10 %)."""
    tr = load_dataset("synthetic", n=2000, size=32, seed=0)
    te = load_dataset("synthetic", split="test", n=500, seed=0)

    def feat(x):
        g = x.astype(np.float32).mean(-1)
        gx, gy = np.diff(g, axis=2)[:, :-1], np.diff(g, axis=1)[:, :, :-1]
        ang = np.arctan2(gy, gx) % np.pi
        mag = np.hypot(gx, gy)
        bins = np.minimum((ang / np.pi * 8).astype(int), 7)
        h = np.stack([(mag * (bins == b)).sum((1, 2)) for b in range(8)], 1)
        return h / (h.sum(1, keepdims=True) + 1e-6)

    ftr, fte = feat(tr.x), feat(te.x)
    cent = np.stack([ftr[tr.y == c].mean(0) for c in range(10)])
    pred = ((fte[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    acc = (pred == te.y).mean()
    assert 0.2 < acc < 0.95, acc      # learnable, and not solved by a histogram


# --- CIFAR-10 -----------------------------------------------------------------------------

def test_cifar10_python_batches_are_read_only_by_the_explicit_conversion(tmp_path, capsys):
    from minialexnet.data.__main__ import main
    xtr, ytr, xte, yte = make_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=3)
    with pytest.raises(DataError, match="convert-cifar10 .*cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    assert main(["convert-cifar10", str(tmp_path / "cifar-10-batches-py")]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: ") and "unpickling" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path / "cifar10")) == ["cifar10_test.npz", "cifar10_train.npz"]
    tr = load_dataset("cifar10", str(tmp_path))
    assert tr.x.shape == (15, 32, 32, 3) and tr.x.dtype == np.uint8
    assert np.array_equal(tr.x, xtr) and np.array_equal(tr.y, ytr)
    assert tr.class_names == CIFAR_NAMES
    te = load_dataset("cifar10", str(tmp_path), split="val")   # "val" means the test set
    assert te.split == "test" and np.array_equal(te.x, xte) and np.array_equal(te.y, yte)
    sub = load_dataset("cifar10", str(tmp_path), n=5, seed=3)
    assert len(sub) == 5 and np.isin(sub.y, ytr).all()


def test_cifar10_packed_jpeg_and_plain(tmp_path):
    d = tmp_path / "cifar10"
    d.mkdir()
    imgs = rgb_images(6, seed=1)
    imgs[:] = imgs[:, :1, :1]   # flat colours survive JPEG nearly exactly
    make_jpeg_container(d / "cifar10_train_jpeg.npz", imgs, [6, 9, 9, 4, 1, 1], CIFAR_NAMES)
    np.savez(d / "cifar10_test.npz", x=imgs[:4], y=np.array([3, 8, 8, 0], np.uint8),
             class_names=np.array(CIFAR_NAMES))
    tr = load_dataset("cifar10", str(tmp_path), progress_bar=False)
    assert tr.y.tolist() == [6, 9, 9, 4, 1, 1] and tr.y.dtype == np.int64
    assert np.abs(tr.x.astype(int) - imgs).max() <= 3
    again = load_dataset("cifar10", str(tmp_path))           # from the .npy cache
    assert np.array_equal(again.x, tr.x)
    assert any(f.endswith(".npy") for f in os.listdir(tmp_path / "cache"))
    te = load_dataset("cifar10", str(tmp_path), split="test")
    assert np.array_equal(te.x, imgs[:4]) and te.y.tolist() == [3, 8, 8, 0]


def test_cifar10_missing_and_wrong_format(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        load_dataset("cifar10", str(tmp_path))
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "cifar10_train_jpeg.npz", images=np.zeros(3))
    with pytest.raises(DataError, match=r"cifar10_train_jpeg.npz: not the expected format: missing arrays \['y'\]"):
        load_dataset("cifar10", str(tmp_path))
    np.savez(tmp_path / "cifar10" / "cifar10_train_jpeg.npz", y=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="neither a plain array npz"):
        load_dataset("cifar10", str(tmp_path))
    bad = tmp_path / "b" / "cifar-10-batches-py"
    make_cifar_batches(bad, per_batch=2)
    (bad / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 python batch"):
        data.convert_cifar10(str(bad))
    os.remove(bad / "data_batch_1")
    with pytest.raises(DataError, match="data_batch_1: file not found"):
        data.convert_cifar10(str(bad))


@pytest.mark.skipif(not os.path.exists(f"{SHARED}/cifar10/cifar10_train_jpeg.npz"),
                    reason="shared CIFAR-10 not on this machine")
def test_shared_cifar10_label_order_and_first_images():
    d = dict(np.load(f"{SHARED}/cifar10/cifar10_train_jpeg.npz"))
    assert d["y"][:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    from minialexnet.data.images import decode_container
    x = decode_container(d, range(500), progress_bar=False)
    assert x.shape == (500, 32, 32, 3)
    assert abs(x.reshape(-1, 3).mean(0) - [125.3, 122.9, 113.9]).max() < 8


# --- JPEG decoding: grayscale, CMYK, corrupt -----------------------------------------------

def test_grayscale_and_cmyk_jpegs_become_rgb():
    img = rgb_images(1, 16, seed=2)[0]
    img[:] = img[:1, :1]                       # one flat colour
    gray = data.decode(jpeg_bytes(img, "L"))
    cmyk = data.decode(jpeg_bytes(img, "CMYK"))
    assert gray.shape == cmyk.shape == (16, 16, 3) and gray.dtype == np.uint8
    assert (gray[..., 0] == gray[..., 1]).all()
    lum = np.asarray(Image.fromarray(img).convert("L"), float).mean()
    assert abs(gray.mean() - lum) < 3
    assert np.abs(cmyk.astype(int).mean((0, 1)) - img[0, 0]).max() < 12


def test_corrupt_jpeg_stops_with_the_file_name(tmp_path):
    p = tmp_path / "bad.JPEG"
    p.write_bytes(truncated_jpeg(rgb_images(1, 64)[0]))
    with pytest.raises(DataError, match=r"bad.JPEG: cannot decode image"):
        data.decode(str(p))
    q = tmp_path / "text.JPEG"
    q.write_text("hello")
    with pytest.raises(DataError, match="text.JPEG: cannot decode"):
        data.decode(str(q))


def test_corrupt_image_in_container_is_named(tmp_path):
    path = make_jpeg_container(tmp_path / "c.npz", rgb_images(3), [0, 1, 2], CIFAR_NAMES[:3])
    d = dict(np.load(path))
    d["data"] = d["data"].copy()
    s, e = d["offsets"][1], d["offsets"][2]
    d["data"][s:e] = 0                          # wipe image 1
    from minialexnet.data.images import decode_container
    with pytest.raises(DataError, match=r"c.npz\[1\] \(img1.jpg\): cannot decode"):
        decode_container(d, src=str(path), progress_bar=False)


# --- class folders ------------------------------------------------------------------------

def test_image_folder_rescale_crop_names_and_modes(tmp_path):
    root = make_class_folders(tmp_path, "train", per_class=2, size=(40, 30))
    # a grayscale and a CMYK file in the second class
    img = rgb_images(1, 30, seed=5)[0]
    (tmp_path / "train" / "n02102040" / "gray.JPEG").write_bytes(jpeg_bytes(img, "L"))
    (tmp_path / "train" / "n02102040" / "cmyk.jpg").write_bytes(jpeg_bytes(img, "CMYK"))
    (tmp_path / "train" / "n02102040" / "notes.txt").write_text("ignored")
    (tmp_path / "imagenet_synsets.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02102040 English springer, English springer spaniel\n")
    ds = load_dataset("imagenet-folder", str(root), size=24)
    assert len(ds) == 6 and ds.y.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.class_names == ["tench", "English springer"]
    assert ds.extra["imagenet_index"] == [0, 1]
    batch = ds.x[np.arange(6)]
    assert batch.shape == (6, 24, 24, 3) and batch.dtype == np.uint8
    assert ds.x[0].shape == (24, 24, 3)
    assert ds.image_shape == (24, 24, 3)


def test_fit_square_is_shorter_side_then_central_crop():
    w, h = 60, 30
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :10] = 255                           # left sixth white: cropped away
    out = np.asarray(data.fit_square(Image.fromarray(img), 16))
    assert out.shape == (16, 16, 3) and out.max() == 0


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset("imagenet-folder", str(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset("imagenet-folder", str(tmp_path))
    make_class_folders(tmp_path, "train", classes=("a",), per_class=1)
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"train/b: empty class folder"):
        load_dataset("imagenet-folder", str(tmp_path))
    (tmp_path / "train" / "b" / "x.jpg").write_bytes(truncated_jpeg(rgb_images(1, 64)[0]))
    ds = load_dataset("imagenet-folder", str(tmp_path), size=16)
    assert ds.class_names == ["a", "b"]        # no synset file: folder names
    with pytest.raises(DataError, match=r"x.jpg: cannot decode image"):
        ds.x[np.arange(2)]


# --- Imagenette ---------------------------------------------------------------------------

def test_imagenette_packed_shards(tmp_path):
    d = tmp_path / "imagenette"
    d.mkdir()
    names = ["tench", "English springer"]
    extra = dict(wnids=np.array(["n01440764", "n02102040"]), imagenet_index=np.array([0, 217]))
    make_jpeg_container(d / "imagenette224_train_0.npz", rgb_images(3, 24, 1), [0, 1, 0], names, extra=extra)
    make_jpeg_container(d / "imagenette224_train_1.npz", rgb_images(2, 24, 2), [1, 1], names, "L", extra)
    make_jpeg_container(d / "imagenette224_val.npz", rgb_images(2, 24, 3), [0, 1], names, extra=extra)
    tr = load_dataset("imagenette", str(tmp_path), progress_bar=False)
    assert tr.x.shape == (5, 24, 24, 3) and tr.y.tolist() == [0, 1, 0, 1, 1]
    assert tr.class_names == names and tr.extra["imagenet_index"] == [0, 217]
    va = load_dataset("imagenette", str(tmp_path), split="test", size=16)
    assert va.split == "val" and va.x.shape == (2, 16, 16, 3)
    assert len(load_dataset("imagenette", str(d))) == 5      # the npz folder itself works too
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Imagenette found"):
        load_dataset("imagenette", str(tmp_path / "empty"))


def test_imagenette_folder_layout(tmp_path):
    make_class_folders(tmp_path / "imagenette2-320", "val", per_class=2)
    ds = load_dataset("imagenette", str(tmp_path), split="val", size=20)
    assert ds.name == "imagenette" and ds.x[np.arange(4)].shape == (4, 20, 20, 3)


@pytest.mark.skipif(not os.path.exists(f"{SHARED}/imagenet_synsets.txt"), reason="no shared data")
def test_shared_synsets():
    wnids, words = data.read_synsets(f"{SHARED}/imagenet_synsets.txt")
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and words[0].startswith("tench")
    assert wnids == sorted(wnids)


# --- Loader -------------------------------------------------------------------------------

def _tiny(n=50):
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return x, np.arange(n)


def test_loader_epoch_covers_everything_once_shuffled_and_seeded():
    x, y = _tiny(50)
    ld = Loader(x, y, 8, seed=1, drop_last=False)
    batches = list(ld)
    assert len(batches) == len(ld) == 7
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and xb.shape == (8, 3, 4, 4)
    assert (xb[:, 0, 0, 0] == yb).all()        # images stay with their labels
    ys = np.concatenate([b[1] for b in batches])
    assert sorted(ys.tolist()) == list(range(50)) and ys.tolist() != list(range(50))
    assert ld.epoch == 1 and ld.position == 0
    ys2 = np.concatenate([b[1] for b in Loader(x, y, 8, seed=1)])
    assert np.array_equal(ys, ys2)
    ys_next = np.concatenate([b[1] for b in ld])   # the next epoch: a new order
    assert not np.array_equal(ys, ys_next)
    assert len(Loader(x, y, 8, drop_last=True)) == 6
    assert all(len(b[1]) == 8 for b in Loader(x, y, 8, drop_last=True))


def test_loader_resume_is_bit_identical_with_augmentation():
    ds = load_dataset("synthetic", n=120, size=32)
    tf = data.TrainTransform(28, data.mean_image(ds.x), pca=data.pca_fit(ds.x))
    full = Loader(ds.x, ds.y, 16, tf, seed=7, drop_last=True, prefetch=3, workers=2)
    ref = [b for _ in range(2) for b in full]          # two epochs
    ld = Loader(ds.x, ds.y, 16, tf, seed=7, drop_last=True, prefetch=3, workers=2)
    got = []
    for i, b in enumerate(ld):
        got.append(b)
        if i == 3:
            break                                     # stop mid-epoch, workers ahead
    state = ld.state_dict()
    assert state == {"seed": 7, "epoch": 0, "position": 4}
    import json
    state = json.loads(json.dumps(state))
    ld2 = Loader(ds.x, ds.y, 16, tf, seed=0, drop_last=True)
    ld2.load_state_dict(state)
    got += list(ld2)                                  # the rest of epoch 0
    got += list(ld2)                                  # epoch 1
    assert len(got) == len(ref)
    for (a, ya), (b, yb) in zip(ref, got):
        assert np.array_equal(a, b) and np.array_equal(ya, yb)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("stop_after", [1, 5, 6, 7])    # 6 batches an epoch: mid, last, next
def test_a_break_out_of_the_loader_loses_and_repeats_no_batch(stop_after, workers):
    """Issue 14: a ``break`` after the epoch's last batch used to leave the loader at
    (epoch 0, position 6), so the next ``for`` gave an empty epoch.  After any break
    the next ``for`` goes on with exactly the batch an unbroken run would give."""
    x, y = _tiny(50)
    ref = Loader(x, y, 8, seed=1, drop_last=True)
    straight = [yb for _ in range(3) for _, yb in ref]          # epochs 0, 1 and 2
    ld = Loader(x, y, 8, seed=1, drop_last=True, workers=workers, prefetch=3)
    got = []
    while len(got) < stop_after:            # one ``for`` is (the rest of) one epoch
        for _, yb in ld:
            got.append(yb)
            if len(got) == stop_after:
                break
    assert ld.state_dict() == {"seed": 1, "epoch": stop_after // 6, "position": stop_after % 6}
    while len(got) < len(straight):         # fresh ``for`` loops go on from there
        more = [yb for _, yb in ld]
        assert more, "a fresh for gave an empty epoch"
        got += more
    assert len(got) == len(straight)
    for a, b in zip(straight, got):
        np.testing.assert_array_equal(a, b)
    assert (ld.epoch, ld.position) == (3, 0)


def test_loader_prefetches_in_background_and_times_the_wait():
    x, y = _tiny(40)

    def slow(xb, rng):
        time.sleep(0.05)
        return xb.transpose(0, 3, 1, 2).astype(np.float32)

    ld = Loader(x, y, 10, slow, prefetch=4, shuffle=False)
    it = iter(ld)
    next(it)
    time.sleep(0.3)                 # "training": the worker fills the queue meanwhile
    w = ld.wait_time
    for _ in it:
        pass
    assert ld.wait_time - w < 0.04  # the rest were ready
    assert ld.images == 40


def test_loader_propagates_worker_errors_and_rejects_bad_args():
    x, y = _tiny(10)

    def boom(xb, rng):
        raise DataError("bad.jpg: cannot decode image")
    with pytest.raises(DataError, match="bad.jpg"):
        list(Loader(x, y, 5, boom))
    with pytest.raises(ValueError, match="labels"):
        Loader(x, y[:5], 5)
    with pytest.raises(ValueError, match="no batch"):
        Loader(x, y, 20, drop_last=True)


def test_loader_over_lazy_files(tmp_path):
    make_class_folders(tmp_path, "train", per_class=4)
    ds = load_dataset("imagenet-folder", str(tmp_path), size=16)
    ld = Loader(ds.x, ds.y, 3, data.EvalTransform(12), drop_last=True)
    xb, yb = next(iter(ld))
    assert xb.shape == (3, 3, 12, 12) and xb.dtype == np.float32


def test_main_reports_one_line_errors(tmp_path, capsys):
    from minialexnet.data.__main__ import main
    assert main(["info", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no CIFAR-10 found" in err and "\n" not in err
    assert main(["info", "synthetic", "--n", "100"]) == 0
