"""The torch side of the benchmark: the same networks, written the way PyTorch users do.

Architectures mirror ``minialexnet.models`` (see its docstring):
    alexnet         paper 3.5, 227 px; the two towers as ``groups=2`` in conv2, conv4,
                    conv5 (conv1, conv3 and the fc layers see everything, as in the paper)
    small-alexnet   the same topology for 32 px: 32/64/96/96/64 kernels, fc 512, 5x5 conv1
    fournet         Figure 1's four-layer CIFAR-10 net: 3 x (conv 5x5 -> ReLU -> pool 3/2
                    [-> LRN]), fc
LRN is torch's ``local_response_norm`` with alpha = n * 1e-4 (the paper's alpha; torch
divides by n).  Dropout 0.5 on fc6/fc7.  ReLUs are in place, as in torchvision.
A training step is zero_grad, forward, cross-entropy, backward, ``torch.optim.SGD``
(momentum 0.9, weight decay 5e-4, lr 0.01).
"""

import torch

F = torch.nn.functional


def _conv(cin, cout, k, s=1, p=0, groups=1):
    w = torch.nn.Parameter(torch.randn(cout, cin // groups, k, k) * 0.01)
    b = torch.nn.Parameter(torch.zeros(cout))
    return (w, b, s, p, groups)


def _lin(cin, cout):
    return (torch.nn.Parameter(torch.randn(cout, cin) * 0.01), torch.nn.Parameter(torch.zeros(cout)))


def _lrn(x):
    return F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)


class Net:
    """A list of convolution blocks and fc layers, run functionally."""

    def __init__(self, arch, classes, tiny=False):
        torch.manual_seed(0)
        self.arch = arch
        if arch == "alexnet":
            w = (8, 16, 16, 16, 16) if tiny else (96, 256, 384, 384, 256)
            fc = (64, 64) if tiny else (4096, 4096)
            self.convs = [_conv(3, w[0], 11, 4), _conv(w[0], w[1], 5, 1, 2, groups=2),
                          _conv(w[1], w[2], 3, 1, 1), _conv(w[2], w[3], 3, 1, 1, groups=2),
                          _conv(w[3], w[4], 3, 1, 1, groups=2)]
            side = 1 if tiny else 6
            self.fcs = [_lin(w[4] * side * side, fc[0]), _lin(fc[0], fc[1]), _lin(fc[1], classes)]
        elif arch == "small-alexnet":
            w, fc = (32, 64, 96, 96, 64), (512, 512)
            self.convs = [_conv(3, w[0], 5, 1, 2), _conv(w[0], w[1], 5, 1, 2, groups=2),
                          _conv(w[1], w[2], 3, 1, 1), _conv(w[2], w[3], 3, 1, 1, groups=2),
                          _conv(w[3], w[4], 3, 1, 1, groups=2)]
            self.fcs = [_lin(w[4] * 3 * 3, fc[0]), _lin(fc[0], fc[1]), _lin(fc[1], classes)]
        elif arch == "fournet":
            self.convs = [_conv(3, 32, 5, 1, 2), _conv(32, 32, 5, 1, 2), _conv(32, 64, 5, 1, 2)]
            self.fcs = [_lin(64 * 3 * 3, classes)]
        else:
            raise ValueError(arch)
        self.params = [p for c in self.convs for p in c[:2]] + [p for f in self.fcs for p in f]

    @staticmethod
    def _c(x, c):
        w, b, s, p, g = c
        return F.conv2d(x, w, b, stride=s, padding=p, groups=g)

    def __call__(self, x, train=True):
        c, pool = self.convs, (lambda t: F.max_pool2d(t, 3, 2))
        if self.arch == "fournet":
            for i, conv in enumerate(c):
                x = pool(F.relu(self._c(x, conv), inplace=True))
                if i < 2:
                    x = _lrn(x)
            return F.linear(x.flatten(1), *self.fcs[0])
        x = pool(_lrn(F.relu(self._c(x, c[0]), inplace=True)))
        x = pool(_lrn(F.relu(self._c(x, c[1]), inplace=True)))
        x = F.relu(self._c(x, c[2]), inplace=True)
        x = F.relu(self._c(x, c[3]), inplace=True)
        x = pool(F.relu(self._c(x, c[4]), inplace=True))
        x = x.flatten(1)
        x = F.dropout(F.relu(F.linear(x, *self.fcs[0]), inplace=True), 0.5, training=train)
        x = F.dropout(F.relu(F.linear(x, *self.fcs[1]), inplace=True), 0.5, training=train)
        return F.linear(x, *self.fcs[2])


class Step:
    """Callable: one training step (or one inference pass) of ``arch`` at batch ``b``."""

    def __init__(self, arch, b, px, classes, train=True, tiny=False):
        self.net = Net(arch, classes, tiny)
        self.train = train
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(b, 3, px, px, generator=g)
        self.y = torch.randint(0, classes, (b,), generator=g)
        self.opt = torch.optim.SGD(self.net.params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def __call__(self):
        if not self.train:
            with torch.no_grad():
                self.net(self.x, train=False)
            return
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()
