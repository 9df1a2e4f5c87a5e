"""Execute every chapter notebook top to bottom in fast mode (MINIALEXNET_FAST=1).

Fast mode uses tiny subsets and step counts: it proves the code paths work and the
plots render; the committed outputs come from a full-mode run.  The data directory
is pointed at an empty folder so that the default test run never depends on the
real datasets: each chapter must fall back to the built-in dataset with a notice.
"""

import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
FAST_BUDGET_S = 120  # per chapter, on 2 cores


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_FAST", "1")
    monkeypatch.setenv("MINIALEXNET_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=FAST_BUDGET_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    images = sum("image/png" in o.get("data", {})
                 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images > 0, f"{path.name} rendered no plot in fast mode"
    assert elapsed < FAST_BUDGET_S, f"{path.name} took {elapsed:.0f} s in fast mode"
