"""Data parallel training over MPI ranks (distributed.py): real ``mpiexec -n 2`` runs on
this CPU, one BLAS thread per rank, on the built-in dataset with a float64 four-layer net.

- K ranks at B/K images each make the step of one process at B: after 6 steps (an
  epoch boundary, so the sharded validation too) the weights agree with one
  process's to 1e-12 relative (float64 rounding: the two halves' means are averaged
  instead of one mean taken), and the two ranks' weights are bit-identical.  The same
  with a small AlexNet with dropout in training: the ranks apply one process's masks.
- A checkpoint written by 2 ranks resumes in 1 process, and one written by 1 process
  resumes on 2 ranks, continuing the same run (to the same bound), dropout included.
- Faults: a hung rank is named within --rank-timeout; a killed rank stops the job
  (by MPICH at once, or by our watchdog within the timeout) and is named; a config
  mismatch and a start-up error give one line; SIGTERM on the launcher leaves the
  checkpoint of a whole step.
- The NCCL communicator's calls, on fake devices with a recording NCCL, bind to the
  signatures of the installed CuPy's real ``cupy.cuda.nccl`` (tests/fake_nccl.py).
Skipped without mpi4py or mpiexec (in CI, where requirements-dev installs them, a failure).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from minialexnet import backend, data, distributed, train
from minialexnet.checkpoint import load_checkpoint
from minialexnet.errors import MinialexnetError

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi_worker.py"
IN_CI = os.environ.get("CI", "").lower() == "true"
BOUND = 1e-12          # relative: K=2 against one process, float64

TINY = ["--model", "fournet", "--n-train", "128", "--n-val", "64", "--batch-size", "32",
        "--no-progress", "--workers", "1", "--checkpoint-every", "0",
        "--model-kwargs", '{"dtype": "float64"}']
# A net with dropout in training (drop6, drop7 in each tower), as small: the ranks must
# apply the masks one process applies to the same images.
DROPOUT = TINY[:1] + ["small-alexnet", "--dropout", "0.5"] + TINY[2:-1] + [
    '{"dtype": "float64", "width": 0.125}']


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        return None, f"mpi4py not installed: {e}"
    here = pathlib.Path(sys.executable).parent / "mpiexec"
    exe = str(here) if here.exists() else shutil.which("mpiexec")
    return (exe, None) if exe else (None, "no mpiexec on PATH (pip install mpich)")


MPIEXEC, WHY = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None and not IN_CI, reason=str(WHY))


def mpirun(n, args, launcher=(), timeout=120, worker=True, wait=True):
    """``mpiexec -n n python tests/mpi_worker.py args`` (or ``-m minialexnet.train``)."""
    if MPIEXEC is None:
        pytest.fail(f"CI must install mpi4py and mpich (requirements-dev.txt): {WHY}")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MINIALEXNET_THREADS="1",
               MPLBACKEND="Agg")
    prog = [str(WORKER)] if worker else ["-m", "minialexnet.train"]
    cmd = [MPIEXEC, *launcher, "-n", str(n), sys.executable, *prog, *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_process(out, *extra, args=TINY):
    code = train.main(args + ["--out", str(out), *extra])
    backend.use("numpy")
    assert code == 0


def arrays_of(path):
    arrays, meta = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith(("model.", "optim."))}, meta


def assert_same_run(a, b, bound=BOUND):
    """Checkpoint arrays a and b agree to ``bound`` relative to each array's largest."""
    assert a.keys() == b.keys()
    assert sum(k.startswith("model.") for k in a) == sum(k.startswith("optim.") for k in a) > 0
    for k in a:
        scale = max(np.abs(a[k]).max(), 1e-300)
        assert np.abs(a[k] - b[k]).max() <= bound * scale, k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One process, 6 steps (epoch 1 of 4 steps, its validation, 2 more)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    one_process(out, "--max-steps", "6", "--epochs", "5")
    return arrays_of(out / "checkpoint.npz")


@pytest.fixture(scope="module")
def straight_dropout(tmp_path_factory):
    """As ``straight``, with the small AlexNet and its dropout."""
    out = tmp_path_factory.mktemp("straight_dropout") / "run"
    one_process(out, "--max-steps", "6", "--epochs", "5", args=DROPOUT)
    return arrays_of(out / "checkpoint.npz")


# ---------------------------------------------------------------- in one process
def test_the_library_imports_without_mpi4py_and_distributed_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import minialexnet, minialexnet.train as t, minialexnet.distributed\n"
            f"sys.exit(t.main(['--distributed', '--no-progress', '--out', {str(tmp_path)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert "pip install mpi4py mpich" in err[0] and "minialexnet[mpi]" in err[0]


class NoRows:
    """A random transform that knows nothing of shards: one draw per image."""

    def __call__(self, x, rng):
        return x.transpose(0, 3, 1, 2).astype(np.float32) + rng.random(len(x))[:, None, None, None]


@pytest.mark.parametrize("transform", ["train", "norows", None])
def test_a_rank_s_batch_is_its_rows_of_the_one_process_batch(transform):
    ds = data.load_dataset("synthetic", n=60, progress_bar=False)
    mean = data.mean_image(ds.x, None, progress_bar=False).astype(np.float32)
    pca = data.pca_fit(ds.x)
    t = {"train": data.TrainTransform(28, mean, pad=2, pca=pca), "norows": NoRows(), None: None}[transform]
    whole = data.Loader(ds.x, ds.y, 12, t, seed=3, drop_last=True)
    shards = [data.Loader(ds.x, ds.y, 12, t, seed=3, drop_last=True, shard=(r, 3)) for r in range(3)]
    for epoch, b in [(0, 0), (2, 4)]:
        x, y = whole.make_batch(epoch, b)
        parts = [s.make_batch(epoch, b) for s in shards]
        assert [len(p[1]) for p in parts] == [4, 4, 4]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert len(shards[1]) == len(whole) == 5
    with pytest.raises(ValueError, match="does not split into 5 equal shares"):
        data.Loader(ds.x, ds.y, 12, t, shard=(0, 5))


class SecondOfTwo(distributed.Communicator):
    """Rank 1 of 2 in one process (its collectives stay the identity)."""
    rank, size = 1, 2


def test_a_rank_s_step_keeps_its_rows_of_the_global_batch_s_dropout_masks():
    c = train.default_config(n_train=64, n_val=16, batch_size=8, dropout=0.5, out=None,
                             model_kwargs={"width": 0.125}, progress=False, workers=1)
    train_set, val, mean, std, _ = train.prepare_data(c)
    model = train.make_model(c, train_set.num_classes)
    t = train.Trainer(model, train_set, val, mean, c, log=lambda *a: None, std=std,
                      comm=SecondOfTwo())
    x, y = t.loader.make_batch(0, 0)
    t.train_step(x, y)
    drops = [l for _, l, _ in model.named_layers() if hasattr(l, "draw")]
    assert len(drops) == 4 and all(l.rows == (4, 8) and l.draw == 1 for l in drops)
    with pytest.raises(MinialexnetError, match=r"^rank 1: a batch of 3 images, but its "
                                               r"share of the global batch of 8 is 4$"):
        t.train_step(x[:3], y[:3])


def test_buckets_keep_model_order_split_by_size_and_dtype():
    arrays = [np.zeros(10, np.float32), np.zeros(20, np.float32), np.zeros(3, np.float64),
              np.zeros(100, np.float32), np.zeros(5, np.float32)]
    plan = distributed._plan(arrays, bucket_bytes=120)
    assert [(np.dtype(d).name, [i for i, _, _ in items], n) for d, items, n in plan] == [
        ("float32", [0, 1], 30), ("float64", [2], 3), ("float32", [3], 100), ("float32", [4], 5)]
    assert [off for _, items, _ in plan for _, off, _ in items] == [0, 10, 0, 0, 0]


def test_a_rank_s_devices_are_shifted_on_cupy_only():
    """Rank r's towers "0, 1" are GPUs offset, offset + 1: CuPy's device index shifts."""
    class FakeCupy:
        class cuda:
            current = None

            class Device:
                def __init__(self, i=None):
                    self.id = i

                def use(self):
                    FakeCupy.cuda.current = self.id

            class runtime:
                @staticmethod
                def getDeviceCount():
                    return 4
    b = backend.CupyBackend(FakeCupy, offset=2)
    assert b.device(1).id == 3 and FakeCupy.cuda.current == 2
    assert b.gpu_ids([0, 1]) == [2, 3] and backend.Backend("numpy", np).gpu_ids([0]) is None
    assert b.device_of(type("A", (), {"device": FakeCupy.cuda.Device(3)})()) == 1
    with pytest.raises(backend.BackendError, match="device 2 .GPU 4 for this rank. does not exist"):
        b.device(2)
    assert backend.Backend("numpy", np).nccl is None


def test_gradient_buckets_start_while_backward_still_runs():
    """Over MPI each bucket's allreduce starts as soon as backward has made all of its
    gradients: the last buckets (fc4's) first, before conv1's backward has run, and
    every bucket before ``finish``; the averaged gradients are what ``allreduce_mean``
    gives (one rank here, COMM_SELF: the mechanics; the mpiexec tests below check the
    sums of two ranks against one process)."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from minialexnet.layers import SoftmaxCrossEntropy
    from minialexnet.models import build_model
    backend.use("numpy", seed=0)
    comm = distributed.MPICommunicator(mpi=MPI, comm=MPI.COMM_SELF, bucket_bytes=4096)
    model = build_model("fournet", widths=(4, 4, 8), input_grad=False)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), np.arange(8) % 10)
    sync = comm.gradient_sync(model)
    done, starts = [], []
    buckets = sync.buckets
    real_start = buckets._start

    def start(b):
        starts.append((b, len(done)))
        real_start(b)
    buckets._start = start
    model.backward(loss.backward(), after=lambda step: (done.append(step.name), sync.after(step)))
    n = len(buckets.layout)
    assert n >= 3 and len(starts) == n                  # every bucket before finish()
    assert [b for b, _ in starts] == sorted(range(n), reverse=True)   # model order, reversed
    assert starts[0][1] < len(model.steps) // 2        # fc4's bucket went with most of backward to run
    want = {k: v.copy() for k, v in model.grads().items()}
    sync.finish()
    for k, v in model.grads().items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)        # one rank: the mean is itself
    assert comm.allreduce_seconds > 0


def test_nccl_buckets_travel_on_their_own_streams_while_backward_still_runs():
    """Over NCCL (two fake GPUs, the two towers on them; one rank, COMM_SELF) each
    bucket's allReduce is queued on its device's communication stream as soon as
    backward has made its gradients, behind an event recorded after the packing, and
    ``finish`` joins the streams back before the host waits (the fake records any
    broken order as a problem); the gradients are those of ``allreduce_mean``."""
    MPI = pytest.importorskip("mpi4py.MPI")
    import fake_devices
    import fake_nccl
    from minialexnet.layers import SoftmaxCrossEntropy
    from minialexnet.models import build_model
    backend.use(fake_devices.FakeDevices(2), seed=0)
    rec = fake_nccl.Recorder()
    xp = fake_nccl.FakeCupy(rec)
    comm = distributed.NCCLCommunicator([0, 1], xp, fake_nccl.FakeNccl(MPI.COMM_SELF, xp),
                                        mpi=MPI, comm=MPI.COMM_SELF, bucket_bytes=4096)
    model = build_model("small-alexnet", towers=2, devices=(0, 1), width=0.125, input_grad=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), np.arange(4))
    sync = comm.gradient_sync(model)
    done, order = [], []
    for d, c in comm.comms.items():
        c.allReduce = (lambda f, d: lambda *a: (order.append((d, len(done), a[5])), f(*a)))(c.allReduce, d)
    model.backward(loss.backward(), after=lambda step: (done.append(step.name), sync.after(step)))
    n = len(sync.buckets.layout)
    assert n >= 4 and len(order) == n                     # every bucket before finish()
    assert order[0][1] < len(model.steps) // 2           # fc8's went with most of backward to run
    assert {d for d, _, _ in order} == {0, 1}            # both towers' devices reduce
    compute = {d: xp.compute(d).ptr for d in (0, 1)}
    assert all(stream != compute[d] for d, _, stream in order)   # not on the compute stream
    want = {k: backend.to_numpy(v).copy() for k, v in model.grads().items()}
    sync.finish()
    assert rec.problems == [], rec.problems
    for k, v in model.grads().items():
        np.testing.assert_array_equal(backend.to_numpy(v), want[k], err_msg=k)


# ---------------------------------------------------------------- mpiexec -n 2
@needs_mpi
def test_two_ranks_make_the_one_process_step_and_agree_bit_for_bit(tmp_path, straight):
    dump = tmp_path / "dump"
    dump.mkdir()
    res = mpirun(2, ["--dump", str(dump), "--", *TINY, "--distributed", "--max-steps", "6",
                     "--epochs", "5", "--out", str(tmp_path / "run")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "global batch 32 = 2 x 16" in res.stdout
    r0, r1 = np.load(dump / "rank0.npz"), np.load(dump / "rank1.npz")
    assert int(r0["step"]) == int(r1["step"]) == 6
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)        # bit-identical ranks
    got, meta = arrays_of(tmp_path / "run" / "checkpoint.npz")
    want, want_meta = straight
    assert_same_run(want, got)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.npz", "curves.png", "health.png",
                                                    "metrics.csv", "metrics.jsonl"]
    # The sharded validation's summed counts, and the agreed training numbers.
    (h,), (w,) = meta["history"], want_meta["history"]
    assert (h["val_top1"], h["val_top5"], h["train_error"]) == (w["val_top1"], w["val_top5"], w["train_error"])
    assert abs(h["train_loss"] - w["train_loss"]) < BOUND * w["train_loss"]
    assert meta["loader"] == want_meta["loader"] and meta["config"]["batch_size"] == 32


@needs_mpi
def test_two_ranks_apply_the_one_process_dropout_masks(tmp_path, straight_dropout):
    """With dropout in training, too: each rank keeps its rows of the global batch's
    masks, so 2 ranks make the one-process run, not just an equally likely one."""
    dump = tmp_path / "dump"
    dump.mkdir()
    res = mpirun(2, ["--dump", str(dump), "--", *DROPOUT, "--distributed", "--max-steps", "6",
                     "--epochs", "5", "--out", str(tmp_path / "run")])
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = np.load(dump / "rank0.npz"), np.load(dump / "rank1.npz")
    assert int(r0["step"]) == 6
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)        # bit-identical ranks
    got, meta = arrays_of(tmp_path / "run" / "checkpoint.npz")
    assert meta["model_config"]["dropout"] == 0.5 and meta["model_config"]["towers"] == 2
    assert_same_run(straight_dropout[0], got)


@needs_mpi
def test_a_checkpoint_resumes_with_another_rank_count(tmp_path, straight_dropout):
    """2 ranks -> 1 process, and 1 process -> 2 ranks: both continue the same run,
    dropout masks included (they are keyed by step, not by rank)."""
    a, b = tmp_path / "a", tmp_path / "b"
    res = mpirun(2, [*DROPOUT, "--distributed", "--max-steps", "3", "--epochs", "5",
                     "--out", str(a)], worker=False)
    assert res.returncode == 0, res.stderr
    one_process(a, "--max-steps", "6", "--epochs", "5", "--resume", args=DROPOUT)
    one_process(b, "--max-steps", "3", "--epochs", "5", args=DROPOUT)
    res = mpirun(2, [*DROPOUT, "--distributed", "--max-steps", "6", "--epochs", "5",
                     "--out", str(b), "--resume"], worker=False)
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stdout and res.stdout.count("resumed") == 1    # rank 0 alone logs
    for run in (a, b):
        got, meta = arrays_of(run / "checkpoint.npz")
        assert meta["step"] == 6
        assert_same_run(straight_dropout[0], got)


@needs_mpi
def test_a_hung_rank_is_named_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    res = mpirun(2, ["--hang-at", "3", "--", *TINY, "--distributed", "--rank-timeout", "3",
                     "--out", str(tmp_path / "run")])
    took = time.monotonic() - t0
    ours = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert res.returncode != 0 and len(ours) == 1, res.stderr
    assert "rank 1 did not reach collective" in ours[0] and "within 3 s" in ours[0]
    assert took < 3 + 30, took          # start-up, 2 steps, the timeout and the abort


@needs_mpi
def test_a_killed_rank_stops_the_job_and_is_named(tmp_path):
    """MPICH notices a dead peer itself and ends the job at once (its message names the
    PID, which our start-up line maps to the rank), or our watchdog names the rank when
    --rank-timeout passes: which comes first is a race.  Either way: no hang."""
    t0 = time.monotonic()
    res = mpirun(2, ["--die-at", "3", "--", *TINY, "--distributed", "--rank-timeout", "3",
                     "--out", str(tmp_path / "run")])
    took = time.monotonic() - t0
    assert res.returncode != 0 and took < 3 + 30, (took, res.stderr)
    pid = re.search(r"rank 1 pid (\d+)", res.stdout).group(1)
    text = res.stdout + res.stderr
    ours = "error: rank 1 did not reach collective" in text
    launchers = re.search(rf"PID {pid} .*\n.*EXIT CODE: 9", text) or "Killed (signal 9)" in text
    assert ours or launchers, text


@needs_mpi
def test_ranks_that_differ_are_refused_in_one_line(tmp_path):
    out = str(tmp_path / "run")
    env_args = [*TINY, "--distributed", "--out", out]
    if MPIEXEC is None:
        pytest.fail(WHY)
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "minialexnet.train", *env_args, "--lr", "0.01",
           ":", "-n", "1", sys.executable, "-m", "minialexnet.train", *env_args, "--lr", "0.02"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                                  OPENBLAS_NUM_THREADS="1"))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert err[0] == ("error: rank 1 does not match rank 0: its config differs in 'lr' "
                      "(0.02 there, 0.01 on rank 0)")
    assert not os.path.exists(out)


@needs_mpi
def test_a_start_up_error_is_one_line_from_rank_0(tmp_path):
    res = mpirun(2, [*TINY, "--distributed", "--batch-size", "33", "--out", str(tmp_path / "r")],
                 worker=False)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert "--batch-size 33 (the global batch) does not split into 2 equal shares" in err[0]


@needs_mpi
def test_an_error_on_one_rank_mid_run_is_its_one_line_and_stops_the_job(tmp_path):
    res = mpirun(2, ["--bad-image-at", "3", "--", *TINY, "--distributed", "--rank-timeout", "30",
                     "--out", str(tmp_path / "run")])
    ours = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert res.returncode == 2 and ours == [
        "error: /data/train/n01440764/bad.JPEG: cannot decode (truncated file) (on rank 1)"], res.stderr


@needs_mpi
def test_sigterm_on_the_launcher_leaves_the_checkpoint_of_a_whole_step(tmp_path):
    out = tmp_path / "run"
    p = mpirun(2, [*TINY, "--distributed", "--epochs", "1000", "--checkpoint-every", "2",
                   "--out", str(out)], worker=False, wait=False)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)          # the launcher forwards it to every rank
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stdout + stderr
    assert stdout.count("interrupted at epoch") == 1
    got, meta = arrays_of(out / "checkpoint.npz")
    assert meta["saved_because"] == "interrupted"
    step = meta["step"]
    # A straight run to that step: the same weights, loader position and history.
    res = mpirun(2, [*TINY, "--distributed", "--epochs", "1000", "--max-steps", str(step),
                     "--out", str(tmp_path / "straight")], worker=False)
    assert res.returncode == 0, res.stderr
    want, want_meta = arrays_of(tmp_path / "straight" / "checkpoint.npz")
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert meta["loader"] == want_meta["loader"]
    # A signal at an epoch's last step stops before its validation: the checkpoint says
    # so (its loader one epoch ahead: "validation pending"), and a resume validates that
    # epoch first; the straight run to the same step has validated it already.
    pending = meta["loader"]["epoch"] > meta["epoch"]
    assert meta["epoch"] == want_meta["epoch"] - pending
    want_rows = want_meta["history"][:len(want_meta["history"]) - pending]
    assert [r["val_top1"] for r in meta["history"]] == [r["val_top1"] for r in want_rows]


# ---------------------------------------------------------------- NCCL, checked on the CPU
@needs_mpi
def test_the_nccl_communicator_calls_cupy_s_real_nccl_api(tmp_path):
    """Two ranks, two fake GPUs each: the mean and the broadcast are right, one NCCL
    communicator per device with the same id on every rank, calls grouped; every call
    binds to the real signature."""
    import fake_nccl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # CuPy warns that libnccl is not loaded
        api = fake_nccl.real_nccl_api()
    if api is None:
        if IN_CI:
            pytest.fail("CI must install cupy-cuda12x (its nccl extension holds the API)")
        pytest.skip("cupy not installed")
    out = tmp_path / "nccl.json"
    env_prog = ["-c", f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
                      f"import fake_nccl; fake_nccl.worker({str(out)!r})"]
    cmd = [MPIEXEC, "-n", "2", sys.executable, *env_prog]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
                                  OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    ranks = json.loads(out.read_text())
    for r in ranks:
        assert r["allreduce_ok"] and r["broadcast_ok"] and r["same_ids"], r["problems"]
        assert r["communicators"] == 2 and r["devices"] == [0, 1]
        assert r["problems"] == []
        assert fake_nccl.check_calls(r["calls"], api) == []
        assert fake_nccl.check_cupy_calls(r["calls"]) == []
    called = {c[0] for r in ranks for c in r["calls"]}
    assert called >= {"get_unique_id", "NcclCommunicator", "NcclCommunicator.allReduce",
                      "NcclCommunicator.bcast", "groupStart", "groupEnd", "cuda.Event.record"}
    source = (ROOT / "minialexnet" / "distributed.py").read_text()
    assert fake_nccl.check_names(source, api) == []


def test_the_nccl_check_catches_a_wrong_call():
    import fake_nccl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = fake_nccl.real_nccl_api()
    if api is None:
        pytest.skip("cupy not installed")
    calls = [("NcclCommunicator.allReduce", 5, []), ("NcclCommunicator.bcast", 5, ["stream"]),
             ("NcclCommunicator.allreduce", 6, []), ("NcclCommunicator", 3, [])]
    problems = fake_nccl.check_calls(calls, api)
    assert len(problems) == 3, problems          # 5 of 6 arguments; bcast given stream twice; no allreduce
    assert fake_nccl.check_names("self.nccl.NCCL_FLOAT32 nccl.NCCL_FLOAT33", api) == [
        f"cupy.cuda.nccl.NCCL_FLOAT33 does not exist ({api[2]})"]


# ---------------------------------------------------------------- on GPUs
def _gpus_with_nccl():
    try:
        import cupy
        from cupy.cuda import nccl
        return cupy.cuda.runtime.getDeviceCount() if nccl.available else 0
    except Exception:
        return 0


@needs_mpi
@pytest.mark.skipif(_gpus_with_nccl() == 0, reason="no CUDA GPU with NCCL on this machine")
def test_nccl_on_real_gpus_makes_the_one_process_step(tmp_path):
    """K = the GPUs here (at most 2), one GPU per rank, float32: the same step as one
    process at the same global batch, to float32 rounding."""
    k = min(2, _gpus_with_nccl())
    gpu = [a if a != '{"dtype": "float64"}' else "{}" for a in TINY] + ["--backend", "cupy",
                                                                       "--max-steps", "6", "--epochs", "5"]
    assert train.main(gpu + ["--out", str(tmp_path / "one")]) == 0
    backend.use("numpy")
    dump = tmp_path / "dump"
    dump.mkdir()
    res = mpirun(k, ["--dump", str(dump), "--", *gpu, "--distributed", "nccl", "--out", str(tmp_path / "k")])
    assert res.returncode == 0, res.stderr
    assert "NCCL" in res.stdout
    want, _ = arrays_of(tmp_path / "one" / "checkpoint.npz")
    got, _ = arrays_of(tmp_path / "k" / "checkpoint.npz")
    assert_same_run(want, got, bound=1e-4)
    ranks = [np.load(dump / f"rank{r}.npz") for r in range(k)]
    for r in ranks[1:]:
        for key in ranks[0].files:
            np.testing.assert_array_equal(ranks[0][key], r[key], err_msg=key)


# ---------------------------------------------------------------- benchmarks
@needs_mpi
def test_the_distributed_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"),
                          "--tiny", "--json", str(out)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.read_text())
    assert [(r["ranks"], r["threads"]) for r in rows] == [(1, 1), (2, 1), (1, 2)]
    assert all(r["images_per_s"] > 0 and 0 <= r["allreduce_share"] <= 1 for r in rows)
    assert res.stdout.count("| fournet") == 3


def test_the_scaling_model_counts_from_the_model_s_own_account():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scaling_model as sm
    from minialexnet.models import build_model
    model = build_model("small-alexnet")
    acc = sm.account(model)
    assert acc["params"] == model.num_params() and acc["conv_params"] + acc["fc_params"] == acc["params"]
    assert acc["flops"] == model.summary().totals["flops"]
    fc = [s for s in model.steps if s.kind == "linear"]
    towers = [len(s.layers) if hasattr(s, "layers") else 1 for s in fc]
    # fc6 reads both towers' last maps; the outputs are all towers' neurons together.
    assert acc["fc_widths"] == [fc[0].spec["cin"]] + [s.spec["cout"] * t for s, t in zip(fc, towers)]
    assert acc["fc_widths"][-1] == 10
    assert sm.data_parallel_bytes(acc, 1) == 0 == sm.hybrid_bytes(acc, 1, 128)
    assert sm.data_parallel_bytes(acc, 2) == 4 * acc["params"]             # 2 (K-1)/K = 1
    *both, logits = acc["fc_widths"]
    assert sm.hybrid_bytes(acc, 3, 128) == pytest.approx(
        4 / 3 * 4 * acc["conv_params"] + 2 * 128 * 4 * (2 * sum(both) + logits))
    tc, text = sm.table(acc, "gtx580", 128, 100)
    assert tc == pytest.approx(128 / (90 * 1.2e6 / (5.5 * 86400)))
    assert text.splitlines()[2].startswith("| 1 | 100 % (")
