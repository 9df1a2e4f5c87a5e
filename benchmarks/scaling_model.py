#!/usr/bin/env python
"""How AlexNet's training step scales over K workers: a model on paper, from the model's
own per-layer account (``model.summary()``: parameters and FLOPs of every layer).

    python benchmarks/scaling_model.py                       # the README's tables
    python benchmarks/scaling_model.py --per-rank 256 --tflops 200

Each worker (a rank: one GPU, or a GPU pair holding the paper's two towers) trains on
``--per-rank`` images per step (128, the paper's batch: weak scaling, the global
batch grows with K).  Communication is bandwidth only (no latency term), and it is
not overlapped with compute, as in minialexnet (the allreduce runs after backward):

    step = compute + bytes sent per worker / link bandwidth

Data parallel (what ``--distributed`` does): every step each worker ring-allreduces
the whole float32 gradient, 4 P bytes, sending 2 (K - 1) / K x 4 P.

The hybrid of "One weird trick for parallelizing convolutional neural networks"
(Krizhevsky 2014): the convolutions data parallel (allreduce of their few
parameters), fc6-fc8 model parallel (each worker holds 1/K of their neurons and runs
them on all K x 128 images).  So fc6's input (the last conv output) and the outputs of
fc6 and fc7 are all-gathered forward and their gradients reduce-scattered backward,
(K - 1) x 128 x width x 4 bytes each way per worker; fc8's logits are all-gathered
forward (the softmax needs whole rows; each worker computes its own columns' gradient).
No fc weight gradient travels.

Compute per step: a stated assumption (``--scenario``), not a measurement:
  gtx580  the paper's two GTX 580s: 90 epochs of 1.2 M images in five to six days
          (5.5 days), i.e. about 227 images/s for the pair
  h200    one H200 at an assumed 100 TFLOP/s effective on AlexNet's float32 (TF32)
          training step (3 x the forward FLOPs)
Links: 10, 25 and 100 Gb/s Ethernet, and NVLink at 450 GB/s per direction (an H200
board; only up to 8 workers share one).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LINKS = {"10 Gb/s": 10e9 / 8, "25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8, "NVLink": 450e9}
NVLINK_MAX = 8
KS = (1, 2, 4, 8, 16, 32, 64)
BYTES = 4                                          # float32


def account(model):
    """What the model says about itself: {"params", "conv_params", "fc_params",
    "flops", "conv_flops" (forward, per image), "fc_widths": [fc6 input, fc6, fc7, fc8
    outputs]}."""
    rows = model.summary().rows
    conv = sum(r["params"] for r in rows if r["kind"] == "conv")
    fc = sum(r["params"] for r in rows if r["kind"] == "linear")
    widths = {}
    for r in rows:
        if r["kind"] == "linear":
            base = r["layer"].split(".")[0]
            widths[base] = widths.get(base, 0) + r["output_shape"][0]
    fc_in = sum(r["output_shape"][0] for r in rows if r["kind"] == "flatten")
    return {"params": conv + fc, "conv_params": conv, "fc_params": fc,
            "flops": sum(r["flops"] for r in rows),
            "conv_flops": sum(r["flops"] for r in rows if r["kind"] == "conv"),
            "fc_widths": [fc_in] + list(widths.values())}


def ring_allreduce_bytes(nbytes, k):
    """Bytes each worker sends in a ring allreduce of ``nbytes`` over k workers."""
    return 2 * (k - 1) / k * nbytes


def data_parallel_bytes(acc, k):
    return ring_allreduce_bytes(BYTES * acc["params"], k)


def hybrid_bytes(acc, k, per_rank):
    """The one-weird-trick hybrid (module docstring): conv gradients + fc activations."""
    *both_ways, logits = acc["fc_widths"]
    activations = (k - 1) * per_rank * BYTES * (2 * sum(both_ways) + logits)
    return ring_allreduce_bytes(BYTES * acc["conv_params"], k) + activations


def _ms(seconds):
    ms = 1e3 * seconds
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def compute_seconds(acc, scenario, per_rank, tflops):
    if scenario == "gtx580":
        images_per_s = 90 * 1.2e6 / (5.5 * 86400)
        return per_rank / images_per_s
    return per_rank * 3 * acc["flops"] / (tflops * 1e12)


def table(acc, scenario, per_rank, tflops):
    """Markdown: efficiency (compute / step) for each K and link, both schemes."""
    tc = compute_seconds(acc, scenario, per_rank, tflops)
    head = ["K", *(f"data parallel, {l}" for l in LINKS), *(f"hybrid, {l}" for l in LINKS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in KS:
        cells = [str(k)]
        for bytes_of in (lambda k: data_parallel_bytes(acc, k),
                         lambda k: hybrid_bytes(acc, k, per_rank)):
            for link, bw in LINKS.items():
                if link == "NVLink" and k > NVLINK_MAX:
                    cells.append("-")
                    continue
                step = tc + bytes_of(k) / bw
                cells.append(f"{100 * tc / step:.0f} % ({_ms(step)})")
        lines.append("| " + " | ".join(cells) + " |")
    return tc, "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-rank", type=int, default=128, help="images per worker per step (128)")
    p.add_argument("--tflops", type=float, default=100.0,
                   help="effective TFLOP/s of one H200 on the step (assumed: 100)")
    p.add_argument("--model", default="alexnet", help="a minialexnet model name (alexnet)")
    a = p.parse_args(argv)
    from minialexnet.models import build_model
    acc = account(build_model(a.model))
    g = BYTES * acc["params"]
    print(f"{a.model}: {acc['params']:,} parameters = {g / 1e6:.1f} MB of float32 gradient per step")
    print(f"convolutions: {acc['conv_params']:,} parameters ({100 * acc['conv_params'] / acc['params']:.1f} %), "
          f"{100 * acc['conv_flops'] / acc['flops']:.0f} % of the {acc['flops'] / 1e9:.2f} GFLOP forward "
          f"per image; fc6-fc8: {acc['fc_params']:,} parameters; widths at the fc layers "
          f"(fc6 input, fc6, fc7, fc8 outputs): {', '.join(map(str, acc['fc_widths']))}")
    print(f"\nMB sent per worker per step ({a.per_rank} images per worker):\n")
    print("| K | data parallel | hybrid |\n|---|---|---|")
    for k in KS:
        print(f"| {k} | {data_parallel_bytes(acc, k) / 1e6:.0f} | {hybrid_bytes(acc, k, a.per_rank) / 1e6:.0f} |")
    for scenario, what in (("gtx580", "two GTX 580s per worker, 227 images/s (the paper's 5.5 days)"),
                           ("h200", f"one H200 per worker at an assumed {a.tflops:g} TFLOP/s")):
        tc, text = table(acc, scenario, a.per_rank, a.tflops)
        print(f"\nEfficiency (compute / step) and step time; compute {1e3 * tc:.1f} ms per step: {what}\n")
        print(text)


if __name__ == "__main__":
    main()
