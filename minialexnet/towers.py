"""The two-tower split: where the paper's two GPUs talk (paper 3.2).

AlexNet was too big for one 3 GB GTX 580, so Krizhevsky put half of the kernels
(neurons) of every layer on each of two GPUs, and let the GPUs communicate only in
certain layers.  Figure 2 of the paper, as the code here runs it (T0, T1 = tower 0 and
tower 1, each on its own device; ==> is a transfer between devices):

    image ==> T0: conv1 relu norm1 pool1  conv2 relu norm2 pool2 ---+
          ==> T1: conv1 relu norm1 pool1  conv2 relu norm2 pool2 -+ |
                                                                  | |  exchange:
          T0: conv3 <== both towers' pool2 maps  <================+=+  conv3 sees both
          T1: conv3 <== both towers' pool2 maps
          T0: relu conv4 relu conv5 relu pool5 flatten  (own tower only)
          T1: relu conv4 relu conv5 relu pool5 flatten  (own tower only)
          T0: fc6 <== both towers' pool5 maps              exchange: fc6 sees all
          T1: fc6 <== both towers' pool5 maps
          T0: relu dropout;  fc7 <== both towers' fc6      exchange: fc7 sees all
          T1: relu dropout;  fc7 <== both towers' fc6
          fc8 on T0's device <== both towers' fc7          gather: fc8 sees all

So conv1 sees the whole image in both towers; conv2, conv4 and conv5 see only the
maps of their own tower (on one device this is a *grouped* convolution with two
groups); conv3 and the fully-connected layers see everything.  The LRN after conv1
and conv2 is per tower too: its channel window stops at the tower boundary, so a
one-device equivalent also needs LRN applied per group (tested against PyTorch).

The pieces here are small and explicit, so that every place the towers talk is one
line of code:

- ``transfer(x, device)``: the one function every inter-device copy goes through
  (``backend.to_device``; a no-op on NumPy or when ``x`` is already there).
- ``TowerLayer``: one layer per tower; each tower's call runs inside
  ``with backend.device(tower_device)``, so its parameters and outputs live there.
- ``Broadcast``, ``Exchange``, ``Gather``: the three kinds of transfer step.  Their
  ``backward`` sends gradients back along the same links, in the other direction.
- ``OnDevice``: a single layer (fc8) on one device.

A step's ``forward`` takes and returns either one array or a list with one array
per tower.  Nothing between the transfers waits for a device (no ``float()``,
``.item()``, host copies), so on two GPUs the towers' kernels overlap in time: Python
queues tower 0's work on GPU 0, then tower 1's on GPU 1, and both GPUs run at once.

Concatenation order is always tower 0's maps, then tower 1's: the same channel
order a one-device grouped convolution uses, so weights map one-to-one (tower i's
``conv2.W`` is rows ``i*128:(i+1)*128`` of the grouped weight).

These are the fast steps.  ``minialexnet/reference/towers.py`` has TowerLayer,
Broadcast and Exchange without any fusion (each tower always runs its own layer);
Gather and OnDevice serve both.  Same numbers (tests/test_reference.py).
"""

import copy

from . import backend
from .layers import LayerStateError, ShapeError

__all__ = ["transfer", "TowerLayer", "SharedInputConvs", "OnDevice", "Broadcast",
           "Exchange", "Gather"]


def transfer(x, device):
    """Copy ``x`` to ``device``: the paper's inter-GPU communication, made explicit."""
    return backend.to_device(x, device)


def _concat(parts, axis=1):
    return parts[0] if len(parts) == 1 else backend.xp().concatenate(parts, axis=axis)


def _per_tower(step, xs, n, what="input"):
    """Check that ``xs`` is a list of ``n`` arrays, one per tower (zip would silently
    drop a tower's work)."""
    if not isinstance(xs, (list, tuple)) or len(xs) != n:
        got = f"a list of {len(xs)}" if isinstance(xs, (list, tuple)) else type(xs).__name__
        raise ShapeError(f"{step.name}: expected the {what} as a list of {n} arrays, one "
                         f"per tower, got {got}")
    return xs


def _after_forward(step):
    if getattr(step, "sizes", None) is None:
        raise LayerStateError(f"{step.name}: backward() called before forward()")


def _split(x, sizes, axis=1):
    """Pieces of ``x`` along ``axis`` with the given sizes (views, no copy)."""
    if len(sizes) == 1:
        return [x]
    pieces, start = [], 0
    for n in sizes:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + n)
        pieces.append(x[tuple(index)])
        start += n
    return pieces


class Step:
    """Base class of the model's steps: a name, parameters, train/eval."""

    kind = "step"
    transfers = False       # True for the steps where towers talk

    def __init__(self, name):
        self.name = name

    def named_layers(self):
        """(parameter prefix, layer, device) for each layer of this step."""
        return []

    def train(self, mode=True):
        for _, layer, _ in self.named_layers():
            layer.train(mode)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class TowerLayer(Step):
    """The same kind of layer in every tower; tower i's runs on ``devices[i]``.

    ``make()`` builds one tower's layer; it is called inside ``backend.device(d)`` so
    the parameters are created on that device.  ``spec`` describes the layer for the
    per-layer account (kind and shape arguments of ONE tower's layer).
    Parameter prefix: ``name`` with one tower, ``name.tower{i}`` with several.
    """

    def __init__(self, name, make, devices, spec):
        super().__init__(name)
        self.devices = tuple(devices)
        self.spec = spec
        self.kind = spec["kind"]
        self.layers = []
        for d in self.devices:
            with backend.device(d):
                self.layers.append(make())
        for i, layer in enumerate(self.layers):
            layer.name = self.prefix(i)
        self._shared = None      # the SharedInputConvs, made on first use
        #: The SharedInputConvs the last forward ran through, or None (towers apart).
        self.stacked = None

    def prefix(self, i):
        return self.name if len(self.devices) == 1 else f"{self.name}.tower{i}"

    def named_layers(self):
        return [(self.prefix(i), l, d) for i, (l, d) in enumerate(zip(self.layers, self.devices))]

    def _each_tower(self, method, arrays):
        """Call ``method`` of each tower's layer on its own array, on its own device."""
        out = []
        for layer, d, a in zip(self.layers, self.devices, arrays):
            with backend.device(d):
                out.append(getattr(layer, method)(a))
        return out

    #: Run the towers' convolutions as one when they read the same array on one
    #: device (``SharedInputConvs``).  Same numbers either way; tests turn it off.
    #: This is all that differs from the reference TowerLayer.
    fuse_shared_input = True

    def _shares_input(self, xs):
        return (self.fuse_shared_input and self.kind == "conv" and len(self.layers) > 1
                and all(x is xs[0] for x in xs[1:]) and len(set(self.devices)) == 1)

    def forward(self, xs):
        self.stacked = None
        _per_tower(self, xs, len(self.layers))
        if self._shares_input(xs):
            if self._shared is None:
                self._shared = SharedInputConvs(self.layers)
            self.stacked = self._shared
            with backend.device(self.devices[0]):
                return self.stacked.forward(xs[0])
        return self._each_tower("forward", xs)

    def backward(self, dys):
        _per_tower(self, dys, len(self.layers), "gradient")
        if self.stacked is not None:
            with backend.device(self.devices[0]):
                return self.stacked.backward(dys)
        return self._each_tower("backward", dys)


class SharedInputConvs:
    """Several towers' convolutions of one array on one device, run as one Conv2D.

    On the paper's two GPUs each tower must build the columns of the image itself.
    On one device (NumPy, or ``--devices 0,0``) conv1's towers -- and conv3's, whose
    input the exchange hands to both -- would build the very same columns twice.
    Stacking the towers' kernels (tower 0's first, the concatenation order) makes
    forward and the weight gradients one im2col and one wider matrix multiply, which
    BLAS also runs faster.  The numbers are the same; parameters and gradients stay
    each tower's own arrays (the gradients are views of the stacked gradient).

    backward returns what the towers apart return: tower i's dx through tower i's
    kernels alone (``Conv2D.input_grad``), None where its layer has
    ``needs_input_grad = False``.  So the transfer steps never see the fusion.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.sizes = [l.out_channels for l in self.layers]
        conv = copy.copy(self.layers[0])          # the hyper-parameters; no new weights
        conv.params, conv.grads, conv._buffers = {}, {}, {}
        conv.cache = conv._kept = None
        conv.out_channels = sum(self.sizes)
        conv.name = self.layers[0].name + "+shared"
        conv.needs_input_grad = False             # dW and db only: each tower makes its dx
        self.conv = conv
        self.input_shape = None

    def forward(self, x):
        xp = backend.xp()
        self.conv.params = {k: xp.concatenate([l.params[k] for l in self.layers])
                            for k in ("W", "b")}
        # The towers' current settings (train() and ``algorithm`` reach the towers'
        # layers, not this copy): "auto" keys its choice by them.
        self.conv.training = self.layers[0].training
        self.conv.algorithm = self.layers[0].algorithm
        self.input_shape = tuple(x.shape)
        return _split(self.conv.forward(x), self.sizes)

    def backward(self, dys):
        """[dy_0, dy_1, ...] -> [dx_0, dx_1, ...]; fills each tower's grads."""
        xp = backend.xp()
        conv = self.conv
        n, _, oh, ow = dys[0].shape
        dy = xp.empty((n, oh, ow, conv.out_channels), dtype=dys[0].dtype)   # channels last
        for d, part in zip(dys, _split(dy, self.sizes, axis=3)):
            part[...] = d.transpose(0, 2, 3, 1)
        conv.backward(dy.transpose(0, 3, 1, 2))
        for layer, gw, gb in zip(self.layers, _split(conv.grads["W"], self.sizes, 0),
                                 _split(conv.grads["b"], self.sizes, 0)):
            layer.grads["W"], layer.grads["b"] = gw, gb
        return [layer.input_grad(d, self.input_shape) if layer.needs_input_grad else None
                for layer, d in zip(self.layers, dys)]


class OnDevice(Step):
    """One layer, on one device (fc8, which sees both towers after a Gather)."""

    def __init__(self, name, make, device, spec):
        super().__init__(name)
        self.device, self.spec, self.kind = device, spec, spec["kind"]
        with backend.device(device):
            self.layer = make()
        self.layer.name = name

    def named_layers(self):
        return [(self.name, self.layer, self.device)]

    def forward(self, x):
        with backend.device(self.device):
            return self.layer.forward(x)

    def backward(self, dy):
        with backend.device(self.device):
            return self.layer.backward(dy)


class Broadcast(Step):
    """Transfer: one array (the image) to every tower.  Both conv1 halves see it all.

    forward:  x (anywhere) -> [x on devices[0], x on devices[1], ...]
    backward: dx = sum over towers of (tower i's dx, sent to devices[0])
              (None when conv1 computed no dx: ``needs_input_grad = False``).
    """

    kind, transfers = "broadcast", True

    def __init__(self, name, devices):
        super().__init__(name)
        self.devices = tuple(devices)

    def forward(self, x):
        return [transfer(x, d) for d in self.devices]

    def backward(self, dxs):
        _per_tower(self, dxs, len(self.devices), "gradient")
        # None: conv1 computed no dx (``needs_input_grad = False``: the image needs none).
        if dxs[0] is None:
            return None
        home = self.devices[0]
        with backend.device(home):
            dx = transfer(dxs[0], home)
            for g in dxs[1:]:
                dx = dx + transfer(g, home)
        return dx


class Exchange(Step):
    """Transfer: every tower gets every tower's maps, concatenated along channels.

    forward:  [x_0, x_1] -> [cat(x_0, x_1) on devices[0], cat(x_0, x_1) on devices[1]]
    backward: tower i's gradient of the concatenation is split back into pieces;
              piece j goes back to tower j, and tower j adds up what it receives.
    This is where conv3, fc6 and fc7 "see both GPUs".
    """

    kind, transfers = "exchange", True

    def __init__(self, name, devices):
        super().__init__(name)
        self.devices = tuple(devices)

    sizes = None

    def forward(self, xs):
        self.sizes = [x.shape[1] for x in _per_tower(self, xs, len(self.devices))]
        # Unlike the reference, towers that share a device share one concatenation
        # (one copy fewer, and the very array that lets SharedInputConvs stack conv3).
        made = {}
        for d in self.devices:
            if d not in made:
                with backend.device(d):
                    made[d] = _concat([transfer(x, d) for x in xs])
        return [made[d] for d in self.devices]

    def backward(self, dys):
        # pieces[i][j]: tower i's gradient for tower j's maps, still on device i
        _after_forward(self)
        _per_tower(self, dys, len(self.devices), "gradient")
        pieces = []
        for d, dy in zip(self.devices, dys):
            with backend.device(d):
                pieces.append(_split(dy, self.sizes))
        dxs = []
        for j, d in enumerate(self.devices):
            with backend.device(d):
                dx = transfer(pieces[0][j], d)
                for p in pieces[1:]:
                    dx = dx + transfer(p[j], d)
            dxs.append(dx)
        return dxs


class Gather(Step):
    """Transfer: all towers' outputs, concatenated, onto one device (for fc8).

    forward:  [x_0, x_1] -> cat(x_0, x_1) on ``device``
    backward: the gradient is split and piece i sent back to tower i.
    """

    kind, transfers = "gather", True

    def __init__(self, name, devices, device):
        super().__init__(name)
        self.devices, self.device = tuple(devices), device

    sizes = None

    def forward(self, xs):
        self.sizes = [x.shape[1] for x in _per_tower(self, xs, len(self.devices))]
        with backend.device(self.device):
            return _concat([transfer(x, self.device) for x in xs])

    def backward(self, dy):
        _after_forward(self)
        with backend.device(self.device):
            pieces = _split(dy, self.sizes)
        return [transfer(p, d) for p, d in zip(pieces, self.devices)]
