"""The README's Python examples run as printed (on tiny data)."""

import contextlib
import io
import os
import re

from minialexnet import backend

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _block_after(marker):
    """The first ```python block after the line containing ``marker``."""
    text = open(README, encoding="utf-8").read()
    start = text.index(marker)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_figure_1_example_runs(monkeypatch):
    code = _block_after("Figure 1 (ReLU against tanh")
    assert "train.Trainer(" in code and 'activation="tanh"' not in code   # both, by the loop
    # 128 images, one epoch, offline: one step of each net.
    for k, v in {"FIG1_DATA": "synthetic", "FIG1_N": "128", "FIG1_EPOCHS": "1"}.items():
        monkeypatch.setenv(k, v)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md (Figure 1)", "exec"), {})
    finally:
        backend.use("numpy")
    lines = out.getvalue().splitlines()
    assert [l.split()[0] for l in lines] == ["relu", "tanh"], lines
    assert all("reaches 25 % training error at epoch" in l for l in lines), lines
