"""AlexNet (paper 3.5) and its family, built from the layers of ``layers.py``.

    from minialexnet.models import AlexNet, build_model
    model = AlexNet()                        # the paper's net: two towers, 227x227x3 input
    model = build_model("small-alexnet", input_size=32, width=1.0)   # CIFAR-10 sized
    model = build_model("alexnet", layers="reference")   # the same net, reference code

``layers`` (every model takes it): "fast" (the default: ``layers.py`` and ``towers.py``,
what training runs) or "reference" (``minialexnet/reference/``: the paper's equations,
the same numbers, slower).  It is kept in ``model.config``, so a checkpoint rebuilds it.

``input_grad`` (every model takes it; default True): whether ``backward`` computes
dL/d(image).  Training builds with ``input_grad=False`` (conv1's costliest backward
pass, never needed).  It is set once, when the model is built, because the first
convolutions plan their forward by it; it is not kept in ``model.config`` (it says
how the model runs, not what it is: a checkpoint loads into either).

The family (``build_model(name, **kwargs)``; every name also takes the keyword
arguments of its class, overriding its defaults):

    "alexnet"               the paper's network, two towers, 227 px, 60,965,224 parameters
    "alexnet-1tower"        the same kernels (96/256/384/384/256) in one tower: conv2, conv4
                            and conv5 see all maps below (more parameters: 62,378,344)
    "alexnet-half"          paper 3.2's baseline: one tower, half the kernels in each conv
                            layer but conv5 (48/128/192/192/256), fc layers as in the paper
                            (see AlexNet's docstring for the footnote)
    "torchvision-alexnet"   NOT the paper's net: torchvision's variant, 64/192/384/256/256,
                            no LRN, dropout before fc6/fc7, 224 px, 61,100,840 parameters
    "small-alexnet"         the paper's topology for 32x32 (CIFAR-10) or 64x64 input:
                            kwargs input_size=32|64 (or crops, e.g. 24, 28), width=1.0
                            (scales every layer)
    "fournet"               Figure 1 / 3.3's four-layer CIFAR-10 net: kwargs
                            activation="relu"|"tanh", lrn=True|False, pool="3/2"|"2/2",
                            lrn_args={"size": 9, "alpha": ...} (the LRN constants)

The model API (the training CLI, benchmarks and chapters rely on exactly this):

    model.forward(x) -> logits          x (N, 3, H, W), H = W = model.input_size; logits
                                        (N, num_classes) on the first device
    model.backward(dlogits) -> dx       fills the gradients (dx is dL/d(image); None
                                        for a model built with input_grad=False)
    model.params() -> {name: array}     live references: the optimiser updates them in place
    model.grads()  -> {name: array}     same keys, after backward
    model.train() / model.eval()        dropout on / off (off: outputs times 0.5, paper 4.2)
    model.set_draw(step, rows=None)     the next masks: number ``step``; rows=(lo, B): the
                                        images are rows lo.. of a global batch of B
    model.state_dict() -> {name: host NumPy array};   model.load_state_dict(d)
    model.config                        JSON-able constructor arguments; from_config(config)
                                        (or build_model(**config)) rebuilds the model
    model.features(x, layer="relu7")    activations of a named layer (towers concatenated)
    model.summary()                     per-layer account: shapes, parameters, neurons, FLOPs
    model.input_size, model.input_shape, model.num_classes, model.towers, model.devices
    model.steps                         the steps in order (layers and transfers, towers.py)
    model.layer_names()                 names accepted by features()

Parameter names: ``<layer>.<W|b>`` for a layer with one copy (every layer of a one-tower
net, and fc8 which sees both towers), ``<layer>.tower<i>.<W|b>`` for tower i's half of a
split layer: ``conv1.tower0.W`` (48, 3, 11, 11), ``conv2.tower1.b`` (128,),
``fc6.tower0.W`` (2048, 9216), ``fc8.W`` (1000, 4096).  Layer names: conv1..conv5,
fc6..fc8 (fournet: conv1..conv3, fc4); nonlinearities relu<k> (or tanh<k>), norm<k>
(LRN), pool<k>, drop<k>, flatten; transfer steps to_towers, exchange3, exchange6,
exchange7, gather8.

The recipe (stated here once; the CLI, the chapters and README use it):

* The paper's AlexNets (227 px) keep the paper's initialisation (section 5): weights
  N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 elsewhere.
* The small nets are trained on unit-scale inputs (data/transforms.py: (pixel -
  mean) / std, NOT the paper's raw 0..255 pixels) with an initialisation that fits
  them, NOT the paper's: small-alexnet He's N(0, 2/fan_in) (He et al. 2015: keeps the
  signal's variance through eight layers of ReLUs), fournet N(0, 1/fan_in) ("fan-in",
  LeCun et al. 1998), biases 0.  Measured on the built-in set, small-alexnet, 6
  epochs at lr 0.01: He 54.9 % validation error, fan-in 75.6 %; at the paper's std
  0.01 the small nets sit at chance for epochs.  Chapter 01 shows each init's
  activation std layer by layer at both input scales.
* Every model: lr 0.01 (``DEFAULT_LR``), momentum 0.9, weight decay 0.0005, batch 128.

``init_std`` (a float, {layer: std}, "he" or "fan-in") and ``init_bias`` ({layer:
value}; unnamed layers get 0) change it.  ``PIXEL_STD`` (64) is the standard deviation
of raw centred pixels: with ``--input-scale paper``, divide conv1's std by it.
"""

import inspect

from . import backend, layers as fast_layers, reference, towers as fast_towers
from .conv import autotune
from .errors import ConfigError, MinialexnetError, ShapeError, StateDictError

__all__ = ["DEFAULT_LR", "default_lr", "Network", "AlexNet", "SmallAlexNet", "TorchvisionAlexNet", "FourLayerNet",
           "build_model", "from_config", "describe", "MODELS", "Summary", "StateDictError",
           "ModelSizeError", "MAX_PARAMS",
           "PAPER_NEURONS", "PAPER_BIAS"]

# Raw, mean-centred RGB values (paper 2, ``--input-scale paper``) have a standard
# deviation of about 64 on CIFAR-10 and ImageNet: conv1's init must be divided by it.
PIXEL_STD = 64.0

# The recipe's learning rate per model (SGD, momentum 0.9, batch 128, unit-scale
# inputs): the paper's 0.01 unless measured otherwise.  The one place that says it;
# train.default_config and the command line read it.
DEFAULT_LR = {"small-alexnet": 0.01, "fournet": 0.01}


def default_lr(name):
    """The learning rate the recipe trains model ``name`` with (paper: 0.01)."""
    return DEFAULT_LR.get(name, 0.01)


PAPER_BIAS = {"conv2": 1.0, "conv4": 1.0, "conv5": 1.0, "fc6": 1.0, "fc7": 1.0}

# Neurons per layer as the paper states them (3.5), all towers together.
PAPER_NEURONS = {"input": 150528, "conv1": 253440, "conv2": 186624, "conv3": 64896,
                 "conv4": 64896, "conv5": 43264, "fc6": 4096, "fc7": 4096, "fc8": 1000}

CONV1_NOTE = ("conv1: the paper states 253,440 neurons, but its 96 maps are 55x55 "
              "(Figure 2; 227x227 input, or 224 with padding): 290,400 neurons.  253,440 "
              "is 96 x 2,640, and 2,640 is no k x k, so the paper's number is inconsistent "
              "with its own shapes and cannot be reproduced")


class ModelSizeError(MinialexnetError, ValueError):
    """A model far bigger than minialexnet builds (``MAX_PARAMS``), refused before
    its parameters are allocated."""


#: The most parameters a model may have: 16x the paper's net (60,965,224), 4 GB of
#: float32 weights (and as much again for gradients and for momentum).  Checked
#: layer by layer before each layer allocates, so ``num_classes=1e9`` fails at once.
MAX_PARAMS = 1_000_000_000


def _out(size, k, s, p=0):
    return (size + 2 * p - k) // s + 1


def _dtype(d):
    """'float32' / np.float32 / None -> the scalar type the layers want."""
    if d is None:
        return backend.dtype()
    return backend.xp().dtype(d).type


def _dtype_name(d):
    return backend.xp().dtype(_dtype(d)).name


# Which code the layers and tower steps run: "fast" (minialexnet/layers.py and
# towers.py: what training runs by default) or "reference" (minialexnet/reference/:
# the paper's equations, to read; the same numbers, slower).
IMPLEMENTATIONS = {"fast": (fast_layers, fast_towers),
                   "reference": (reference.layers, reference.towers)}


class _Builder:
    """Makes the steps of a network: layers in towers, transfers, one-device layers."""

    def __init__(self, devices, dtype, init_std, init_bias, layers="fast"):
        if layers not in IMPLEMENTATIONS:
            raise ValueError(f"layers must be one of {', '.join(map(repr, IMPLEMENTATIONS))}, "
                             f"not {layers!r}")
        self.devices = tuple(int(d) for d in devices)
        self.dtype, self.init_std, self.init_bias = dtype, init_std, init_bias
        self.layers = layers
        self.L, self.T = IMPLEMENTATIONS[layers]      # the layer and tower-step classes
        self.steps = []
        self.num_params = 0

    def _count(self, name, spec, copies):
        """Add the layer's parameters to the total; refuse before allocating them if
        the model would pass MAX_PARAMS."""
        if spec["kind"] not in ("conv", "linear"):
            return
        n = spec["cout"] * (spec["cin"] * spec.get("k", 1) ** 2 + 1) * copies
        self.num_params += n
        if self.num_params > MAX_PARAMS:
            itemsize = backend.xp().dtype(self.dtype).itemsize
            raise ModelSizeError(
                f"{name} alone would have {n:,.0f} parameters (the model so far "
                f"{self.num_params:,.0f}, {self.num_params * itemsize / 1e9:,.1f} GB of "
                f"weights): more than the {MAX_PARAMS:,} minialexnet builds (the paper's "
                f"AlexNet has 60,965,224); check num_classes, widths and fc")

    def std(self, name, spec):
        s = self.init_std
        fan_in = spec["cin"] * spec.get("k", 1) ** 2
        if s == "he":            # He et al. 2015, not the paper: sqrt(2 / fan_in)
            return (2.0 / fan_in) ** 0.5
        if s == "fan-in":        # not the paper: 1/sqrt(fan_in) (LeCun et al. 1998)
            return fan_in ** -0.5
        return float(s.get(name, 0.01) if isinstance(s, dict) else s)

    def bias(self, name):
        return float(self.init_bias.get(name, 0.0))

    def _make(self, name, spec):
        kind, a, L = spec["kind"], spec, self.L
        # name=: a layer's errors name it (conv3, not Conv2D) from its constructor on.
        if kind == "conv":
            return lambda: L.Conv2D(a["cin"], a["cout"], a["k"], stride=a["s"],
                                    padding=a["p"], weight_std=self.std(name, a),
                                    bias=self.bias(name), dtype=self.dtype, name=name)
        if kind == "linear":
            return lambda: L.Linear(a["cin"], a["cout"], weight_std=self.std(name, a),
                                    bias=self.bias(name), dtype=self.dtype, name=name)
        if kind == "relu":
            return L.ReLU
        if kind == "tanh":
            return L.Tanh
        if kind == "lrn":
            return lambda: L.LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"],
                                               name=name)
        if kind == "pool":
            return lambda: L.MaxPool2D(a["k"], a["s"], name=name)
        if kind == "dropout":
            return lambda: L.Dropout(a["p"], inverted=a["inverted"], name=name)
        if kind == "flatten":
            return L.Flatten
        raise ValueError(f"unknown layer kind {kind!r}")

    def tower(self, name, kind, **args):
        """One layer in every tower (each on its tower's device)."""
        spec = dict(kind=kind, **args)
        self._count(name, spec, len(self.devices))
        self.steps.append(self.T.TowerLayer(name, self._make(name, spec), self.devices, spec))

    def single(self, name, kind, **args):
        """One layer on the first device."""
        spec = dict(kind=kind, **args)
        self._count(name, spec, 1)
        self.steps.append(self.T.OnDevice(name, self._make(name, spec), self.devices[0], spec))

    def broadcast(self, name="to_towers"):
        self.steps.append(self.T.Broadcast(name, self.devices))

    def exchange(self, name):
        self.steps.append(self.T.Exchange(name, self.devices))

    def gather(self, name):
        self.steps.append(self.T.Gather(name, self.devices, self.devices[0]))


def _devices(devices, towers):
    if devices is None:
        return (0,) * towers
    devices = tuple(int(d) for d in devices)
    if len(devices) != towers:
        raise ConfigError(f"devices={devices}: need one device per tower ({towers} towers)")
    return devices


def _split_width(total, towers, what):
    if total % towers:
        raise ConfigError(f"{what}={total} is not divisible by towers={towers}")
    return total // towers


# ======================================================================== the model
class Network:
    """A sequence of steps (layers in towers, and transfers): the model API.

    Subclasses build ``self.steps`` and ``self.config``; see the module docstring.
    """

    name = "network"

    def _finish(self, builder, input_size, num_classes, config, input_grad, in_channels=3):
        self.steps = builder.steps
        self.devices = builder.devices
        self.towers = len(builder.devices)
        self.input_size = input_size
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        self.dtype = builder.dtype
        self.config = dict(config, name=self.name, devices=list(self.devices),
                           layers=builder.layers)
        self._by_name = {s.name: s for s in self.steps}
        self.training = True
        # Fixed here, before any forward: the convolutions' column plans and "auto"
        # choices depend on it.  Not in config: how the model runs, not what it is.
        self.input_grad = bool(input_grad)
        for layer in self._input_layers():
            layer.needs_input_grad = self.input_grad

    # ---------------------------------------------------------------- running
    def forward(self, x, record=None):
        """Images (N, C, H, W) -> logits (N, num_classes), on the first tower's device.

        ``record(name, output)``, if given, sees every step's output (a list of the
        towers' arrays for split layers): how ``health.HealthMonitor`` watches training
        without a second pass."""
        if getattr(x, "ndim", None) == 4 and tuple(x.shape[1:]) != self.input_shape:
            # Caught here, not as a puzzling feature count at fc6.
            raise ShapeError(f"{self.name}: expected images of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        for step in self.steps:
            x = step.forward(x)
            if record is not None:
                record(step.name, x)
        return x

    __call__ = forward

    def backward(self, dlogits, after=None, **kwargs):
        """dL/dlogits -> dL/dimage; fills every layer's gradients (see ``grads()``).

        A model built with ``input_grad=False`` returns None instead of dL/dimage:
        training never needs it, and it is conv1's costliest backward pass (PyTorch
        skips it too).  ``after(step)``, if given, is called as soon as each step's
        gradients are final (last step first): distributed training starts sending
        them while the earlier steps' backward still runs."""
        if kwargs:
            raise TypeError(f"{self.name}.backward() takes only dlogits (and after), not "
                            f"{', '.join(kwargs)}: whether it computes dL/dimage is fixed "
                            "when the model is built (build_model(..., input_grad=False))")
        dy = dlogits
        for step in reversed(self.steps):
            dy = step.backward(dy)
            if after is not None:
                after(step)
        return dy

    def _input_layers(self):
        """The convolutions that see the image (after the broadcast to the towers)."""
        for step in self.steps:
            layers = [layer for _, layer, _ in step.named_layers()]
            if layers:
                return [l for l in layers if hasattr(l, "needs_input_grad")]
        return []

    def train(self, mode=True):
        self.training = mode
        for step in self.steps:
            step.train(mode)
        return self

    def set_draw(self, n, rows=None):
        """The next training forward draws dropout masks number ``n`` (see
        ``layers.Dropout``): the Trainer passes the step, so masks follow from
        (seed, layer, step) and a resumed run draws what the straight one did.

        ``rows=(lo, batch)``: the images are rows lo.. of a global batch of
        ``batch`` (a rank's shard): every dropout layer keeps those rows of the
        global batch's masks, so K ranks drop what one process drops.  None: the
        images are the whole batch."""
        for _, layer, _ in self.named_layers():
            if hasattr(layer, "draw"):
                layer.draw, layer.rows = n, None if rows is None else tuple(rows)

    def eval(self):
        return self.train(False)

    def layer_names(self):
        return [s.name for s in self.steps]

    def features(self, x, layer="relu7"):
        """The output of the step named ``layer`` for images ``x``: (N, ...) with the
        towers' maps concatenated along axis 1, on the first device.

        Paper 6.1 (Figure 4) finds nearest neighbours of the "feature activations
        induced at the last, 4096-dimensional hidden layer": that is ``relu7`` (fc7
        after its ReLU; ``fc7`` is before it).  Runs in the current mode: call
        ``eval()`` first, or dropout (drop6) will perturb fc7.
        """
        if layer not in self._by_name:
            raise KeyError(f"{self.name}: no layer {layer!r}; layers: {', '.join(self.layer_names())}")
        for step in self.steps:
            x = step.forward(x)
            if step.name == layer:
                break
        if isinstance(x, list):
            home = self.devices[0]
            with backend.device(home):
                parts = [backend.to_device(p, home) for p in x]
                x = parts[0] if len(parts) == 1 else backend.xp().concatenate(parts, axis=1)
        return x

    # ---------------------------------------------------------------- parameters
    def named_layers(self):
        """(name prefix, layer, device) for every layer, in order."""
        for step in self.steps:
            yield from step.named_layers()

    def params(self):
        """{name: parameter array}: live references, updated in place by the optimiser."""
        return {f"{prefix}.{k}": v for prefix, layer, _ in self.named_layers()
                for k, v in layer.params.items()}

    def grads(self):
        """{name: gradient array} with the keys of ``params()``, filled by ``backward``."""
        out = {}
        for prefix, layer, _ in self.named_layers():
            for k in layer.params:
                if k not in layer.grads:
                    raise RuntimeError(f"{self.name}: no gradient for {prefix}.{k} yet; "
                                       "call backward() first")
                out[f"{prefix}.{k}"] = layer.grads[k]
        return out

    def param_devices(self):
        """{name: device index} for every parameter."""
        return {f"{prefix}.{k}": d for prefix, layer, d in self.named_layers()
                for k in layer.params}

    def num_params(self):
        return sum(int(v.size) for v in self.params().values())

    @property
    def arch(self):
        """A one-line description of the architecture (used in error messages)."""
        return describe(self.config)

    def state_dict(self):
        """{name: host NumPy array}: copies of every parameter (for checkpoints)."""
        return {k: backend.to_numpy(v).copy() for k, v in self.params().items()}

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` ({name: array}) into the parameters, in place, on their devices.

        Raises StateDictError naming the first missing or mis-shaped parameter (and,
        with ``strict``, the first name this model does not have) and the architecture.
        """
        params, devices = self.params(), self.param_devices()
        for name, p in params.items():
            if name not in state:
                raise StateDictError(
                    f"load_state_dict: parameter {name!r} is missing from the state dict "
                    f"(this model is {self.arch}; the state dict has "
                    f"{_first_names(state)})")
            shape = tuple(state[name].shape)
            if shape != tuple(p.shape):
                raise StateDictError(
                    f"load_state_dict: parameter {name!r} has shape {shape} in the state "
                    f"dict but {tuple(p.shape)} in this model ({self.arch})")
        if strict:
            for name in state:
                if name not in params:
                    raise StateDictError(
                        f"load_state_dict: the state dict has {name!r}, which this model "
                        f"({self.arch}) does not have")
        for name, p in params.items():
            with backend.device(devices[name]):
                p[...] = backend.to_device(state[name], devices[name])
        return self

    # ---------------------------------------------------------------- the account
    def summary(self):
        """Per layer and tower: output shape, parameters, neurons, FLOPs, memory, device."""
        return Summary(self)

    def __repr__(self):
        if not hasattr(self, "config"):
            return f"<{type(self).__name__} (under construction)>"
        return f"<{self.arch}: {self.num_params():,} parameters>"


def _first_names(state, n=4):
    names = list(state)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(repr(k) for k in names[:n]) + more if names else "nothing"


# ======================================================================== AlexNet
def _alexnet_steps(b, *, input_size, num_classes, widths, fc, conv1, lrn, dropout,
                   inverted_dropout, lrn_args=None, in_channels=3, activation="relu"):
    """The paper's topology (3.5), split into ``len(b.devices)`` towers (3.2).
    ``activation``: "relu" (the paper's) or "tanh" (chapter 01's saturating control)."""
    if activation not in ("relu", "tanh"):
        raise ConfigError(f"activation must be 'relu' or 'tanh', not {activation!r}")
    T = len(b.devices)
    c1, c2, c3, c4, c5 = (_split_width(w, T, f"conv{i + 1} width")
                          for i, w in enumerate(widths))
    f6, f7 = (_split_width(w, T, f"fc{i + 6} width") for i, w in enumerate(fc))
    k1, s1, p1 = conv1
    lrn_args = lrn_args or dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
    size = _out(input_size, k1, s1, p1)                       # 55 at 227
    if size < 3:
        raise ConfigError(f"input_size={input_size} is too small for conv1 {k1}x{k1}/{s1}")

    b.broadcast("to_towers")                                  # conv1 sees the whole image
    b.tower("conv1", "conv", cin=in_channels, cout=c1, k=k1, s=s1, p=p1)
    b.tower(f"{activation}1", activation)
    if lrn:
        b.tower("norm1", "lrn", **lrn_args)
    b.tower("pool1", "pool", k=3, s=2)
    size = _out(size, 3, 2)                                   # 27
    b.tower("conv2", "conv", cin=c1, cout=c2, k=5, s=1, p=2)  # own tower's maps only
    b.tower(f"{activation}2", activation)
    if lrn:
        b.tower("norm2", "lrn", **lrn_args)
    b.tower("pool2", "pool", k=3, s=2)
    size = _out(size, 3, 2)                                   # 13
    b.exchange("exchange3")                                   # conv3 sees both towers
    b.tower("conv3", "conv", cin=c2 * T, cout=c3, k=3, s=1, p=1)
    b.tower(f"{activation}3", activation)
    b.tower("conv4", "conv", cin=c3, cout=c4, k=3, s=1, p=1)  # own tower only
    b.tower(f"{activation}4", activation)
    b.tower("conv5", "conv", cin=c4, cout=c5, k=3, s=1, p=1)  # own tower only
    b.tower(f"{activation}5", activation)
    b.tower("pool5", "pool", k=3, s=2)
    size = _out(size, 3, 2)                                   # 6
    if size < 1:
        raise ConfigError(f"input_size={input_size} is too small: pool5 has no output")
    b.tower("flatten", "flatten")
    b.exchange("exchange6")                                   # fc6 sees both towers
    b.tower("fc6", "linear", cin=c5 * T * size * size, cout=f6)
    b.tower(f"{activation}6", activation)
    if dropout:
        b.tower("drop6", "dropout", p=dropout, inverted=inverted_dropout)
    b.exchange("exchange7")                                   # fc7 sees all of fc6
    b.tower("fc7", "linear", cin=f6 * T, cout=f7)
    b.tower(f"{activation}7", activation)
    if dropout:
        b.tower("drop7", "dropout", p=dropout, inverted=inverted_dropout)
    b.gather("gather8")                                       # fc8 sees all of fc7
    b.single("fc8", "linear", cin=f7 * T, cout=num_classes)


class AlexNet(Network):
    """The network of paper 3.5, in ``towers`` towers (paper 3.2: two).

    Layers (all towers together; each of T towers holds 1/T of every conv layer and of
    fc6, fc7):
        conv1  96 @ 11x11x3, stride 4          -> ReLU -> LRN -> max-pool 3/2
        conv2 256 @ 5x5x48, pad 2 (own tower)  -> ReLU -> LRN -> max-pool 3/2
        conv3 384 @ 3x3x256, pad 1 (all maps)  -> ReLU
        conv4 384 @ 3x3x192, pad 1 (own tower) -> ReLU
        conv5 256 @ 3x3x192, pad 1 (own tower) -> ReLU -> max-pool 3/2
        fc6 4096 -> ReLU -> dropout 0.5;  fc7 4096 -> ReLU -> dropout 0.5;  fc8 num_classes
    LRN: size 5, alpha 1e-4, beta 0.75, k 2 (the paper's formula; see layers.py).

    224 or 227?  The paper says the input is 224x224x3, but an 11x11 convolution with
    stride 4 maps 224 pixels to (224 - 11)/4 + 1 = 54.25 positions: not a whole number.
    227 gives exactly (227 - 11)/4 + 1 = 55, the 55x55 maps of Figure 2 (as would 224
    with two pixels of padding).  So ``input_size`` defaults to 227 (crops of the
    256x256 images are 227x227 here); other sizes work if the shapes do.

    With two towers the net has exactly 60,965,224 parameters.  With ``towers=1`` and
    the same widths, conv2, conv4 and conv5 see all maps below: 62,378,344.

    Arguments: num_classes, towers, devices (one per tower; default all 0), input_size,
    widths (conv1..conv5 kernels, all towers), fc (fc6, fc7 widths), lrn (on/off),
    dropout (p; 0 for none), inverted_dropout (False: the paper's test-time x0.5),
    init_std (float or {layer: std}), init_bias ({layer: value}; default PAPER_BIAS),
    dtype ("float32"), layers ("fast" or "reference": which code runs), input_grad
    (True: backward returns dL/d(image); see the module docstring).
    """

    name = "alexnet"
    conv1_shape = (11, 4, 0)           # conv1's kernel, stride, padding
    default_bias = PAPER_BIAS

    def __init__(self, num_classes=1000, towers=2, devices=None, input_size=227,
                 widths=(96, 256, 384, 384, 256), fc=(4096, 4096), lrn=True,
                 dropout=0.5, inverted_dropout=False, init_std=0.01, init_bias=None,
                 dtype=None, name=None, layers="fast", activation="relu", input_grad=True):
        if name is not None:
            self.name = name
        init_bias = dict(self.default_bias if init_bias is None else init_bias)
        b = _Builder(_devices(devices, towers), _dtype(dtype), init_std, init_bias, layers)
        _alexnet_steps(b, input_size=input_size, num_classes=num_classes,
                       widths=tuple(widths), fc=tuple(fc), conv1=self.conv1_shape, lrn=lrn,
                       dropout=dropout, inverted_dropout=inverted_dropout,
                       activation=activation)
        config = dict(num_classes=num_classes, towers=towers, input_size=input_size,
                      widths=list(widths), fc=list(fc), lrn=lrn, dropout=dropout,
                      inverted_dropout=inverted_dropout, init_std=init_std,
                      init_bias=init_bias, dtype=_dtype_name(dtype), activation=activation)
        self._finish(b, input_size, num_classes, config, input_grad)


class SmallAlexNet(AlexNet):
    """The paper's topology scaled down for 32x32 (CIFAR-10) or 64x64 input.

    Same two towers, same connectivity, LRN after conv1 and conv2, overlapping 3/2
    pooling, dropout on fc6 and fc7; what changes is size:
        conv1  5x5, stride 1 (32 px) or 2 (64 px), pad 2   -> 32x32 maps (both sizes)
        pool1 -> 15, conv2 5x5 pad 2, pool2 -> 7, conv3-5 3x3 pad 1, pool5 -> 3
    Other input sizes (e.g. 24 or 28 px random crops of CIFAR-10) work too: conv1 has
    stride 1 below 48 px and stride 2 from 48 px up; fc6 follows pool5's size.
    widths (all towers) = round(width * (32, 64, 96, 96, 64)); fc6, fc7 = width * 512.
    At width 1 (32/64/96/96/64, fc 512), two towers, 10 classes: 715,978 parameters
    and 29.8 MFLOP forward per image (the same at 64 px: conv1's stride 2 makes 32x32).

    Initialisation: the recipe for unit-scale inputs, He's N(0, 2/fan_in) and zero
    biases, NOT the paper's std 0.01 and biases 1 (``init_std=0.01, init_bias=PAPER_BIAS``
    gives those).  Measured on the built-in set (6 epochs, lr 0.01): He 54.9 %
    validation error, 1/sqrt(fan_in) 75.6 % (eight layers of ReLUs halve the signal's
    variance at each layer under 1/fan_in); chapter 01 shows the activation std
    layer by layer.
    """

    name = "small-alexnet"
    BASE_WIDTHS, BASE_FC = (32, 64, 96, 96, 64), (512, 512)
    default_bias = {}

    def __init__(self, num_classes=10, input_size=32, width=1.0, towers=2, devices=None,
                 widths=None, fc=None, lrn=True, dropout=0.5, inverted_dropout=False,
                 init_std="he", init_bias=None, dtype=None, layers="fast", activation="relu",
                 input_grad=True):
        if input_size < 15:
            raise ConfigError(f"small-alexnet: input_size must be at least 15, not {input_size}")
        self.conv1_shape = (5, 1, 2) if input_size < 48 else (5, 2, 2)

        def scaled(base):
            return [max(towers, int(round(width * w / towers)) * towers) for w in base]
        widths = list(widths) if widths is not None else scaled(self.BASE_WIDTHS)
        fc = list(fc) if fc is not None else scaled(self.BASE_FC)
        super().__init__(num_classes=num_classes, towers=towers, devices=devices,
                         input_size=input_size, widths=widths, fc=fc, lrn=lrn,
                         dropout=dropout, inverted_dropout=inverted_dropout,
                         init_std=init_std, init_bias=init_bias, dtype=dtype,
                         layers=layers, activation=activation, input_grad=input_grad)
        self.config["width"] = width


class TorchvisionAlexNet(Network):
    """NOT the paper's network: the AlexNet variant of torchvision (and of many papers).

    It follows Krizhevsky's later "One weird trick" paper (2014): one tower,
    64/192/384/256/256 kernels, conv1 11x11 stride 4 with padding 2 on 224x224 input,
    no LRN, and dropout *before* fc6 and fc7 (inverted dropout, as PyTorch's).
    61,100,840 parameters.  torchvision also has an adaptive 6x6 average pool before
    fc6; at 224 px pool5 is already 6x6, so it is left out (other sizes change fc6).
    Initialised the paper's way here (torchvision uses Kaiming-uniform) unless
    ``init_std``/``init_bias`` say otherwise.
    """

    name = "torchvision-alexnet"

    def __init__(self, num_classes=1000, devices=None, input_size=224,
                 widths=(64, 192, 384, 256, 256), fc=(4096, 4096), dropout=0.5,
                 init_std=0.01, init_bias=None, dtype=None, layers="fast", input_grad=True):
        init_bias = dict(PAPER_BIAS if init_bias is None else init_bias)
        b = _Builder(_devices(devices, 1), _dtype(dtype), init_std, init_bias, layers)
        c1, c2, c3, c4, c5 = widths
        size = _out(_out(_out(input_size, 11, 4, 2), 3, 2), 3, 2)
        size = _out(size, 3, 2)
        b.broadcast("to_towers")
        b.tower("conv1", "conv", cin=3, cout=c1, k=11, s=4, p=2)
        b.tower("relu1", "relu")
        b.tower("pool1", "pool", k=3, s=2)
        b.tower("conv2", "conv", cin=c1, cout=c2, k=5, s=1, p=2)
        b.tower("relu2", "relu")
        b.tower("pool2", "pool", k=3, s=2)
        b.tower("conv3", "conv", cin=c2, cout=c3, k=3, s=1, p=1)
        b.tower("relu3", "relu")
        b.tower("conv4", "conv", cin=c3, cout=c4, k=3, s=1, p=1)
        b.tower("relu4", "relu")
        b.tower("conv5", "conv", cin=c4, cout=c5, k=3, s=1, p=1)
        b.tower("relu5", "relu")
        b.tower("pool5", "pool", k=3, s=2)
        b.tower("flatten", "flatten")
        if dropout:
            b.tower("drop6", "dropout", p=dropout, inverted=True)
        b.tower("fc6", "linear", cin=c5 * size * size, cout=fc[0])
        b.tower("relu6", "relu")
        if dropout:
            b.tower("drop7", "dropout", p=dropout, inverted=True)
        b.tower("fc7", "linear", cin=fc[0], cout=fc[1])
        b.tower("relu7", "relu")
        b.gather("gather8")
        b.single("fc8", "linear", cin=fc[1], cout=num_classes)
        config = dict(num_classes=num_classes, input_size=input_size, widths=list(widths),
                      fc=list(fc), dropout=dropout, init_std=init_std, init_bias=init_bias,
                      dtype=_dtype_name(dtype))
        self._finish(b, input_size, num_classes, config, input_grad)


class FourLayerNet(Network):
    """The four-layer convolutional net of Figure 1 and section 3.3 (CIFAR-10).

    Three conv layers and one fully-connected, in the style of cuda-convnet's CIFAR-10
    nets (layers-18pct):
        conv1 32@5x5 pad 2 -> act -> pool -> (LRN)
        conv2 32@5x5 pad 2 -> act -> pool -> (LRN)
        conv3 64@5x5 pad 2 -> act -> pool
        fc4 num_classes
    Switches for the paper's ablations: ``activation`` "relu" or "tanh" (Figure 1: ReLU
    reaches 25 % training error six times sooner), ``lrn`` (3.3: 13 % vs 11 % test
    error), ``pool`` "3/2" (overlapping) or "2/2" (3.4).  No dropout (Figure 1 used no
    regularisation).  Weights N(0, 1/fan_in) ("fan-in", the recipe for unit-scale
    inputs: see the module docstring), biases 0; ``init_std=0.01`` gives the paper's.
    ``lrn_args``: a dict overriding the LRN constants (keys size, alpha, beta, k; the
    paper's n=5, alpha=1e-4, beta=0.75, k=2 otherwise), e.g. cuda-convnet's cross-map
    window of 9 (chapter 3); alpha is the paper's (multiplies the plain sum).
    """

    name = "fournet"

    def __init__(self, num_classes=10, input_size=32, activation="relu", lrn=True,
                 pool="3/2", widths=(32, 32, 64), devices=None, init_std="fan-in",
                 init_bias=None, dtype=None, layers="fast", input_grad=True, lrn_args=None):
        if activation not in ("relu", "tanh"):
            raise ConfigError(f"fournet: activation must be 'relu' or 'tanh', not {activation!r}")
        if pool not in ("3/2", "2/2"):
            raise ConfigError(f"fournet: pool must be '3/2' or '2/2', not {pool!r}")
        z, s = (3, 2) if pool == "3/2" else (2, 2)
        init_bias = dict({} if init_bias is None else init_bias)
        b = _Builder(_devices(devices, 1), _dtype(dtype), init_std, init_bias, layers)
        norm = _lrn_constants(lrn_args)
        b.broadcast("to_towers")
        cin, size = 3, input_size
        for i, w in enumerate(widths, start=1):
            b.tower(f"conv{i}", "conv", cin=cin, cout=w, k=5, s=1, p=2)
            b.tower(f"{activation}{i}", activation)
            b.tower(f"pool{i}", "pool", k=z, s=s)
            size = _out(size, z, s)
            if lrn and i < len(widths):
                b.tower(f"norm{i}", "lrn", **norm)
            cin = w
        b.tower("flatten", "flatten")
        b.gather("gather4")
        b.single(f"fc{len(widths) + 1}", "linear", cin=cin * size * size, cout=num_classes)
        config = dict(num_classes=num_classes, input_size=input_size, activation=activation,
                      lrn=lrn, pool=pool, widths=list(widths), init_std=init_std,
                      init_bias=init_bias, dtype=_dtype_name(dtype))
        if lrn_args is not None:
            # Only when given: the configs (and checkpoints) of nets with the paper's
            # constants stay as they were.
            config["lrn_args"] = dict(norm)
        self._finish(b, input_size, num_classes, config, input_grad)


PAPER_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)     # paper 3.3


def _lrn_constants(overrides):
    """The paper's LRN constants with ``overrides`` (a dict) applied."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PAPER_LRN))
    if unknown:
        raise ConfigError(f"lrn_args: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (it takes {', '.join(PAPER_LRN)})")
    return dict(PAPER_LRN, **overrides)          # the layer checks each value


# ======================================================================== the factory
def _alexnet_1tower(**kw):
    kw.setdefault("towers", 1)
    return AlexNet(name="alexnet-1tower", **kw)


def _alexnet_half(**kw):
    kw.setdefault("towers", 1)
    kw.setdefault("widths", (48, 128, 192, 192, 256))
    return AlexNet(name="alexnet-half", **kw)


MODELS = {
    "alexnet": AlexNet,
    "alexnet-1tower": _alexnet_1tower,
    "alexnet-half": _alexnet_half,
    "torchvision-alexnet": TorchvisionAlexNet,
    "small-alexnet": SmallAlexNet,
    "fournet": FourLayerNet,
}


_alexnet_1tower.builds = _alexnet_half.builds = AlexNet   # (for _keywords)


def _keywords(make):
    """The keyword arguments a MODELS entry takes (a wrapper: its class's, but name)."""
    target = getattr(make, "builds", make)
    return [k for k in inspect.signature(target).parameters if target is make or k != "name"]


def model_has_dropout(name):
    """True if model ``name`` takes a ``dropout`` argument (the AlexNet family)."""
    return name in MODELS and "dropout" in _keywords(MODELS[name])


def build_model(name, **kwargs):
    """A model by name (see the module docstring); kwargs override its defaults."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    known = _keywords(MODELS[name])
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown keyword argument{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (it takes {', '.join(known)})")
    return MODELS[name](**kwargs)


def describe(config):
    """A one-line description of a model ``config`` (a checkpoint's, or ``Network.config``):
    the architecture, without placement and initialisation."""
    if not config:
        return "unknown"
    # Sorted: a checkpoint's config comes back from JSON in sorted order, and the same
    # architecture must read the same in "saved for X, this model is Y".
    keys = sorted(k for k in config
                  if k not in ("name", "devices", "init_std", "init_bias", "layers"))
    return f"{config.get('name', '?')}(" + ", ".join(f"{k}={config[k]}" for k in keys) + ")"


def from_config(config, **overrides):
    """Rebuild a model from its ``config`` (e.g. from a checkpoint); ``overrides``
    replace entries (``devices=(0, 1)`` to place it on two GPUs)."""
    kw = dict(config)
    kw.update(overrides)
    name = kw.pop("name")
    if "devices" in kw and kw["devices"] is not None:
        kw["devices"] = tuple(kw["devices"])
    return build_model(name, **kw)


# ======================================================================== summary
def _layer_account(spec, shape):
    """(output shape, params, neurons, multiply-adds) of one layer for one image."""
    kind = spec["kind"]
    if kind == "conv":
        c, h, w = shape
        oh, ow = _out(h, spec["k"], spec["s"], spec["p"]), _out(w, spec["k"], spec["s"], spec["p"])
        out = (spec["cout"], oh, ow)
        fan_in = spec["cin"] * spec["k"] ** 2
        n = spec["cout"] * oh * ow
        return out, spec["cout"] * fan_in + spec["cout"], n, n * fan_in
    if kind == "linear":
        out = (spec["cout"],)
        return out, spec["cin"] * spec["cout"] + spec["cout"], spec["cout"], spec["cin"] * spec["cout"]
    if kind == "pool":
        c, h, w = shape
        return (c, _out(h, spec["k"], spec["s"]), _out(w, spec["k"], spec["s"])), 0, 0, 0
    if kind == "flatten":
        size = 1
        for d in shape:
            size *= d
        return (size,), 0, 0, 0
    return shape, 0, 0, 0          # relu, tanh, lrn, dropout: same shape


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _conv_algorithm(step, layer):
    """How a conv layer computes: what its last forward ran ("fft (auto)" when
    autotune chose it), else what it is set to (or what MINIALEXNET_CONV_ALGO forces).
    A tower layer whose forward ran stacked (SharedInputConvs) ran the stacked one's."""
    stacked = getattr(step, "stacked", None)
    ran = getattr(stacked.conv if stacked is not None else layer, "last_algorithm", None)
    setting = getattr(layer, "algorithm", "im2col")      # the reference Conv2D: im2col
    if ran is None:
        return autotune.override() or setting
    return f"{ran} (auto)" if setting == "auto" and not autotune.override() else ran


def _is_paper_size(m):
    return isinstance(m, AlexNet) and not isinstance(m, SmallAlexNet) and m.input_size == 227


class Summary:
    """A model's per-layer account.

    ``rows``: one dict per layer and tower (and per transfer step) with keys
    layer, kind, output_shape (per image), params, neurons (outputs of conv and FC
    layers: the paper's count), flops (forward, 2 x multiply-adds, per image; only
    conv and FC layers do multiply-adds), activation_bytes (the layer's output per
    image), transfer_bytes (bytes that cross between devices per image: 0 when both towers
    share a device, e.g. the default devices=None; build with devices=(0, 1) to see what
    two GPUs would exchange), device, algorithm (conv layers: how the convolution is
    computed, see ``_conv_algorithm``; "" for the others).
    ``totals``: the same summed.  ``neurons_by_layer()``: {layer: neurons, all towers}.
    ``str(summary)`` / ``summary.text``: a printable table.
    """

    COLUMNS = ("layer", "kind", "output_shape", "params", "neurons", "flops",
               "activation_bytes", "transfer_bytes", "device", "algorithm")

    def __init__(self, model):
        self.model = model
        itemsize = backend.xp().dtype(model.dtype).itemsize
        shape = model.input_shape
        rows = []
        for step in model.steps:
            if step.transfers:
                if step.kind == "broadcast":
                    new = [shape] * len(step.devices)
                    sent = sum(_numel(shape) for d in step.devices[1:] if d != step.devices[0])
                else:
                    shapes = shape
                    cat = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
                    if step.kind == "exchange":
                        new = [cat] * len(step.devices)
                        sent = sum(_numel(s) for j, s in enumerate(shapes)
                                   for d in step.devices if d != step.devices[j])
                    else:
                        new = cat
                        sent = sum(_numel(s) for j, s in enumerate(shapes)
                                   if step.devices[j] != step.device)
                rows.append(dict(layer=step.name, kind=step.kind,
                                 output_shape=new if isinstance(new, tuple) else new[0],
                                 params=0, neurons=0, flops=0, activation_bytes=0,
                                 transfer_bytes=sent * itemsize,
                                 device="->".join(str(d) for d in step.devices),
                                 algorithm=""))
                shape = new
            elif isinstance(step, (fast_towers.TowerLayer, reference.TowerLayer)):
                new = []
                for (prefix, layer, d), s in zip(step.named_layers(), shape):
                    out, p, n, macs = _layer_account(step.spec, s)
                    rows.append(dict(layer=prefix, kind=step.kind, output_shape=out, params=p,
                                     neurons=n, flops=2 * macs,
                                     activation_bytes=_numel(out) * itemsize,
                                     transfer_bytes=0, device=str(d),
                                     algorithm=_conv_algorithm(step, layer)
                                     if step.kind == "conv" else ""))
                    new.append(out)
                shape = new
            else:
                out, p, n, macs = _layer_account(step.spec, shape)
                rows.append(dict(layer=step.name, kind=step.kind, output_shape=out, params=p,
                                 neurons=n, flops=2 * macs,
                                 activation_bytes=_numel(out) * itemsize,
                                 transfer_bytes=0, device=str(step.device),
                                 algorithm=_conv_algorithm(step, step.layer)
                                 if step.kind == "conv" else ""))
                shape = out
        self.rows = rows
        self.totals = {k: sum(r[k] for r in rows)
                       for k in ("params", "neurons", "flops", "activation_bytes",
                                 "transfer_bytes")}
        self.text = self._format()

    def neurons_by_layer(self):
        """{layer: neurons of all towers together} for the conv and FC layers."""
        out = {}
        for r in self.rows:
            if r["kind"] in ("conv", "linear"):
                base = r["layer"].split(".")[0]
                out[base] = out.get(base, 0) + r["neurons"]
        return out

    def _format(self):
        head = ("layer", "kind", "output (per image)", "params", "neurons", "MFLOP",
                "act KiB", "sent KiB", "device", "conv algorithm")
        lines = []
        for r in self.rows:
            lines.append((r["layer"], r["kind"], "x".join(map(str, r["output_shape"])),
                          f"{r['params']:,}", f"{r['neurons']:,}" if r["neurons"] else "",
                          f"{r['flops'] / 1e6:.1f}" if r["flops"] else "",
                          f"{r['activation_bytes'] / 1024:.1f}" if r["activation_bytes"] else "",
                          f"{r['transfer_bytes'] / 1024:.1f}" if r["transfer_bytes"] else "",
                          r["device"], r["algorithm"]))
        t = self.totals
        lines.append(("total", "", "", f"{t['params']:,}", f"{t['neurons']:,}",
                      f"{t['flops'] / 1e6:.1f}", f"{t['activation_bytes'] / 1024:.1f}",
                      f"{t['transfer_bytes'] / 1024:.1f}", "", ""))
        widths = [max(len(str(x[i])) for x in lines + [head]) for i in range(len(head))]

        def fmt(row):
            return "  ".join(str(c).ljust(w) if i < 3 or i == 9 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        out = [f"{self.model.arch}", fmt(head), "-" * len(fmt(head))]
        out += [fmt(r) for r in lines[:-1]] + ["-" * len(fmt(head)), fmt(lines[-1])]
        out.append(f"forward: {t['flops'] / 1e9:.3f} GFLOP per image (2 x multiply-adds "
                   "of conv and FC layers); training step about 3x that")
        if self.model.towers > 1 and _is_paper_size(self.model):
            out.append("(grouped conv2, conv4, conv5 do half the work of one-tower ones: "
                       "the paper's net is 1.45 GFLOP, its one-tower twin 2.27)")
        if _is_paper_size(self.model):
            out.append("note: " + CONV1_NOTE)
        return "\n".join(out)

    def __str__(self):
        return self.text

    def __repr__(self):
        return self.text
