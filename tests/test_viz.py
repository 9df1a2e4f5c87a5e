"""The pictures' numbers: what a plot shows is what it was given."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from minialexnet import metrics, viz   # noqa: E402


def test_confusion_matrix_counts_true_rows_predicted_columns():
    m = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m.sum() == 6 and np.trace(m) == 4
    with pytest.raises(ValueError, match="must lie in 0..2"):
        metrics.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        metrics.confusion_matrix([0, 1], [0], 3)


def test_plot_confusion_shows_row_shares_and_names():
    import matplotlib.pyplot as plt
    m = np.array([[8, 2, 0], [0, 5, 5], [1, 0, 0]])
    names = ["cat", "dog", "ship"]
    fig = viz.plot_confusion(m, names)
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, m / m.sum(1, keepdims=True))
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["80", "20", "0", "0", "50", "50", "100", "0", "0"])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"a \(2, 2\) matrix for 2 class names"):
        viz.plot_confusion(m, names[:2])


def test_plot_confusion_empty_row_is_zero_not_nan(tmp_path):
    import matplotlib.pyplot as plt
    fig = viz.plot_confusion(np.array([[3, 1], [0, 0]]), ["a", "b"], path=tmp_path / "c.png")
    assert np.isfinite(np.asarray(fig.axes[0].images[0].get_array())).all()
    assert (tmp_path / "c.png").stat().st_size > 0
    plt.close(fig)


def test_show_filters_figure_is_as_tall_as_its_grids():
    # 16 filters in a 2 x 8 grid: a wide, short figure; 48 in 6 x 8: a taller one
    # (a fixed square figure left the 2 x 8 grid far below its title)
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    short = viz.show_filters({"a": rng.normal(size=(16, 3, 5, 5))})
    tall = viz.show_filters({"a": rng.normal(size=(48, 3, 5, 5))})
    w, h = short.get_size_inches()
    assert h < 0.6 * w
    assert tall.get_size_inches()[1] > 1.5 * h
    plt.close("all")
