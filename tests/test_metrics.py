"""Top-1 / top-5 error (paper section 2)."""

import numpy as np
import pytest

from minialexnet.metrics import ErrorMeter, top1_error, top5_error, topk_correct, topk_error


def test_simple_cases():
    s = np.array([[0.1, 0.7, 0.2],
                  [0.5, 0.3, 0.2],
                  [0.2, 0.3, 0.5]])
    y = np.array([1, 2, 2])
    assert topk_correct(s, y, 1).tolist() == [True, False, True]
    assert top1_error(s, y) == pytest.approx(1 / 3)
    assert topk_error(s, y, 2) == pytest.approx(1 / 3)   # row 1: label 2 is third
    assert topk_error(s, y, 3) == 0.0


def test_matches_argsort_definition_on_random_scores():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((500, 20))
    y = rng.integers(0, 20, 500)
    top5 = np.argsort(-s, axis=1)[:, :5]
    want = 1 - (top5 == y[:, None]).any(1).mean()
    assert top5_error(s, y) == pytest.approx(want)
    assert top1_error(s, y) == pytest.approx(1 - (s.argmax(1) == y).mean())


def test_ties_and_nans_count_against_the_model():
    s = np.zeros((4, 10))                  # an untrained, constant net
    assert top1_error(s, np.arange(4)) == 1.0 and top5_error(s, np.arange(4)) == 1.0
    s = np.array([[1.0, np.nan, 0.0]])
    assert top1_error(s, [0]) == 1.0


def test_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        top1_error(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        top1_error(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="no examples"):
        top1_error(np.zeros((0, 3)), np.zeros(0, int))


def test_meter_accumulates_over_batches():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((100, 10)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    m = ErrorMeter()
    for i in range(0, 100, 32):
        m.update(s[i:i + 32], y[i:i + 32])
    e = m.errors()
    assert m.count == 100
    assert e[1] == pytest.approx(top1_error(s, y)) and e[5] == pytest.approx(top5_error(s, y))


def test_error_se_is_the_binomial_standard_error():
    from minialexnet.metrics import error_se
    assert error_se(0.4, 2000) == pytest.approx((0.4 * 0.6 / 2000) ** 0.5, rel=1e-12)   # 1.1 points
    assert error_se(0.2, 10_000) == pytest.approx(0.004, rel=1e-12)
    assert error_se(0.0, 100) == 0.0 and error_se(1.0, 100) == 0.0
    assert error_se(-0.1, 100) == 0.0 and error_se(1.3, 100) == 0.0       # clipped to [0, 1]
