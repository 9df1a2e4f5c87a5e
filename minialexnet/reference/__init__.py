"""The reference implementation: every layer as the paper writes it, to read.

    from minialexnet.reference import Conv2D, LocalResponseNorm, MaxPool2D, SGD
    model = build_model("alexnet", layers="reference")     # train with these

One small class per layer (``layers.py``), NCHW, the paper's equations, each
forward and backward on one screen: Conv2D by im2col, one matrix multiply and
col2im (``im2col.py``); LocalResponseNorm with its band matrix; MaxPool2D by
windows and argmax; ReLU, Tanh, Dropout, Linear, Flatten, SoftmaxCrossEntropy.
The tower steps without fusion (``towers.py``) and SGD as two lines (``optim.py``).

The fast versions that training runs by default, with the same contracts, are
``minialexnet/layers.py``, ``minialexnet/im2col.py`` (channels last),
``minialexnet/towers.py`` and ``minialexnet/optim.py``; each fast class says what
it does differently and what that gained.  tests/test_reference.py checks that
fast equals reference on every code path of the fast one, and the gradient checks
and the PyTorch oracle run on both.
"""

from .layers import (Conv2D, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2D,
                     ReLU, SoftmaxCrossEntropy, Tanh)
from .optim import SGD
from .towers import Broadcast, Exchange, Gather, OnDevice, TowerLayer, transfer

__all__ = ["Conv2D", "ReLU", "Tanh", "LocalResponseNorm", "MaxPool2D", "Dropout",
           "Linear", "Flatten", "SoftmaxCrossEntropy", "SGD", "TowerLayer", "OnDevice",
           "Broadcast", "Exchange", "Gather", "transfer"]
