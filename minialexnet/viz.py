"""Pictures: training curves, filter grids (paper Figure 3), predictions and nearest
neighbours (Figure 4).  Host-side only; matplotlib is imported when a plot is made.
"""

from .backend import np, to_numpy
from .files import atomic_savefig

__all__ = ["plot_history", "plot_health", "filter_grid", "show_filters", "colourfulness",
           "show_predictions", "show_neighbours", "nearest_neighbours", "plot_confusion"]


def _plt():
    # Imported on first use: the library works without matplotlib until a plot is asked
    # for.  With no display matplotlib picks its file-only Agg backend by itself.
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path=None, title=None):
    """Training loss, training error and validation top-1/top-5 error per epoch."""
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="training loss")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.set_title("loss")
    a.legend()
    b.plot(ep, [r["train_error"] for r in history], "o-", label="training error (augmented)")
    b.plot(ep, [r["val_top1"] for r in history], "s-", label="validation top-1")
    b.plot(ep, [r["val_top5"] for r in history], "^-", label="validation top-5")
    b.set_xlabel("epoch")
    b.set_ylabel("error")
    b.set_ylim(0, 1)
    b.set_title("error")
    b.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)   # a full disk never leaves a broken PNG
        plt.close(fig)
    return fig


def _health_series(records, stat):
    """{layer: (steps, values)} of one health statistic, in network order."""
    series = {}
    for r in records:
        for layer, stats in r["layers"].items():
            if stat in stats:
                steps, values = series.setdefault(layer, ([], []))
                steps.append(r["step"])
                values.append(stats[stat])
    return series


def plot_health(records, path=None, title=None):
    """The training-health records of ``health.HealthMonitor`` in one figure: per
    layer, the update-to-weight ratio ||dW|| / ||W|| (log scale; a layer far above the
    others learns too fast for the shared learning rate), the std of its output
    (log scale; shrinking with depth = vanishing signal), and the fraction of dead
    ReLUs or saturated tanh units."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [("update_ratio", "update / weight  ||dW|| / ||W||", True),
              ("act_std", "output std (conv/fc layers)", True),
              (None, "dead ReLUs / saturated tanh units", False)]
    for ax, (stat, label, log) in zip(axes, panels):
        if stat is None:
            series = {**{f"{k} dead": v for k, v in _health_series(records, "dead").items()},
                      **{f"{k} saturated": v for k, v in _health_series(records, "saturated").items()}}
        else:
            series = _health_series(records, stat)
        for layer, (steps, values) in series.items():
            ax.plot(steps, values, ".-", label=layer)
        if log and series:
            ax.set_yscale("log")
        if stat is None:
            ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        if series:
            ax.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)
        plt.close(fig)
    return fig


def filter_grid(W, columns=None, pad=1):
    """Tile conv filters W (K, 3, h, w) into one RGB image (rows x cols), each filter
    scaled to [0, 1] on its own, as the paper's Figure 3 shows conv1."""
    W = np.asarray(to_numpy(W), np.float64)
    k, c, h, w = W.shape
    columns = columns or int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / columns))
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, 3))
    for i in range(k):
        f = W[i].transpose(1, 2, 0)
        if c == 1:
            f = np.repeat(f, 3, axis=2)
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        r, q = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = f
    return grid


def colourfulness(W):
    """How colour-specific each filter is: the mean over pixels of the spread of its
    (R, G, B) weights, relative to the filter's overall spread.  0 for a filter whose
    three channels are equal (colour-agnostic, a grey edge detector)."""
    W = np.asarray(to_numpy(W), np.float64)
    per_pixel = W.std(axis=1).mean(axis=(1, 2))       # spread across RGB at each pixel
    overall = W.std(axis=(1, 2, 3)) + 1e-12
    return per_pixel / overall


def show_filters(groups, path=None, title="conv1 filters"):
    """Figure 3: one panel per group, e.g. {"tower 0": W0, "tower 1": W1}."""
    plt = _plt()
    grids = [filter_grid(W, columns=8 if len(W) >= 16 else None) for W in groups.values()]
    # the figure as tall as its widest panel's grid needs (plus the titles): a square
    # figure leaves a 2 x 8 grid floating far below its title
    aspect = max(g.shape[0] / g.shape[1] for g in grids)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 5 * aspect + 1.2))
    axes = np.atleast_1d(axes)
    for ax, (name, W), grid in zip(axes, groups.items(), grids):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(f"{name}: {len(W)} filters, colourfulness {colourfulness(W).mean():.2f}")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)
    return fig


def show_predictions(images, probs, class_names, labels=None, k=5, columns=4, path=None):
    """Figure 4 (left): images with their top-k labels as bars; the true label in red."""
    plt = _plt()
    probs = np.asarray(to_numpy(probs))
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows * 2, columns, figsize=(3 * columns, 4.6 * rows),
                             gridspec_kw={"height_ratios": [3, 1.6] * rows})
    axes = np.asarray(axes).reshape(rows * 2, columns)
    for i in range(rows * columns):
        r, c = divmod(i, columns)
        ax_img, ax_bar = axes[2 * r, c], axes[2 * r + 1, c]
        ax_img.axis("off")
        if i >= n:
            ax_bar.axis("off")
            continue
        ax_img.imshow(images[i])
        top = np.argsort(-probs[i])[:k]
        colours = ["tab:red" if labels is not None and t == labels[i] else "tab:blue" for t in top]
        ax_bar.barh(range(k)[::-1], probs[i][top], color=colours)
        ax_bar.set_yticks(range(k)[::-1])
        ax_bar.set_yticklabels([class_names[t][:18] for t in top], fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=7)
        if labels is not None:
            ax_img.set_title(class_names[labels[i]][:24], fontsize=9)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)
    return fig


def nearest_neighbours(query_features, bank_features, k=6):
    """Indices (Q, k) of the bank vectors closest in Euclidean distance to each query
    (Figure 4 right: neighbours in the 4096-d fc7 feature space)."""
    q = np.asarray(to_numpy(query_features), np.float64)
    b = np.asarray(to_numpy(bank_features), np.float64)
    d2 = (q * q).sum(1)[:, None] - 2 * q @ b.T + (b * b).sum(1)[None, :]
    return np.argsort(d2, axis=1)[:, :k]


def show_neighbours(query_images, bank_images, neighbours, path=None, title=None):
    """Each row: a query image, then its nearest training images."""
    plt = _plt()
    q, k = neighbours.shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.6 * (k + 1), 1.7 * q))
    axes = np.asarray(axes).reshape(q, k + 1)
    for i in range(q):
        axes[i, 0].imshow(query_images[i])
        axes[i, 0].set_title("query" if i == 0 else "", fontsize=9)
        for j in range(k):
            axes[i, j + 1].imshow(bank_images[neighbours[i, j]])
            if i == 0:
                axes[i, j + 1].set_title(f"#{j + 1}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)
    return fig


def plot_confusion(matrix, class_names, path=None, title=None):
    """A confusion matrix (``metrics.confusion_matrix``: rows true class, columns
    predicted) as a picture: each row normalised to the share of that class's images
    (so a class's recall is on the diagonal whatever its size), the percentage
    written in every cell."""
    m = np.asarray(to_numpy(matrix), np.float64)
    k = len(class_names)
    if m.shape != (k, k):
        raise ValueError(f"plot_confusion: a ({k}, {k}) matrix for {k} class names, "
                         f"got {m.shape}")
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * k, 0.6 + 0.55 * k))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    names = [str(n)[:12] for n in class_names]
    ax.set_xticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (% of each true class)", fontsize=10)
    fig.tight_layout()
    if path:
        atomic_savefig(fig, path, dpi=100)
        plt.close(fig)
    return fig
