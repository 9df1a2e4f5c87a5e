"""Fast equals reference (minitorch style): every layer, the tower steps, the whole
AlexNet and SGD, in float64, through every code path of the fast code.

The chain of trust: PyTorch (tests/test_torch_oracle.py) and finite differences
(tests/test_layers.py) check both implementations; this file checks that the fast
one computes what the short reference one computes, on odd, strided, padded and
non-square shapes.  Paths of the fast code are forced the way tests/test_layers.py
and tests/test_towers.py do: Conv2D's kept and chunked columns and both dx methods,
threads and cache blocks of the memory-bound layers, stacked tower convolutions
(SharedInputConvs) and separate towers, one device and two fake devices.
"""

import functools
import json

import numpy as np
import pytest

from minialexnet import backend, layers as fast, parallel, reference as ref, towers, train
from minialexnet.models import AlexNet, build_model, from_config
from minialexnet.optim import SGD
from minialexnet.reference import towers as ref_towers

import cupy_surface
from fake_devices import FakeArray, FakeDevices, on_device

RTOL, ATOL = 1e-11, 1e-12       # float64, different summation orders


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def close(a, b, what=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL, err_msg=what)


def pair(make):
    """(fast layer, reference layer) built by ``make(module)`` from the same seed."""
    made = []
    for module in (fast, ref):
        backend.use("numpy", seed=1)
        made.append(make(module))
    f, r = made
    for k in r.params:
        np.testing.assert_array_equal(f.params[k], r.params[k])   # the same init draws
    return f, r


def same_forward_backward(f, r, x, **kwargs):
    """Forward and backward of both on the same x and dy: outputs, dx and grads equal."""
    y = r.forward(x, **kwargs)
    close(f.forward(x, **kwargs), y, "forward")
    dy = rnd(*y.shape, seed=1)
    dx_f, dx_r = f.backward(dy), r.backward(dy)
    if dx_r is None:
        assert dx_f is None
    else:
        assert dx_f.shape == dx_r.shape == x.shape
        close(dx_f, dx_r, "dx")
    assert f.grads.keys() == r.grads.keys() == r.params.keys()
    for k in r.grads:
        close(f.grads[k], r.grads[k], k)


def channels_last(x):
    """The same NCHW values, stored channels last (as fast Conv2D outputs are)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# The memory-bound loops of the fast layers (parallel.py threads, _blocks of about a
# megabyte): one thread and one block (test-sized arrays), one thread and one image a
# block, or two threads of several one-image blocks each (batches of 4 or more).
@pytest.fixture(params=["whole", "blocks", "threads"])
def loops(request, monkeypatch):
    monkeypatch.setattr(parallel, "_threads", 2 if request.param == "threads" else 1)
    if request.param != "whole":
        monkeypatch.setattr(fast, "_min_rows", lambda x: 1)
        monkeypatch.setattr(fast, "_blocks", functools.partial(fast._blocks, nbytes=1))
    return request.param


# ---------------------------------------------------------------- Conv2D
CONV_PATHS = {      # fast Conv2D's ways through a batch (see its docstring)
    "auto": {},
    "kept-col2im": dict(keep_columns_bytes=1 << 30, dx_method="col2im"),
    "kept-transposed": dict(keep_columns_bytes=1 << 30, dx_method="transposed"),
    "chunked-col2im": dict(keep_columns_bytes=0, chunk_bytes=2000, dx_method="col2im",
                           col2im_block_bytes=1),
    "chunked-transposed": dict(keep_columns_bytes=0, chunk_bytes=1, dx_method="transposed"),
}
CONV_SHAPES = [     # cin, cout, kernel, stride, padding, input shape
    (3, 4, 3, 1, 1, (5, 3, 9, 8)),           # padded, non-square; C_out > C_in
    (4, 2, 5, 1, 2, (3, 4, 7, 10)),          # conv2-like; C_out < C_in: auto = transposed
    (3, 5, 3, 2, 0, (4, 3, 9, 8)),           # strided
    (3, 4, 5, 2, 2, (2, 3, 9, 8)),           # strided and padded
    (3, 6, 11, 4, 0, (2, 3, 19, 23)),        # conv1's 11x11 stride 4
    (2, 3, (3, 2), 1, 0, (2, 2, 5, 6)),      # rectangular kernel
]


@pytest.mark.parametrize("path", list(CONV_PATHS))
@pytest.mark.parametrize("cin,cout,k,s,p,shape", CONV_SHAPES)
@pytest.mark.parametrize("input_grad", [True, False])
def test_conv2d(loops, path, cin, cout, k, s, p, shape, input_grad):
    f, r = pair(lambda m: m.Conv2D(cin, cout, k, stride=s, padding=p, weight_std=1.0,
                                   bias=0.3, dtype=np.float64))
    for name, value in CONV_PATHS[path].items():
        setattr(f, name, value)
    f.needs_input_grad = r.needs_input_grad = input_grad
    x = rnd(*shape)
    same_forward_backward(f, r, x)
    same_forward_backward(f, r, channels_last(x))       # the next conv's input memory
    assert r.output_shape(shape[1:]) == f.output_shape(shape[1:])


def test_conv2d_paths_are_taken():
    """The overrides above really choose the paths they are named after."""
    f = fast.Conv2D(4, 2, 5, padding=2, dtype=np.float64)
    x = rnd(3, 4, 7, 10)
    assert f._transposed_ok()                            # auto, C_out < C_in
    f.dx_method = "col2im"
    assert not f._transposed_ok()
    f.keep_columns_bytes, f.chunk_bytes = 0, 1
    assert f._plan(x)[-1] == 1                           # one image a chunk
    f.forward(x)
    assert f._kept is None
    f.keep_columns_bytes = 1 << 30
    f.forward(x)
    assert f._kept is not None


# ---------------------------------------------------------------- the other layers
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 1.0, 0.75, 2.0),
                                               (4, 1.0, 0.75, 2.0), (3, 0.5, 0.6, 1.0)])
@pytest.mark.parametrize("shape", [(5, 9, 5, 7), (4, 3, 4, 4)])
def test_local_response_norm(loops, size, alpha, beta, k, shape):
    # beta 0.75 takes fast's sqrt path, 0.6 its power path; alpha 1 makes the window
    # matter (at 1e-4 a wrong window would hide in the tolerance); C=3 < n clips both ends.
    f, r = pair(lambda m: m.LocalResponseNorm(size, alpha, beta, k))
    x = rnd(*shape) * 3
    same_forward_backward(f, r, x)
    same_forward_backward(f, r, channels_last(x))


def test_reference_lrn_band_matrix():
    M = ref.LocalResponseNorm(size=5).band(7, np.float64)
    assert M[3].tolist() == [0, 1, 1, 1, 1, 1, 0] and M[0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    M4 = ref.LocalResponseNorm(size=4).band(7, np.float64)
    assert M4[3].tolist() == [0, 1, 1, 1, 1, 0, 0]        # [i - 2, i + 1], as in PyTorch


@pytest.mark.parametrize("z,s,shape", [(3, 2, (5, 4, 9, 9)), (3, 1, (4, 2, 6, 7)),
                                       (2, 2, (4, 3, 8, 6)), (3, 2, (1, 2, 13, 8))])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d(loops, z, s, shape, ties):
    f, r = pair(lambda m: m.MaxPool2D(z, s))
    x = rnd(*shape)
    if ties:             # whole numbers in a small range: many windows have tied maxima
        x = np.round(x)
    same_forward_backward(f, r, x)
    same_forward_backward(f, r, channels_last(x))        # fast's channels-last dx


@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (6, 7)])
def test_relu(loops, shape):
    f, r = pair(lambda m: m.ReLU())
    same_forward_backward(f, r, rnd(*shape))


@pytest.mark.parametrize("nin,nout,n", [(7, 5, 4), (30, 1, 3), (1, 9, 2)])
def test_linear(nin, nout, n):
    f, r = pair(lambda m: m.Linear(nin, nout, weight_std=1.0, bias=0.2, dtype=np.float64))
    for _ in range(2):                   # twice: fast reuses last step's grads["W"]
        same_forward_backward(f, r, rnd(n, nin))


@pytest.mark.parametrize("inverted", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_dropout(inverted, training):
    f, r = pair(lambda m: m.Dropout(0.5, inverted=inverted).train(training))
    x = rnd(6, 50)
    mask = np.random.default_rng(2).random(x.shape) >= 0.5
    same_forward_backward(f, r, x, **({"mask": mask} if training else {}))
    if training:         # masks drawn from the same seed are the same masks
        for layer in (f, r):
            backend.use("numpy", seed=5)
            layer.forward(x)
        np.testing.assert_array_equal(f.mask, r.mask)
        close(f.backward(x), r.backward(x))


def test_shared_layers_are_one_class():
    """Tanh, Flatten, SoftmaxCrossEntropy (and OnDevice, Gather) have no faster
    version: the reference uses the fast module's class, so they cannot drift apart."""
    assert ref.Tanh is fast.Tanh and ref.Flatten is fast.Flatten
    assert ref.SoftmaxCrossEntropy is fast.SoftmaxCrossEntropy
    assert ref.OnDevice is towers.OnDevice and ref.Gather is towers.Gather
    assert ref.transfer is towers.transfer


# ---------------------------------------------------------------- the reference's own rules
def test_reference_dropout_backward_uses_the_mode_of_forward():
    x = rnd(4, 6)
    for inverted in (False, True):
        d = ref.Dropout(0.5, inverted=inverted).eval()
        y = d.forward(x)
        assert y is not x                                 # a new array, even when y == x
        d.train()                                         # switched after forward
        dx = d.backward(np.ones_like(x))
        np.testing.assert_array_equal(dx, np.full_like(x, 1.0 if inverted else 0.5))
        assert dx is not x


def test_reference_linear_grads_are_fresh_arrays():
    lin = ref.Linear(3, 2, dtype=np.float64)
    lin.forward(rnd(4, 3))
    lin.backward(rnd(4, 2))
    kept = lin.grads["W"].copy()
    g = lin.grads["W"]
    lin.forward(rnd(4, 3, seed=1))
    lin.backward(rnd(4, 2, seed=1))
    assert lin.grads["W"] is not g
    np.testing.assert_array_equal(g, kept)                # a caller's array stays as it was


@pytest.mark.parametrize("module", [fast, ref], ids=["fast", "reference"])
def test_float32_stays_float32(module):
    x = rnd(2, 3, 9, 9).astype(np.float32)
    for layer in (module.Conv2D(3, 4, 3, padding=1), module.ReLU(), module.LocalResponseNorm(),
                  module.MaxPool2D(), module.Dropout(), module.Dropout().eval()):
        y = layer.forward(x)
        assert y.dtype == np.float32 and layer.backward(y).dtype == np.float32, layer
    lin = module.Linear(4, 2)
    assert lin.params["W"].dtype == np.float32
    assert lin.forward(x[:, 0, 0, :4]).dtype == np.float32


# ---------------------------------------------------------------- tower steps
def step_pair(kind, devices, make=None, spec=None):
    steps = []
    for module in (towers, ref_towers):
        backend.seed(1)
        cls = getattr(module, kind)
        steps.append(cls(kind, make, devices, spec) if make else cls(kind, devices))
    return steps


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("fuse", [True, False])
def test_towers_sharing_an_input_on_one_device(monkeypatch, input_grad, fuse):
    """conv1 after the broadcast (and conv3 after the exchange) read one array on one
    device: fast stacks the towers' kernels into one Conv2D (SharedInputConvs) for
    the output and dW, db, and each tower makes its own dx; the reference runs each
    tower.  Both add the towers' dx at the transfer.  Same numbers either way."""
    monkeypatch.setattr(towers.TowerLayer, "fuse_shared_input", fuse)
    spec = dict(kind="conv", cin=3, cout=4, k=3, s=2, p=1)
    out = []
    for layers, steps in ((fast, towers), (ref, ref_towers)):
        make = functools.partial(layers.Conv2D, 3, 4, 3, stride=2, padding=1,
                                 weight_std=1.0, bias=0.1, dtype=np.float64)
        backend.seed(1)
        bcast = steps.Broadcast("to_towers", (0, 0))
        tower = steps.TowerLayer("conv1", make, (0, 0), spec)
        for layer in tower.layers:
            layer.needs_input_grad = input_grad
        ys = tower.forward(bcast.forward(rnd(2, 3, 9, 7)))
        dx = bcast.backward(tower.backward([rnd(*y.shape, seed=i) for i, y in enumerate(ys)]))
        out.append((ys, dx, [dict(l.grads) for l in tower.layers]))
        if layers is fast:
            assert (tower.stacked is not None) == fuse
    (ys_f, dx_f, g_f), (ys_r, dx_r, g_r) = out
    for a, b in zip(ys_f, ys_r):
        close(a, b)
    if input_grad:
        close(dx_f, dx_r)
    else:
        assert dx_f is None and dx_r is None
    for a, b in zip(g_f, g_r):
        for k in b:
            close(a[k], b[k], k)


@pytest.mark.parametrize("devices", [(0, 0), (0, 1), (1, 0)])
def test_transfer_steps_on_fake_devices(devices):
    backend.use(FakeDevices(2))
    xs = [on_device(rnd(2, 3, 4, 5, seed=i), d) for i, d in enumerate(devices)]
    dys = [on_device(rnd(2, 6, 4, 5, seed=9 + i), d) for i, d in enumerate(devices)]
    ef, er = step_pair("Exchange", devices)
    for a, b in zip(ef.forward(xs), er.forward(xs)):
        assert a.device == b.device
        close(a, b)
    for a, b, d in zip(ef.backward(dys), er.backward(dys), devices):
        assert a.device == b.device == d
        close(a, b)
    bf, br = step_pair("Broadcast", devices)
    x = on_device(rnd(2, 3, 4, 5), devices[0])
    assert [y.device for y in br.forward(x)] == list(devices)
    a, b = bf.backward(xs), br.backward(xs)
    assert a.device == b.device == devices[0]
    close(a, b)
    assert br.backward([None, None]) is None


# ---------------------------------------------------------------- the whole AlexNet
def small_alexnet(layers, devices=(0, 0), towers_=2, **kw):
    """The paper's AlexNet at a reduced width and size, float64; 67 px -> pool5 1x1."""
    backend.seed(3)
    model = AlexNet(num_classes=7, input_size=67, widths=(8, 16, 24, 24, 16), fc=(12, 10),
                    towers=towers_, devices=devices, init_std=0.2, dtype="float64",
                    layers=layers, **kw)
    for prefix, layer, _ in model.named_layers():
        if prefix.startswith("norm"):
            layer.alpha = 0.5            # at 1e-4, LRN would be nearly the identity
    return model


def run_model(model, x, dlogits, training):
    model.train(training)
    backend.seed(4)                      # the same dropout masks for both
    logits = model.forward(x)
    dx = model.backward(dlogits)
    return logits, dx, model.grads()


def assert_same_run(a, b):
    close(a[0], b[0], "logits")
    if a[1] is None or b[1] is None:
        assert a[1] is None and b[1] is None
    else:
        close(a[1], b[1], "dx")
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        close(a[2][k], b[2][k], k)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("fuse", [True, False])
def test_alexnet_two_towers_on_one_device(monkeypatch, training, input_grad, fuse):
    monkeypatch.setattr(towers.TowerLayer, "fuse_shared_input", fuse)
    x, dlogits = rnd(3, 3, 67, 67), rnd(3, 7, seed=1)
    fast_model = small_alexnet("fast", input_grad=input_grad)
    got = run_model(fast_model, x, dlogits, training)
    stacked = [s.name for s in fast_model.steps if getattr(s, "stacked", None) is not None]
    assert stacked == (["conv1", "conv3"] if fuse else [])
    want = run_model(small_alexnet("reference", input_grad=input_grad), x, dlogits, training)
    assert_same_run(got, want)


@pytest.mark.parametrize("devices", [(0, 1), (1, 0)])
def test_alexnet_on_two_fake_devices(devices):
    """Both implementations on two fake devices: the same links (Figure 2), no host
    synchronisation, every gradient on its parameter's device, the same numbers in
    training (dropout draws from each device's generator), and in eval mode the
    numbers of the reference on one device."""
    x, dlogits = rnd(2, 3, 67, 67), rnd(2, 7, seed=1)
    one = small_alexnet("reference")
    state = one.state_dict()
    want = run_model(one, x, dlogits, False)
    fake = backend.use(FakeDevices(2))
    runs, links = {}, []
    for layers in ("fast", "reference"):
        model = small_alexnet(layers, devices)
        model.load_state_dict(state)
        placed = model.param_devices()
        for training in (True, False):
            fake.transfers.clear()
            fake.syncs.clear()
            run = run_model(model, on_device(x, devices[0]), on_device(dlogits, devices[0]),
                            training)
            assert fake.syncs == []
            assert run[0].device == run[1].device == devices[0]
            for name, g in run[2].items():
                assert isinstance(g, FakeArray) and g.device == placed[name], name
            runs[layers, training] = [backend.to_numpy(a) for a in run[:2]] + [
                {k: backend.to_numpy(v) for k, v in run[2].items()}]
        links.append([(a, b) for a, b, _ in fake.transfers])
    assert links[0] == links[1] and len(links[1]) == 16
    assert_same_run(runs["fast", True], runs["reference", True])
    for layers in ("fast", "reference"):
        assert_same_run(runs[layers, False], want)


@pytest.mark.parametrize("name,kw", [
    ("alexnet-1tower", dict(input_size=67, widths=(8, 16, 24, 24, 16), fc=(12, 10))),
    ("alexnet-half", dict(input_size=67, widths=(4, 8, 12, 12, 8), fc=(6, 5))),
    ("torchvision-alexnet", dict(input_size=67, widths=(8, 12, 16, 12, 8), fc=(10, 6))),
    ("small-alexnet", dict(width=0.25, input_size=28)),
    ("small-alexnet", dict(width=0.25, input_size=64, inverted_dropout=True)),
    ("fournet", dict(activation="tanh", lrn=True, pool="2/2")),
    ("fournet", {}),
])
def test_every_model_fast_equals_reference(name, kw):
    models = []
    for layers in ("fast", "reference"):
        backend.seed(3)
        models.append(build_model(name, num_classes=5, dtype="float64", init_std=0.2,
                                  layers=layers, **kw))
    f, r = models
    assert f.config["layers"] == "fast" and r.config["layers"] == "reference"
    assert all(type(l).__module__ == "minialexnet.reference.layers"
               or type(l) in (fast.Tanh, fast.Flatten) for _, l, _ in r.named_layers())
    for k, v in f.params().items():
        np.testing.assert_array_equal(v, r.params()[k])
    x = rnd(2, *f.input_shape)
    dlogits = rnd(2, 5, seed=1)
    assert_same_run(run_model(f, x, dlogits, True), run_model(r, x, dlogits, True))


def test_reference_config_rebuilds_the_reference():
    m = build_model("small-alexnet", width=0.25, layers="reference")
    again = from_config(json.loads(json.dumps(m.config)))
    assert again.config == m.config
    assert isinstance(again.steps[1], ref_towers.TowerLayer)
    assert isinstance(again.steps[1].layers[0], ref.Conv2D)
    assert "layers" not in m.arch                      # the architecture is the same
    old = {k: v for k, v in m.config.items() if k != "layers"}   # checkpoints before it
    assert isinstance(from_config(old).steps[1].layers[0], fast.Conv2D)
    assert m.summary().totals["params"] == m.num_params()
    with pytest.raises(ValueError, match="layers must be one of 'fast', 'reference'"):
        build_model("fournet", layers="slow")


# ---------------------------------------------------------------- SGD
@pytest.mark.parametrize("block", [None, 7, "auto"])
def test_sgd_reference_equals_fast_bit_for_bit(monkeypatch, block):
    monkeypatch.setattr(parallel, "_threads", 2)           # block 7: threaded blocks
    rng = np.random.default_rng(0)
    w0 = {"a.W": rng.standard_normal((5, 4)), "a.b": rng.standard_normal(5),
          "c.W": rng.standard_normal((20, 8))}
    w0 = {k: v.astype(np.float32) for k, v in w0.items()}
    decay = lambda name: name.endswith(".W")               # noqa: E731
    pf, pr = ({k: v.copy() for k, v in w0.items()} for _ in range(2))
    of = SGD(pf, lr=0.05, block=block, decay_filter=decay)
    orf = ref.SGD(pr, lr=0.05, decay_filter=decay)
    for step in range(4):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in w0.items()}
        of.step(grads)
        orf.step(grads)
        for k in w0:
            np.testing.assert_array_equal(pf[k], pr[k], err_msg=k)
            np.testing.assert_array_equal(of.velocity[k], orf.velocity[k], err_msg=k)
    assert pr["a.W"] is not w0["a.W"] and not np.array_equal(pr["a.W"], w0["a.W"])


def test_reference_training_steps_equal_fast_ones():
    """Layers, loss and SGD together: three steps of the whole net, float64."""
    x = rnd(4, 3, 32, 32)
    labels = np.array([0, 3, 1, 3])
    params = []
    for layers, sgd in (("fast", SGD), ("reference", ref.SGD)):
        backend.use("numpy", seed=2)
        model = build_model("small-alexnet", width=0.25, dtype="float64", init_std=0.1,
                            layers=layers, input_grad=False)
        opt, loss = sgd(model, lr=0.05), ref.SoftmaxCrossEntropy()
        for step in range(3):
            loss.forward(model.forward(x), labels)
            model.backward(loss.backward())
            opt.step()
        params.append(model.params())
    for k in params[0]:
        np.testing.assert_allclose(params[0][k], params[1][k], rtol=1e-10, atol=1e-12,
                                   err_msg=k)


# ---------------------------------------------------------------- CuPy and the CLI
def test_reference_calls_only_what_cupy_has():
    pytest.importorskip("cupy")
    rec = cupy_surface.Recorder()
    backend.use(cupy_surface.recording_backend(rec))
    model = build_model("small-alexnet", width=0.25, layers="reference")
    x = cupy_surface.as_recorded(rnd(2, 3, 32, 32).astype(np.float32))
    loss = ref.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), cupy_surface.as_recorded(np.array([1, 2])))
    model.backward(loss.backward())
    ref.SGD(model, lr=0.01).step()
    model.eval().forward(x)
    paths = {c[1] for c in rec.calls}
    assert {"pad", "concatenate", "zeros", "arange", "maximum"} <= paths
    problems = cupy_surface.check_against_cupy(rec)
    assert not problems, "\n".join(problems)


def test_train_cli_layers_reference_trains_and_resumes_with_it(tmp_path):
    argv = ["--layers", "reference", "--model", "fournet", "--n-train", "64", "--n-val",
            "32", "--batch-size", "32", "--epochs", "1", "--max-steps", "1", "--workers",
            "1", "--no-progress", "--checkpoint-every", "0", "--out", str(tmp_path)]
    cfg = train.parse_args(argv)
    assert cfg["model_kwargs"]["layers"] == "reference"
    t = train.run(cfg, log=lambda *a: None)
    assert isinstance(t.model.steps[1].layers[0], ref.Conv2D)
    assert isinstance(t.optimizer, ref.SGD)
    t2 = train.run(train.parse_args(argv[2:] + ["--resume", "--max-steps", "2"]),
                   log=lambda *a: None)
    assert t2.step == 2 and t2.model.config["layers"] == "reference"
    assert isinstance(t2.model.steps[1].layers[0], ref.Conv2D)
    assert train.parse_args([])["model_kwargs"].get("layers") is None
    assert build_model("fournet").config["layers"] == "fast"
