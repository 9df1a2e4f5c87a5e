"""Checkpoints: round trip, atomic writes, pickle-free loading, clear errors."""

import json
import os
import zipfile

import numpy as np
import pytest

from minialexnet import checkpoint as ck
from minialexnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _arrays():
    rng = np.random.default_rng(0)
    return {"conv1.W": rng.standard_normal((4, 3, 5, 5)).astype(np.float32),
            "conv1.b": np.ones(4, np.float32),
            "sgd/v/conv1.W": np.zeros((4, 3, 5, 5), np.float32),
            "step": np.array(17, np.int64)}


def test_round_trip(tmp_path):
    g = np.random.default_rng(5)
    g.random(3)
    meta = {"arch": "alexnet-small", "epoch": 3, "lr": 0.01, "loss": np.float32(2.5),
            "rng": ck.generator_state(g), "loader": {"seed": 1, "epoch": 3, "position": 0}}
    p = tmp_path / "ck.npz"
    assert save_checkpoint(p, _arrays(), meta) == str(p)
    arrays, got = load_checkpoint(p)
    assert set(arrays) == set(_arrays())
    for k, v in _arrays().items():
        assert arrays[k].dtype == v.dtype and np.array_equal(arrays[k], v)
    assert got["epoch"] == 3 and got["loss"] == 2.5 and got["arch"] == "alexnet-small"
    h = ck.set_generator_state(np.random.default_rng(0), got["rng"])
    assert np.array_equal(h.random(4), g.random(4))      # RNG resumes exactly
    json.dumps(got)                                       # meta stays JSON


def test_bad_names_and_meta(tmp_path):
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "a.npz", {"__meta__": np.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "a.npz", {}, {"f": object()})
    with pytest.raises(CheckpointError, match="dtype object"):
        save_checkpoint(tmp_path / "a.npz", {"o": np.array([None, 1], dtype=object)}, {})
    assert os.listdir(tmp_path) == []


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, _arrays(), {"epoch": 1})
    before = p.read_bytes()

    real = np.savez

    def crash(f, **kw):
        real(f, **{k: kw[k] for k in list(kw)[:1]})       # some bytes written...
        raise KeyboardInterrupt("power cut")               # ...then the process dies
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, _arrays(), {"epoch": 2})
    monkeypatch.undo()
    assert p.read_bytes() == before                        # old file untouched
    assert os.listdir(tmp_path) == ["ck.npz"]              # temp file cleaned up
    assert load_checkpoint(p)[1]["epoch"] == 1


def test_crash_before_rename_leaves_no_file_under_the_real_name(tmp_path, monkeypatch):
    p = tmp_path / "new.npz"

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(p, _arrays(), {})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    with pytest.raises(CheckpointError, match="new.npz: checkpoint file not found"):
        load_checkpoint(p)


def test_truncated_and_garbage_files(tmp_path):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, _arrays(), {"epoch": 1})
    data = p.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.npz: corrupt or truncated"):
        load_checkpoint(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello world" * 10)
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_checkpoint(tmp_path / "junk.npz")


def test_not_a_checkpoint_and_pickled_objects_are_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(CheckpointError, match="plain.npz: an .npz but not a minialexnet checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="one.npy: not a checkpoint"):
        load_checkpoint(tmp_path / "one.npy")
    # A file with an object array (pickle inside): np.load must refuse it.
    np.savez(tmp_path / "evil.npz", w=np.array([{"a": 1}], dtype=object),
             __meta__=np.frombuffer(b"{}", np.uint8), __minialexnet_checkpoint__=np.array(1))
    with pytest.raises(CheckpointError, match="evil.npz: holds pickled Python objects"):
        load_checkpoint(tmp_path / "evil.npz")
    # And load_checkpoint really passes allow_pickle=False.
    seen = {}
    real = np.load

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(np, "load", spy)
    save_checkpoint(tmp_path / "ok.npz", _arrays(), {})
    load_checkpoint(tmp_path / "ok.npz")
    assert seen.get("allow_pickle") is False


def test_check_compatible_names_the_first_mismatch(tmp_path):
    arrays = _arrays()
    ck.check_compatible(arrays, {"conv1.W": (4, 3, 5, 5), "conv1.b": (4,)})   # fine
    with pytest.raises(CheckpointError, match=r"checkpoint ck.npz was saved for architecture "
                       r"small, this model is alexnet: parameter 'conv1.W' has shape "
                       r"\(4, 3, 5, 5\) in the checkpoint, \(96, 3, 11, 11\) in the model"):
        ck.check_compatible(arrays, {"conv1.W": (96, 3, 11, 11)}, "ck.npz", "small", "alexnet")
    with pytest.raises(CheckpointError, match="'fc8.W' is missing"):
        ck.check_compatible(arrays, {"conv1.b": (4,), "fc8.W": (10, 10)})
