#!/usr/bin/env python
"""minialexnet (NumPy) against PyTorch on the CPU: the same work, timed in turn.

    python benchmarks/bench_torch.py                   # everything, 2 threads
    python benchmarks/bench_torch.py --sections layers --batch 32
    python benchmarks/bench_torch.py --tiny            # seconds; what the test runs

Every comparison runs both sides in this one process, interleaved (A B A B ...)
after a warm-up, and reports medians and the ratio minialexnet / torch (below 1:
minialexnet is faster).  Ratios are steadier than absolute times on a shared host.
Both sides get the same number of threads: OpenBLAS and minialexnet's own thread
pool on one side, ``torch.set_num_threads`` on the other.

Sections:
    peak     float32 GEMM GFLOP/s on this machine (NumPy's BLAS): the yardstick
    nets     training step (forward, backward, SGD update) of whole networks, and
             inference (forward only) at batch 128
    layers   forward and backward of each AlexNet layer against its torch equivalent,
             with the algorithm each convolution ran and its GFLOP/s two ways
    algos    every convolution algorithm (minialexnet/conv/) on each conv layer's
             shape: time, GFLOP/s, which one "auto" picks and what picking cost
    memory   peak resident memory of one batch-128 AlexNet training step, each side
             in a fresh subprocess
    cupy     images/s on GPUs with --devices 0,0 (and 0,1 with two GPUs); skipped,
             saying so, without a GPU

GFLOP/s of a convolution are given two ways: "effective" counts the FLOPs of the
direct (im2col) convolution, whatever ran, so algorithms compare by time; "own"
counts the FLOPs the algorithm itself performed (FFT's products and transforms,
Winograd's tile products and transforms), so it says how well that arithmetic ran.

``--conv-algo`` sets MINIALEXNET_CONV_ALGO for the whole run (every minialexnet
convolution: im2col, fft, winograd, winograd4 where they apply, or auto); without it
the library's default, im2col, runs except in the algos section.

The library never imports torch; only this script (and the tests) do.
"""

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (2)")
    p.add_argument("--sections", default="peak,nets,layers,algos,memory,cupy",
                   help="comma-separated subset of peak,nets,layers,algos,memory,cupy")
    p.add_argument("--conv-algo", default=None,
                   choices=("auto", "im2col", "fft", "winograd", "winograd4"),
                   help="MINIALEXNET_CONV_ALGO for every minialexnet convolution "
                        "(default: as the environment says; unset: im2col)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per side (7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (2)")
    p.add_argument("--batch", type=int, default=None,
                   help="only this batch size (default: 32 and 128 for AlexNet, 128 else)")
    p.add_argument("--layer-batch", type=int, default=32, help="batch of the layer table (32)")
    p.add_argument("--nets", default="alexnet,small-alexnet,fournet,alexnet-infer",
                   help="which network rows to run")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes, 1 repeat: proves the script runs (used by the test)")
    p.add_argument("--torch-malloc", choices=("glibc", "kept"), default="glibc",
                   help="malloc settings while torch runs: glibc's own (as torch's users "
                        "get it; default) or minialexnet's (minialexnet/cpu.py)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Thread counts must be fixed before NumPy (OpenBLAS) and torch start.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIALEXNET_THREADS"):
        os.environ[var] = str(ARGS.threads)
    if ARGS.conv_algo:                 # the memory child inherits it
        os.environ["MINIALEXNET_CONV_ALGO"] = ARGS.conv_algo

import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# minialexnet's CPU settings (minialexnet/cpu.py) before NumPy, so that they reach
# OpenBLAS.  They are process-wide: torch, in this same process, runs under them too
# (malloc_for switches malloc per side).
from minialexnet import cpu  # noqa: E402

TUNING = cpu.tune() if ARGS is not None else None     # run as a script, not imported
import numpy as np  # noqa: E402

from minialexnet import backend, conv, parallel  # noqa: E402
from minialexnet.conv import autotune  # noqa: E402
from minialexnet.layers import (Conv2D, Dropout, Linear, LocalResponseNorm,  # noqa: E402
                                MaxPool2D, ReLU)

import ours_nets  # noqa: E402

torch = F = torch_nets = None


def import_torch():
    """torch is imported only when needed, so that the memory child measuring
    minialexnet does not carry torch's libraries in its resident memory."""
    global torch, F, torch_nets
    try:
        import torch as _torch
    except ImportError:  # the benchmark needs torch; the library does not
        return False
    import torch_nets as _tn
    torch, F, torch_nets = _torch, _torch.nn.functional, _tn
    return True


# ---------------------------------------------------------------- timing
SETTLE_S = 0.25
TORCH_MALLOC = "glibc"


def malloc_for(side):
    """Each side runs under the malloc settings its users get (see --torch-malloc)."""
    if TUNING is not None and TUNING.malloc_keeps_freed:
        cpu.malloc_mode("kept" if side == "ours" else TORCH_MALLOC)


def interleaved(fa, fb, repeats, warmup):
    """Median seconds of fa and fb, called in turn A B A B ... after a warm-up.

    Each function may return None or a dict of named sub-times (e.g. forward),
    whose medians are returned as well.  Before every timed call the process
    sleeps ``SETTLE_S``: both sides' thread pools busy-wait for a while after
    their last job (torch's OpenMP threads, OpenBLAS's workers), and without the
    pause each side would be timed while the other's idle threads still hold a
    core -- measured to add up to 30 % to whichever side runs second.  And each
    side runs under its own malloc settings (``malloc_for``): minialexnet's kept
    freed memory made torch's AlexNet step 25 % faster too, which is not what
    torch's users get.
    """
    for _ in range(warmup):
        malloc_for("ours")
        fa()
        malloc_for("torch")
        fb()
    ta, tb, sa, sb = [], [], [], []
    for _ in range(repeats):
        for f, t, s, side in ((fa, ta, sa, "ours"), (fb, tb, sb, "torch")):
            malloc_for(side)
            gc.collect()
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            parts = f()
            t.append(time.perf_counter() - t0)
            s.append(parts or {})

    def med_parts(s):
        keys = s[0].keys() if s else ()
        return {k: statistics.median(p[k] for p in s) for k in keys}
    malloc_for("ours")
    return statistics.median(ta), statistics.median(tb), med_parts(sa), med_parts(sb)


def gemm_peak(repeats=5, n=2048):
    """float32 GEMM GFLOP/s through NumPy's BLAS: the machine's practical peak."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


# ---------------------------------------------------------------- layer table
def rnd(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def channels_last(a):
    """The same NCHW values in channels-last memory, as minialexnet's conv layers
    hand them on (a transposed view; torch gets plain NCHW tensors)."""
    if a.ndim != 4:
        return a
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def layer_specs(b, tiny=False):
    """(name, our layer, torch function of (x, params), input shape, needs dx)."""
    if tiny:
        hw, c1, c2, c3, fc = 67, 8, 8, 8, 64
    else:
        hw, c1, c2, c3, fc = 227, 96, 128, 192, 4096
    h1 = (hw - 11) // 4 + 1
    p1 = (h1 - 3) // 2 + 1
    p2 = (p1 - 3) // 2 + 1
    p5 = (p2 - 3) // 2 + 1
    lrn_t = lambda x: F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)  # noqa: E731
    specs = [
        ("conv1 11x11/4 3->%d" % c1, Conv2D(3, c1, 11, 4), (b, 3, hw, hw), False),
        ("relu1", ReLU(), (b, c1, h1, h1), True),
        ("lrn1", LocalResponseNorm(5, 1e-4, 0.75, 2.0), (b, c1, h1, h1), True),
        ("pool1 3/2", MaxPool2D(3, 2), (b, c1, h1, h1), True),
        ("conv2 5x5 %d->%d (1 tower)" % (c1 // 2, c2), Conv2D(c1 // 2, c2, 5, 1, 2), (b, c1 // 2, p1, p1), True),
        ("lrn2", LocalResponseNorm(5, 1e-4, 0.75, 2.0), (b, 2 * c2, p1, p1), True),
        ("pool2 3/2", MaxPool2D(3, 2), (b, 2 * c2, p1, p1), True),
        ("conv3 3x3 %d->%d" % (2 * c2, 2 * c3), Conv2D(2 * c2, 2 * c3, 3, 1, 1), (b, 2 * c2, p2, p2), True),
        ("conv4 3x3 %d->%d (1 tower)" % (c3, c3), Conv2D(c3, c3, 3, 1, 1), (b, c3, p2, p2), True),
        ("conv5 3x3 %d->%d (1 tower)" % (c3, c2), Conv2D(c3, c2, 3, 1, 1), (b, c3, p2, p2), True),
        ("pool5 3/2", MaxPool2D(3, 2), (b, 2 * c2, p2, p2), True),
        ("fc6 %d->%d" % (2 * c2 * p5 * p5, fc), Linear(2 * c2 * p5 * p5, fc), (b, 2 * c2 * p5 * p5), True),
        ("dropout", Dropout(0.5), (b, fc), True),
        ("fc7 %d->%d" % (fc, fc), Linear(fc, fc), (b, fc), True),
        ("fc8 %d->1000" % fc, Linear(fc, 1000), (b, fc), True),
    ]
    out = []
    for name, layer, shape, dx in specs:
        if isinstance(layer, Conv2D):
            s, p = layer.stride, layer.padding
            fn = (lambda s, p: lambda x, W, bb: F.conv2d(x, W, bb, stride=s, padding=p))(s, p)
            layer.needs_input_grad = dx
        elif isinstance(layer, Linear):
            fn = F.linear
        elif isinstance(layer, ReLU):
            fn = F.relu
        elif isinstance(layer, LocalResponseNorm):
            fn = lrn_t
        elif isinstance(layer, MaxPool2D):
            fn = lambda x: F.max_pool2d(x, 3, 2)  # noqa: E731
        elif isinstance(layer, Dropout):
            fn = lambda x: F.dropout(x, 0.5, training=True)  # noqa: E731
        out.append((name, layer, fn, shape, dx))
    return out


def layer_flops(layer, shape):
    """Multiply-adds x 2 of forward; backward is counted as twice that (dx and dW)."""
    if isinstance(layer, Conv2D):
        co, oh, ow = layer.output_shape(shape[1:])
        kh, kw = layer.kernel_size
        return 2 * shape[0] * co * oh * ow * shape[1] * kh * kw
    if isinstance(layer, Linear):
        return 2 * shape[0] * layer.in_features * layer.out_features
    return 0


def own_flops(layer, shape, need_dx, algorithm):
    """FLOPs of forward + backward as ``algorithm`` performs them (im2col: the
    direct convolution's, as ``layer_flops`` counts them)."""
    if algorithm in (None, "im2col") or not isinstance(layer, Conv2D):
        return (2 + need_dx) * layer_flops(layer, shape)
    fwd, bwd = conv.get(algorithm).flops(shape, layer.params["W"].shape, layer.padding,
                                         need_dx)
    return fwd + bwd


def gemm_shapes(layer, shape, need_dx):
    """The matrix multiplies one forward + backward of ``layer`` runs, as the library
    runs them: (M, K, N, a_transposed, b_transposed), where a transposed operand is
    a transposed view (BLAS reads it in place), as in layers.py."""
    if isinstance(layer, Conv2D):
        n_img, c, h, w = shape
        co, oh, ow = layer.output_shape(shape[1:])
        kh, kw = layer.kernel_size
        m, k = n_img * oh * ow, kh * kw * c
        out = [(m, k, co, False, True),        # Y = cols @ W2.T
               (k, m, co, True, False)]        # dW2.T = cols.T @ dY
        if need_dx and layer._transposed_ok():  # dx = cols(dY) @ flipped W
            out.append((n_img * h * w, kh * kw * co, c, False, False))
        elif need_dx:                          # dcols = dY @ W2, then col2im
            out.append((m, co, k, False, False))
        return out
    if isinstance(layer, Linear):
        m, k, n = shape[0], layer.in_features, layer.out_features
        out = [(m, k, n, False, True),         # y = x @ W.T
               (n, m, k, True, False)]         # dW = dy.T @ x
        return out + ([(m, n, k, False, False)] if need_dx else [])   # dx = dy @ W
    return []


def gemm_floor(layer, shape, need_dx, repeats):
    """Seconds of the layer's matrix multiplies alone, on random operands of the same
    shapes and memory order (median of ``repeats``): what no im2col trick can get below."""
    total = 0.0
    for m, k, n, ta, tb in gemm_shapes(layer, shape, need_dx):
        a = rnd((k, m)).T if ta else rnd((m, k))
        b = rnd((n, k), seed=1).T if tb else rnd((k, n), seed=1)
        c = np.empty((m, n), np.float32)
        np.matmul(a, b, out=c)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        total += statistics.median(times)
    return total


def fournet_layer_specs(tiny=False):
    """The four-layer net's convolutions at batch 128 (32 px): the small-conv case."""
    b = 2 if tiny else 128
    specs = [("fournet conv1 5x5 3->32", Conv2D(3, 32, 5, 1, 2), (b, 3, 32, 32), False),
             ("fournet conv2 5x5 32->32", Conv2D(32, 32, 5, 1, 2), (b, 32, 15, 15), True),
             ("fournet conv3 5x5 32->64", Conv2D(32, 64, 5, 1, 2), (b, 32, 7, 7), True)]
    out = []
    for name, layer, shape, dx in specs:
        layer.needs_input_grad = dx
        fn = (lambda s, p: lambda x, W, bb: F.conv2d(x, W, bb, stride=s, padding=p))(1, 2)
        out.append((name, layer, fn, shape, dx))
    return out


def run_layers(args, peak):
    b = 2 if args.tiny else args.layer_batch
    rows = []
    print(f"\n## Layers: forward + backward, batch {b} (the fournet rows: batch "
          f"{2 if args.tiny else 128}), {args.threads} threads "
          f"(medians of {args.repeats}; ratio = minialexnet / torch)")
    print("(GEMMs: the layer's matrix multiplies alone, same shapes, random operands; "
          "floor = GEMMs / torch, the best ratio im2col + OpenBLAS could reach; algo: "
          "what the conv ran; GFLOP/s effective (direct-convolution FLOPs) / own (the "
          "algorithm's FLOPs))")
    print(f"{'layer':<30} {'ours fwd':>9} {'ours bwd':>9} {'torch fwd':>9} {'torch bwd':>9}"
          f" {'ratio':>6} {'GFLOP/s':>8} {'GEMMs':>7} {'floor':>6} {'algo':>9} {'own GF/s':>8}")
    specs = layer_specs(b, args.tiny) + fournet_layer_specs(args.tiny)
    for name, layer, fn, shape, need_dx in specs:
        x = rnd(shape)
        if isinstance(layer, LocalResponseNorm):
            x = np.abs(x) * np.float32(3)   # ReLU outputs, of a size where LRN matters
        x_ours = x if "conv1" in name else channels_last(x)   # the image is NCHW
        tuned = autotune.tune_seconds()
        y = layer.forward(x_ours)                 # (with --conv-algo auto: tunes here)
        tuned = autotune.tune_seconds() - tuned
        algo = getattr(layer, "last_algorithm", None)
        dy = rnd(y.shape, seed=1)
        dy_ours = channels_last(dy)
        params = [torch.tensor(layer.params[k], requires_grad=True) for k in ("W", "b")
                  if k in layer.params]
        tx = torch.tensor(x, requires_grad=need_dx)
        tdy = torch.tensor(dy)

        def ours():
            t0 = time.perf_counter()
            layer.forward(x_ours)
            t1 = time.perf_counter()
            layer.backward(dy_ours)
            return {"fwd": t1 - t0, "bwd": time.perf_counter() - t1}

        def theirs():
            t0 = time.perf_counter()
            ty = fn(tx, *params)
            t1 = time.perf_counter()
            ty.backward(tdy)
            t2 = time.perf_counter()
            tx.grad = None
            for q in params:
                q.grad = None
            return {"fwd": t1 - t0, "bwd": t2 - t1}

        ta, tb, pa, pb = interleaved(ours, theirs, args.repeats, args.warmup)
        fl = layer_flops(layer, shape)
        gf = (2 + need_dx) * fl / ta / 1e9 if fl else None   # forward, dW, dx
        ratio = ta / tb
        time.sleep(SETTLE_S)          # torch's idle threads must not slow the GEMMs
        floor = gemm_floor(layer, shape, need_dx, args.repeats) if fl else None
        own = own_flops(layer, shape, need_dx, algo) / ta / 1e9 if fl else None
        rows.append({"layer": name, "ours_fwd_ms": pa["fwd"] * 1e3, "ours_bwd_ms": pa["bwd"] * 1e3,
                     "torch_fwd_ms": pb["fwd"] * 1e3, "torch_bwd_ms": pb["bwd"] * 1e3,
                     "ours_ms": ta * 1e3, "torch_ms": tb * 1e3, "ratio": ratio,
                     "gflops": gf, "gemm_ms": floor and floor * 1e3,
                     "floor_ratio": floor and floor / tb, "algorithm": algo,
                     "gflops_own": own, "autotune_s": tuned})
        gfs = f"{gf:8.0f}" if gf else f"{'':>8}"
        fls = f"{floor * 1e3:7.1f} {floor / tb:6.2f} {algo or '':>9} {own:8.0f}" if floor else ""
        print(f"{name:<30} {pa['fwd'] * 1e3:9.1f} {pa['bwd'] * 1e3:9.1f} {pb['fwd'] * 1e3:9.1f}"
              f" {pb['bwd'] * 1e3:9.1f} {ratio:6.2f} {gfs} {fls}", flush=True)
    worst = max(rows, key=lambda r: r["ratio"])
    tot_a = sum(r["ours_ms"] for r in rows)
    tot_b = sum(r["torch_ms"] for r in rows)
    print(f"{'sum':<30} {'':>9} {'':>9} {'':>9} {'':>9} {tot_a / tot_b:6.2f}")
    print(f"slowest layer relative to torch: {worst['layer']} ({worst['ratio']:.2f}x); "
          f"GFLOP/s counts forward + backward of conv/fc, peak {peak:.0f}")
    tuned = sum(r["autotune_s"] for r in rows)
    if tuned:
        print(f"autotune (--conv-algo auto) took {tuned:.2f} s on the layers' first calls")
    return rows


# ---------------------------------------------------------------- conv algorithms
def conv_specs(args):
    """(name, conv, input shape, needs dx) of AlexNet's conv2-conv5 (one tower where
    the net splits them) and the four-layer net's conv2 and conv3, for --layer-batch."""
    b = 2 if args.tiny else args.layer_batch
    specs = [(n, layer, shape, dx) for n, layer, _, shape, dx in layer_specs(b, args.tiny)
             if isinstance(layer, Conv2D) and layer.stride == 1]
    return specs + [(n, layer, shape, dx) for n, layer, _, shape, dx in fournet_layer_specs(args.tiny)
                    if dx]


def run_algos(args, peak):
    """Every applicable algorithm on each conv shape (forward + backward, medians of
    --repeats after --warmup), then what "auto" chooses there and what choosing cost.
    conv1 (11x11, stride 4) is left out: only im2col applies (see layers.Conv2D)."""
    print(f"\n## Conv algorithms: forward + backward, {args.threads} threads (medians of "
          f"{args.repeats}; effective GFLOP/s: direct-convolution FLOPs / time, own: the "
          f"algorithm's FLOPs / time; * = what auto chose)")
    print(f"{'layer':<30} {'algorithm':>10} {'ms':>9} {'eff GF/s':>9} {'own GF/s':>9}"
          f" {'own/direct':>10}")
    rows = []
    for name, layer, shape, need_dx in conv_specs(args):
        x = channels_last(rnd(shape))
        direct = (2 + need_dx) * layer_flops(layer, shape)
        out = []
        for algo in conv.applicable(layer.kernel_size, layer.stride):
            layer.algorithm = algo
            y = layer.forward(x)
            dy = channels_last(rnd(y.shape, seed=1))
            layer.backward(dy)
            times = []
            for i in range(args.warmup + args.repeats):
                gc.collect()
                t0 = time.perf_counter()
                layer.forward(x)
                layer.backward(dy)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            own = own_flops(layer, shape, need_dx, algo)
            out.append({"layer": name, "algorithm": algo, "ms": t * 1e3,
                        "gflops_effective": direct / t / 1e9, "gflops_own": own / t / 1e9,
                        "own_over_direct": own / direct})
        autotune.clear()
        layer.algorithm = "auto"
        layer.forward(x)
        chosen, tune_s = layer.last_algorithm, autotune.tune_seconds()
        layer.algorithm = "im2col"
        for r in out:
            r.update(chosen=r["algorithm"] == chosen, autotune_s=tune_s)
            print(f"{name if r is out[0] else '':<30} {r['algorithm'] + ('*' if r['chosen'] else ''):>10}"
                  f" {r['ms']:9.1f} {r['gflops_effective']:9.0f} {r['gflops_own']:9.0f}"
                  f" {r['own_over_direct']:10.2f}", flush=True)
        print(f"{'':<30} {'autotune':>10} {tune_s * 1e3:9.1f} ms (choosing {chosen}: every "
              "algorithm's warm-up and timed run)")
        rows += out
    autotune.clear()
    print(f"(peak {peak:.0f} GFLOP/s; conv1 is 11x11 stride 4: only im2col applies)")
    return rows


# ---------------------------------------------------------------- networks
def net_configs(args):
    if args.tiny:
        return [("alexnet", 2, True, 67), ("small-alexnet", 4, True, 32),
                ("fournet", 4, True, 32), ("alexnet-infer", 2, False, 67)]
    configs = []
    for name in args.nets.split(","):
        if name == "alexnet":
            for b in ([args.batch] if args.batch else [32, 128]):
                configs.append(("alexnet", b, True, 227))
        elif name == "alexnet-infer":
            configs.append(("alexnet-infer", args.batch or 128, False, 227))
        else:
            configs.append((name, args.batch or 128, True, 32))
    return configs


def run_nets(args, peak):
    rows = []
    print(f"\n## Networks: training step (forward, backward, SGD momentum 0.9, weight "
          f"decay 5e-4) or inference, {args.threads} threads (medians of {args.repeats})")
    print(f"{'network':<16} {'batch':>5} {'px':>4} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}"
          f" {'ours img/s':>10} {'torch img/s':>11} {'ours %peak':>10} {'torch %peak':>11}")
    for name, b, train, px in net_configs(args):
        arch = "alexnet" if name == "alexnet-infer" else name
        classes = 10 if px <= 32 else (1000 if not args.tiny else 10)
        ours = ours_nets.Step(arch, b, px, classes, train=train, tiny=args.tiny)
        theirs = torch_nets.Step(arch, b, px, classes, train=train, tiny=args.tiny)
        tuned = autotune.tune_seconds()
        if autotune.override() == "auto":
            ours()                        # autotune on the first step, not in the timing
        tuned = autotune.tune_seconds() - tuned
        ta, tb, _, _ = interleaved(ours, theirs, args.repeats, args.warmup)
        algos = {r["layer"]: r["algorithm"] for r in ours.model.summary().rows
                 if r["kind"] == "conv"}
        flops = ours.flops()
        r = {"network": name, "batch": b, "px": px, "ours_ms": ta * 1e3, "torch_ms": tb * 1e3,
             "ratio": ta / tb, "ours_img_s": b / ta, "torch_img_s": b / tb,
             "ours_peak_frac": flops / ta / 1e9 / peak, "torch_peak_frac": flops / tb / 1e9 / peak,
             "conv_algorithms": algos, "autotune_s": tuned}
        rows.append(r)
        print(f"{name:<16} {b:>5} {px:>4} {ta * 1e3:9.1f} {tb * 1e3:9.1f} {ta / tb:6.2f}"
              f" {b / ta:10.1f} {b / tb:11.1f} {r['ours_peak_frac']:10.0%} {r['torch_peak_frac']:11.0%}",
              flush=True)
        shown = {k.split(".")[0]: v for k, v in algos.items()}     # towers alike
        print(f"{'':<16} conv algorithms: {', '.join(f'{k} {v}' for k, v in shown.items())}"
              + (f"; autotune {tuned:.2f} s" if tuned else ""))
        del ours, theirs
        gc.collect()
    return rows


# ---------------------------------------------------------------- memory
def memory_child(which, args):
    """Run a few training steps on one side only; print peak RSS in MiB."""
    import resource
    b, px = (2, 67) if args.tiny else (128, 227)
    classes = 10 if args.tiny else 1000
    if which == "ours":
        step = ours_nets.Step("alexnet", b, px, classes, train=True, tiny=args.tiny)
    else:
        import_torch()
        torch.set_num_threads(args.threads)
        step = torch_nets.Step("alexnet", b, px, classes, train=True, tiny=args.tiny)
    for _ in range(2):
        step()
    # VmHWM (this process's peak RSS): ru_maxrss would carry the parent's peak
    # across fork/exec.
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")]
    if hwm:
        print(int(hwm[0].split()[1]) / 1024)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_memory(args):
    b = 2 if args.tiny else 128
    print(f"\n## Peak memory (RSS) of an AlexNet training step, batch {b} (fresh process each)")
    out = {}
    for which in ("ours", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", which,
               "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
        env = dict(os.environ)
        if which == "torch" and args.torch_malloc == "glibc":
            env["MINIALEXNET_CPU_TUNING"] = "0"        # glibc's malloc, as torch users have it
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[which] = float(res.stdout.strip().splitlines()[-1])
    print(f"minialexnet {out['ours']:.0f} MiB, torch {out['torch']:.0f} MiB, "
          f"ratio {out['ours'] / out['torch']:.2f}")
    return out


# ---------------------------------------------------------------- cupy
def run_cupy(args):
    print("\n## CuPy (GPU)")
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or no driver
        print(f"skipped: no usable GPU ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return {"skipped": True}
    if n == 0:
        print("skipped: CUDA reports no GPU")
        return {"skipped": True}
    res = {}
    for devices in ([(0, 0)] + ([(0, 1)] if n >= 2 else [])):
        ips = ours_nets.cupy_images_per_second(devices, tiny=args.tiny, repeats=args.repeats)
        key = ",".join(map(str, devices))
        res[key] = ips
        print(f"--devices {key}: {ips:.1f} img/s (AlexNet training step, batch 128)")
    if n < 2:
        print("--devices 0,1: skipped (one GPU)")
    return res


# ---------------------------------------------------------------- main
def main(args):
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    sections = set(args.sections.split(","))
    # The CuPy section (gpu_check.sh runs it alone) and the GEMM peak need no torch.
    if sections & {"nets", "layers", "memory"} and not import_torch():
        sys.exit("bench_torch.py needs PyTorch (pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu)")
    if torch is not None:
        torch.set_num_threads(args.threads)
    parallel.set_threads(args.threads)
    backend.use("numpy", seed=0)
    global SETTLE_S, TORCH_MALLOC
    TORCH_MALLOC = args.torch_malloc
    if args.tiny:
        args.repeats, args.warmup, SETTLE_S = 1, 0, 0.0
    torch_version = torch.__version__ if torch is not None else "(not used)"
    print(f"# minialexnet vs PyTorch {torch_version} CPU, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, numpy {np.__version__}, python {platform.python_version()}")
    print(f"# minialexnet/cpu.py tune(): OpenBLAS threads sleep when idle: "
          f"{TUNING.blas_sleeps_when_idle}; freed memory kept by malloc: "
          f"{TUNING.malloc_keeps_freed} (torch's side: "
          f"{'glibc defaults' if args.torch_malloc == 'glibc' else 'the same'})")
    results = {"threads": args.threads, "torch": torch_version, "numpy": np.__version__,
               "conv_algo": autotune.override() or "im2col (default)",
               "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "blas_sleeps_when_idle": TUNING.blas_sleeps_when_idle,
               "malloc_keeps_freed": TUNING.malloc_keeps_freed, "torch_malloc": args.torch_malloc}
    peak = gemm_peak(repeats=1 if args.tiny else 5, n=256 if args.tiny else 2048)
    results["gemm_peak_gflops"] = peak
    print(f"float32 GEMM peak (NumPy BLAS, {args.threads} threads): {peak:.0f} GFLOP/s")
    if "nets" in sections:
        results["nets"] = run_nets(args, peak)
    if "layers" in sections:
        results["layers"] = run_layers(args, peak)
    if "algos" in sections:
        results["algos"] = run_algos(args, peak)
    if "memory" in sections:
        results["memory_mib"] = run_memory(args)
    if "cupy" in sections:
        results["cupy"] = run_cupy(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(ARGS)
