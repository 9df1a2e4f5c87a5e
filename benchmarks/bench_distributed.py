#!/usr/bin/env python
"""Throughput of data parallel training on this machine: 1 and 2 MPI ranks, one BLAS
thread each, and the share of a step the gradient allreduce takes.

    python benchmarks/bench_distributed.py                  # the README's table
    python benchmarks/bench_distributed.py --models alexnet --steps 5
    python benchmarks/bench_distributed.py --tiny           # seconds; what the test runs

For each model it runs, under ``mpiexec -n K``, the trainer's own step
(``Trainer.train_step``: forward, backward, the ranks' gradient mean, SGD) on a fixed
global batch (``--batch``, split over the K ranks), after ``--warmup`` untimed steps,
and reports the median step time over ``--steps`` timed steps, images/s of the whole
job, and the allreduce's time per step (its share of the step).  Rows:

    K=1, 1 thread     one rank, one BLAS thread: the unit
    K=2, 1 thread     two ranks, one thread each (the two cores of this machine)
    K=1, 2 threads    one process using both cores the usual way, for comparison

Run it on an otherwise idle machine: a busy one measures the other load.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROWS = ((1, 1), (2, 1), (1, 2))          # (ranks, threads per rank)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small-alexnet,alexnet",
                   help="comma-separated model names (default: small-alexnet,alexnet)")
    p.add_argument("--batch", type=int, default=128, help="global batch (128, the paper's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    p.add_argument("--tiny", action="store_true", help="a tiny net, 2 steps: proves the script runs")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- one rank
def worker(a):
    """Inside mpiexec: time the trainer's step; rank 0 prints one JSON line."""
    from minialexnet import backend, data, distributed, train
    from minialexnet.backend import np
    comm = distributed.connect("mpi")
    kwargs = {"widths": [8, 8, 16]} if a.tiny else {}
    cfg = train.default_config(model=a.model, batch_size=a.batch, progress=False, workers=1,
                               out=None, model_kwargs=kwargs, n_train=a.batch, n_val=comm.size)
    size = 227 if a.model in ("alexnet", "alexnet-1tower", "alexnet-half") else cfg["crop"]
    backend.use("numpy", seed=0)
    ds = data.load_dataset("synthetic", n=a.batch, progress_bar=False)
    model = train.make_model(dict(cfg, crop=size), ds.num_classes)
    trainer = train.Trainer(model, ds, ds, np.zeros(ds.image_shape, np.float32), cfg, comm=comm)
    rng = np.random.default_rng(comm.rank)
    per_rank = a.batch // comm.size
    x = (rng.standard_normal((per_rank, 3, size, size)) * 64).astype(np.float32)
    y = rng.integers(0, ds.num_classes, per_rank)
    steps, reduce = [], []
    for i in range(a.warmup + a.steps):
        comm.barrier()                       # every rank starts the step together
        r0, t0 = comm.allreduce_seconds, time.perf_counter()
        loss, _ = trainer.train_step(x, y)
        float(loss)
        t1 = time.perf_counter()
        if i >= a.warmup:
            steps.append(t1 - t0)
            reduce.append(comm.allreduce_seconds - r0)
    # The job's step is its slowest rank's.
    everyone = comm.allgather_object((steps, reduce))
    step = [max(s[i] for s, _ in everyone) for i in range(a.steps)]
    red = [max(r[i] for _, r in everyone) for i in range(a.steps)]
    if comm.is_root:
        grad_mb = sum(int(v.size) * v.dtype.itemsize for v in model.params().values()) / 1e6
        print(json.dumps({"model": a.model, "ranks": comm.size, "batch": a.batch,
                          "step_s": statistics.median(step), "allreduce_s": statistics.median(red),
                          "gradient_mb": grad_mb}), flush=True)


# ---------------------------------------------------------------- the driver
def mpiexec():
    here = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def run_row(a, model, ranks, threads):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MINIALEXNET_THREADS=str(threads))
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, __file__, "--worker", "--model", model,
           "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    if a.tiny:
        cmd.append("--tiny")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{res.stderr.strip()}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["threads"] = threads
    r["images_per_s"] = a.batch / r["step_s"]
    r["allreduce_share"] = r["allreduce_s"] / r["step_s"]
    return r


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker(a)
    if a.tiny:
        a.models, a.batch, a.steps, a.warmup = "fournet", 8, 2, 1
    results = []
    print(f"global batch {a.batch}; median of {a.steps} steps after {a.warmup} untimed; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| model | ranks x threads | step (ms) | images/s | vs K=1, 1 thread | allreduce (ms) | allreduce share |")
    print("|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        base = None
        for ranks, threads in ROWS:
            r = run_row(a, model, ranks, threads)
            base = base or r["images_per_s"]
            r["speedup"] = r["images_per_s"] / base
            results.append(r)
            print(f"| {model} ({r['gradient_mb']:.1f} MB of gradients) | {ranks} x {threads} | "
                  f"{1e3 * r['step_s']:.0f} | {r['images_per_s']:.1f} | {r['speedup']:.2f}x | "
                  f"{1e3 * r['allreduce_s']:.1f} | {100 * r['allreduce_share']:.1f} % |", flush=True)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
