"""minialexnet/cpu.py: CPU tuning is opt-in (``tune()``); each case in a fresh interpreter."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = sys.platform.startswith("linux") and os.path.exists("/proc/self/status")
REPORT = "; t = cpu.tuned(); print(t.blas_sleeps_when_idle, t.malloc_keeps_freed, " \
         "os.environ.get('OPENBLAS_THREAD_TIMEOUT'), '|', t.note)"


def run(code, *args, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_THREAD_TIMEOUT", "MINIALEXNET_CPU_TUNING", "PYTHONPATH")}
    base["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code, *args], env=dict(base, **env),
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_importing_minialexnet_changes_nothing_and_loads_no_numpy():
    code = ("import os, sys; env = dict(os.environ); import minialexnet; "
            "print('numpy' in sys.modules); import minialexnet.train, minialexnet.evaluate, "
            "minialexnet.predict, minialexnet.models; from minialexnet import cpu; "
            "print(dict(os.environ) == env, cpu.tuned())")
    # No NumPy after `import minialexnet`: so the tools can tune before NumPy loads.
    assert run(code) == ["False", "True", "None"]


def test_tune_before_numpy_makes_blas_threads_sleep():
    blas, malloc, timeout, *_ = run("import os; from minialexnet import cpu; cpu.tune(); "
                                    "import numpy" + REPORT)
    assert (blas, timeout) == ("True", "4")
    if LINUX:
        assert malloc == "True"


def test_tune_after_numpy_says_the_blas_part_came_too_late():
    out = run("import os, numpy; from minialexnet import cpu; cpu.tune()" + REPORT)
    assert out[0] == "False" and "OPENBLAS_THREAD_TIMEOUT=4" in " ".join(out)
    if LINUX:
        assert out[1] == "True"        # malloc's part works at any time


def test_a_setting_from_the_shell_is_kept():
    out = run("import os, numpy; from minialexnet import cpu; cpu.tune()" + REPORT,
              OPENBLAS_THREAD_TIMEOUT="10")
    assert out[0] == "False" and out[2] == "10" and "is kept" in " ".join(out)
    out = run("import os, numpy; from minialexnet import cpu; cpu.tune()" + REPORT,
              OPENBLAS_THREAD_TIMEOUT="4")
    assert out[0] == "True"            # set before the process started: OpenBLAS read it


def test_tuning_can_be_turned_off():
    out = run("import os; from minialexnet import cpu; cpu.tune()" + REPORT,
              MINIALEXNET_CPU_TUNING="0")
    assert out[:3] == ["False", "False", "None"]


@pytest.mark.parametrize("tool", ["train", "evaluate", "predict"])
def test_the_command_line_tools_tune_before_numpy(tool):
    code = ("import os, runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
            "try: runpy.run_module('minialexnet.' + sys.argv[0], run_name='__main__')\n"
            "except SystemExit: pass\n"
            "from minialexnet import cpu; print('REPORT')" + REPORT)
    out = run(code, tool)
    blas, malloc, timeout, *_ = out[len(out) - out[::-1].index("REPORT"):]   # after --help
    assert (blas, timeout) == ("True", "4")


def test_keep_freed_memory_is_idempotent_and_harmless():
    from minialexnet import backend, cpu
    first = cpu.keep_freed_memory()
    assert isinstance(first, bool) and cpu.keep_freed_memory() == first
    a = backend.np.ones((1 << 22,), dtype=backend.np.float32)   # 16 MB, freed and reused
    del a
    assert backend.np.ones((1 << 22,), dtype=backend.np.float32).sum() == 1 << 22


# How much resident memory a process gets back when it frees a touched 200 MB array.
GIVEN_BACK = ("import sys, minialexnet, numpy as np; from minialexnet import cpu\n"
              "if sys.argv[1:] == ['tune']: cpu.tune()\n"
              "elif sys.argv[1:]: cpu.malloc_mode(sys.argv[1])\n"
              "rss = lambda: int([l for l in open('/proc/self/status') "
              "if l.startswith('VmRSS')][0].split()[1]) // 1024\n"
              "a = np.ones(50_000_000, np.float32); before = rss(); del a\n"
              "print(before - rss())")


def given_back_mib(*args, **env):
    return int(run(GIVEN_BACK, *args, **env)[-1])


@pytest.mark.skipif(not LINUX, reason="glibc only")
def test_freed_memory_is_kept_only_when_asked():
    from minialexnet import cpu
    if not cpu.keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    assert given_back_mib() > 150                             # import alone: glibc's own
    assert given_back_mib("tune") < 20                        # kept for the next step
    assert given_back_mib("tune", MINIALEXNET_CPU_TUNING="0") > 150
    assert given_back_mib("glibc") > 150                      # the benchmark's torch side
    assert given_back_mib("kept") < 20


@pytest.mark.skipif(not LINUX, reason="glibc only")
def test_malloc_setting_survives_a_training_step():
    code = ("import minialexnet; from minialexnet import cpu; cpu.tune(); from minialexnet.models "
            "import build_model; import numpy as np; m = build_model('fournet'); "
            "y = m.forward(np.zeros((2, 3, 32, 32), np.float32)); m.backward(y); "
            "print(cpu._kept, y.shape)")
    out = run(code)
    assert out[1:] == ["(2,", "10)"]
