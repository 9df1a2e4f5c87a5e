"""Top-1 and top-5 error (paper section 2): "the top-5 error rate is the fraction of
test images for which the correct label is not among the five labels considered most
probable by the model".

Works on NumPy arrays (and on CuPy arrays, which are copied to the host first).
Scores may be logits or probabilities: softmax does not change the ranking.

Ties are counted against the model: the true class is "among the top k" only if fewer
than k *other* classes score at least as high.  So an untrained net whose scores are all
equal gets error 1.0 (for k < K), never a flattering 0.  A row with a NaN score counts
as an error.
"""

from .backend import np, to_numpy

__all__ = ["topk_correct", "topk_error", "top1_error", "top5_error", "error_se",
           "ErrorMeter", "confusion_matrix"]


def _host(a):
    # Through the backend even for ndarrays: a device array may subclass ndarray
    # (tests/fake_devices.py); on NumPy this is np.asarray, no copy.
    return np.asarray(to_numpy(a))


def topk_correct(scores, labels, k=1):
    """Per-example booleans (N,): is labels[i] among the k best of scores[i]?

    scores: (N, K) float logits or probabilities; labels: (N,) ints in 0..K-1.
    """
    s, y = _host(scores), _host(labels).astype(np.int64).ravel()
    if s.ndim != 2 or len(s) != len(y):
        raise ValueError(f"topk: scores must be (N, K) and labels (N,), got {s.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"topk: labels must lie in 0..{s.shape[1] - 1}, got {y.min()}..{y.max()}")
    true = s[np.arange(len(y)), y][:, None]
    # Classes scoring >= the true class, minus the true class itself.
    rank = (s >= true).sum(axis=1) - 1
    return (rank < k) & ~np.isnan(s).any(axis=1)


def topk_error(scores, labels, k=1):
    """Fraction (float in [0, 1]) of examples whose label is not in the top k."""
    c = topk_correct(scores, labels, k)
    if c.size == 0:
        raise ValueError("topk_error: no examples")
    return 1.0 - float(c.mean())


def top1_error(scores, labels):
    return topk_error(scores, labels, 1)


def top5_error(scores, labels):
    return topk_error(scores, labels, 5)


def error_se(p, n):
    """Standard error sqrt(p (1 - p) / n) of an error rate ``p`` measured on ``n``
    images (each image right or wrong): how far two measurements of one net may differ
    by the choice of images alone.  ``p`` is clipped to [0, 1]."""
    p = min(max(float(p), 0.0), 1.0)
    return (p * (1.0 - p) / n) ** 0.5


class ErrorMeter:
    """Accumulate top-k errors over batches: ``m.update(scores, labels)``, then
    ``m.errors()`` -> {1: top-1 error, 5: top-5 error}; ``m.count`` examples seen."""

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self):
        self.count = 0
        self.correct = {k: 0 for k in self.ks}

    def update(self, scores, labels):
        for k in self.ks:
            self.correct[k] += int(topk_correct(scores, labels, k).sum())
        self.count += len(_host(labels).ravel())

    def errors(self):
        if self.count == 0:
            raise ValueError("ErrorMeter: no examples yet")
        return {k: 1.0 - self.correct[k] / self.count for k in self.ks}


def confusion_matrix(labels, predicted, num_classes):
    """Counts (K, K) int64: row = true class, column = predicted class, so the
    diagonal holds the correct answers and row i sums to the images of class i.

    labels, predicted: (N,) ints in 0..K-1 (predicted: e.g. ``scores.argmax(1)``)."""
    y, p = _host(labels).astype(np.int64).ravel(), _host(predicted).astype(np.int64).ravel()
    k = int(num_classes)
    if len(y) != len(p):
        raise ValueError(f"confusion_matrix: {len(y)} labels but {len(p)} predictions")
    for name, a in (("labels", y), ("predicted", p)):
        if len(a) and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"confusion_matrix: {name} must lie in 0..{k - 1}, "
                             f"got {a.min()}..{a.max()}")
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)
