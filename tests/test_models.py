"""The AlexNet family: parameter and neuron counts, shapes, initialisation, the model
API (state dicts, config, features, summary), PyTorch at full size, CuPy's API surface."""

import json
import time

import numpy as np
import pytest

from minialexnet import backend
from minialexnet.layers import SoftmaxCrossEntropy
from minialexnet.models import (CONV1_NOTE, MODELS, PAPER_NEURONS, AlexNet, StateDictError,
                                build_model, from_config)
from minialexnet.optim import SGD, ReduceLROnPlateau

import cupy_surface


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


@pytest.fixture(scope="module")
def alexnet():
    backend.use("numpy", seed=0)
    return AlexNet()


def conv_params(cout, cin, k):
    return cout * cin * k * k + cout


def fc_params(fin, fout):
    return fin * fout + fout


# ---------------------------------------------------------------- counts
def test_paper_alexnet_has_60965224_parameters(alexnet):
    assert alexnet.num_params() == 60_965_224
    assert alexnet.summary().totals["params"] == 60_965_224


def test_parameter_names_and_shapes(alexnet):
    shapes = {k: v.shape for k, v in alexnet.params().items()}
    expect = {"conv1": ((48, 3, 11, 11), 48), "conv2": ((128, 48, 5, 5), 128),
              "conv3": ((192, 256, 3, 3), 192), "conv4": ((192, 192, 3, 3), 192),
              "conv5": ((128, 192, 3, 3), 128), "fc6": ((2048, 9216), 2048),
              "fc7": ((2048, 4096), 2048)}
    for layer, (w, b) in expect.items():
        for t in (0, 1):
            assert shapes[f"{layer}.tower{t}.W"] == w
            assert shapes[f"{layer}.tower{t}.b"] == (b,)
    assert shapes["fc8.W"] == (1000, 4096) and shapes["fc8.b"] == (1000,)
    assert len(shapes) == 7 * 2 * 2 + 2


def test_family_parameter_counts():
    one = build_model("alexnet-1tower", num_classes=1000)
    assert one.num_params() == (conv_params(96, 3, 11) + conv_params(256, 96, 5)
                                + conv_params(384, 256, 3) + conv_params(384, 384, 3)
                                + conv_params(256, 384, 3) + fc_params(9216, 4096)
                                + fc_params(4096, 4096) + fc_params(4096, 1000)) == 62_378_344
    assert "conv2.W" in one.params() and one.params()["conv2.W"].shape == (256, 96, 5, 5)
    del one
    half = build_model("alexnet-half")
    assert half.num_params() == (conv_params(48, 3, 11) + conv_params(128, 48, 5)
                                 + conv_params(192, 128, 3) + conv_params(192, 192, 3)
                                 + conv_params(256, 192, 3) + fc_params(9216, 4096)
                                 + fc_params(4096, 4096) + fc_params(4096, 1000))
    del half
    tv = build_model("torchvision-alexnet")
    assert tv.num_params() == 61_100_840            # torchvision.models.alexnet()
    assert tv.input_size == 224 and not any(n.startswith("norm") for n in tv.layer_names())


def test_neurons_match_the_paper_except_conv1(alexnet):
    s = alexnet.summary()
    neurons = s.neurons_by_layer()
    for layer in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        assert neurons[layer] == PAPER_NEURONS[layer], layer
    assert neurons["conv1"] == 55 * 55 * 96 == 290_400 != PAPER_NEURONS["conv1"]
    assert 253_440 % 96 == 0 and int((253_440 // 96) ** 0.5) ** 2 != 253_440 // 96
    assert CONV1_NOTE in s.text and "253,440" in CONV1_NOTE


def test_flops_per_image():
    # 2 x multiply-adds: the two-tower net does 1.449 GFLOP; the 2.27 GFLOP of
    # PERFORMANCE-NOTES is the one-tower net (ungrouped conv2, conv4, conv5)
    backend.use("numpy")
    s = AlexNet(towers=2, fc=(8, 8)).summary()        # fc width does not change conv FLOPs
    conv = sum(r["flops"] for r in s.rows if r["kind"] == "conv")
    assert conv == 2 * (290400 * 363 + 186624 * 1200 + 64896 * 2304 + 64896 * 1728
                        + 43264 * 1728)
    fc = 2 * (9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert abs((conv + fc) / 1e9 - 1.449) < 1e-3
    one = AlexNet(towers=1, fc=(8, 8)).summary()
    conv1t = sum(r["flops"] for r in one.rows if r["kind"] == "conv")
    assert abs((conv1t + fc) / 1e9 - 2.27) < 5e-3


def test_summary_rows_and_text(alexnet):
    s = alexnet.summary()
    row = next(r for r in s.rows if r["layer"] == "conv2.tower1")
    assert row["output_shape"] == (128, 27, 27) and row["params"] == 153_728
    assert row["neurons"] == 93_312 and row["flops"] == 2 * 93_312 * 1200
    assert row["activation_bytes"] == 93_312 * 4 and row["device"] == "0"
    pool5 = next(r for r in s.rows if r["layer"] == "pool5.tower0")
    assert pool5["output_shape"] == (128, 6, 6)
    assert s.totals["neurons"] == 659_272                  # "about 650,000 neurons"
    assert "conv3.tower0" in str(s) and "60,965,224" in str(s)
    ex = next(r for r in s.rows if r["layer"] == "exchange3")
    assert ex["output_shape"] == (256, 13, 13)


# ---------------------------------------------------------------- initialisation
def test_paper_initialisation(alexnet):
    p = alexnet.params()
    w = p["fc6.tower0.W"]
    assert abs(float(w.mean())) < 1e-4 and abs(float(w.std()) - 0.01) < 1e-4
    assert abs(float(p["conv1.tower1.W"].std()) - 0.01) < 5e-4
    for name, b in p.items():
        if name.endswith(".b"):
            want = 1.0 if name.split(".")[0] in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert np.all(b == want), name
    assert p["conv1.tower0.W"].dtype == np.float32


def test_initialisation_is_configurable():
    m = build_model("small-alexnet", init_std={"conv1": 0.5}, init_bias={"fc8": 0.25})
    p = m.params()
    assert abs(float(p["conv1.tower0.W"].std()) - 0.5) < 0.1
    assert abs(float(p["conv3.tower0.W"].std()) - 0.01) < 2e-3
    assert np.all(p["fc8.b"] == 0.25) and np.all(p["conv2.tower0.b"] == 0)
    assert m.config["init_bias"] == {"fc8": 0.25}
    he = build_model("fournet", init_std="he")                 # not the paper's: opt-in
    assert abs(float(he.params()["conv2.W"].std()) - (2 / 800) ** 0.5) < 5e-3


# ---------------------------------------------------------------- the full net runs
def test_full_alexnet_forward_backward_batch_8(alexnet):
    x = np.random.default_rng(0).standard_normal((8, 3, 227, 227)).astype(np.float32)
    labels = np.arange(8)
    loss = SoftmaxCrossEntropy()
    alexnet.train()
    t = time.perf_counter()
    logits = alexnet.forward(x)
    value = loss.forward(logits, labels)
    dx = alexnet.backward(loss.backward())
    elapsed = time.perf_counter() - t
    assert logits.shape == (8, 1000) and logits.dtype == np.float32
    assert np.isfinite(float(value)) and abs(float(value) - np.log(1000)) < 0.5
    assert dx.shape == x.shape
    grads = alexnet.grads()
    assert set(grads) == set(alexnet.params())
    for name, g in grads.items():
        assert g.shape == alexnet.params()[name].shape and np.all(np.isfinite(g)), name
    print(f"AlexNet batch 8 forward+backward: {elapsed:.2f} s")


def test_full_size_forward_matches_pytorch(alexnet):
    """The paper's net at full size, batch 2, eval mode, against PyTorch's grouped convs."""
    torch = pytest.importorskip("torch")
    from test_towers import torch_grouped_alexnet
    x = np.random.default_rng(1).standard_normal((2, 3, 227, 227)).astype(np.float32)
    alexnet.eval()
    feats = alexnet.features(x, "relu7")
    logits = alexnet.forward(x)
    alexnet.train()
    params = {k: torch.from_numpy(v) for k, v in alexnet.params().items()}
    with torch.no_grad():
        want = torch_grouped_alexnet(params, torch.from_numpy(x), 1e-4, eval_scale=0.5).numpy()
    scale = np.abs(want).max()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * scale)
    assert feats.shape == (2, 4096)


# ---------------------------------------------------------------- the model API
def small(**kw):
    return build_model("small-alexnet", width=0.25, **kw)


def test_every_model_name_builds_and_runs():
    x32 = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for name, kw in [("small-alexnet", dict(width=0.25)),
                     ("small-alexnet", dict(width=0.25, towers=1)),
                     ("fournet", {}),
                     ("fournet", dict(activation="tanh", lrn=False, pool="2/2"))]:
        m = build_model(name, **kw)
        assert m.input_size == 32 and m.config["name"] == name
        y = m.forward(x32)
        assert y.shape == (2, 10)
        assert m.backward(np.ones_like(y)).shape == x32.shape
    m = build_model("small-alexnet", input_size=64, width=0.25)
    assert m.forward(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 10)
    assert set(MODELS) == {"alexnet", "alexnet-1tower", "alexnet-half", "torchvision-alexnet",
                           "small-alexnet", "fournet"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")
    m = build_model("small-alexnet", input_size=28, width=0.25)     # random crops
    assert m.forward(np.zeros((1, 3, 28, 28), np.float32)).shape == (1, 10)
    with pytest.raises(ValueError, match="input_size"):
        build_model("small-alexnet", input_size=8)


def test_fournet_switches():
    relu = build_model("fournet")
    assert relu.layer_names() == ["to_towers", "conv1", "relu1", "pool1", "norm1", "conv2",
                                  "relu2", "pool2", "norm2", "conv3", "relu3", "pool3",
                                  "flatten", "gather4", "fc4"]
    tanh = build_model("fournet", activation="tanh", lrn=False, pool="2/2")
    assert "tanh1" in tanh.layer_names() and "norm1" not in tanh.layer_names()
    assert relu.params()["fc4.W"].shape == (10, 64 * 3 * 3)     # 32 -> 15 -> 7 -> 3
    assert tanh.params()["fc4.W"].shape == (10, 64 * 4 * 4)     # 32 -> 16 -> 8 -> 4
    assert relu.summary().rows[2]["output_shape"] == (32, 32, 32)
    with pytest.raises(ValueError):
        build_model("fournet", activation="sigmoid")


def test_fournet_lrn_args_reach_both_lrn_layers_and_its_config():
    from minialexnet.layers import LocalResponseNorm
    m = build_model("fournet", lrn_args={"size": 9, "alpha": 0.25})
    norms = [layer for _, layer, _ in m.named_layers() if isinstance(layer, LocalResponseNorm)]
    assert len(norms) == 2
    assert all((n.size, n.alpha, n.beta, n.k) == (9, 0.25, 0.75, 2.0) for n in norms)
    assert m.config["lrn_args"] == {"size": 9, "alpha": 0.25, "beta": 0.75, "k": 2.0}
    rebuilt = from_config(m.config)                           # a checkpoint's config
    assert [(n.size, n.alpha) for _, n, _ in rebuilt.named_layers()
            if isinstance(n, LocalResponseNorm)] == [(9, 0.25)] * 2
    # the paper's constants by default, and then no new key in the config (old
    # checkpoints still describe the same architecture)
    paper = build_model("fournet")
    assert "lrn_args" not in paper.config
    assert all((n.size, n.alpha, n.k) == (5, 1e-4, 2.0) for _, n, _ in paper.named_layers()
               if isinstance(n, LocalResponseNorm))
    with pytest.raises(ValueError, match="lrn_args: unknown key n "):
        build_model("fournet", lrn_args={"n": 9})


def test_small_alexnet_keeps_the_paper_topology():
    m = build_model("small-alexnet")
    names = m.layer_names()
    for n in ("norm1", "norm2", "pool1", "pool2", "pool5", "drop6", "drop7",
              "exchange3", "exchange6", "exchange7", "gather8"):
        assert n in names
    p = m.params()
    assert p["conv2.tower0.W"].shape == (32, 16, 5, 5)          # own tower only
    assert p["conv3.tower0.W"].shape == (48, 64, 3, 3)          # both towers
    assert p["fc6.tower0.W"].shape == (256, 64 * 3 * 3)
    assert m.towers == 2 and m.num_params() == m.summary().totals["params"]


def test_state_dict_round_trip_and_live_params():
    a, b = small(), small()
    b.load_state_dict(a.state_dict())
    for k, v in a.params().items():
        assert np.array_equal(v, b.params()[k])
    sd = a.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())
    p = a.params()["conv1.tower0.W"]
    p += 1.0                                                   # live reference
    assert not np.array_equal(a.params()["conv1.tower0.W"], sd["conv1.tower0.W"])
    a.load_state_dict(sd)
    assert a.params()["conv1.tower0.W"] is p and np.array_equal(p, sd["conv1.tower0.W"])


def test_load_state_dict_errors_name_the_parameter_and_architecture():
    two, one = small(), small(towers=1)
    with pytest.raises(StateDictError, match=r"'conv1\.tower0\.W' is missing.*small-alexnet"):
        two.load_state_dict(one.state_dict())
    sd = two.state_dict()
    sd["conv3.tower1.W"] = sd["conv3.tower1.W"][:, :1]
    with pytest.raises(StateDictError, match=r"'conv3\.tower1\.W' has shape"):
        two.load_state_dict(sd)
    sd = two.state_dict()
    sd["extra.W"] = np.zeros(3)
    with pytest.raises(StateDictError, match="extra.W"):
        two.load_state_dict(sd)
    two.load_state_dict(sd, strict=False)


def test_config_rebuilds_the_model():
    for m in (small(num_classes=5), build_model("fournet", pool="2/2", lrn=False)):
        config = json.loads(json.dumps(m.config))
        again = from_config(config)
        assert again.config == m.config
        assert {k: v.shape for k, v in again.params().items()} == \
               {k: v.shape for k, v in m.params().items()}
        assert build_model(**config).layer_names() == m.layer_names()


@pytest.mark.parametrize("name", ["small-alexnet", "fournet"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_input_grad_is_fixed_when_the_model_is_built(name, input_grad):
    """Whether backward makes dL/d(image) is a build-time keyword: no layer's
    needs_input_grad changes between forward and backward (the forward's column
    plan and "auto" key depend on it), and it is not part of the config."""
    model = build_model(name, width=0.25, input_grad=input_grad) if name == "small-alexnet" \
        else build_model(name, widths=(4, 4, 8), input_grad=input_grad)
    convs = [l for _, l, _ in model.named_layers() if hasattr(l, "needs_input_grad")]
    first = set(map(id, model._input_layers()))
    assert first and all(l.needs_input_grad == (input_grad or id(l) not in first) for l in convs)
    built = [l.needs_input_grad for l in convs]
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    for _ in range(2):
        logits = model.forward(x)
        assert [l.needs_input_grad for l in convs] == built
        dx = model.backward(np.ones_like(logits))
        assert [l.needs_input_grad for l in convs] == built
        assert (dx is None) == (not input_grad)
    assert "input_grad" not in model.config and from_config(model.config).input_grad
    with pytest.raises(TypeError, match="fixed when the model is built.*input_grad=False"):
        model.backward(np.ones_like(logits), input_grad=False)


def test_features_of_named_layers():
    m = small().eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    f7 = m.features(x)                                       # relu7, both towers
    assert f7.shape == (3, m.config["fc"][1]) and np.all(f7 >= 0)
    assert m.features(x, "pool2").shape == (3, m.config["widths"][1], 7, 7)
    logits = m.forward(x)
    assert np.allclose(m.features(x, "fc8"), logits)
    with pytest.raises(KeyError, match="no layer 'fc9'"):
        m.features(x, "fc9")


def test_eval_uses_the_papers_dropout_scaling():
    m = small(dropout=0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    m.eval()
    a = m.features(x, "drop7")
    b = m.features(x, "relu7")
    np.testing.assert_allclose(a, 0.5 * b)
    m.train()
    assert m.training and all(l.training for _, l, _ in m.named_layers())


@pytest.mark.parametrize("layers", ["fast", "reference"])
@pytest.mark.parametrize("k,n", [(2, 8), (3, 7)])        # 7 = 2 + 2 + 3 rows: uneven
def test_a_shard_s_forward_is_its_rows_of_the_whole_batch_s_with_dropout(layers, k, n):
    """``set_draw(step, rows=(lo, n))``: rows lo..hi of a batch make rows lo..hi of
    the whole batch's training forward, dropout masks bit for bit (K ranks, one step)."""
    m = small(dropout=0.5, dtype="float64", layers=layers)
    x = np.random.default_rng(0).standard_normal((n, 3, 32, 32))
    drops = [l for _, l, _ in m.named_layers() if hasattr(l, "draw")]
    assert len(drops) == 4                      # drop6 and drop7 in each tower
    m.set_draw(3)
    want, masks = m.forward(x), [l.mask for l in drops]
    for r in range(k):
        lo, hi = r * n // k, (r + 1) * n // k
        m.set_draw(3, rows=(lo, n))
        got = m.forward(x[lo:hi])
        for l, mask in zip(drops, masks):
            np.testing.assert_array_equal(l.mask, mask[lo:hi])
        np.testing.assert_allclose(got, want[lo:hi], rtol=1e-12, atol=1e-12 * np.abs(want).max())
    m.set_draw(3)                               # no rows: the images are the whole batch
    assert all(l.rows is None for l in drops)


def test_devices_must_match_towers():
    with pytest.raises(ValueError, match="one device per tower"):
        small(devices=(0,))


# ---------------------------------------------------------------- CuPy's API surface
def test_models_and_optimiser_call_only_what_cupy_has():
    pytest.importorskip("cupy")
    rec = cupy_surface.Recorder()
    backend.use(cupy_surface.recording_backend(rec))
    model = small()
    x = cupy_surface.as_recorded(
        np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), cupy_surface.as_recorded(np.array([1, 2])))
    model.backward(loss.backward())
    for block in (None, 100):
        opt = SGD(model, lr=0.01, block=block)
        opt.step()
        opt.load_state_dict(opt.state_dict())
    ReduceLROnPlateau(opt).step(0.5)
    model.eval().features(x, "relu7")
    model.load_state_dict(model.state_dict())
    model.summary()
    paths = {c[1] for c in rec.calls}
    assert {"concatenate", "multiply", "matmul", "zeros"} <= paths
    problems = cupy_surface.check_against_cupy(rec)
    assert not problems, "\n".join(problems)
