"""The two towers (paper 3.2): device placement, explicit transfers, and equivalence.

(a) On a backend with two fake devices whose arrays refuse to meet
    (tests/fake_devices.py), the two-tower net runs forward and backward with tower i
    on device i, moves data only at the transfer steps, never synchronises with the
    host, and computes exactly what the one-device net computes.
(b) Removing any one transfer (forward or backward) makes it fail.
(c) The two towers equal ONE network with grouped convolutions (groups=2 for conv2,
    conv4, conv5, and LRN within each group), computed by PyTorch.
(a)-(c) run on both implementations (``layers="fast"`` and ``"reference"``).
"""

import types

import numpy as np
import pytest

from minialexnet import backend, towers
from minialexnet.reference import towers as ref_towers
from minialexnet.models import AlexNet, SmallAlexNet
from minialexnet.optim import SGD

import fake_devices
from fake_devices import DeviceMismatch, FakeArray, FakeDevices, on_device


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


def tiny(devices=(0, 1), **kw):
    """The paper's topology at a tiny width (32 px, two towers)."""
    kw.setdefault("init_std", 0.1)
    return SmallAlexNet(width=0.25, devices=devices, **kw)


LAYERS = pytest.mark.parametrize("layers", ["fast", "reference"])


def images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# ---------------------------------------------------------------- the fake backend itself
def test_fake_devices_refuse_to_meet():
    fake = backend.use(FakeDevices(2))
    xp = fake.xp
    with backend.device(1):
        a = xp.ones(3, dtype=np.float32)
        assert a.device == 1 and (a + a).device == 1
    assert xp.zeros(2).device == 0
    with pytest.raises(DeviceMismatch):
        a + 1                                   # used on device 0
    with pytest.raises(DeviceMismatch):
        a.reshape(3, 1)
    with pytest.raises(DeviceMismatch):
        xp.concatenate([xp.zeros(3), a])
    a0 = backend.to_device(a, 0)
    with backend.device(1), pytest.raises(DeviceMismatch):
        a + a0                                  # mixing devices
    with pytest.raises(DeviceMismatch):
        b = xp.zeros(3)
        b[...] = a                              # copying across without a transfer
    fake.transfers.clear()
    b = backend.to_device(a, 0)
    assert b.device == 0 and (b + 1).device == 0
    assert fake.transfers == [(1, 0, (3,))]
    gen0 = _rng_on(fake, 0)
    with backend.device(1), pytest.raises(DeviceMismatch):
        gen0.random(3)                          # device 0's generator used on device 1
    float(b.sum())
    assert fake.syncs == ["float()"]


def _rng_on(fake, i):
    with backend.device(i):
        return fake.rng


# ---------------------------------------------------------------- (a) two fake devices
@LAYERS
def test_two_towers_on_two_fake_devices(layers):
    fake = backend.use(FakeDevices(2))
    model = tiny((0, 1), layers=layers)
    placed = model.param_devices()
    for name, p in model.params().items():
        assert isinstance(p, FakeArray) and p.device == placed[name]
        want = 1 if ".tower1." in name else 0
        assert p.device == want, name          # tower 1's half on device 1; fc8 on 0
    x = on_device(images(), 0)
    fake.syncs.clear()
    fake.transfers.clear()
    logits = model.forward(x)
    assert logits.device == 0 and logits.shape == (3, 10)
    dx = model.backward(on_device(np.ones((3, 10), np.float32), 0))
    assert dx.device == 0 and dx.shape == x.shape
    for name, g in model.grads().items():
        assert g.device == placed[name], name
    # Nothing in forward or backward waited for a device (on CuPy: the towers overlap).
    assert fake.syncs == []
    # The links of Figure 2, forward then backward: image -> tower 1; conv3, fc6, fc7
    # exchange both ways; fc7 of tower 1 -> fc8; and the same links backwards.
    pairs = [(a, b) for a, b, _ in fake.transfers]
    links = [(0, 1)] + [(1, 0), (0, 1)] * 3 + [(1, 0)]
    assert pairs == links + links
    # The optimiser updates each parameter on its own device.
    opt = SGD(model, lr=0.1)
    for name, v in opt.velocity.items():
        assert v.device == placed[name]
    opt.step()
    assert fake.syncs == []


@LAYERS
def test_fake_two_devices_compute_what_one_device_computes(layers):
    x = images()
    dlogits = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    ref = tiny((0, 0), layers=layers).eval()
    state = ref.state_dict()
    want_logits = ref.forward(x)
    want_dx = ref.backward(dlogits)
    want_grads = {k: v.copy() for k, v in ref.grads().items()}

    backend.use(FakeDevices(2))
    model = tiny((0, 1), layers=layers).eval()
    model.load_state_dict(state)
    logits = model.forward(on_device(x, 0))
    dx = model.backward(on_device(dlogits, 0))
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-5, atol=1e-6)
    # float32, and on one device conv1/conv3 run as one stacked GEMM (SharedInputConvs):
    # the sums are the same, their order is not.
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-6)
    for name, g in model.grads().items():
        np.testing.assert_allclose(np.asarray(g), want_grads[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_both_towers_on_one_fake_device_need_no_transfers():
    fake = backend.use(FakeDevices(2))
    model = tiny((0, 0))
    fake.transfers.clear()
    model.backward(model.forward(on_device(images(), 0)))
    assert fake.transfers == []


def test_features_gather_the_towers_onto_the_first_device():
    backend.use(FakeDevices(2))
    model = tiny((0, 1)).eval()
    f = model.features(on_device(images(), 0), layer="pool2")
    assert f.device == 0 and f.shape == (3, 16, 7, 7)


# ---------------------------------------------------------------- (b) remove one transfer
def _run_skipping(monkeypatch, skip, layers):
    """Forward+backward on two fake devices with the ``skip``-th cross-device transfer
    left out (its input returned as is).  Returns the number of such transfers."""
    fake = backend.use(FakeDevices(2, seed=0))
    model = tiny((0, 1), layers=layers)
    x = on_device(images(2), 0)
    real = towers.transfer
    count = [0]

    def transfer(a, device):
        if fake.device_of(a) != device:
            k = count[0]
            count[0] += 1
            if k == skip:
                return a                       # the transfer step, removed
        return real(a, device)
    monkeypatch.setattr(towers, "transfer", transfer)
    monkeypatch.setattr(ref_towers, "transfer", transfer)
    model.backward(model.forward(x))
    return count[0]


@LAYERS
def test_removing_any_one_transfer_fails(monkeypatch, layers):
    n = _run_skipping(monkeypatch, -1, layers)  # nothing removed: runs
    assert n == 16                              # 8 links forward, 8 backward
    for k in range(n):
        with pytest.raises(DeviceMismatch):
            _run_skipping(monkeypatch, k, layers)


# ---------------------------------------------------------------- per-device RNG on CuPy
def _device_stand_in():
    """([current device id], a stand-in for cupy.cuda.Device that switches it)."""
    current = [0]

    class Device:
        def __init__(self, i=None):
            self.id = current[0] if i is None else i

        def __enter__(self):
            self.prev, current[0] = current[0], self.id

        def __exit__(self, *exc):
            current[0] = self.prev

    return current, Device


def test_cupy_backend_has_one_generator_per_device():
    """CuPy refuses a Generator under another device than the one it was made on, so
    tower 1's dropout on GPU 1 needs GPU 1's generator.  Checked with a stand-in cupy."""
    current, Device = _device_stand_in()

    made = []

    def default_rng(seed):
        made.append((current[0], seed))
        return types.SimpleNamespace(device=current[0], seed=seed)

    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=Device,
                                   runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)),
        random=types.SimpleNamespace(default_rng=default_rng))
    b = backend.CupyBackend(cupy, seed=7)
    assert b.rng.device == 0 and b.rng.seed == 7      # device 0: seeded as before
    with Device(1):
        assert b.rng.device == 1 and b.rng.seed != 7
    assert b.rng is b.rng and made == [(0, 7), (1, 7 + 1000003)]
    b.seed(3)
    assert b.rng.seed == 3


def test_cupy_keyed_generators_are_made_on_the_current_device():
    """B4 on CuPy: a dropout mask's generator is made from (seed, *key) alone, on the
    device that is current (tower 1's on GPU 1), with calls real CuPy has."""
    import cupy_surface
    current, Device = _device_stand_in()

    rec = cupy_surface.Recorder()

    def Philox4x3210(seed, **kw):
        rec.add("function", "random.Philox4x3210", 1, kw)
        return types.SimpleNamespace(device=current[0], seed=list(seed))

    def Generator(bitgen, **kw):
        rec.add("function", "random.Generator", 1, kw)
        return types.SimpleNamespace(device=bitgen.device, seed=bitgen.seed)

    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=Device,
                                   runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)),
        random=types.SimpleNamespace(Philox4x3210=Philox4x3210, Generator=Generator))
    b = backend.CupyBackend(cupy, seed=7)
    with Device(1):
        g = b.keyed_rng(11, 3)
    assert (g.device, g.seed) == (1, [7, 11, 3])
    assert b.keyed_rng(11, 3).seed == g.seed and b.keyed_rng(11, 4).seed != g.seed
    pytest.importorskip("cupy")
    assert not cupy_surface.check_against_cupy(rec)


def test_dropout_masks_follow_seed_name_and_draw():
    from minialexnet.layers import Dropout
    x = np.ones((4, 50), np.float32)
    a, b = Dropout(name="drop6.tower0"), Dropout(name="drop6.tower1")
    m0 = a.forward(x)
    assert a.draw == 1 and (a.forward(x) != m0).any()          # the next draw differs
    a.draw = 0
    np.testing.assert_array_equal(a.forward(x), m0)             # same (seed, name, draw)
    assert (b.forward(x) != m0).any()                           # another tower's mask
    backend.use("numpy", seed=1)
    a.draw = 0
    assert (a.forward(x) != m0).any()                           # another seed


# ---------------------------------------------------------------- (c) PyTorch, grouped convs
def torch_grouped_alexnet(params, x, lrn_alpha, masks=None, eval_scale=None):
    """The two-tower net as ONE network: grouped convolutions (groups=2) for conv2,
    conv4, conv5, LRN within each group, full connections elsewhere."""
    import torch
    import torch.nn.functional as F

    def cat(layer, k):
        parts = [params[f"{layer}.tower{i}.{k}"] for i in range(2)]
        return torch.cat(parts, 0)

    def lrn(h):
        # the paper's alpha multiplies the plain sum; torch divides alpha by n
        return torch.cat([F.local_response_norm(c, 5, alpha=5 * lrn_alpha, beta=0.75, k=2.0)
                          for c in h.chunk(2, dim=1)], 1)

    def drop(h, i):
        return h * masks[i] if masks is not None else h * eval_scale

    h = F.relu(F.conv2d(x, cat("conv1", "W"), cat("conv1", "b"), stride=4))
    h = F.max_pool2d(lrn(h), 3, 2)
    h = F.relu(F.conv2d(h, cat("conv2", "W"), cat("conv2", "b"), padding=2, groups=2))
    h = F.max_pool2d(lrn(h), 3, 2)
    h = F.relu(F.conv2d(h, cat("conv3", "W"), cat("conv3", "b"), padding=1))
    h = F.relu(F.conv2d(h, cat("conv4", "W"), cat("conv4", "b"), padding=1, groups=2))
    h = F.relu(F.conv2d(h, cat("conv5", "W"), cat("conv5", "b"), padding=1, groups=2))
    h = F.max_pool2d(h, 3, 2).flatten(1)
    h = drop(F.relu(F.linear(h, cat("fc6", "W"), cat("fc6", "b"))), 0)
    h = drop(F.relu(F.linear(h, cat("fc7", "W"), cat("fc7", "b"))), 1)
    return F.linear(h, params["fc8.W"], params["fc8.b"])


def _set_lrn_alpha(model, alpha):
    # At the paper's alpha = 1e-4 LRN is nearly the identity, and LRN across the tower
    # boundary would pass unnoticed; a strong alpha makes the grouping visible.
    for prefix, layer, _ in model.named_layers():
        if prefix.startswith("norm"):
            layer.alpha = alpha


@LAYERS
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_two_towers_equal_grouped_convolutions_in_pytorch(mode, layers):
    torch = pytest.importorskip("torch")
    # The paper's AlexNet at a reduced width, float64; 99 px gives 2x2 maps at pool5
    model = AlexNet(num_classes=7, input_size=99, widths=(8, 16, 24, 24, 16), fc=(12, 10),
                    init_std=0.2, dtype="float64", layers=layers)
    _set_lrn_alpha(model, 0.5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 99, 99))
    dlogits = rng.standard_normal((2, 7))
    masks = None
    if mode == "train":
        model.train()
        masks = []
        for name in ("drop6", "drop7"):                # fixed masks via forward(x, mask=)
            step = next(s for s in model.steps if s.name == name)
            per_tower = []
            for layer in step.layers:
                m = rng.random((2, 6 if name == "drop6" else 5)) >= 0.5
                per_tower.append(m)
                layer.forward = types.MethodType(
                    lambda self, h, mask=None, _m=m, _f=type(layer).forward: _f(self, h, mask=_m),
                    layer)
            masks.append(torch.from_numpy(np.concatenate(per_tower, 1).astype(np.float64)))
    else:
        model.eval()
    logits = model.forward(x)
    dx = model.backward(dlogits)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params().items()}
    tx = torch.tensor(x, requires_grad=True)
    tlogits = torch_grouped_alexnet(tp, tx, 0.5, masks=masks, eval_scale=0.5)
    tlogits.backward(torch.from_numpy(dlogits))
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, g in model.grads().items():
        np.testing.assert_allclose(g, tp[name].grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_lrn_across_the_tower_boundary_would_differ():
    """The check above can fail: one LRN over all channels is a different network."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    h = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 8, 3, 3)))
    grouped = torch.cat([F.local_response_norm(c, 5, alpha=2.5, beta=0.75, k=2.0)
                         for c in h.chunk(2, 1)], 1)
    whole = F.local_response_norm(h, 5, alpha=2.5, beta=0.75, k=2.0)
    assert not torch.allclose(grouped, whole)


def _run(model, x, dlogits):
    logits = model.forward(x)
    dx = model.backward(dlogits)
    return logits, dx, {k: v.copy() for k, v in model.grads().items()}


@pytest.mark.parametrize("input_grad", [True, False])
def test_shared_input_convolutions_are_the_towers_convolutions(monkeypatch, input_grad):
    """On one device conv1 and conv3 run as one stacked conv: same numbers (float64)."""
    x = images().astype(np.float64)
    dlogits = np.random.default_rng(1).standard_normal((3, 10))
    model = tiny((0, 0), dtype=np.float64, input_grad=input_grad).eval()
    fused = _run(model, x, dlogits)
    shared = [s.name for s in model.steps if getattr(s, "stacked", None) is not None]
    assert shared == ["conv1", "conv3"]
    monkeypatch.setattr(towers.TowerLayer, "fuse_shared_input", False)
    plain = _run(model, x, dlogits)
    assert not any(getattr(s, "stacked", None) for s in model.steps)
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-12, atol=1e-14)
    if input_grad:
        np.testing.assert_allclose(fused[1], plain[1], rtol=1e-11, atol=1e-14)
    else:
        assert fused[1] is None and plain[1] is None
    for name in plain[2]:
        np.testing.assert_allclose(fused[2][name], plain[2][name], rtol=1e-11, atol=1e-14,
                                   err_msg=name)


def _received(model, monkeypatch, x, dlogits):
    """What each Broadcast and Exchange step's backward receives: {step: [dy per tower]}."""
    got = {}
    with monkeypatch.context() as m:
        for cls in (towers.Broadcast, towers.Exchange):
            def spy(step, dys, real=cls.backward):
                got[step.name] = [None if d is None else np.array(d) for d in dys]
                return real(step, dys)
            m.setattr(cls, "backward", spy)
        model.set_draw(0)                        # the same dropout masks every time
        model.forward(x)
        model.backward(dlogits)
    return got


@pytest.mark.parametrize("input_grad", [True, False])
def test_fusion_does_not_change_what_the_transfer_steps_receive(monkeypatch, input_grad):
    """Stacked or apart, Broadcast and Exchange get each tower's own input gradient
    (None for conv1 without dx): tower by tower the same list (float64)."""
    x = images().astype(np.float64)
    dlogits = np.random.default_rng(1).standard_normal((3, 10))
    model = tiny((0, 0), dtype=np.float64, input_grad=input_grad)
    fused = _received(model, monkeypatch, x, dlogits)
    assert [s.name for s in model.steps if getattr(s, "stacked", None)] == ["conv1", "conv3"]
    monkeypatch.setattr(towers.TowerLayer, "fuse_shared_input", False)
    apart = _received(model, monkeypatch, x, dlogits)
    assert sorted(fused) == sorted(apart) == ["exchange3", "exchange6", "exchange7", "to_towers"]
    for name in apart:
        for i, (a, b) in enumerate(zip(fused[name], apart[name])):
            if name == "to_towers" and not input_grad:
                assert a is None and b is None
            else:
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14,
                                           err_msg=f"{name} tower {i}")


def test_towers_on_two_devices_are_not_fused():
    backend.use(FakeDevices(2))
    model = tiny((0, 1))
    model.forward(on_device(images(), 0))
    assert not any(getattr(s, "stacked", None) for s in model.steps)


def test_two_devices_never_stack_even_when_handed_one_array():
    """On NumPy a transfer returns the very same array: the device check alone
    keeps towers placed on (0, 1) apart."""
    backend.use("numpy", seed=0)
    model = tiny((0, 1))
    model.forward(images())
    assert not any(getattr(s, "stacked", None) for s in model.steps)


# ---------------------------------------------------------------- misuse of the steps and the model
from minialexnet.layers import LayerStateError, ShapeError  # noqa: E402
from minialexnet.models import MAX_PARAMS, ModelSizeError, build_model  # noqa: E402


def _step(model, name):
    return next(s for s in model.steps if s.name == name)


STEP_MISTAKES = {
    # (step, call, error, words)
    "tower layer given one array": ("conv1", lambda s: s.forward(images()), ShapeError,
                                    "a list of 2 arrays, one per tower, got ndarray"),
    "tower layer given one tower's list": ("conv1", lambda s: s.forward([images()]), ShapeError,
                                           "got a list of 1"),
    "tower gradient list too long": ("relu1", lambda s: s.backward([1, 2, 3]), ShapeError,
                                     "got a list of 3"),
    "exchange backward first": ("exchange3", lambda s: s.backward([None, None]),
                                LayerStateError, "backward() called before forward()"),
    "gather backward first": ("gather8", lambda s: s.backward(np.ones((3, 8), np.float32)),
                              LayerStateError, "backward() called before forward()"),
    "exchange given one array": ("exchange6", lambda s: s.forward(images()), ShapeError,
                                 "one per tower"),
    "broadcast gradient not a list": ("to_towers", lambda s: s.backward(images()), ShapeError,
                                      "one per tower"),
    "layer in a tower, backward first": ("conv2", lambda s: s.backward([images(), images()]),
                                         LayerStateError, "conv2.tower0: backward() called before"),
}


@pytest.mark.parametrize("case", sorted(STEP_MISTAKES))
def test_step_mistakes_name_the_step(case):
    name, call, error, words = STEP_MISTAKES[case]
    step = _step(tiny(), name)
    with pytest.raises(error) as e:
        call(step)
    assert words in str(e.value) and str(e.value).startswith(name), str(e.value)


MODEL_MISTAKES = {
    "backward before forward": (lambda m: m.backward(np.ones((3, 10), np.float32)),
                                LayerStateError, "fc8: backward() called before forward()"),
    "wrong image size": (lambda m: m.forward(images(size=28)), ShapeError,
                         "expected images of shape (N, 3, 32, 32), got (3, 3, 28, 28)"),
    "grey images": (lambda m: m.forward(images()[:, :1]), ShapeError,
                    "expected images of shape (N, 3, 32, 32)"),
    "integer images": (lambda m: m.forward(images().astype(np.uint8)), ShapeError,
                       "floating-point input"),
    "empty batch": (lambda m: m.forward(images()[:0]), ShapeError, "empty batch"),
    "wrong logits gradient": (lambda m: (m.forward(images()), m.backward(np.ones((3, 9), np.float32))),
                              ShapeError, "fc8: the gradient has shape (3, 9)"),
}


@pytest.mark.parametrize("case", sorted(MODEL_MISTAKES))
def test_model_mistakes_name_the_layer(case):
    call, error, words = MODEL_MISTAKES[case]
    with pytest.raises(error) as e:
        call(tiny())
    assert words in str(e.value), str(e.value)


@pytest.mark.parametrize("name,kwargs,layer", [
    ("small-alexnet", dict(num_classes=10 ** 9), "fc8"),
    ("small-alexnet", dict(num_classes=1e9), "fc8"),
    ("alexnet", dict(num_classes=300_000), "fc8"),
    ("alexnet", dict(fc=(4096, 300_000)), "fc7"),
    ("small-alexnet", dict(width=1000), "conv2"),
    ("fournet", dict(widths=(32, 32, 2 * 10 ** 6)), "conv3"),
    ("torchvision-alexnet", dict(num_classes=10 ** 7), "fc8"),
])
def test_huge_models_are_refused_before_allocating(name, kwargs, layer, monkeypatch):
    # Any allocation of the refused layer's parameters would fail this test.
    import minialexnet.layers as L
    real = L._normal

    def guarded(shape, std, dtype):
        assert np.prod(shape, dtype=np.float64) < MAX_PARAMS, f"allocated {shape}"
        return real(shape, std, dtype)
    monkeypatch.setattr(L, "_normal", guarded)
    with pytest.raises(ModelSizeError, match=rf"^{layer} alone would have [\d,]+ parameters"
                                             rf".* more than the 1,000,000,000"):
        build_model(name, **kwargs)


def test_the_largest_named_models_fit_the_bound():
    assert build_model("alexnet").num_params() == 60_965_224 < MAX_PARAMS
