"""``python -m minialexnet.data download cifar10|imagenette [--data-dir DIR]``
and ``python -m minialexnet.data info NAME [--data-dir DIR]``."""

import argparse
import sys

from . import DATASETS, DataError, download, load_dataset
from .download import SOURCES


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minialexnet.data",
                                description="Get and inspect minialexnet's datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download and extract a dataset (needs internet)")
    d.add_argument("name", choices=sorted(SOURCES))
    d.add_argument("--data-dir", help="target directory (default: $MINIALEXNET_DATA or ./data)")
    d.add_argument("--url", help="download from this URL instead of the official one")
    d.add_argument("--md5", help="expected md5 of the archive (with --url)")
    i = sub.add_parser("info", help="load a dataset split and print what it holds")
    i.add_argument("name", choices=DATASETS)
    i.add_argument("--data-dir")
    i.add_argument("--split", default="train")
    i.add_argument("--n", type=int, help="only this many images")
    args = p.parse_args(argv)
    try:
        if args.cmd == "download":
            path = download(args.name, args.data_dir, url=args.url, md5=args.md5)
            print(f"{args.name}: ready in {path}")
        else:
            ds = load_dataset(args.name, args.data_dir, args.split, n=args.n)
            print(ds)
            print("classes:", ", ".join(ds.class_names))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (partial downloads are removed)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
