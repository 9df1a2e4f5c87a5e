"""The minialexnet side of the benchmark: ``build_model`` + SGD, as ``train.py`` runs them."""

from minialexnet import backend
from minialexnet.layers import SoftmaxCrossEntropy
from minialexnet.models import build_model
from minialexnet.optim import SGD


def make_model(arch, px, classes, tiny=False, **kw):
    if arch == "alexnet":
        if tiny:
            kw.update(widths=(8, 16, 16, 16, 16), fc=(64, 64))
        return build_model("alexnet", num_classes=classes, input_size=px, **kw)
    return build_model(arch, num_classes=classes, input_size=px, **kw)


class Step:
    """Callable: one training step (or one inference pass) of ``arch`` at batch ``b``."""

    def __init__(self, arch, b, px, classes, train=True, tiny=False, **kw):
        backend.seed(0)                  # the caller chose the backend (and devices)
        kw.setdefault("input_grad", False)     # as train.py: no dL/d(image)
        self.model = make_model(arch, px, classes, tiny, **kw)
        self.train = train
        if not train:
            self.model.eval()
        rng = backend.rng()
        self.x = rng.standard_normal((b, 3, px, px), dtype=backend.dtype())
        self.y = rng.integers(0, classes, b)
        self.loss = SoftmaxCrossEntropy()
        self.opt = SGD(self.model, lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.b = b

    def flops(self):
        """2 x multiply-adds of one step, whole batch: forward, and for training twice
        that again (dW and dx) except the image's dx, which training skips."""
        rows = self.model.summary().rows                # per image
        fwd = sum(r["flops"] for r in rows)
        if not self.train:
            return fwd * self.b
        first = {layer.name for layer in self.model._input_layers()}
        return (3 * fwd - sum(r["flops"] for r in rows if r["layer"] in first)) * self.b

    def __call__(self):
        logits = self.model.forward(self.x)
        if not self.train:
            backend.synchronize()
            return
        self.loss.forward(logits, self.y)
        self.model.backward(self.loss.backward())
        self.opt.step()
        backend.synchronize()


def cupy_images_per_second(devices, tiny=False, repeats=5):
    """AlexNet training step, batch 128 (tiny: 2 at 67 px), on CuPy with ``devices``."""
    import time
    backend.use("cupy", seed=0, devices=devices)
    try:
        b, px, classes = (2, 67, 10) if tiny else (128, 227, 1000)
        step = Step("alexnet", b, px, classes, tiny=tiny, devices=tuple(devices))
        step()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        times.sort()
        return b / times[len(times) // 2]
    finally:
        backend.use("numpy", seed=0)
