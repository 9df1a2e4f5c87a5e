"""The two-tower steps (paper 3.2) without any fusion: the version to read.

``minialexnet/towers.py`` explains the split (Figure 2) and holds the fast steps.
Here each tower always runs its own layer, and each transfer step only moves and
concatenates arrays.  A step's ``forward`` takes and returns one array or a list
with one array per tower; ``backward`` sends gradients back along the same links.

Gather and OnDevice have nothing to fuse: the fast module's classes serve both.
"""

from .. import backend
from ..towers import Gather, OnDevice, Step, transfer

__all__ = ["transfer", "TowerLayer", "OnDevice", "Broadcast", "Exchange", "Gather"]


def _concat(parts):
    """The towers' maps side by side along channels: tower 0's first."""
    return backend.xp().concatenate(parts, axis=1)


def _split(x, sizes):
    """The inverse of ``_concat``: pieces of ``x`` along channels with these sizes."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [x[:, a:a + n] for a, n in zip(starts, sizes)]


class TowerLayer(Step):
    """The same kind of layer in every tower; tower i's runs on ``devices[i]``.

    forward([x_0, x_1, ...]) = [layer_0(x_0), layer_1(x_1), ...], each on its device;
    backward likewise with the towers' gradients.  ``make()`` builds one tower's
    layer inside ``backend.device(d)``, so that its parameters live there.  ``spec``
    describes ONE tower's layer.  Parameter prefix: ``name`` with one tower,
    ``name.tower{i}`` with several.
    """

    def __init__(self, name, make, devices, spec):
        super().__init__(name)
        self.devices, self.spec, self.kind = tuple(devices), spec, spec["kind"]
        self.layers = []
        for i, d in enumerate(self.devices):
            with backend.device(d):
                self.layers.append(make())
            self.layers[i].name = self.prefix(i)

    def prefix(self, i):
        return self.name if len(self.devices) == 1 else f"{self.name}.tower{i}"

    def named_layers(self):
        return [(self.prefix(i), l, d) for i, (l, d) in enumerate(zip(self.layers, self.devices))]

    def _each_tower(self, method, arrays):
        out = []
        for layer, d, a in zip(self.layers, self.devices, arrays):
            with backend.device(d):
                out.append(getattr(layer, method)(a))
        return out

    def forward(self, xs):
        return self._each_tower("forward", xs)

    def backward(self, dys):
        return self._each_tower("backward", dys)


class Broadcast(Step):
    """Transfer: one array (the image) to every tower.  Both conv1 halves see it all.

    forward:  x -> [x on devices[0], x on devices[1], ...]
    backward: dx = sum over towers of tower i's dx, sent to devices[0]
              (None when conv1 computed no dx: ``needs_input_grad = False``).
    """

    kind, transfers = "broadcast", True

    def __init__(self, name, devices):
        super().__init__(name)
        self.devices = tuple(devices)

    def forward(self, x):
        return [transfer(x, d) for d in self.devices]

    def backward(self, dxs):
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
    backward: tower i's gradient of the concatenation is cut into pieces; piece j
              goes back to tower j, which adds up the pieces it receives.
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
        pieces = []                     # pieces[i][j]: tower i's gradient for tower j's maps
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
