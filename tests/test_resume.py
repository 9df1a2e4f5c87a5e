"""Issue 14, classes 2-5: a run writes only where the command line says; Ctrl-C and
SIGTERM stop at a step boundary and resume bit-identically from any interruption
point; what can be checked before the first step is; resume says what it keeps."""

import os
import shutil
import signal

import numpy as np
import pytest

from minialexnet import backend, data, optim, train
from minialexnet.checkpoint import load_checkpoint, save_checkpoint
from minialexnet.errors import DataError

# 4 steps an epoch, 2 epochs: small enough to run many times on 2 busy cores.
TINY = dict(dataset="synthetic", n_train=128, n_val=32, batch_size=32, model="fournet",
            epochs=2, progress=False, workers=2, checkpoint_every=0)
ARGV = ["--model", "fournet", "--n-train", "128", "--n-val", "32", "--batch-size", "32",
        "--no-progress", "--checkpoint-every", "0"]
# What the model computes (not timings), per history row.
COMPUTED = ("epoch", "step", "lr", "train_loss", "train_error", "val_top1", "val_top5")


@pytest.fixture(autouse=True)
def numpy_backend():
    yield
    backend.use("numpy")


def cfg(out, **kw):
    return train.default_config(**{**TINY, "out": str(out), **kw})


def quiet(*args):
    pass


def weights(path):
    arrays, meta = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("model.", "optim."))}, meta


def assert_same_run(a, b):
    (wa, ma), (wb, mb) = weights(a), weights(b)
    assert (ma["epoch"], ma["step"], ma["loader"]) == (mb["epoch"], mb["step"], mb["loader"])
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    for key in COMPUTED:
        assert [r[key] for r in ma["history"]] == [r[key] for r in mb["history"]], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: its final checkpoint."""
    out = tmp_path_factory.mktemp("straight") / "run"
    backend.use("numpy")
    train.run(cfg(out), log=quiet)
    return out / "checkpoint.npz"


# ---------------------------------------------------------------- signals
def _kill(times=1, sig=signal.SIGINT):
    for _ in range(times):
        os.kill(os.getpid(), sig)      # the handler runs before os.kill's caller goes on


def inject(monkeypatch, where, at, times=1, sig=signal.SIGINT):
    """Send ``sig`` ``times`` to this process at a point of the run: "update" (inside
    the optimiser's update of step ``at``, before it changes anything), "evaluate"
    (as validation ``at`` starts), "save" (as the save with reason ``at`` starts)."""
    calls = {"n": 0}
    if where == "update":
        real = optim.SGD.step

        def update(self, grads):
            calls["n"] += 1
            if calls["n"] == at:
                _kill(times, sig)
            return real(self, grads)
        monkeypatch.setattr(optim.SGD, "step", update)
    elif where == "evaluate":
        real_eval = train.evaluate

        def evaluate(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                _kill(times, sig)
            return real_eval(*args, **kwargs)
        monkeypatch.setattr(train, "evaluate", evaluate)
    else:
        real_save = train.save_checkpoint

        def save(path, arrays, meta):
            if meta["saved_because"] == at and not calls["n"]:
                calls["n"] = 1
                _kill(times, sig)
            return real_save(path, arrays, meta)
        monkeypatch.setattr(train, "save_checkpoint", save)


# (name, injections, extra config, checkpoint left: (epoch, step, loader epoch, position),
#  what the log says)
INTERRUPTIONS = [
    ("mid-epoch, inside step 2's update", [("update", 2, 1)], {},
     (0, 2, 0, 2), "checkpoint saved to"),
    ("inside the update of an epoch's last step", [("update", 4, 1)], {},
     (0, 4, 1, 0), "checkpoint saved to"),          # its validation pending
    ("during end-of-epoch validation", [("evaluate", 1, 1)], {},
     (0, 4, 1, 0), "checkpoint saved to"),
    ("during a periodic save", [("save", "periodic", 1)], {"checkpoint_every": 3},
     (0, 3, 0, 3), "checkpoint saved to"),
    ("twice: again during the interruption's save",
     [("update", 2, 1), ("save", "interrupted", 1)], {}, (0, 2, 0, 2), "checkpoint saved to"),
    ("twice in step 3's update: stop at once, unsaved", [("update", 3, 2)],
     {"checkpoint_every": 1}, (0, 2, 0, 2), "nothing saved; the last checkpoint"),
    ("second epoch's validation", [("evaluate", 2, 1)], {},
     (1, 8, 2, 0), "checkpoint saved to"),
]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name,injections,extra,left,said", INTERRUPTIONS,
                         ids=[c[0] for c in INTERRUPTIONS])
def test_an_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch, straight, workers,
                                                    name, injections, extra, left, said):
    if workers == 1 and name not in ("mid-epoch, inside step 2's update",
                                     "during end-of-epoch validation"):
        pytest.skip("one worker: two cases are enough")
    for where, at, times in injections:
        inject(monkeypatch, where, at, times)
    lines = []
    c = cfg(tmp_path / "run", workers=workers, **extra)
    with pytest.raises(KeyboardInterrupt):
        train.run(c, log=lines.append)
    monkeypatch.undo()
    assert sum(said in line for line in lines) == 1, lines
    _, meta = weights(tmp_path / "run" / "checkpoint.npz")
    loader = meta["loader"]
    assert (meta["epoch"], meta["step"], loader["epoch"], loader["position"]) == left
    assert len(meta["history"]) == meta["epoch"]
    t = train.run(dict(c, resume=True), log=quiet)
    assert (t.epoch, t.step) == (2, 8)              # no step lost, no epoch extra
    assert_same_run(tmp_path / "run" / "checkpoint.npz", straight)


def test_a_kill_just_after_the_save_at_an_epochs_last_step_resumes_without_an_extra_epoch(
        tmp_path, monkeypatch, straight):
    """The periodic save at step 4 holds the whole epoch but not its validation; a
    run killed right then must validate epoch 1 on resume, not train another."""
    real = train.save_checkpoint
    killed = tmp_path / "killed"

    def save(path, arrays, meta):
        real(path, arrays, meta)
        if meta["step"] == 4 and meta["saved_because"] == "periodic":
            shutil.copytree(os.path.dirname(path), killed)   # what a kill -9 leaves
    monkeypatch.setattr(train, "save_checkpoint", save)
    train.run(cfg(tmp_path / "run", checkpoint_every=4), log=quiet)
    monkeypatch.undo()
    _, meta = weights(killed / "checkpoint.npz")
    assert (meta["epoch"], meta["loader"]["epoch"], meta["history"]) == (0, 1, [])
    t = train.run(cfg(killed, checkpoint_every=4, resume=True), log=quiet)
    assert [r["epoch"] for r in t.history] == [1, 2] and t.step == 8
    assert_same_run(killed / "checkpoint.npz", straight)


def fails_saved_then_resumes(tmp_path, monkeypatch, straight, match):
    """Run with the monkeypatched fault: it raises a DataError matching ``match``
    after one line saying a checkpoint was saved; with the fault mended, resume
    ends as the straight run did.  Returns the saved checkpoint's meta."""
    lines = []
    with pytest.raises(DataError, match=match):
        train.run(cfg(tmp_path / "run"), log=lines.append)
    monkeypatch.undo()
    assert any("checkpoint saved to" in line for line in lines), lines
    _, meta = weights(tmp_path / "run" / "checkpoint.npz")
    train.run(cfg(tmp_path / "run", resume=True), log=quiet)
    assert_same_run(tmp_path / "run" / "checkpoint.npz", straight)
    return meta


def test_an_error_during_validation_is_reported_after_a_save(tmp_path, monkeypatch, straight):
    """A bad validation image found at the end of the epoch: the epoch's work is
    saved before the error is reported, and resume validates and goes on."""
    def broken(*args, **kwargs):
        raise DataError("val/img7.jpg: cannot decode (truncated file)")
    monkeypatch.setattr(train, "evaluate", broken)
    meta = fails_saved_then_resumes(tmp_path, monkeypatch, straight, "img7")
    assert (meta["step"], meta["epoch"], meta["saved_because"]) == (4, 0, "error")


def test_a_bad_training_image_mid_epoch_is_reported_after_a_save(tmp_path, monkeypatch,
                                                                 straight):
    """A training image that cannot be read in the middle of an epoch (batch 3 of 4):
    the two steps before it are saved, the loader still pointing at the bad batch,
    and once the image is mended resume goes on as if nothing had happened."""
    real = data.Loader.make_batch

    def make_batch(self, epoch, b, order=None):
        if (epoch, b) == (0, 2):
            raise DataError("train/img42.png: cannot decode (truncated file)")
        return real(self, epoch, b, order)
    monkeypatch.setattr(data.Loader, "make_batch", make_batch)
    meta = fails_saved_then_resumes(tmp_path, monkeypatch, straight, "img42")
    assert (meta["epoch"], meta["step"], meta["saved_because"]) == (0, 2, "error")
    assert (meta["loader"]["epoch"], meta["loader"]["position"]) == (0, 2)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_command_stops_at_a_step_boundary_with_one_line(tmp_path, monkeypatch, capsys,
                                                            sig, code):
    inject(monkeypatch, "update", 3, 1, sig)
    out = tmp_path / "run"
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert train.main(ARGV + ["--out", str(out)]) == code
    lines = [l for l in capsys.readouterr().out.splitlines() if "interrupted" in l]
    assert lines == [f"interrupted at epoch 1, step 3: checkpoint saved to "
                     f"{out / 'checkpoint.npz'} (resume with --resume --out {out})"]
    _, meta = weights(out / "checkpoint.npz")
    assert (meta["step"], meta["loader"]["position"], meta["saved_because"]) == (3, 3, "interrupted")
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_stale_temp_of_a_killed_save_is_removed_on_resume(tmp_path):
    out = tmp_path / "run"
    train.run(cfg(out, epochs=1), log=quiet)
    stale = [out / f".checkpoint.npz.{os.getpid()}.0badf00d.tmp",   # a killed save's,
             out / ".metrics.jsonl.k3j4h5g6.tmp"]                    # our pid, or no pid
    for f in stale:
        f.write_bytes(b"x" * 1000)
    train.run(cfg(out, epochs=1, resume=True), log=quiet)        # complete: writes nothing
    assert not any(f.exists() for f in stale)


# ---------------------------------------------------------------- where a run writes
def _files(d):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", ["copied", "moved", "crafted"])
def test_a_resumed_run_writes_only_in_the_directory_it_resumes_from(tmp_path, how):
    """Issue 14: on resume the run directory came from the checkpoint's saved config,
    so resuming a copy overwrote the original, a moved run recreated its old folder,
    and a crafted checkpoint chose where to write."""
    first = tmp_path / "first"
    train.run(cfg(first, epochs=1), log=quiet)
    here = tmp_path / "here"
    if how == "copied":
        shutil.copytree(first, here)
    elif how == "moved":
        shutil.move(first, here)
    else:
        shutil.copytree(first, here)
        shutil.rmtree(first)
        arrays, meta = load_checkpoint(here / "checkpoint.npz")
        meta["config"]["out"] = str(tmp_path / "chosen" / "by" / "the" / "file")
        save_checkpoint(here / "checkpoint.npz", arrays, meta)
    before = _files(tmp_path)
    t = train.run(cfg(here, epochs=2, resume=True), log=quiet)
    assert t.epoch == 2 and t.last_good_checkpoint == str(here / "checkpoint.npz")
    after = _files(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed and all(p.parent == here for p in changed), sorted(changed)
    assert not (tmp_path / "chosen").exists()
    assert weights(here / "checkpoint.npz")[1]["epoch"] == 2


# ---------------------------------------------------------------- before the first step
@pytest.fixture(scope="module")
def splits():
    backend.use("numpy")
    tr = data.load_dataset("synthetic", split="train", n=64)
    va = data.load_dataset("synthetic", split="test", n=32)
    return tr, va


def _replace(ds, **kw):
    import dataclasses
    return dataclasses.replace(ds, **kw)


def _without_class(tr, c):
    keep = tr.y != c
    return _replace(tr, x=tr.x[keep], y=tr.y[keep])


BAD_SPLITS = [
    ("test labels out of range", lambda tr, va: (tr, _replace(va, y=va.y + 5)),
     "labels lie in"),
    ("a validation class missing from training",
     lambda tr, va: (_without_class(tr, int(va.y[0])), va), "has no training images"),
    ("validation images of another size",
     lambda tr, va: (tr, _replace(va, x=np.ascontiguousarray(va.x[:, :30, :30]))),
     "both splits need one image size"),
    ("float validation images", lambda tr, va: (tr, _replace(va, x=va.x.astype(np.float32))),
     "images are float32"),
    ("channels-first validation images",
     lambda tr, va: (tr, _replace(va, x=va.x.transpose(0, 3, 1, 2).copy())), "channels-first"),
    ("other class names", lambda tr, va: (tr, _replace(va, class_names=va.class_names[::-1])),
     "not the training set's"),
    ("no validation images", lambda tr, va: (tr, _replace(va, x=va.x[:0], y=va.y[:0])),
     "is empty"),
    ("a missing validation file",
     lambda tr, va: (tr, _replace(va, x=data.ImageFiles(["/no/such/img.jpg"] * len(va), 32))),
     "/no/such/img.jpg: file not found"),
    ("training labels out of range", lambda tr, va: (_replace(tr, y=tr.y - 1), va),
     "the training set (synthetic): labels lie in"),
]


@pytest.mark.parametrize("name,make,expect", BAD_SPLITS, ids=[c[0] for c in BAD_SPLITS])
def test_bad_splits_are_refused_before_the_first_step(splits, name, make, expect):
    tr, va = make(*splits)
    c = train.default_config(**{**TINY, "out": None})
    model = train.make_model(c, tr.num_classes)
    with pytest.raises(DataError) as e:
        train.Trainer(model, tr, va, data.mean_image(tr.x), c, log=quiet)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_good_splits_pass(splits):
    tr, va = splits
    train.check_splits(tr, va)


def _a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("a file")
    return f


BAD_OUT = [
    ("a file", lambda tmp: _a_file(tmp), "is a file, not a directory"),
    ("below a file", lambda tmp: _a_file(tmp) / "run", "a part of the path is not a directory"),
    ("unwritable", lambda tmp: tmp / "ro" / "run", "cannot write the run's files there"),
]


@pytest.mark.parametrize("name,make,expect", BAD_OUT, ids=[c[0] for c in BAD_OUT])
def test_an_out_that_cannot_take_the_files_is_one_line_before_any_data(
        tmp_path, monkeypatch, capsys, name, make, expect):
    out = make(tmp_path)
    if name == "unwritable":
        (tmp_path / "ro").mkdir()
        real = os.makedirs

        def refuse(path, *a, **k):     # root writes anywhere: a refusing makedirs
            if str(path).startswith(str(tmp_path / "ro")):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *a, **k)
        monkeypatch.setattr(os, "makedirs", refuse)

    def no_data(cfg):
        raise AssertionError("data was read before --out was checked")
    monkeypatch.setattr(train, "prepare_data", no_data)
    assert train.main(ARGV + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and str(out) in err[0], err


# ---------------------------------------------------------------- what resume keeps
@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert train.main(ARGV + ["--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def one_epoch(one_epoch_run, tmp_path):
    """A finished one-epoch run of the command line, a copy for each test."""
    return shutil.copytree(one_epoch_run, tmp_path / "run")


RESUMES = [
    # (extra flags, exit code, what stdout / stderr says)
    ([], 0, "already complete: 1 of 1 epochs, step 4; nothing was written"),
    (["--epochs", "1"], 0, "already complete: 1 of 1 epochs"),
    (["--max-steps", "3", "--epochs", "2"], 0, "already complete up to --max-steps 3"),
    (["--batch-size", "16"], 2, "--batch-size 16 (the run has 32)"),
    (["--lr", "0.5"], 2, "--lr 0.5 (the run has 0.01)"),
    (["--model", "small-alexnet"], 2, "--model small-alexnet (the run has fournet)"),
    (["--dataset", "cifar10"], 2, "--dataset cifar10 (the run has synthetic)"),
    (["--seed", "3", "--no-flip", "--layers", "reference"], 2,
     "--no-flip False (the run has True), --model-kwargs/--layers {\"layers\": \"reference\"} "
     "(the run has {}), --seed 3 (the run has 0)"),
]


@pytest.mark.parametrize("flags,code,said", RESUMES, ids=[" ".join(r[0]) or "none" for r in RESUMES])
def test_resume_refuses_conflicts_and_leaves_a_complete_run_alone(one_epoch, capsys, flags,
                                                                  code, said):
    before = _files(one_epoch)
    capsys.readouterr()
    argv = ARGV + ["--out", str(one_epoch), "--resume"] + flags
    assert train.main(argv) == code
    got = capsys.readouterr()
    lines = (got.out if code == 0 else got.err).strip().splitlines()
    assert sum(said in line for line in lines) == 1, lines
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: --resume continues the run")
    assert _files(one_epoch) == before           # nothing written, not even the same bytes


def test_resume_takes_the_same_values_again_and_a_larger_epochs(one_epoch):
    argv = ARGV + ["--out", str(one_epoch), "--resume", "--epochs", "2", "--batch-size", "32",
                   "--lr", "0.01", "--checkpoint-every", "3", "--workers", "1"]
    assert train.main(argv) == 0
    _, meta = weights(one_epoch / "checkpoint.npz")
    assert (meta["epoch"], meta["step"]) == (2, 8)
    assert meta["config"]["checkpoint_every"] == 3 and meta["config"]["epochs"] == 2
