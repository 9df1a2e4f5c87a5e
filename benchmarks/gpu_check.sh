#!/usr/bin/env bash
# The check for a machine with an NVIDIA GPU, in under 5 minutes, as one report:
# the tests of what only a GPU runs (tests/test_gpu.py: both conv dx paths, AlexNet
# forward and backward, SGD, Trainer steps with --devices 0,0 and their resume, the
# two-device exchange when two GPUs exist; and test_backend.py's per-layer CuPy
# checks), then the CuPy benchmark (AlexNet training step, batch 128, images/s).
#
#   bash benchmarks/gpu_check.sh              # the check (exit 1 if a test fails)
#   bash benchmarks/gpu_check.sh --collect    # list the tests it runs (no GPU needed)
#
# Without a usable GPU it says so in one line and exits 0.  PYTHON=... picks the
# interpreter (default: python).  Kernel compilation on a fresh machine takes part
# of the budget; CuPy caches the kernels for the next run (~/.cupy/kernel_cache).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TESTS=(tests/test_gpu.py
       tests/test_backend.py::test_cupy_matches_numpy
       tests/test_backend.py::test_cupy_linear_loss_and_dropout_train_mode)

if [ "${1:-}" = "--collect" ]; then
    exec "$PY" -m pytest -o addopts= --collect-only -q -p no:cacheprovider "${TESTS[@]}"
fi

gpus=$("$PY" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null || echo 0)
if [ "${gpus:-0}" = "0" ]; then
    echo "gpu_check: no usable CUDA GPU here (CuPy missing, no driver or no device): nothing to check"
    exit 0
fi

start=$(date +%s)
echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - <<'EOF'
import cupy
n = cupy.cuda.runtime.getDeviceCount()
names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
print(f"# {n} GPU(s): {', '.join(names)}; CuPy {cupy.__version__}, "
      f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
EOF

echo
echo "## Tests (what only a GPU runs, against NumPy)"
timeout 200 "$PY" -m pytest -o addopts= -q -rfEs -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -25
tests=${PIPESTATUS[0]}

echo
echo "## CuPy benchmark"
timeout 80 "$PY" benchmarks/bench_torch.py --sections cupy --repeats 5 2>&1 | sed -n '/## CuPy/,$p'
bench=${PIPESTATUS[0]}

verdict_t=$([ "$tests" = 0 ] && echo passed || echo "FAILED (exit $tests; 124: out of time)")
verdict_b=$([ "$bench" = 0 ] && echo ran || echo "FAILED (exit $bench; 124: out of time)")
echo
echo "gpu_check: tests $verdict_t; benchmark $verdict_b; $(( $(date +%s) - start )) s"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
