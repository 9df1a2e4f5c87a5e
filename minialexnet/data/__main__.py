"""``python -m minialexnet.data download cifar10|imagenette [--data-dir DIR]``,
``python -m minialexnet.data convert-cifar10 DIR`` and
``python -m minialexnet.data info NAME [--data-dir DIR]``."""

import sys

from ..cli import ArgumentParser, positive_int
from ..files import WriteError
from . import DATASETS, DataError, download, load_dataset
from .cifar10 import convert_cifar10
from .download import SOURCES

UNPICKLE_WARNING = ("warning: {folder}: unpickling the CIFAR-10 python batches (a pickle "
                    "can run code: convert only files from the official archive); "
                    "minialexnet rebuilds NumPy arrays only and refuses anything else")


def main(argv=None):
    p = ArgumentParser(prog="python -m minialexnet.data",
                       description="Get and inspect minialexnet's datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download and extract a dataset (needs internet)")
    d.add_argument("name", choices=sorted(SOURCES))
    d.add_argument("--data-dir", help="target directory (default: $MINIALEXNET_DATA or ./data)")
    d.add_argument("--url", help="download from this URL instead of the official one")
    d.add_argument("--md5", help="expected md5 of the archive (with --url)")
    d.add_argument("--sha256", help="expected sha256 of the archive (with --url)")
    c = sub.add_parser("convert-cifar10",
                       help="convert the official cifar-10-batches-py (pickles) once into "
                            "the packed npz files minialexnet reads")
    c.add_argument("folder", help="the cifar-10-batches-py folder")
    c.add_argument("--out", help="where to write cifar10_train.npz and cifar10_test.npz "
                                 "(default: cifar10/ next to the folder)")
    i = sub.add_parser("info", help="load a dataset split and print what it holds")
    i.add_argument("name", choices=DATASETS)
    i.add_argument("--data-dir", help="default: $MINIALEXNET_DATA or ./data")
    i.add_argument("--split", default="train", help="train, or test/val")
    i.add_argument("--n", type=positive_int, help="only this many images (default: all)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "download":
            path = download(args.name, args.data_dir, url=args.url, md5=args.md5,
                            sha256=args.sha256, log=lambda m: print(m, file=sys.stderr))
            print(f"{args.name}: ready in {path}")
        elif args.cmd == "convert-cifar10":
            print(UNPICKLE_WARNING.format(folder=args.folder), file=sys.stderr)
            for path in convert_cifar10(args.folder, args.out):
                print(f"wrote {path}")
        else:
            ds = load_dataset(args.name, args.data_dir, args.split, n=args.n)
            print(ds)
            print("classes:", ", ".join(ds.class_names))
    except (DataError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (partial downloads are removed)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
