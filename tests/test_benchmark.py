"""The benchmark (benchmarks/bench_torch.py) runs end to end at a tiny size, so it cannot rot.

Tiny shapes, one repeat, no warm-up: this checks that every section runs and
reports what it should, not the numbers.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_torch.py"


def test_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1",
                          "--json", str(out)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    for heading in ("GEMM peak", "## Networks", "## Layers", "## Peak memory", "## CuPy"):
        assert heading in text, f"{heading!r} missing from:\n{text}"
    r = json.loads(out.read_text())
    assert {n["network"] for n in r["nets"]} == {"alexnet", "small-alexnet", "fournet",
                                                 "alexnet-infer"}
    assert all(n["ratio"] > 0 for n in r["nets"])
    # 15 AlexNet layers and the four-layer net's 3 convolutions
    assert len(r["layers"]) == 18 and all(row["ratio"] > 0 for row in r["layers"])
    convs = [row for row in r["layers"] if "conv" in row["layer"]]
    assert len(convs) == 8 and all(row["gemm_ms"] > 0 and row["floor_ratio"] > 0 for row in convs)
    assert r["malloc_keeps_freed"] in (True, False) and r["torch_malloc"] == "glibc"
    assert r["memory_mib"]["ours"] > 0 and r["memory_mib"]["torch"] > 0
    # Without a GPU the CuPy section must say it was skipped.
    if r["cupy"].get("skipped"):
        assert "skipped" in text.split("## CuPy")[1]
