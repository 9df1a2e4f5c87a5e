"""What the chapters share: fast or full mode, real data with a visible fallback,
timing, and the closing "paper vs measured" table.

Every chapter runs in two modes:
- full (the default): the experiment at the scale stated in the chapter; its outputs
  are committed so that readers see real curves without running anything;
- fast (``MINIALEXNET_FAST=1``): tiny subsets and step counts, so that CI can run
  the chapter top to bottom in about a minute and check that the code and plots work.
"""

import os
import pathlib
import time

from . import data

__all__ = ["FAST", "fast_mode", "pick", "chapter_data_dir", "chapter_data", "Timer",
           "results_table", "collect_results"]


def fast_mode():
    return os.environ.get("MINIALEXNET_FAST", "").strip() not in ("", "0", "false", "no")


FAST = fast_mode()


def pick(full, fast):
    """``full`` normally, ``fast`` in fast mode: ``epochs = pick(30, 1)``."""
    return fast if fast_mode() else full


def chapter_data_dir():
    """$MINIALEXNET_DATA if set, else the repository's ``data/`` folder (not
    ``data.data_dir``'s ./data: a chapter runs with chapters/ as its folder)."""
    return os.environ.get("MINIALEXNET_DATA") or str(pathlib.Path(__file__).resolve().parents[1] / "data")


def chapter_data(name="cifar10", n_train=None, n_val=None, size=None, seed=0):
    """(train, val) Datasets of ``name`` from the data directory, or, when that data is
    not there, of the built-in synthetic dataset, saying so loudly.  The returned
    datasets' ``name`` tells which one was used."""
    root = chapter_data_dir()
    try:
        train = data.load_dataset(name, root, "train", size=size, n=n_train, seed=seed)
        val = data.load_dataset(name, root, "test", size=size, n=n_val, seed=seed)
        print(f"Using {name} from {root}: {len(train)} training and {len(val)} held-out images.")
    except data.DataError as e:
        print(f"NOTICE: {name} is not available ({e}).\n"
              f"NOTICE: falling back to the built-in synthetic dataset, so the numbers below "
              f"are NOT comparable with the paper's. Set MINIALEXNET_DATA to a folder holding "
              f"the data (see data/README.md) to use {name}.")
        side = size or (32 if name == "cifar10" else 64)
        train = data.load_dataset("synthetic", split="train", size=side, n=n_train or 2000, seed=seed)
        val = data.load_dataset("synthetic", split="test", size=side, n=n_val or 500, seed=seed)
    return train, val


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False

    def __str__(self):
        s = self.seconds
        return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def results_table(rows):
    """The chapter's closing table as Markdown, displayed in a notebook (and returned).

    rows: dicts with keys "claim", "paper", "measured", "data", "time", "why".
    """
    text = _markdown_table([[r[k] for k in ROW_KEYS] for r in rows])
    try:
        from IPython.display import Markdown, display
        display(Markdown(text))
    except ImportError:
        print(text)
    return text


def collect_results(folder):
    """README's results table: every chapter's "paper vs measured" rows, as Markdown.

    Reads ``folder/NN_name.json`` (lists of row dicts written by the chapters' full-mode
    runs), in chapter order:  python -c "from minialexnet.notebook import
    collect_results; print(collect_results('chapters/results'))"
    """
    import json
    cells = [[path.stem] + [r.get(k, "") for k in ROW_KEYS]
             for path in sorted(pathlib.Path(folder).glob("[0-9][0-9]_*.json"))
             for r in json.loads(path.read_text())]
    return _markdown_table(cells, first="chapter")


ROW_KEYS = ("claim", "paper", "measured", "data", "time", "why")
_HEADS = ("claim", "paper", "measured here", "data", "time", "why they differ")


def _markdown_table(cells, first=None):
    """The paper-vs-measured table as Markdown; ``first``: an extra leading column."""
    heads = ((first,) if first else ()) + _HEADS
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |"
              for row in cells]
    return "\n".join(lines) + "\n"
