"""SGD as the paper's two lines (paper 5): the version to read.

    v <- 0.9 v - 0.0005 lr w - lr g
    w <- w + v

Everything around the update (a velocity per parameter on its device, weight decay
per parameter name, ``state_dict``) is the fast ``minialexnet.optim.SGD``'s; only
the update itself differs: here it is the two lines on whole arrays.
"""

from .. import optim

__all__ = ["SGD"]


class SGD(optim.SGD):
    """``minialexnet.optim.SGD`` with the update written as the paper writes it.

    Same constructor (``block`` is ignored) and the same numbers: tested equal,
    bit for bit, to the fast update (tests/test_reference.py).
    """

    def _update(self, w, g, v, decay):
        """One parameter, in place: w, its gradient g, its velocity v."""
        t = w.dtype.type
        v[...] = t(self.momentum) * v - t(decay * self.lr) * w - t(self.lr) * g
        w += v
