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


def test_gemm_floor_times_the_library_s_matrix_multiplies():
    """The GEMMs the floor times do exactly the layer's arithmetic (forward, dW and
    dx when needed), and each conv's dx GEMM is the one its backward picks."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_torch as bt
    bt.import_torch()
    for name, layer, _, shape, need_dx in bt.layer_specs(2, tiny=True) + bt.fournet_layer_specs(True):
        fl = bt.layer_flops(layer, shape)
        gemms = bt.gemm_shapes(layer, shape, need_dx)
        assert sum(2 * m * k * n for m, k, n, _, _ in gemms) == (2 + need_dx) * fl, name
        if fl:
            assert bt.gemm_floor(layer, shape, need_dx, repeats=1) > 0, name
    conv = bt.Conv2D(8, 4, 3, 1, 1)                    # C_out <= C_in: transposed dx
    assert bt.gemm_shapes(conv, (2, 8, 5, 5), True)[2][:3] == (50, 36, 8)
    conv.dx_method = "col2im"
    assert bt.gemm_shapes(conv, (2, 8, 5, 5), True)[2][:3] == (50, 4, 72)
