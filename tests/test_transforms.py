"""Pre-processing and augmentation (paper sections 2 and 4.1)."""

import numpy as np
import pytest

from minialexnet import data
from minialexnet.data import transforms as T


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))


def _coords(n, size):
    """Images whose pixel (r, c) holds (r, c, image index): crops can be read back."""
    x = np.zeros((n, size, size, 3), np.uint8)
    x[..., 0] = np.arange(size)[:, None]
    x[..., 1] = np.arange(size)[None, :]
    x[..., 2] = np.arange(n)[:, None, None]
    return x


def test_crop_batch_matches_slicing_with_flips_and_mean():
    x = _coords(5, 12)
    mean = np.random.default_rng(0).random((12, 12, 3)).astype(np.float32)
    ys, xs = np.array([0, 1, 2, 3, 4]), np.array([4, 3, 2, 1, 0])
    flips = np.array([False, True, False, True, True])
    out = T.crop_batch(x, 8, ys, xs, flips, mean=mean)
    assert out.dtype == np.float32 and out.shape == (5, 8, 8, 3)
    for i in range(5):
        want = x[i, ys[i]:ys[i] + 8, xs[i]:xs[i] + 8] - mean[ys[i]:ys[i] + 8, xs[i]:xs[i] + 8]
        want = want[:, ::-1] if flips[i] else want
        assert np.allclose(out[i], want)


def test_random_crop_with_padding_is_zero_outside():
    x = _coords(3, 8) + 1        # no zero pixels inside the image
    ys, xs = np.array([0, 8, 4]), np.array([0, 8, 4])
    out = T.crop_batch(x, 8, ys, xs, pad=4)
    assert (out[0, :4] == 0).all() and (out[0, :, :4] == 0).all() and (out[0, 4:, 4:] > 0).all()
    assert (out[1, 4:] == 0).all() and (out[1, :4, :4] > 0).all()
    assert np.array_equal(out[2], x[2])       # offset 4 of pad 4 = the image itself


def test_random_crop_params_range_and_determinism():
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    ys, xs, fl = T.random_crop_params(2000, (256, 256), 224, r1)
    assert ys.min() == 0 and ys.max() == 32 and xs.max() == 32
    assert 0.45 < fl.mean() < 0.55
    ys2, xs2, fl2 = T.random_crop_params(2000, (256, 256), 224, r2)
    assert np.array_equal(ys, ys2) and np.array_equal(fl, fl2)
    with pytest.raises(ValueError, match="does not fit"):
        T.random_crop_params(1, (32, 32), 40, r1)


def test_train_and_eval_transform_shapes():
    x = _coords(4, 32)
    rng = np.random.default_rng(0)
    out = T.TrainTransform(28)(x, rng)
    assert out.shape == (4, 3, 28, 28) and out.dtype == np.float32 and out.flags.c_contiguous
    ev = T.EvalTransform(28)(x)
    assert ev.shape == (4, 3, 28, 28)
    assert ev[0, 0, 0, 0] == 2 and ev[0, 1, 0, 0] == 2        # centre crop starts at (2, 2)
    assert T.EvalTransform()(x).shape == (4, 3, 32, 32)


def test_mean_image_is_per_pixel_and_cached(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    f = str(tmp_path / "m.npy")
    m = T.mean_image(x, f, chunk=7)
    assert m.dtype == np.float32 and m.shape == (6, 6, 3)
    assert np.allclose(m, x.mean(0), atol=1e-4)
    assert np.array_equal(T.mean_image(np.zeros_like(x), f), m)     # read back, not recomputed
    ds = data.load_dataset("synthetic", n=20)
    assert data.stats_file(ds, "mean").endswith(f"{ds.key}-{data.content_key(ds)}-mean.npy")


def test_pca_fit_recovers_a_known_covariance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lam = np.array([0.04, 0.01, 0.0025])                  # [0,1] units
    cov = q @ np.diag(lam) @ q.T
    pix = rng.multivariate_normal([0.5, 0.5, 0.5], cov, 200 * 64)
    x = np.clip(np.round(pix * 255), 0, 255).astype(np.uint8).reshape(200, 8, 8, 3)
    vals, vecs = T.pca_fit(x, pixels_per_image=64)
    assert np.allclose(vals, lam, rtol=0.08, atol=1e-4)
    for i in range(3):                                      # same axes (up to sign)
        assert abs(vecs[:, i] @ q[:, np.argsort(lam)[::-1][i]]) > 0.99
    assert np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-5)


def test_pca_noise_statistics():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lam = np.array([0.2, 0.02, 0.005])
    d = T.pca_noise(200_000, lam, q, np.random.default_rng(2))
    assert d.shape == (200_000, 3) and d.dtype == np.float32
    want = q @ np.diag(0.01 * lam ** 2) @ q.T                # a_i ~ N(0, 0.1): var 0.01
    assert np.abs(d.mean(0)).max() < 3 * np.sqrt(want.diagonal().max() / 200_000)
    assert np.allclose(np.cov(d, rowvar=False), want, atol=0.02 * want.max())


def test_pca_in_train_transform_shifts_each_image_uniformly():
    x = np.full((500, 4, 4, 3), 128, np.uint8)
    q = np.eye(3)
    tf = T.TrainTransform(4, flip=False, pca=(np.array([0.1, 0.0, 0.0]), q))
    out = tf(x, np.random.default_rng(0))
    shift = out - 128
    assert np.allclose(shift, shift[:, :, :1, :1], atol=1e-4)   # one colour per image
    assert abs(shift[:, 0, 0, 0].std() - 255 * 0.1 * 0.1) < 0.3  # 0..255 units
    assert np.allclose(shift[:, 1:], 0)


def test_ten_crop_corners_centre_and_flips():
    x = _coords(2, 10)
    crops = T.ten_crop(x, 6)
    assert crops.shape == (10, 2, 3, 6, 6)
    tops = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    for j, (t, l) in enumerate(tops):
        assert crops[j, 1, 0, 0, 0] == t and crops[j, 1, 1, 0, 0] == l
        assert np.array_equal(crops[j + 5], crops[j][..., ::-1])   # mirrored twin
    assert (crops[:, 1, 2] == 1).all()


def test_ten_crop_predict_averages_softmax():
    x = _coords(3, 8)
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        # logits favour class 0 for the left-hand crops, class 1 for the right-hand ones
        left = batch[:, 1, 0, 0] == 0
        return np.stack([left * 5.0, ~left * 5.0, np.zeros(len(batch))], 1)
    p = T.ten_crop_predict(predict, x, 6)
    assert len(calls) == 10 and calls[0] == (3, 3, 6, 6)
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1)
    assert p[0, 0] > p[0, 2] and p[0, 1] > p[0, 2]
    # probabilities given directly are averaged as they are
    p2 = T.ten_crop_predict(lambda b: np.full((len(b), 2), 0.5), x, 6, logits=False)
    assert np.allclose(p2, 0.5)
