"""Convolution three ways (minialexnet/conv/): each algorithm equals the reference
Conv2D, its gradients are its forward's derivatives, and autotune is deterministic.

Accuracy in float32, on the four-layer net's, the small AlexNet's and the paper's
AlexNet's conv shapes (batch 1-2) and on odd ones.  The reference Conv2D runs in
float64 on the same float32 numbers, and the error of each of y, dx, dW and db is

    max |fast - reference| / max |reference|          (over the whole array)

Bounds (``BOUND``), about 3x the worst measured on these shapes:

    im2col 2e-6 (measured <= 7e-7),  fft 2e-6 (<= 3e-7: FFT sums have error
    growing as log n, the GEMM's as sqrt n),  winograd F(2x2, 3x3) 2e-6 (<= 7e-7),
    winograd4 F(4x4, 3x3) 2e-5 (<= 8e-6: its matrices hold 8 and 1/24).

In float64 every algorithm equals the reference to 1e-12 (measured <= 4e-15), and
float64 central differences (minialexnet/gradcheck.py) check each backward.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minialexnet import backend, conv, reference
from minialexnet.conv import autotune, fft, winograd
from minialexnet.errors import ConfigError
from minialexnet.gradcheck import gradcheck
from minialexnet.layers import Conv2D, HyperparameterError, ReLU
from minialexnet.models import build_model

import cupy_surface

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALGOS = ("im2col", "fft", "winograd", "winograd4")
BOUND = {"im2col": 2e-6, "fft": 2e-6, "winograd": 2e-6, "winograd4": 2e-5}
BOUND64 = 1e-12


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """NumPy, no override, an empty autotune cache, before and after each test."""
    monkeypatch.delenv(autotune.ENV, raising=False)
    backend.use("numpy", seed=0)
    autotune.clear()
    yield
    autotune.clear()
    backend.use("numpy", seed=0)


def rnd(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


#  name: (C_in, C_out, kernel, padding, input shape); stride 1 throughout (FFT and
#  Winograd need it).  models.py's shapes: FourLayerNet's conv1-3, SmallAlexNet's
#  (width 1, 32 px, per tower), AlexNet's conv2-conv5 (per tower where split).
SHAPES = {
    "fournet-conv1": (3, 32, 5, 2, (2, 3, 32, 32)),
    "fournet-conv2": (32, 32, 5, 2, (2, 32, 15, 15)),
    "fournet-conv3": (32, 64, 5, 2, (2, 32, 7, 7)),
    "small-conv2": (16, 32, 5, 2, (2, 16, 15, 15)),
    "small-conv3": (64, 48, 3, 1, (2, 64, 7, 7)),
    "small-conv5": (48, 32, 3, 1, (2, 48, 7, 7)),
    "alexnet-conv2": (48, 128, 5, 2, (1, 48, 27, 27)),
    "alexnet-conv3": (256, 192, 3, 1, (1, 256, 13, 13)),
    "alexnet-conv4": (192, 192, 3, 1, (1, 192, 13, 13)),
    "alexnet-conv5": (192, 128, 3, 1, (1, 192, 13, 13)),
    "odd-1ch-k3-p0": (1, 2, 3, 0, (2, 1, 9, 13)),
    "odd-3ch-k5-p0": (3, 4, 5, 0, (2, 3, 11, 8)),
    "odd-k3-p2": (3, 5, 3, 2, (1, 3, 6, 10)),
    "odd-1ch-k5-p1": (1, 3, 5, 1, (2, 1, 8, 5)),
    "odd-k3x5-p1": (3, 2, (3, 5), 1, (1, 3, 7, 9)),
}


def _kernel(k):
    return (k, k) if isinstance(k, int) else tuple(k)


def reference_case(cin, cout, k, p, shape, seed=0):
    """float32 x, W, b, dy and the reference's float64 y, dx, dW, db on them."""
    kh, kw = _kernel(k)
    x = rnd(*shape, seed=seed)
    W = rnd(cout, cin, kh, kw, seed=seed + 1) / np.float32(np.sqrt(cin * kh * kw))
    b = rnd(cout, seed=seed + 2)
    r = reference.Conv2D(cin, cout, k, padding=p, dtype=np.float64)
    r.params = {"W": W.astype(np.float64), "b": b.astype(np.float64)}
    y = r.forward(x.astype(np.float64))
    dy = rnd(*y.shape, seed=seed + 3)
    dx = r.backward(dy.astype(np.float64))
    return (x, W, b, dy), (y, dx, r.grads["W"], r.grads["b"])


@pytest.mark.parametrize("name", list(SHAPES))
def test_float32_each_algorithm_equals_the_reference(name):
    cin, cout, k, p, shape = SHAPES[name]
    (x, W, b, dy), want = reference_case(cin, cout, k, p, shape)
    ran = []
    for algo in conv.applicable(_kernel(k), 1):
        f = Conv2D(cin, cout, k, padding=p, algorithm=algo)
        f.params = {"W": W.copy(), "b": b.copy()}
        got = (f.forward(x), f.backward(dy), f.grads["W"], f.grads["b"])
        assert f.last_algorithm == algo
        for what, g, w in zip(("y", "dx", "dW", "db"), got, want):
            assert g.dtype == np.float32 and g.shape == w.shape, (algo, what)
            err = rel_err(g, w)
            assert err < BOUND[algo], f"{name} {algo} {what}: error {err:.1e} >= {BOUND[algo]}"
        ran.append(algo)
    assert ran == (["im2col", "fft", "winograd", "winograd4"] if _kernel(k) == (3, 3)
                   else ["im2col", "fft"])


FLOAT64_CASES = [   # cin, cout, kernel, padding, input shape
    (3, 4, 3, 1, (2, 3, 9, 8)),
    (4, 2, 5, 2, (3, 4, 7, 10)),
    (2, 3, 3, 0, (1, 2, 6, 5)),
    (2, 5, 3, 2, (2, 2, 4, 7)),
    (2, 3, (3, 2), 1, (2, 2, 5, 6)),
]


@pytest.mark.parametrize("algo,case", [(a, c) for c in FLOAT64_CASES
                                       for a in conv.applicable(_kernel(c[2]), 1)[1:]])
@pytest.mark.parametrize("input_grad", [True, False])
def test_float64_equals_the_reference(algo, case, input_grad):
    """Exact up to float64 rounding, on NCHW and channels-last input, with and
    without dx, and the output stored channels last as im2col's is."""
    cin, cout, k, p, shape = case
    r = reference.Conv2D(cin, cout, k, padding=p, weight_std=1.0, bias=0.3, dtype=np.float64)
    f = Conv2D(cin, cout, k, padding=p, dtype=np.float64, algorithm=algo)
    f.params = {key: v.copy() for key, v in r.params.items()}
    f.needs_input_grad = r.needs_input_grad = input_grad
    x = rnd(*shape, dtype=np.float64)
    for xin in (x, channels_last(x)):
        y = r.forward(x)
        got = f.forward(xin)
        assert got.shape == y.shape and got.transpose(0, 2, 3, 1).flags.c_contiguous
        assert rel_err(got, y) < BOUND64
        dy = rnd(*y.shape, seed=1, dtype=np.float64)
        dx_r, dx_f = r.backward(dy), f.backward(channels_last(dy))
        if input_grad:
            assert dx_f.shape == x.shape and rel_err(dx_f, dx_r) < BOUND64
        else:
            assert dx_f is None and dx_r is None
        for key in ("W", "b"):
            assert f.grads[key].shape == r.grads[key].shape
            assert rel_err(f.grads[key], r.grads[key]) < BOUND64, key


@pytest.mark.parametrize("algo,k,p,shape", [
    ("fft", 3, 1, (2, 2, 5, 4)),
    ("fft", 5, 2, (1, 2, 4, 6)),
    ("fft", (2, 3), 0, (1, 2, 5, 5)),
    ("winograd", 3, 1, (2, 2, 5, 4)),
    ("winograd", 3, 0, (1, 2, 6, 5)),
    ("winograd4", 3, 2, (1, 2, 5, 4)),
])
def test_gradients_by_finite_differences(algo, k, p, shape):
    layer = Conv2D(shape[1], 3, k, padding=p, weight_std=1.0, bias=0.3, algorithm=algo)
    errors = gradcheck(layer, rnd(*shape, dtype=np.float64))
    assert layer.last_algorithm == algo
    assert all(e < 1e-6 for e in errors.values()), errors


def test_winograd_matrices_compute_a_3_tap_correlation():
    """y = A^T [(G g) . (B^T d)] is m outputs of sum_u g[u] d[i + u] (1-D)."""
    g, d = rnd(3, dtype=np.float64), rnd(6, seed=1, dtype=np.float64)
    for m, (BT, G, AT) in winograd.MATRICES.items():
        y = np.array(AT) @ ((np.array(G) @ g) * (np.array(BT) @ d[:m + 2]))
        np.testing.assert_allclose(y, [g @ d[i:i + 3] for i in range(m)], atol=1e-14)


def test_fft_lengths_have_only_factors_2_3_5():
    assert [fft.fast_length(n) for n in (1, 7, 11, 15, 17, 31, 97)] == \
        [1, 8, 12, 15, 18, 32, 100]


def test_own_flops_show_the_savings_the_papers_state():
    """Winograd's products do 2.25x (F(2x2)) and 4x (F(4x4)) fewer multiplies than the
    direct convolution; FFT's about 8x fewer on AlexNet's conv2 (all on whole tiles)."""
    x, w = (128, 192, 12, 12), (192, 192, 3, 3)      # 12 = whole tiles of 2 and 4
    direct = 2 * 128 * 192 * 12 * 12 * 192 * 9
    assert conv.get("im2col").flops(x, w, 1)[0] == direct
    for name, gain in (("winograd", 2.25), ("winograd4", 4)):
        prod = 2 * (2 + {"winograd": 2, "winograd4": 4}[name]) ** 2 * 128 * \
            (12 // (2 if name == "winograd" else 4)) ** 2 * 192 * 192
        assert direct / prod == gain
        fwd, bwd = conv.get(name).flops(x, w, 1)
        assert prod < fwd < 1.5 * prod and bwd > fwd
    fwd, _ = conv.get("fft").flops((128, 48, 27, 27), (128, 48, 5, 5), 2)
    direct2 = conv.get("im2col").flops((128, 48, 27, 27), (128, 48, 5, 5), 2)[0]
    products = 8 * 32 * 17 * 128 * 48 * 128           # F = 32 x 17 frequencies
    assert products < fwd and 7 < direct2 / products < 9


# ---------------------------------------------------------------- choosing
def test_default_is_im2col_and_never_times(monkeypatch):
    monkeypatch.setattr(autotune, "choose", lambda *a: pytest.fail("timed"))
    layer = Conv2D(3, 4, 3, padding=1)
    assert layer.algorithm == "im2col" and layer.last_algorithm is None
    layer.forward(rnd(2, 3, 5, 5))
    assert layer.last_algorithm == "im2col" and autotune.choices() == {}
    model = build_model("fournet")
    assert {l.algorithm for _, l, _ in model.named_layers() if hasattr(l, "algorithm")} \
        == {"im2col"}


def test_importing_times_nothing():
    code = ("import minialexnet.layers, minialexnet.models\n"
            "from minialexnet.conv import autotune\n"
            "assert autotune.choices() == {} and autotune.tune_seconds() == 0\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("make,words", [
    (lambda: Conv2D(3, 4, 11, stride=4, algorithm="fft"), "'fft' does not apply to stride 4"),
    (lambda: Conv2D(3, 4, 5, stride=2, algorithm="fft"), "'fft' does not apply to stride 2"),
    (lambda: Conv2D(3, 4, 3, stride=2, algorithm="winograd"), "stride 2"),
    (lambda: Conv2D(3, 4, 5, padding=2, algorithm="winograd"), "a 5x5 kernel"),
    (lambda: Conv2D(3, 4, (3, 2), algorithm="winograd4"), "a 3x2 kernel"),
    (lambda: Conv2D(3, 4, 3, algorithm="gemm"), "algorithm must be one of auto, im2col"),
])
def test_an_algorithm_that_does_not_apply_is_refused(make, words):
    with pytest.raises(HyperparameterError) as e:
        make()
    msg = str(e.value)
    assert msg.startswith("Conv2D: ") and words in msg and "\n" not in msg


def test_an_inapplicable_setting_made_after_construction_is_refused_at_forward():
    layer = Conv2D(3, 4, 5, padding=2)
    layer.algorithm = "winograd"
    with pytest.raises(HyperparameterError, match="5x5 kernel"):
        layer.forward(rnd(1, 3, 6, 6))


def fake_measure(times, calls):
    def measure(self, name, x):
        calls.append(name)
        return times[name]
    return measure


def test_auto_times_each_candidate_once_per_shape_and_keeps_the_fastest(monkeypatch):
    calls = []
    times = {"im2col": 3.0, "fft": 2.0, "winograd": 1.0, "winograd4": 4.0}
    monkeypatch.setattr(Conv2D, "_measure", fake_measure(times, calls))
    monkeypatch.setattr(autotune, "rounds", 1)        # (rounds: the test below)
    layer = Conv2D(4, 3, 3, padding=1, algorithm="auto")
    x = rnd(2, 4, 6, 6)
    layer.forward(x)
    assert calls == list(ALGOS) and layer.last_algorithm == "winograd"
    layer.backward(np.ones((2, 3, 6, 6), np.float32))
    other = Conv2D(4, 3, 3, padding=1, algorithm="auto")     # another layer, same shape
    other.forward(x)
    assert calls == list(ALGOS) and other.last_algorithm == "winograd"
    layer.forward(rnd(3, 4, 6, 6))                           # a new batch size: timed
    assert calls == list(ALGOS) * 2
    layer.eval().forward(x)                                  # eval is its own key
    assert len(calls) == 12 and len(autotune.choices()) == 3
    five = Conv2D(4, 3, 5, padding=2, algorithm="auto")      # 5x5: Winograd not tried
    five.forward(x)
    assert calls[12:] == ["im2col", "fft"] and five.last_algorithm == "fft"
    one = Conv2D(3, 4, 11, stride=4, algorithm="auto")       # conv1: nothing to time
    one.forward(rnd(1, 3, 19, 19))
    assert len(calls) == 14 and one.last_algorithm == "im2col"


def test_an_algorithm_that_runs_out_of_memory_is_not_chosen(monkeypatch):
    def measure(self, name, x):
        if name == "fft":
            raise MemoryError("out of memory allocating 1 TB")
        return {"im2col": 2.0, "winograd": 3.0, "winograd4": 4.0}[name]
    monkeypatch.setattr(Conv2D, "_measure", measure)
    layer = Conv2D(4, 3, 3, padding=1, algorithm="auto")
    layer.forward(rnd(2, 4, 6, 6))
    assert layer.last_algorithm == "im2col"
    assert list(autotune.timings().values())[0]["fft"] == float("inf")


def test_auto_timing_for_real_leaves_the_layer_as_a_plain_forward_would():
    """Really timed: the candidates ran, the choice is one of them, the time is
    counted, the layer's gradients from before are kept until its own backward,
    and forward and backward equal the reference."""
    (x, W, b, dy), want = reference_case(4, 3, 3, 1, (2, 4, 7, 6))
    layer = Conv2D(4, 3, 3, padding=1, algorithm="auto")
    layer.params = {"W": W.copy(), "b": b.copy()}
    layer.grads = {"W": "last step's"}
    y = layer.forward(x)
    (key, chosen), = autotune.choices().items()
    assert key == "numpy float32 train+dx x2x4x7x6 w3x4x3x3 s1 p1"
    assert chosen == layer.last_algorithm and set(autotune.timings()[key]) == set(ALGOS)
    assert autotune.tune_seconds() > 0 and layer.grads == {"W": "last step's"}
    got = (y, layer.backward(dy), layer.grads["W"], layer.grads["b"])
    for g, w in zip(got, want):
        assert rel_err(g, w) < BOUND[chosen]


def test_choose_takes_rounds_in_turn_and_the_fastest_round_counts(monkeypatch):
    """A load that struck one candidate's timing does not decide: im2col's second
    round was slow (busy cores), its first the fastest of all."""
    order, seconds = [], {"im2col": [1.0, 5.0], "fft": [2.0, 2.0], "winograd": [3.0, 3.0]}

    def measure(name):
        order.append(name)
        return seconds[name][sum(n == name for n in order) - 1]
    monkeypatch.setattr(autotune, "rounds", 2)
    assert autotune.choose("k", list(seconds), measure) == "im2col"
    assert order == ["im2col", "fft", "winograd"] * 2
    assert autotune.timings()["k"] == {"im2col": 1.0, "fft": 2.0, "winograd": 3.0}


def test_a_timing_is_one_warm_up_then_the_fastest_of_repeats(monkeypatch):
    calls = []
    monkeypatch.setattr(autotune, "repeats", 3)
    assert autotune.time_call(lambda: calls.append(1)) >= 0 and len(calls) == 4


def test_the_same_cache_gives_the_same_choice_and_times_nothing(monkeypatch, tmp_path):
    layer = Conv2D(4, 3, 3, padding=1, algorithm="auto")
    x = rnd(2, 4, 6, 6)
    monkeypatch.setattr(Conv2D, "_measure", fake_measure(
        {"im2col": 3.0, "fft": 1.0, "winograd": 2.0, "winograd4": 4.0}, []))
    layer.forward(x)
    path = autotune.save(tmp_path / "algos.json")
    saved = json.loads(open(path).read())
    assert saved["choices"] == autotune.choices() and list(saved["choices"].values()) == ["fft"]
    # A new process, in effect: nothing chosen; then the saved choices loaded.
    autotune.clear()
    monkeypatch.setattr(Conv2D, "_measure", lambda *a: pytest.fail("timed again"))
    autotune.load(path)
    for _ in range(2):
        fresh = Conv2D(4, 3, 3, padding=1, algorithm="auto")
        fresh.forward(x)
        assert fresh.last_algorithm == "fft"
    assert autotune.state() == saved
    autotune.load_state(autotune.state())                     # the checkpoint's way
    assert autotune.choices() == saved["choices"]
    autotune.load_state(None)                                 # an old checkpoint: none
    assert autotune.choices() == {}


def test_the_environment_override_wins(monkeypatch):
    k = autotune.key((2, 4, 6, 6), (3, 4, 3, 3), 1, 1, np.float32, True, True)
    autotune.load_state({"format": autotune.FORMAT, "version": 1, "choices": {k: "fft"}})
    monkeypatch.setattr(Conv2D, "_measure", lambda *a: pytest.fail("timed"))
    x = rnd(2, 4, 6, 6)
    auto, fixed = Conv2D(4, 3, 3, padding=1, algorithm="auto"), Conv2D(4, 3, 3, padding=1)
    monkeypatch.setenv(autotune.ENV, "winograd")
    for layer in (auto, fixed):
        layer.forward(x)
        assert layer.last_algorithm == "winograd"              # over the cache and "im2col"
    conv1 = Conv2D(3, 4, 11, stride=4, algorithm="auto")
    conv1.forward(rnd(1, 3, 19, 19))
    assert conv1.last_algorithm == "im2col"                    # where it does not apply
    monkeypatch.setenv(autotune.ENV, "auto")                   # autotune for every layer
    fixed.forward(x)
    assert fixed.last_algorithm == "fft"                       # the cached choice
    monkeypatch.setenv(autotune.ENV, "fastest")
    with pytest.raises(ConfigError, match="MINIALEXNET_CONV_ALGO='fastest': expected one of"):
        fixed.forward(x)


@pytest.mark.parametrize("content,words", [
    ("not json", "cannot read conv algorithm choices"),
    ('{"format": "something else", "choices": {}}', "not a 'minialexnet conv algorithms'"),
    ('{"format": "minialexnet conv algorithms", "version": 9, "choices": {}}', "version 9"),
    ('{"format": "minialexnet conv algorithms", "version": 1, "choices": {"k": "gemm"}}',
     "'gemm' for 'k' is not an algorithm"),
])
def test_bad_choice_files_are_refused_in_one_line(tmp_path, content, words):
    p = tmp_path / "algos.json"
    p.write_text(content)
    with pytest.raises(ConfigError) as e:
        autotune.load(p)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        autotune.load(tmp_path / "missing.json")


def test_a_cached_choice_that_does_not_apply_is_refused():
    k = autotune.key((1, 3, 8, 8), (4, 3, 5, 5), 1, 2, np.float32, True, True)
    autotune.load_state({"format": autotune.FORMAT, "version": 1, "choices": {k: "winograd"}})
    with pytest.raises(ConfigError, match="'winograd' was chosen .* does not apply"):
        Conv2D(3, 4, 5, padding=2, algorithm="auto").forward(rnd(1, 3, 8, 8))


# ---------------------------------------------------------------- in a model
@pytest.mark.parametrize("algo", ["fft", "winograd", "auto"])
def test_a_model_under_the_override_equals_the_reference_model(algo, monkeypatch):
    """The whole small AlexNet in float64 (towers stacked where they share an input),
    every conv by ``algo`` where it applies; the summary says what each ran."""
    x, dlogits = rnd(2, 3, 32, 32, dtype=np.float64), rnd(2, 10, seed=1, dtype=np.float64)
    kw = dict(width=0.25, dtype="float64", init_std=0.2)
    ref = build_model("small-alexnet", layers="reference", **kw).eval()
    want, want_dx = ref.forward(x), ref.backward(dlogits)
    monkeypatch.setenv(autotune.ENV, algo)
    model = build_model("small-alexnet", **kw).eval()
    model.load_state_dict(ref.state_dict())
    assert rel_err(model.forward(x), want) < BOUND64
    assert rel_err(model.backward(dlogits), want_dx) < BOUND64
    grads = ref.grads()
    for name, g in model.grads().items():
        assert rel_err(g, grads[name]) < BOUND64, name
    ran = {r["layer"].split(".")[0]: r["algorithm"] for r in model.summary().rows
           if r["kind"] == "conv"}
    if algo == "auto":      # conv1 and conv3 stacked, conv2, conv4, conv5 per tower
        assert set(ran.values()) <= set(ALGOS) and len(autotune.choices()) == 5
    else:                   # at 32 px conv1 is 5x5 stride 1, like conv2
        five = "fft" if algo == "fft" else "im2col"
        assert (ran["conv1"], ran["conv2"]) == (five, five)
        assert ran["conv3"] == ran["conv4"] == ran["conv5"] == algo
    assert "conv algorithm" in str(model.summary())


def test_summary_shows_the_setting_before_and_the_choice_after_a_forward(monkeypatch):
    monkeypatch.setattr(Conv2D, "_measure", fake_measure(
        {"im2col": 3.0, "fft": 1.0, "winograd": 2.0, "winograd4": 4.0}, []))
    model = build_model("fournet", widths=(4, 4, 4))
    for _, layer, _ in model.named_layers():
        if hasattr(layer, "algorithm"):
            layer.algorithm = "auto"
    rows = lambda: [r["algorithm"] for r in model.summary().rows if r["kind"] == "conv"]  # noqa
    assert rows() == ["auto"] * 3
    model.forward(rnd(2, 3, 32, 32))
    assert rows() == ["fft (auto)"] * 3
    assert all(r["algorithm"] == "" for r in model.summary().rows if r["kind"] != "conv")


def test_stacked_tower_convs_follow_the_towers_mode_and_algorithm(monkeypatch):
    """conv1's and conv3's towers share an input and run as one stacked Conv2D
    (towers.SharedInputConvs, a copy made on first use): train() and a new
    ``algorithm`` given to the towers' layers must reach that copy."""
    monkeypatch.setattr(Conv2D, "_measure", fake_measure(
        {"im2col": 3.0, "fft": 1.0, "winograd": 2.0, "winograd4": 4.0}, []))
    model = build_model("small-alexnet", width=0.25)
    x = rnd(2, 3, 32, 32)
    model.forward(x)
    convs = [l for _, l, _ in model.named_layers() if hasattr(l, "algorithm")]
    for layer in convs:
        layer.algorithm = "auto"
    model.forward(x)                                  # training mode
    model.eval().forward(x)
    conv1 = [k for k in autotune.choices() if " x2x3x32x32 w8x3x5x5 " in k]
    # "train": the stacked conv makes dW and db; each tower makes its own dx
    assert sorted(k.split()[2] for k in conv1) == ["eval", "train"]
    for layer in convs:
        layer.algorithm = "winograd4" if layer.kernel_size == (3, 3) else "fft"
    model.forward(x)
    ran = {r["layer"]: r["algorithm"] for r in model.summary().rows if r["kind"] == "conv"}
    assert ran["conv1.tower0"] == "fft" and ran["conv3.tower1"] == "winograd4"


def test_a_resumed_training_run_uses_the_checkpoint_s_choices(tmp_path, monkeypatch):
    """The Trainer keeps the choices in its checkpoint's metadata and a resume loads
    them: here the resumed process would time im2col fastest, yet runs what the
    first one chose (fft) for every shape the first one chose for."""
    from minialexnet import train
    from minialexnet.checkpoint import read_meta
    cfg = train.default_config(dataset="synthetic", n_train=64, n_val=32, batch_size=32,
                               model="fournet", model_kwargs={"widths": [4, 4, 4]},
                               epochs=3, progress=False, workers=1, checkpoint_every=0,
                               out=str(tmp_path / "run"), max_steps=1)
    monkeypatch.setenv(autotune.ENV, "auto")
    monkeypatch.setattr(Conv2D, "_measure", fake_measure({"im2col": 2.0, "fft": 1.0}, []))
    train.run(cfg, log=lambda *a: None)
    first = autotune.choices()
    assert first and set(first.values()) == {"fft"}
    assert read_meta(tmp_path / "run" / "checkpoint.npz")["conv_algorithms"] == autotune.state()
    autotune.clear()                                          # a new process, in effect
    monkeypatch.setattr(Conv2D, "_measure", fake_measure({"im2col": 1.0, "fft": 2.0}, []))
    train.run(dict(cfg, max_steps=2, resume=True), log=lambda *a: None)
    assert {k: autotune.choices()[k] for k in first} == first


# ---------------------------------------------------------------- ReLU from its output
def test_relu_backward_reads_its_output_and_equals_the_reference():
    x = np.array([[-1.0, -0.0, 0.0, 2.0, np.nan, np.inf, -np.inf, 1e-30]])
    dy = np.arange(1.0, 9.0)[None]
    f, r = ReLU(), reference.ReLU()
    np.testing.assert_array_equal(f.forward(x), r.forward(x))
    assert not hasattr(f, "mask") and f.y is not None
    np.testing.assert_array_equal(f.backward(dy), r.backward(dy))
    assert f.y is None                                   # let go after backward


# ---------------------------------------------------------------- CuPy
def test_algorithms_call_only_what_cupy_has():
    pytest.importorskip("cupy")
    rec = cupy_surface.Recorder()
    backend.use(cupy_surface.recording_backend(rec))
    x = cupy_surface.as_recorded(rnd(2, 4, 7, 6))
    for algo in ("fft", "winograd", "winograd4", "auto"):
        for input_grad in (True, False):
            layer = Conv2D(4, 3, 3, padding=1, algorithm=algo)
            layer.needs_input_grad = input_grad
            y = layer.forward(x)
            layer.backward(y * 0 + 1)
    paths = {c[1] for c in rec.calls}
    assert {"fft.rfft2", "fft.irfft2", "tensordot", "matmul"} <= paths
    problems = cupy_surface.check_against_cupy(rec)
    assert not problems, "\n".join(problems)
