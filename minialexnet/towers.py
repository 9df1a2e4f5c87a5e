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
"""

from . import backend

__all__ = ["transfer", "TowerLayer", "OnDevice", "Broadcast", "Exchange", "Gather"]


def transfer(x, device):
    """Copy ``x`` to ``device``: the paper's inter-GPU communication, made explicit."""
    return backend.to_device(x, device)


def _concat(parts, axis=1):
    return parts[0] if len(parts) == 1 else backend.xp().concatenate(parts, axis=axis)


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

    def forward(self, xs):
        return self._each_tower("forward", xs)

    def backward(self, dys):
        return self._each_tower("backward", dys)


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
    backward: dx = sum over towers of (tower i's dx, sent to devices[0]).
    """

    kind, transfers = "broadcast", True

    def __init__(self, name, devices):
        super().__init__(name)
        self.devices = tuple(devices)

    def forward(self, x):
        return [transfer(x, d) for d in self.devices]

    def backward(self, dxs):
        if any(g is None for g in dxs):   # the layers below skipped dx (the image's)
            return None
        home = self.devices[0]
        with backend.device(home):
            dx = dxs[0]
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

    def forward(self, xs):
        self.sizes = [x.shape[1] for x in xs]
        out = []
        for d in self.devices:
            with backend.device(d):
                out.append(_concat([transfer(x, d) for x in xs]))
        return out

    def backward(self, dys):
        # pieces[i][j]: tower i's gradient for tower j's maps, still on device i
        pieces = []
        for d, dy in zip(self.devices, dys):
            with backend.device(d):
                pieces.append(_split(dy, self.sizes))
        dxs = []
        for j, d in enumerate(self.devices):
            with backend.device(d):
                dx = None
                for i in range(len(self.devices)):
                    g = transfer(pieces[i][j], d)
                    dx = g if dx is None else dx + g
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

    def forward(self, xs):
        self.sizes = [x.shape[1] for x in xs]
        with backend.device(self.device):
            return _concat([transfer(x, self.device) for x in xs])

    def backward(self, dy):
        with backend.device(self.device):
            pieces = _split(dy, self.sizes)
        return [transfer(p, d) for p, d in zip(pieces, self.devices)]
