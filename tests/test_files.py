"""Every file a run writes is written atomically (files.atomic_write): faults of the
disk (full, read-only, permission denied) and interruptions leave the old file and
no temp file, with one line; a symlink at the target is replaced, never followed;
temp files of killed saves are removed by the next save."""

import errno
import os
import subprocess
import types

import numpy as np
import pytest

from minialexnet import files, train
from minialexnet.checkpoint import load_checkpoint, save_checkpoint
from minialexnet.data.common import save_npy_atomic
from minialexnet.files import WriteError, atomic_savefig, atomic_write_text


def _fig():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


HISTORY = [{"epoch": 1, "train_loss": 2.0, "train_error": 0.9, "val_top1": 0.8,
            "val_top5": 0.4}]


def _metrics(path):
    d = os.path.dirname(path)
    fake = types.SimpleNamespace(history=HISTORY, health=[], cfg={"figures": True},
                                 _path=lambda name: os.path.join(d, name))
    train.Trainer._write_metrics(fake)


# name -> (file name, write function)
WRITERS = {
    "text": ("notes.txt", lambda p: atomic_write_text(p, "new\n" * 100)),
    "savefig": ("curves.png", lambda p: atomic_savefig(_fig(), p)),
    "checkpoint": ("checkpoint.npz",
                   lambda p: save_checkpoint(p, {"w": np.ones(300, np.float32)}, {"a": 1})),
    "npy cache": ("mean.npy", lambda p: save_npy_atomic(p, np.ones(300))),
    "metrics": ("metrics.jsonl", _metrics),
}


def _fail_on(name, exc):
    """A replacement for os.<name> that raises ``exc`` when called for a temp file."""
    real = getattr(os, name)

    def fake(*args, **kwargs):
        if name == "fsync" or str(args[0]).endswith(".tmp"):
            raise exc
        return real(*args, **kwargs)
    return fake


FAULTS = {
    "disk full": ("fsync", OSError(errno.ENOSPC, "No space left on device"),
                  "the disk is full"),
    "permission denied": ("open", PermissionError(errno.EACCES, "Permission denied"),
                          "permission denied"),
    "read-only": ("replace", OSError(errno.EROFS, "Read-only file system"), "read-only"),
    "quota": ("fsync", OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_write_keeps_the_old_file_and_says_why_in_one_line(tmp_path, monkeypatch,
                                                                     writer, fault):
    name, write = WRITERS[writer]
    target = tmp_path / name
    target.write_bytes(b"the old contents")
    before = sorted(os.listdir(tmp_path))
    func, exc, reason = FAULTS[fault]
    monkeypatch.setattr(os, func, _fail_on(func, exc))
    with pytest.raises(WriteError) as e:
        write(str(target))
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and reason in msg and str(tmp_path) in msg, msg
    assert isinstance(e.value, OSError)
    assert target.read_bytes() == b"the old contents"
    assert sorted(os.listdir(tmp_path)) == before        # no temp file left


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch, writer):
    name, write = WRITERS[writer]
    target = tmp_path / name
    target.write_bytes(b"the old contents")
    monkeypatch.setattr(os, "fsync", _fail_on("fsync", KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write(str(target))
    monkeypatch.undo()
    assert target.read_bytes() == b"the old contents"
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path, writer):
    name, write = WRITERS[writer]
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"not yours")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(victim)
    write(str(run / name))
    assert victim.read_bytes() == b"not yours"
    assert not (run / name).is_symlink() and (run / name).stat().st_size > 0


def test_new_files_get_the_usual_permissions(tmp_path):
    # A temp file made by mkstemp is 0600; the written file must be like any other.
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid          # reaped: nothing runs under this pid now (barring reuse)


def test_temps_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    p = tmp_path / "checkpoint.npz"
    stale = [f".checkpoint.npz.{_dead_pid()}.1a2b3c4d.tmp",   # a killed process's
             ".checkpoint.npz.k3j4h5g6.tmp"]                  # the old unnamed kind
    live = [f".checkpoint.npz.{os.getppid()}.1a2b3c4d.tmp",   # a running writer's
            ".other.npz.1.abcd.tmp", "unrelated.tmp"]         # other files
    for n in stale + live:
        (tmp_path / n).write_bytes(b"x" * 1000)
    save_checkpoint(p, {"w": np.zeros(3, np.float32)}, {})
    assert sorted(os.listdir(tmp_path)) == sorted(live + ["checkpoint.npz"])
    assert load_checkpoint(p)[0]["w"].shape == (3,)


def test_temps_of_a_killed_process_with_our_pid_or_a_reused_pid_are_removed_too(tmp_path):
    """Issue 14: temps piled up when the restarted run got the killed one's pid (a
    container's) or when its pid was reused by another process.  A write of this
    process in progress (another thread's) is kept."""
    import threading
    p = tmp_path / "checkpoint.npz"
    ours = tmp_path / f".checkpoint.npz.{os.getpid()}.1a2b3c4d.tmp"        # killed, same pid
    reused = tmp_path / f".checkpoint.npz.{os.getppid()}.5e6f7a8b.tmp"     # pid now alive
    fresh = tmp_path / f".checkpoint.npz.{os.getppid()}.9c0d1e2f.tmp"      # a live writer's
    for f in (ours, reused, fresh):
        f.write_bytes(b"x" * 1000)
    old = os.stat(reused).st_mtime - files.STALE_AFTER_S - 60
    os.utime(reused, (old, old))
    writing, release = threading.Event(), threading.Event()

    def slow_writer():
        with files.atomic_write(p) as f:
            f.write(b"y")
            writing.set()
            release.wait(30)
    t = threading.Thread(target=slow_writer)
    t.start()
    try:
        assert writing.wait(30)
        [mine] = [n for n in os.listdir(tmp_path) if n.endswith(".tmp") and
                  n.startswith(f".checkpoint.npz.{os.getpid()}.") and n != ours.name]
        files.remove_stale_temps(p)
        left = sorted(os.listdir(tmp_path))
    finally:
        release.set()
        t.join()
    assert left == sorted([fresh.name, mine])


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount); skipped where that is not possible."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield d
    subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_really_full_disk(tiny_disk, writer):
    name, write = WRITERS[writer]
    target = tiny_disk / name
    target.write_bytes(b"the old contents")
    (tiny_disk / "filler").write_bytes(b"\0" * (60 << 10))     # almost full now
    with pytest.raises(WriteError, match="the disk is full"):
        write(str(target))
    assert target.read_bytes() == b"the old contents"
    assert sorted(os.listdir(tiny_disk)) == sorted(["filler", name])


def test_describe_os_error_words_the_common_faults():
    assert files.describe_os_error(OSError(errno.ENOSPC, "x")).startswith("the disk is full")
    assert files.describe_os_error(OSError(errno.ELOOP, "x")).startswith("too many levels")
    assert files.describe_os_error(OSError(errno.EXDEV, "Invalid cross-device link")) == \
        "Invalid cross-device link"
