"""``python -m minialexnet.evaluate CHECKPOINT``: top-1 and top-5 error of a trained
model, with the centre crop and with the paper's ten-crop test (section 4.1: four
corners and the centre, and their reflections; the ten softmax outputs averaged).

The checkpoint carries its own configuration (model, dataset, crop, mean image), so
only the checkpoint is needed; ``--dataset``/``--data-dir``/``--n`` override the data.
"""

import sys

if __name__ == "__main__":        # the command line: CPU tuning before NumPy loads (cpu.py)
    from .cpu import tune
    tune()

from . import backend, cli, data, inference
from .errors import MinialexnetError
from .predict import load_model


def main(argv=None):
    p = cli.ArgumentParser(prog="python -m minialexnet.evaluate",
                           description="Top-1/top-5 error, centre crop and ten-crop.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by minialexnet.train")
    p.add_argument("--dataset", default=None, choices=data.DATASETS,
                   help="default: the dataset the model was trained on")
    p.add_argument("--data-dir", default=None,
                   help="default: the one the model was trained with")
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="test and val are the same held-out split")
    p.add_argument("--n", type=cli.positive_int, default=None,
                   help="evaluate on a seeded random subset of n images (default: all)")
    p.add_argument("--batch-size", type=cli.positive_int, default=256,
                   help="images per forward pass")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="numpy (CPU) or cupy (NVIDIA GPU)")
    p.add_argument("--device", type=cli.nonnegative_int, default=0, help="GPU number (cupy)")
    p.add_argument("--no-ten-crop", action="store_true", help="centre crop only (faster)")
    a = p.parse_args(argv)
    try:
        backend.use(a.backend, devices=[a.device])
        model, meta, mean, std = load_model(a.checkpoint, device=a.device)
        cfg = meta["config"]
        name = a.dataset or cfg["dataset"]
        ds = data.load_dataset(name, data_dir=a.data_dir or cfg["data_dir"], split=a.split,
                               size=cfg["image_size"], n=a.n)
        if ds.num_classes != len(meta["class_names"]):
            raise data.DataError(f"{name} has {ds.num_classes} classes, the model "
                                 f"{len(meta['class_names'])}")
        print(f"{a.checkpoint}: {cfg['model']} after {meta['epoch']} epochs; "
              f"{len(ds)} {name} {ds.split} images")
        rows = [("centre crop", inference.evaluate(model, ds, cfg["crop"], mean, a.batch_size,
                                                   device=a.device, std=std))]
        if not a.no_ten_crop:
            rows.append(("ten-crop", inference.evaluate(model, ds, cfg["crop"], mean,
                                                        a.batch_size, ten_crop=True,
                                                        device=a.device, std=std)))
    except MinialexnetError as e:       # a user's mistake; anything else is a bug: traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    for label, r in rows:
        print(f"{label:12s}  top-1 error {100 * r['top1']:5.2f} %   top-5 error {100 * r['top5']:5.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
