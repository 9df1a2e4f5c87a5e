"""``python -m minialexnet.predict CHECKPOINT IMAGE...``: the five most probable labels
of each image, with their probabilities.

Each image is prepared as in training (section 2): shorter side rescaled to the
stored size, the central square cropped, the centre crop fed to the net after the
training mean image is subtracted.
"""

import argparse
import sys

from . import backend, data
from .backend import np
from .checkpoint import CheckpointError, check_compatible, load_checkpoint


def load_model(path, device=0):
    """Rebuild the model a training checkpoint was made with, with its weights.
    Returns (model, meta, mean image)."""
    from .train import describe, make_model
    arrays, meta = load_checkpoint(path)
    if "config" not in meta or "data.mean" not in arrays:
        raise CheckpointError(f"{path}: not a training checkpoint of minialexnet.train")
    cfg = dict(meta["config"])
    if cfg.get("devices") is not None:     # evaluate on one device unless asked otherwise
        cfg["devices"] = [device, device]
    model = make_model(cfg, len(meta["class_names"]))
    weights = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    check_compatible(weights, {k: v.shape for k, v in model.state_dict().items()}, path,
                     saved_arch=describe(meta.get("model_config")), model_arch=describe(model.config))
    model.load_state_dict(weights)
    model.eval()
    return model, meta, arrays["data.mean"].astype(np.float32)


def predict_files(model, meta, mean, paths, k=5, device=0):
    """[(path, [(class name, probability), ...k]), ...] for image files."""
    cfg = meta["config"]
    size, crop = cfg["image_size"], cfg["crop"]
    x = np.stack([data.decode(p, size=size) for p in paths])
    batch = data.EvalTransform(crop, mean)(x)
    logits = model.forward(backend.to_device(backend.xp().asarray(batch), device))
    probs = data.softmax(backend.to_numpy(logits))
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
        model, meta, mean = load_model(a.checkpoint, a.device)
        results = predict_files(model, meta, mean, a.images, a.top, a.device)
    except (data.DataError, CheckpointError, backend.BackendError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top in results:
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
