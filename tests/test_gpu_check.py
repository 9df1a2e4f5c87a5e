"""benchmarks/gpu_check.sh: its no-GPU path, and that the tests it names exist."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def gpu_check(*args):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("MINIALEXNET_GPU_STANDIN", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)   # a starved CI box


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    from test_gpu import gpu_count
    if gpu_count() > 0:
        pytest.skip("a GPU is present")
    res = gpu_check()
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 0 and len(lines) == 1 and "no usable CUDA GPU" in lines[0], lines


def test_the_tests_it_runs_exist():
    res = gpu_check("--collect")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("test_gpu.py::test_conv_dx_paths_match_numpy[transposed",
                 "test_gpu.py::test_conv_dx_paths_match_numpy[col2im",
                 "test_gpu.py::test_model_forward_and_backward_match_numpy",
                 "test_gpu.py::test_sgd_matches_numpy",
                 "test_gpu.py::test_trainer_steps_with_devices_0_0_and_a_bit_identical_resume",
                 "test_gpu.py::test_two_devices_compute_what_one_device_computes",
                 "test_backend.py::test_cupy_matches_numpy"):
        assert name in res.stdout, f"{name} not collected:\n{res.stdout}"
