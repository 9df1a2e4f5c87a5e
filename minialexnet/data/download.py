"""Download CIFAR-10 or Imagenette from their official URLs, safely.

    python -m minialexnet.data download cifar10 [--data-dir DIR]
    python -m minialexnet.data download imagenette [--data-dir DIR]

The download itself is pooch's (``pooch.retrieve``): it streams the archive into a
temporary file in the target directory, with a progress bar, checks its checksum,
and only then moves it to its real name; a failed, interrupted or corrupt download
leaves nothing.  Then the archive is extracted into a temporary folder (tar's "data"
filter: no absolute paths, no "..", no links out of the folder), checked, and renamed
into place last.  So nothing that looks complete exists before it is.

CIFAR-10's archive holds pickles (see ``cifar10``): when its checksum proved it the
official one, it is converted at once into the packed npz files the loader reads.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile

from .common import DataError, data_dir

# name -> what to fetch and what the extracted folder must contain.
SOURCES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        # Published on https://www.cs.toronto.edu/~kriz/cifar.html
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "must_have": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                      "data_batch_5", "test_batch", "batches.meta"],
    },
    "imagenette": {
        "url": "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
        # The md5 that torchvision.datasets.Imagenette ("320px") and several other
        # independent loaders check; fast.ai's README publishes no checksum itself.
        # The archive is 341,663,724 bytes.
        "md5": "3df6f0d01a2c9592104656642f5e78a3",
        "folder": "imagenette2-320",
        "must_have": ["train", "val"],
    },
}


class DownloadError(DataError):
    """A download failed: unreachable URL, checksum mismatch, bad archive."""


def _hash(path, kind):
    h = hashlib.new(kind)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_pooch():
    # pooch logs "Downloading data from ..." and, without a known hash, a hint to
    # add one: our own line says what happens instead.
    import pooch
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield pooch
    finally:
        logger.setLevel(level)


def _fetch(url, dest_dir, name, md5=None, sha256=None, progress_bar=True, timeout=60):
    """Download ``url`` to ``dest_dir/name`` with pooch, verified against ``sha256``
    and/or ``md5`` (when given).  Returns the path; on any failure nothing is left."""
    import requests
    known = f"sha256:{sha256}" if sha256 else f"md5:{md5}" if md5 else None
    path = os.path.join(dest_dir, name)
    try:
        with _quiet_pooch() as pooch:
            downloader = pooch.HTTPDownloader(progressbar=progress_bar, timeout=timeout,
                                              chunk_size=1 << 20)
            pooch.retrieve(url, known, fname=name, path=dest_dir, downloader=downloader)
    except ValueError as e:
        if "hash" in str(e).lower():     # pooch: "... hash of downloaded file does not match"
            kind = "sha256" if sha256 else "md5"
            raise DownloadError(f"{url}: {kind} mismatch: expected {sha256 or md5} (corrupt "
                                "or changed file; nothing kept)") from None
        raise DownloadError(f"{url}: cannot download ({e})") from None
    except (requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError) as e:
        raise DownloadError(f"{url}: download interrupted ({_reason(e)}); nothing kept, "
                            "run again") from None
    except requests.exceptions.RequestException as e:
        raise DownloadError(f"{url}: cannot download ({_reason(e)})") from None
    except OSError as e:
        raise DownloadError(f"{url}: cannot download into {dest_dir} ({e.strerror or e})") from None
    if md5 and sha256 and _hash(path, "md5") != md5.lower():
        os.remove(path)
        raise DownloadError(f"{url}: md5 mismatch: expected {md5} (corrupt or changed "
                            "file; nothing kept)")
    return path


def _reason(e):
    """The innermost reason of a requests exception, one line."""
    while e.__context__ is not None and not isinstance(e.__context__, KeyboardInterrupt):
        e = e.__context__
    return " ".join(str(e).split())[:200] or type(e).__name__


def _extract(archive, dest_dir, folder, must_have):
    """Extract ``archive`` into a temp folder in ``dest_dir``, check that it holds
    ``folder/<must_have>``, and rename ``folder`` into place."""
    tmpdir = tempfile.mkdtemp(dir=dest_dir, prefix=f".{folder}.extract-")
    try:
        try:
            with tarfile.open(archive) as tar:
                # filter="data" refuses absolute paths, "..", links out of the folder.
                tar.extractall(tmpdir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DownloadError(f"{archive}: cannot extract ({e})") from None
        got = os.path.join(tmpdir, folder)
        missing = [m for m in must_have if not os.path.exists(os.path.join(got, m))]
        if missing:
            raise DownloadError(f"{archive}: not the expected format: {folder}/ lacks {missing}")
        os.replace(got, os.path.join(dest_dir, folder))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def download(name, root=None, url=None, md5=None, sha256=None, progress_bar=True,
             keep_archive=False, log=None):
    """Download and extract dataset ``name`` ("cifar10" or "imagenette") into ``root``
    (default: ``data_dir()``, created if missing).  Returns the extracted folder.

    ``url``/``md5``/``sha256`` override the official source (tests serve a tiny archive
    from 127.0.0.1).  If the folder is already complete, nothing is downloaded.
    CIFAR-10 is then converted to packed npz files (``cifar10.convert_cifar10``) if a
    checksum verified the archive; else ``log`` (a function of one line) says how to.
    """
    if name not in SOURCES:
        raise DataError(f"download: unknown dataset {name!r} (choose from {sorted(SOURCES)})")
    src = SOURCES[name]
    if url is None:
        url, md5 = src["url"], md5 or src["md5"]
    # A custom URL is checked against the checksums the caller gives (if none, only
    # the archive's format is checked, by _extract).
    root = data_dir(root, must_exist=False)
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, src["folder"])
    if all(os.path.exists(os.path.join(target, m)) for m in src["must_have"]):
        return target
    if os.path.exists(target):
        raise DownloadError(f"{target}: exists but is incomplete; delete it and run again")
    archive_name = os.path.basename(url.split("?")[0]) or f"{name}.tar.gz"
    archive = _fetch(url, root, archive_name, md5, sha256, progress_bar)
    try:
        _extract(archive, root, src["folder"], src["must_have"])
    finally:
        if not keep_archive and os.path.exists(archive):
            os.remove(archive)
    if name == "cifar10":
        from .cifar10 import convert_cifar10
        if md5 or sha256:
            paths = convert_cifar10(target)     # the checksum says: the official pickles
            if log:
                log(f"converted the checksum-verified batches to {', '.join(paths)}")
        elif log:
            log(f"{target}: not converted (no checksum verified the archive); if you trust "
                f"it: python -m minialexnet.data convert-cifar10 {target}")
    return target
