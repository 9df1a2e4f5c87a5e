"""minialexnet/cpu.py: the process settings for speed, each checked in a fresh interpreter."""

import os
import subprocess
import sys

import pytest

REPORT = ("from minialexnet import cpu; import os; "
          "print(cpu.BLAS_SLEEPS_WHEN_IDLE, os.environ.get('OPENBLAS_THREAD_TIMEOUT'), cpu._kept)")


def run(code, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_THREAD_TIMEOUT", "MINIALEXNET_CPU_TUNING")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(base, **env),
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_blas_threads_sleep_when_minialexnet_comes_first():
    sleeps, timeout, kept = run("import minialexnet; " + REPORT)
    assert (sleeps, timeout) == ("True", "4")
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert kept == "True"


def test_too_late_when_numpy_was_loaded_first():
    sleeps, timeout, _ = run("import numpy; import minialexnet; " + REPORT)
    assert sleeps == "False"        # the variable is set, but OpenBLAS has read its settings


def test_a_setting_from_the_shell_is_kept():
    sleeps, timeout, _ = run("import numpy; import minialexnet; " + REPORT,
                             OPENBLAS_THREAD_TIMEOUT="10")
    assert (sleeps, timeout) == ("False", "10")


def test_tuning_can_be_turned_off():
    sleeps, timeout, kept = run("import minialexnet; " + REPORT, MINIALEXNET_CPU_TUNING="0")
    assert (sleeps, timeout, kept) == ("False", "None", "None")


def test_keep_freed_memory_is_idempotent_and_harmless():
    from minialexnet import backend, cpu
    first = cpu.keep_freed_memory()
    assert isinstance(first, bool) and cpu.keep_freed_memory() == first
    a = backend.np.ones((1 << 22,), dtype=backend.np.float32)   # 16 MB, freed and reused
    del a
    assert backend.np.ones((1 << 22,), dtype=backend.np.float32).sum() == 1 << 22


# How much resident memory a process gets back when it frees a touched 200 MB array.
GIVEN_BACK = ("import sys, minialexnet, numpy as np; from minialexnet import cpu\n"
              "if len(sys.argv) > 1: cpu.malloc_mode(sys.argv[1])\n"
              "rss = lambda: int([l for l in open('/proc/self/status') "
              "if l.startswith('VmRSS')][0].split()[1]) // 1024\n"
              "a = np.ones(50_000_000, np.float32); before = rss(); del a\n"
              "print(before - rss())")
glibc_only = pytest.mark.skipif(not os.path.exists("/proc/self/status")
                                or not sys.platform.startswith("linux"), reason="glibc only")


def given_back_mib(*args, **env):
    base = {k: v for k, v in os.environ.items() if k != "MINIALEXNET_CPU_TUNING"}
    out = subprocess.run([sys.executable, "-c", GIVEN_BACK, *args], env=dict(base, **env),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@glibc_only
def test_freed_memory_is_kept_and_glibc_mode_gives_it_back():
    from minialexnet import cpu
    if not cpu.keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    assert given_back_mib() < 20                              # kept for the next step
    assert given_back_mib(MINIALEXNET_CPU_TUNING="0") > 150   # glibc unmaps it
    assert given_back_mib("glibc") > 150                      # the benchmark's torch side
    assert given_back_mib("kept") < 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_setting_survives_a_training_step():
    code = ("import minialexnet; from minialexnet import cpu; from minialexnet.models import "
            "build_model; import numpy as np; m = build_model('fournet'); "
            "y = m.forward(np.zeros((2, 3, 32, 32), np.float32)); m.backward(y); "
            "print(cpu._kept, y.shape)")
    out = run(code)
    assert out[1:] == ["(2,", "10)"]
