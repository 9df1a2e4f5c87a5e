"""``python -m minialexnet.predict CHECKPOINT IMAGE...``: the five most probable labels
of each image, with their probabilities.

Each image is prepared as in training (section 2): shorter side rescaled to the
stored size, the central square cropped, the centre crop fed to the net after the
training mean image is subtracted.
"""

import argparse
import sys

if __name__ == "__main__":        # the command line: CPU tuning before NumPy loads (cpu.py)
    from .cpu import tune
    tune()

from . import backend, data
from .backend import np
from .checkpoint import CheckpointError, load_checkpoint
from .errors import MinialexnetError


def load_model(path, device=0):
    """Rebuild the model a training checkpoint was made with, with its weights, all
    its towers on ``device``.  Returns (model, meta, mean image, channel std or None:
    None for a model trained on the paper's raw 0..255 input scale)."""
    from .models import from_config
    from .train import load_model_weights
    arrays, meta = load_checkpoint(path)
    config = meta.get("model_config")
    if "config" not in meta or not config or "data.mean" not in arrays:
        raise CheckpointError(f"{path}: not a training checkpoint of minialexnet.train")
    model = from_config(config, devices=(device,) * len(config["devices"]))
    load_model_weights(model, arrays, meta, path)
    model.eval()
    std = arrays["data.std"].astype(np.float32) if "data.std" in arrays else None
    return model, meta, arrays["data.mean"].astype(np.float32), std


def predict_files(model, meta, mean, paths, k=5, device=0, std=None):
    """[(path, [(class name, probability), ...k]), ...] for image files."""
    from .train import predict_batches
    cfg = meta["config"]
    x = np.stack([data.decode(p, size=cfg["image_size"]) for p in paths])
    probs = data.softmax(predict_batches(model, x, data.EvalTransform(cfg["crop"], mean, std),
                                         device=device))
    names = meta["class_names"]
    out = []
    for p, row in zip(paths, probs):
        top = np.argsort(-row)[:k]
        out.append((p, [(names[t], float(row[t])) for t in top]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minialexnet.predict",
                                description="Top-5 labels of images, from a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--device", type=int, default=0)
    a = p.parse_args(argv)
    try:
        backend.use(a.backend, devices=[a.device])
        model, meta, mean, std = load_model(a.checkpoint, a.device)
        results = predict_files(model, meta, mean, a.images, a.top, a.device, std)
    except MinialexnetError as e:       # a user's mistake; anything else is a bug: traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top in results:
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
