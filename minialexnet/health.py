"""Training health: is every layer learning, and at a sensible speed?

A net that trains badly usually shows it in three numbers long before the loss does
(the checks of Karpathy's "A Recipe for Training Neural Networks" and of book 1 of
"Deep Learning from Scratch", chapter 6):

* the **update-to-weight ratio** ||dW|| / ||W|| of each layer's step (dW is what SGD
  added to W, the momentum buffer ``v`` of paper section 5).  Around 1e-3 is healthy.
  One layer far above the others is learning too fast for the shared learning rate:
  with the paper's raw 0..255 pixels conv1 sits about 1000 times above the rest
  (chapter 01), which is why we feed unit-scale inputs (data/transforms.py);
* the **activation mean and std** of each conv/fc layer's output: a std that shrinks
  layer by layer is a vanishing signal (a too-small init), one that grows explodes;
* the fraction of **dead ReLUs** (units that are zero for every image of the batch)
  and of **saturated tanh units** (|tanh| > 0.96, i.e. |x| > 2, where the slope is
  below 0.08: paper 3.1's reason for ReLUs).

``HealthMonitor`` records them every ``every`` steps from the training step's own
forward pass and update (no extra pass: ``Network.forward(x, record=...)`` hands it
each step's output), so it costs a few reductions every ``every`` steps.  The Trainer
keeps the records in ``Trainer.health`` and writes them to metrics.jsonl as rows with
``"type": "health"``; ``viz.plot_health`` draws them.
"""

from . import backend

__all__ = ["HealthMonitor", "layer_of", "SATURATED"]

# |tanh(x)| > 0.96 <=> |x| > 1.95: the slope 1 - tanh^2 is below 0.08 there.
SATURATED = 0.96


def layer_of(param_name):
    """'conv2.tower1.W' -> 'conv2': the layer a parameter belongs to (towers merged)."""
    return param_name.split(".")[0]


def _parts(out):
    return out if isinstance(out, list) else [out]


def _kind(step_name):
    for kind in ("relu", "tanh", "conv", "fc"):
        if step_name.startswith(kind) and step_name[len(kind):].isdigit():
            return kind
    return None


class HealthMonitor:
    """Collects per-layer health statistics every ``every`` training steps.

    Use: ``hook = monitor.hook(step)`` (None when this step is not recorded) goes to
    ``model.forward(x, record=hook)``; after the optimiser's step,
    ``monitor.after_update(step, optimizer)`` adds the update ratios and returns the
    finished record (or None).  Records are dicts:
    ``{"type": "health", "step": s, "layers": {name: {stat: value}}}`` with stats
    ``update_ratio`` (conv/fc layers), ``act_mean``/``act_std`` (conv/fc outputs),
    ``dead`` (relu layers) and ``saturated`` (tanh layers), all floats.
    """

    def __init__(self, every=50):
        self.every = int(every)
        self._pending = None

    def wants(self, step):
        """True for the steps that are recorded: step 1, then every ``every`` steps."""
        return self.every > 0 and (step == 1 or step % self.every == 0)

    def hook(self, step):
        if not self.wants(step):
            self._pending = None
            return None
        self._pending = {"type": "health", "step": int(step), "layers": {}}
        return self._record

    def _record(self, name, out):
        kind = _kind(name)
        if kind is None:
            return
        # Sums per tower, each on its own device; only Python floats leave it.
        sums = [self._sums(kind, p) for p in _parts(out)]
        n, s1, s2 = (sum(t[i] for t in sums) for i in range(3))
        stats = self._pending["layers"].setdefault(name, {})
        if kind in ("conv", "fc"):
            mean = s1 / n
            stats["act_mean"] = mean
            stats["act_std"] = max(s2 / n - mean * mean, 0.0) ** 0.5
        elif kind == "relu":
            stats["dead"] = s1 / n
        else:
            stats["saturated"] = s1 / n

    @staticmethod
    def _sums(kind, p):
        """(count, first, second) of one tower's output: for conv/fc the number of
        values, their sum and sum of squares; for relu the units and the dead ones;
        for tanh the values and the saturated ones."""
        with backend.device(backend.get_device_id(p)):
            if kind in ("conv", "fc"):
                return (int(p.size), float(p.sum(dtype="float64")),
                        float((p.astype("float64") ** 2).sum()))
            if kind == "relu":
                return int(p[0].size), int((~(p > 0).any(axis=0)).sum()), 0
            return int(p.size), int((abs(p) > SATURATED).sum()), 0

    def after_update(self, step, optimizer):
        """Add ||v|| / ||W|| per layer (weights only, towers pooled); return the record."""
        rec, self._pending = self._pending, None
        if rec is None or rec["step"] != step:
            return None
        sq_update, sq_weight = {}, {}
        for name, w in optimizer.params().items():
            if not name.endswith(".W"):
                continue
            layer = layer_of(name)
            v = optimizer.velocity[name]
            with backend.device(backend.get_device_id(w)):
                sq_update[layer] = sq_update.get(layer, 0.0) + float((v.astype("float64") ** 2).sum())
                sq_weight[layer] = sq_weight.get(layer, 0.0) + float((w.astype("float64") ** 2).sum())
        for layer in sq_update:
            ratio = (sq_update[layer] / max(sq_weight[layer], 1e-30)) ** 0.5
            rec["layers"].setdefault(layer, {})["update_ratio"] = ratio
        return rec
