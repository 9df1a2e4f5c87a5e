"""The chapters' shared helpers: fast mode, data fallback, results collection."""

import json

from minialexnet import notebook


def test_pick_and_fast_mode(monkeypatch):
    monkeypatch.setenv("MINIALEXNET_FAST", "1")
    assert notebook.fast_mode() and notebook.pick(100, 2) == 2
    monkeypatch.setenv("MINIALEXNET_FAST", "0")
    assert not notebook.fast_mode() and notebook.pick(100, 2) == 100


def test_chapter_data_falls_back_to_synthetic_with_a_notice(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MINIALEXNET_DATA", str(tmp_path / "nothing"))
    train, val = notebook.chapter_data("cifar10", n_train=50, n_val=20)
    assert train.name == "synthetic" and len(train) == 50 and len(val) == 20
    assert "NOTICE" in capsys.readouterr().out


def test_collect_results_builds_one_table_in_chapter_order(tmp_path):
    row = dict(claim="c", paper="p", measured="m | x", data="d", time="t", why="w")
    (tmp_path / "02_b.json").write_text(json.dumps([row]))
    (tmp_path / "01_a.json").write_text(json.dumps([row, row]))
    lines = notebook.collect_results(tmp_path).splitlines()
    assert len(lines) == 5 and lines[2].startswith("| 01_a | c | p | m / x |")
    assert lines[4].startswith("| 02_b |")
