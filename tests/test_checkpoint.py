"""Checkpoints: round trip, atomic writes, pickle-free loading, clear errors."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    # And load_checkpoint really reads arrays with allow_pickle=False.
    seen = {}
    real = np.lib.format.read_array

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(np.lib.format, "read_array", spy)
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


# ---------------------------------------------------------------- damaged and crafted files
def _write_zip(path, members, compress=zipfile.ZIP_STORED):
    """An .npz by hand: members {name: array or bytes}."""
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, value in members.items():
            with z.open(name, "w", force_zip64=True) as f:
                if isinstance(value, bytes):
                    f.write(value)
                else:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=True)
    return path


def _meta_entry(meta):
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


def _good(tmp_path, name="good.npz"):
    return save_checkpoint(tmp_path / name, _arrays(), {"epoch": 1})


class _Evil:
    """Unpickling this writes a marker file: code from the file would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _pickle_file(p):
    import pickle
    p.write_bytes(pickle.dumps(_Evil(p.parent / "MARKER"), protocol=2))


def _symlink_loop(p):
    os.symlink(p.parent / "b.npz", p)
    os.symlink(p, p.parent / "b.npz")


def _trailing_size_lie(p):
    # The header says 10 float32s, the entry holds 1000 bytes more.
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(10, np.float32))
    _write_zip(p, {"w.npy": buf.getvalue() + b"\0" * 1000, "__meta__.npy": _meta_entry({}),
                   "__minialexnet_checkpoint__.npy": np.array(1)})


def _flip_a_data_byte(p):
    save_checkpoint(p, _arrays(), {"epoch": 1})
    b = bytearray(p.read_bytes())
    i = b.index(np.ones(4, np.float32).tobytes())        # conv1.b's data
    b[i + 1] ^= 0x10
    p.write_bytes(bytes(b))


DAMAGED = {
    "missing": (lambda p: None, "checkpoint file not found"),
    "broken symlink": (lambda p: os.symlink(p.parent / "gone.npz", p), "a broken symlink"),
    "symlink loop": (_symlink_loop, "symlink loop"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "text": (lambda p: p.write_text("epoch: 3\nweights: lots\n"), "a text file, not a checkpoint"),
    "pickle": (_pickle_file, "holds pickled Python objects"),
    "npy": (lambda p: np.save(open(p, "wb"), np.zeros(3)), "single .npy array"),
    "random bytes": (lambda p: p.write_bytes(bytes(range(256)) * 4), "not an .npz file"),
    "truncated": (lambda p: p.write_bytes(open(_good(p.parent), "rb").read()[:600]),
                  "corrupt or truncated"),
    "bit flip": (_flip_a_data_byte, "is damaged"),
    "plain npz": (lambda p: np.savez(open(p, "wb"), w=np.zeros(3)), "not a minialexnet checkpoint"),
    "non-array member": (lambda p: _write_zip(p, {"notes.txt": b"hi", "__meta__.npy": _meta_entry({}),
                                                  "__minialexnet_checkpoint__.npy": np.array(1)}),
                         "'notes.txt' is not an array"),
    "meta not an object": (lambda p: _write_zip(p, {"__meta__.npy": _meta_entry([1, 2]),
                                                    "__minialexnet_checkpoint__.npy": np.array(1)}),
                           "not an object"),
    "meta not JSON": (lambda p: _write_zip(p, {"__meta__.npy": np.frombuffer(b"{oops", np.uint8),
                                               "__minialexnet_checkpoint__.npy": np.array(1)}),
                      "corrupt metadata"),
    "meta not bytes": (lambda p: _write_zip(p, {"__meta__.npy": np.zeros(3),
                                                "__minialexnet_checkpoint__.npy": np.array(1)}),
                       "not uint8 bytes"),
    "newer format": (lambda p: _write_zip(p, {"__meta__.npy": _meta_entry({}),
                                              "__minialexnet_checkpoint__.npy": np.array(99)}),
                     "format 99 is newer"),
    "size lie": (_trailing_size_lie, "declares shape (10,)"),
    "object entry": (lambda p: _write_zip(p, {"w.npy": np.array([{"a": 1}], dtype=object),
                                              "__meta__.npy": _meta_entry({}),
                                              "__minialexnet_checkpoint__.npy": np.array(1)}),
                     "holds pickled Python objects"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_every_bad_file_gets_one_line_saying_what_it_is(tmp_path, case):
    make, words = DAMAGED[case]
    p = tmp_path / "ck.npz"
    make(p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert words in msg and "ck.npz" in msg and "\n" not in msg, msg
    if case in ("missing", "broken symlink", "symlink loop", "directory", "empty", "text"):
        assert "corrupt" not in msg and "pickle" not in msg, msg
    assert not (tmp_path / "MARKER").exists()


def test_an_unreadable_file_is_called_unreadable(tmp_path, monkeypatch):
    p = _good(tmp_path)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ck, "open", denied, raising=False)     # root ignores chmod
    with pytest.raises(CheckpointError, match=r"good.npz: cannot read the checkpoint "
                                              r"\(permission denied\)"):
        load_checkpoint(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bit=st.integers(min_value=0))
def test_any_single_bit_flip_is_caught_or_harmless(tmp_path, bit):
    """Flip any one bit of a checkpoint: it loads the same arrays (the bit was in a
    field nobody reads, such as a timestamp) or fails with one CheckpointError line."""
    p = tmp_path / "flip.npz"
    good = bytearray(open(_good(tmp_path), "rb").read())
    bit %= len(good) * 8
    good[bit // 8] ^= 1 << (bit % 8)
    p.write_bytes(bytes(good))
    try:
        arrays, meta = load_checkpoint(p)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    assert meta == {"epoch": 1}
    for k, v in _arrays().items():
        np.testing.assert_array_equal(arrays[k], v)


def test_expected_arrays_only_are_decompressed(tmp_path):
    """A small file with a compressed 256 MiB entry: loading what a model needs reads
    only that (bounded memory), and a wrong-shaped entry is refused before its data."""
    import tracemalloc
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in (("model.w", np.ones(3, np.float32)), ("__meta__", _meta_entry({})),
                        ("__minialexnet_checkpoint__", np.array(1))):
            with z.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, a)
        with z.open("junk.npy", "w", force_zip64=True) as f:
            n = 256 << 20
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (n,)})
            zeros = bytes(1 << 20)
            for _ in range(n >> 20):
                f.write(zeros)
    assert p.stat().st_size < 2 << 20
    tracemalloc.start()
    arrays, _ = load_checkpoint(p, expected={"model.w": (3,)})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert list(arrays) == ["model.w"] and peak < 8 << 20, peak
    with pytest.raises(CheckpointError, match=r"'junk' has shape \(268435456,\) in the "
                                              r"checkpoint, \(3,\) in the model"):
        tracemalloc.start()
        try:
            load_checkpoint(p, expected={"junk": (3,)})
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_metadata_far_larger_than_any_run_writes_is_refused_unread(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / "m.npz", _arrays(), {"history": list(range(1000))})
    monkeypatch.setattr(ck, "MAX_META_BYTES", 1000)
    with pytest.raises(CheckpointError, match="metadata is .* bytes, far more than any run"):
        ck.read_meta(p)


# ---------------------------------------------------------------- weights: float and finite
BAD_WEIGHTS = {
    "int32": (np.arange(12, dtype=np.int32).reshape(3, 4), "dtype int32"),
    "int64": (np.arange(12).reshape(3, 4), "dtype int64"),
    "uint8": (np.zeros((3, 4), np.uint8), "dtype uint8"),
    "bool": (np.ones((3, 4), bool), "dtype bool"),
    "complex": (np.ones((3, 4), np.complex64), "dtype complex64"),
    "nan": (np.where(np.eye(3, 4) > 0, np.nan, 1.0).astype(np.float32), "3 NaN or infinite"),
    "inf": (np.full((3, 4), np.inf, np.float32), "12 NaN or infinite"),
    "-inf float64": (np.concatenate([np.zeros((2, 4)), np.full((1, 4), -np.inf)]),
                     "4 NaN or infinite"),
    "nan float16": (np.full((3, 4), np.nan, np.float16), "12 NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_weights_must_be_finite_floats(tmp_path, case):
    bad, words = BAD_WEIGHTS[case]
    p = tmp_path / "w.npz"
    # Written by hand: save_checkpoint itself refuses non-finite arrays.
    _write_zip(p, {"model.fc.W.npy": bad, "__meta__.npy": _meta_entry({}),
                   "__minialexnet_checkpoint__.npy": np.array(1)})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p, expected={"model.fc.W": (3, 4)})
    assert words in str(e.value) and "'model.fc.W'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=words):
        ck.check_compatible({"fc.W": bad}, {"fc.W": (3, 4)}, "w.npz")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_floats_of_any_width_load(tmp_path, dtype):
    p = save_checkpoint(tmp_path / "ok.npz", {"model.w": np.ones((3, 4), dtype)}, {})
    arrays, _ = load_checkpoint(p, expected={"model.w": (3, 4)})
    assert arrays["model.w"].dtype == dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.complex64]),
       value=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.integers(0, 59))
def test_save_refuses_non_finite_arrays_and_keeps_the_old_file(tmp_path, dtype, value, where):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, _arrays(), {"epoch": 1})
    before = p.read_bytes()
    w = np.ones(60, dtype)
    w[where] = value
    with pytest.raises(CheckpointError, match="refusing to save: 'model.fc8.W' holds 1 NaN"):
        save_checkpoint(p, {**_arrays(), "model.fc8.W": w}, {"epoch": 2})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]
