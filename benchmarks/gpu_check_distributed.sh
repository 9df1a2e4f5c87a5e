#!/usr/bin/env bash
# Distributed training on real GPUs (issue 13): run on a machine with CUDA GPUs, CuPy,
# NCCL (pip install nvidia-nccl-cu12) and MPI (pip install mpi4py mpich).
#   1. the GPU test: NCCL ranks (one GPU each, at most 2) make the one-process step
#      and agree bit for bit (tests/test_distributed.py; it skips without GPUs);
#   2. a short small-AlexNet run on every GPU here, two towers per rank (--devices 0,1), so
#      the per-rank GPU shift and one NCCL communicator per tower device are exercised.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m pytest -q -p no:warnings tests/test_distributed.py -k "nccl"
n=$(python -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())")
ranks=$(( n / 2 ))
if [ "$ranks" -ge 1 ]; then
  out=$(mktemp -d)
  mpiexec -n "$ranks" python -m minialexnet.train --distributed nccl --backend cupy \
      --devices 0,1 --model small-alexnet --dataset synthetic --n-train 512 \
      --n-val 64 --batch-size $(( 64 * ranks )) --max-steps 4 --no-progress --out "$out"
  echo "gpu_check_distributed: $ranks ranks x 2 GPUs ran; files in $out"
else
  echo "gpu_check_distributed: one GPU: the two-tower run needs 2 per rank (skipped)"
fi
