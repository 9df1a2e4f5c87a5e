"""``python -m minialexnet.predict CHECKPOINT IMAGE...``: the five most probable labels
of each image, with their probabilities.

Each image is prepared as in training (section 2): shorter side rescaled to the
stored size, the central square cropped, the centre crop fed to the net after the
training mean image is subtracted.  Images are decoded and run ``--batch-size`` at a
time, so memory does not grow with their number.

First it says what the model knows: a net trained on ten shapes calls a photo of a
swan "ring" because "ring" is one of the only ten answers it has.
"""

import sys

if __name__ == "__main__":        # the command line: CPU tuning before NumPy loads (cpu.py)
    from .cpu import tune
    tune()

from . import backend, cli, data, inference
from .backend import np
from .checkpoint import (CheckpointError, check_training_meta, load_checkpoint, read_meta)
from .errors import ConfigError, MinialexnetError

# How the tools name the datasets a model was trained on.
DATASET_TITLES = {"synthetic": "the built-in shapes dataset (synthetic)",
                  "cifar10": "CIFAR-10", "imagenette": "Imagenette",
                  "imagenet-folder": "an ImageNet-style image folder"}


def load_model(path, device=0):
    """Rebuild the model a training checkpoint was made with, with its weights, all
    its towers on ``device``.  Returns (model, meta, mean image, channel std or None:
    None for a model trained on the paper's raw 0..255 input scale).

    Only the arrays the model needs are read, after their stored shapes were checked
    (a crafted checkpoint cannot make this read more); weights and mean image must be
    finite floats; the metadata must describe a model that can be built."""
    from .models import from_config
    meta = check_training_meta(read_meta(path), path)
    config, cfg = meta["model_config"], meta["config"]
    try:
        model = from_config(config, devices=(device,) * len(config["devices"]))
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its model_config does not describe a model this "
                              f"minialexnet can build ({type(e).__name__}: {e})") from None
    if len(meta["class_names"]) != model.num_classes:
        raise CheckpointError(f"{path}: damaged or crafted metadata: "
                              f"{len(meta['class_names'])} class names for a model of "
                              f"{model.num_classes} classes")
    expected = {f"model.{k}": v.shape for k, v in model.params().items()}
    expected["data.mean"] = (cfg["image_size"], cfg["image_size"], 3)
    unit = cfg.get("input_scale", "paper") == "unit"     # older checkpoints: raw pixels
    if unit:
        expected["data.std"] = (3,)
    arrays, _ = load_checkpoint(path, expected, model_arch=model.arch)
    inference.load_model_weights(model, arrays, meta, path)
    model.eval()
    std = arrays["data.std"].astype(np.float32) if unit else None
    return model, meta, arrays["data.mean"].astype(np.float32), std


def describe_classes(meta, most=12):
    """"this model knows 10 classes of CIFAR-10: airplane, automobile, ..." (one line)."""
    names = meta["class_names"]
    dataset = meta["config"]["dataset"]
    shown = ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
    return (f"this model knows {len(names)} classes of {DATASET_TITLES.get(dataset, dataset)}: "
            f"{shown}; every image gets one of these labels")


def iter_predictions(model, meta, mean, paths, k=5, device=0, batch_size=64, std=None):
    """(path, [(class name, probability), ...k]) for each image file, in order;
    ``batch_size`` images are decoded and run at a time."""
    cfg, names = meta["config"], meta["class_names"]
    transform = data.EvalTransform(cfg["crop"], mean, std)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        x = np.stack([data.decode(p, size=cfg["image_size"]) for p in chunk])
        probs = data.softmax(inference.predict_batches(model, x, transform, batch_size, device))
        for p, row in zip(chunk, probs):
            top = np.argsort(-row)[:k]
            yield p, [(names[t], float(row[t])) for t in top]


def predict_files(model, meta, mean, paths, k=5, device=0, batch_size=64, std=None):
    """[(path, [(class name, probability), ...k]), ...] for image files."""
    return list(iter_predictions(model, meta, mean, paths, k, device, batch_size, std))


def main(argv=None):
    p = cli.ArgumentParser(prog="python -m minialexnet.predict",
                           description="Top-5 labels of images, from a checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by minialexnet.train")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=cli.positive_int, default=5, help="labels shown per image")
    p.add_argument("--batch-size", type=cli.positive_int, default=64,
                   help="images decoded and run at a time (bounds the memory used)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="numpy (CPU) or cupy (NVIDIA GPU)")
    p.add_argument("--device", type=cli.nonnegative_int, default=0, help="GPU number (cupy)")
    a = p.parse_args(argv)
    try:
        backend.use(a.backend, devices=[a.device])
        model, meta, mean, std = load_model(a.checkpoint, a.device)
        if a.top > model.num_classes:
            p.error(f"argument --top: {a.top}, but the model knows only "
                    f"{model.num_classes} classes")
        print(describe_classes(meta))
        for path, top in iter_predictions(model, meta, mean, a.images, a.top, a.device,
                                          a.batch_size, std):
            print(path)
            for name, prob in top:
                print(f"  {100 * prob:6.2f} %  {name}")
    except MinialexnetError as e:       # a user's mistake; anything else is a bug: traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
