"""One rank of an ``mpiexec`` test: the training CLI, with faults and a weight dump on request.

    mpiexec -n 2 python tests/mpi_worker.py [--dump DIR] [--die-at N | --hang-at N]
                                            [--fault-rank R] -- <train arguments>

--dump DIR      after the run, every rank writes DIR/rank<r>.npz: its model and momentum
                arrays (rank 0's checkpoint alone cannot show that the ranks agree)
--die-at N      rank R (default 1) kills itself with SIGKILL when it reaches step N
--hang-at N     rank R sleeps for an hour when it reaches step N
--bad-image-at N  rank R's batch of step N holds a corrupt image (a DataError)

Exits with the CLI's exit code.  The faults live here, not in the library.
"""

import argparse
import os
import signal
import sys
import time

import numpy as np

from minialexnet import data, train


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--dump")
    p.add_argument("--die-at", type=int)
    p.add_argument("--hang-at", type=int)
    p.add_argument("--bad-image-at", type=int)
    p.add_argument("--fault-rank", type=int, default=1)
    a = p.parse_args(argv[:split])
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()

    real_step = train.Trainer.train_step

    def step(self, x, y):
        if rank == a.fault_rank and self.step + 1 == a.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == a.fault_rank and self.step + 1 == a.hang_at:
            time.sleep(3600)
        if rank == a.fault_rank and self.step + 1 == a.bad_image_at:
            raise data.DataError("/data/train/n01440764/bad.JPEG: cannot decode (truncated file)")
        return real_step(self, x, y)
    train.Trainer.train_step = step

    real_run = train.run

    def run(cfg, log=print, given=None):
        t = real_run(cfg, log, given)
        if a.dump:
            arrays = {f"model.{k}": v for k, v in t.model.state_dict().items()}
            arrays.update({f"optim.{k}": v for k, v in t.optimizer.state_dict()["velocity"].items()})
            np.savez(os.path.join(a.dump, f"rank{rank}.npz"), step=t.step, **arrays)
        return t
    train.run = run
    sys.exit(train.main(argv[split + 1:]))


if __name__ == "__main__":
    main()
