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
    for heading in ("GEMM peak", "## Networks", "## Layers", "## Conv algorithms",
                    "## Peak memory", "## CuPy"):
        assert heading in text, f"{heading!r} missing from:\n{text}"
    r = json.loads(out.read_text())
    assert {n["network"] for n in r["nets"]} == {"alexnet", "small-alexnet", "fournet",
                                                 "alexnet-infer"}
    assert all(n["ratio"] > 0 for n in r["nets"])
    # 15 AlexNet layers and the four-layer net's 3 convolutions
    assert len(r["layers"]) == 18 and all(row["ratio"] > 0 for row in r["layers"])
    convs = [row for row in r["layers"] if "conv" in row["layer"]]
    assert len(convs) == 8 and all(row["gemm_ms"] > 0 and row["floor_ratio"] > 0 for row in convs)
    # The library's default algorithm, shown per layer, and GFLOP/s both ways (equal
    # for im2col: its own FLOPs are the direct convolution's).
    assert r["conv_algo"] == "im2col (default)"
    assert all(row["algorithm"] == "im2col" and row["gflops_own"] == pytest.approx(row["gflops"])
               for row in convs)
    assert all(set(n["conv_algorithms"].values()) == {"im2col"} for n in r["nets"])
    # Every applicable algorithm on AlexNet's conv2-conv5 and fournet's conv2-3: 5x5
    # layers try im2col and fft, 3x3 ones winograd and winograd4 too; one chosen each.
    algos = r["algos"]
    by_layer = {}
    for row in algos:
        by_layer.setdefault(row["layer"], []).append(row)
    assert len(by_layer) == 6
    for name, rows in by_layer.items():
        names = [row["algorithm"] for row in rows]
        assert names == (["im2col", "fft"] if "5x5" in name else
                         ["im2col", "fft", "winograd", "winograd4"]), name
        assert sum(row["chosen"] for row in rows) == 1 and rows[0]["autotune_s"] > 0
        assert all(row["ms"] > 0 and row["gflops_effective"] > 0 and row["gflops_own"] > 0
                   for row in rows)
        im2col, others = rows[0], rows[1:]
        assert im2col["own_over_direct"] == 1
        assert all(row["gflops_own"] / row["gflops_effective"] ==
                   pytest.approx(row["own_over_direct"]) for row in others)
    assert r["malloc_keeps_freed"] in (True, False) and r["torch_malloc"] == "glibc"
    assert r["memory_mib"]["ours"] > 0 and r["memory_mib"]["torch"] > 0
    # Without a GPU the CuPy section must say it was skipped.
    if r["cupy"].get("skipped"):
        assert "skipped" in text.split("## CuPy")[1]


def test_benchmark_layers_under_conv_algo_auto(tmp_path):
    """--conv-algo auto reaches every convolution: the stride-1 ones are timed on their
    first call (autotune_s) and run what was chosen; conv1 (stride 4) runs im2col."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1",
                          "--sections", "layers", "--conv-algo", "auto", "--json", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(out.read_text())
    assert r["conv_algo"] == "auto"
    convs = [row for row in r["layers"] if "conv" in row["layer"]]
    assert convs[0]["algorithm"] == "im2col" and convs[0]["autotune_s"] == 0   # conv1
    assert all(row["algorithm"] in ("im2col", "fft", "winograd", "winograd4") for row in convs)
    # (a layer of the same shape as one before it reuses that one's choice: 0 s)
    assert sum(row["autotune_s"] for row in convs[1:]) > 0
    assert "autotune (--conv-algo auto) took" in res.stdout


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
