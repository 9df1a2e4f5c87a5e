"""Download CIFAR-10 or Imagenette from their official URLs, safely.

    python -m minialexnet.data download cifar10 [--data-dir DIR]
    python -m minialexnet.data download imagenette [--data-dir DIR]

Safety: the archive is streamed into a temporary file *in the target directory*
(``.<name>.part-XXXX``), its checksum is verified, and only then is it renamed into
place (``os.replace`` is atomic on one file system) and extracted into a temporary
folder which is renamed into place last.  An interrupted or corrupt download never
leaves anything that looks complete.
"""

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

from .common import DataError, data_dir

try:
    from tqdm.auto import tqdm
except ImportError:
    tqdm = None

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


def _fetch(url, dest_dir, name, md5=None, sha256=None, progress_bar=True, timeout=60):
    """Stream ``url`` into a temp file in ``dest_dir``; verify; return the temp path.

    The caller renames it into place.  On any failure the temp file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.part-")
    hashes = {k: hashlib.new(k) for k, v in (("md5", md5), ("sha256", sha256)) if v}
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DownloadError(f"{url}: cannot download ({reason})") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = (tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)
                       if progress_bar and tqdm is not None else None)
                got = 0
                try:
                    while True:
                        block = resp.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                        for h in hashes.values():
                            h.update(block)
                        got += len(block)
                        if bar is not None:
                            bar.update(len(block))
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f"{url}: download interrupted after {got} bytes ({e})") from None
                finally:
                    if bar is not None:
                        bar.close()
            out.flush()
            os.fsync(out.fileno())
        if total is not None and got != total:
            raise DownloadError(f"{url}: got {got} bytes, expected {total} (interrupted?)")
        for kind, want in (("md5", md5), ("sha256", sha256)):
            if want and hashes[kind].hexdigest() != want.lower():
                raise DownloadError(f"{url}: {kind} mismatch: got {hashes[kind].hexdigest()}, "
                                    f"expected {want} (corrupt or changed file; nothing kept)")
        return tmp
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def download(name, root=None, url=None, md5=None, sha256=None, progress_bar=True, keep_archive=False):
    """Download and extract dataset ``name`` ("cifar10" or "imagenette") into ``root``
    (default: ``data_dir()``, created if missing).  Returns the extracted folder.

    ``url``/``md5``/``sha256`` override the official source (tests serve a tiny archive
    from 127.0.0.1).  If the folder is already complete, nothing is downloaded.
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
    tmp = _fetch(url, root, archive_name, md5, sha256, progress_bar)
    archive = os.path.join(root, archive_name)
    os.replace(tmp, archive)         # only a verified archive gets its real name
    try:
        _extract(archive, root, src["folder"], src["must_have"])
    finally:
        if not keep_archive and os.path.exists(archive):
            os.remove(archive)
    return target
