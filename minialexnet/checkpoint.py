"""Checkpoints: atomic saving, pickle-free and bounded loading, and a check that a
checkpoint fits the model it is loaded into.

File format: an ordinary ``.npz`` (``np.savez``).  Every array (weights, momentum
buffers, anything array-valued) is one entry under its own name; the JSON-able
``meta`` (config, epoch, step, learning-rate schedule, RNG states...) is stored as the
UTF-8 bytes of a JSON string in the uint8 entry ``__meta__``.  No entry ever needs
pickle, and the loader never unpickles: loading a checkpoint can never run code.

Saving is atomic (``files.atomic_write``): a crash, Ctrl-C or full disk in the middle
leaves the previous checkpoint untouched and no half-written file under the real
name.  Weights that are NaN or infinite are refused: a diverged run cannot overwrite
its last good checkpoint.

Loading reads the zip directory and each entry's .npy header before any data, so it
can refuse, before decompressing anything, an entry whose declared size does not
match its header, metadata far larger than any run writes, or (given ``expected``)
an array the caller does not need or of another shape.  Weights must be finite
floating-point arrays (``check_compatible``).  A missing, unreadable, truncated,
bit-flipped or foreign file gets one line saying which it is.
"""

import errno
import json
import math
import os
import stat
import zipfile
import zlib

from .backend import np, to_numpy
from .errors import CheckpointError
from .files import atomic_write, describe_os_error

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_meta",
           "check_compatible", "check_training_meta", "generator_state",
           "set_generator_state"]

META_KEY = "__meta__"
FORMAT_KEY = "__minialexnet_checkpoint__"
FORMAT_VERSION = 1
# A run's metadata (config, per-epoch history, RNG and loader state) is kilobytes;
# even a million epochs of history stay far below this.
MAX_META_BYTES = 64 << 20


def _json_default(o):
    # NumPy scalars and small arrays sneak into meta (e.g. a loss); store them as Python.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def save_checkpoint(path, arrays, meta=None):
    """Write ``arrays`` ({name: array}, any backend) and ``meta`` (JSON-able dict) to
    ``path`` (an .npz) atomically.  Returns ``path``.

    Names must not start with "__" (reserved for the format).  Object arrays are
    refused (they would need pickle to load), and so are floating-point arrays
    holding NaN or infinity (the file on disk is then left as it was).
    """
    path = os.fspath(path)
    try:
        meta_bytes = json.dumps(meta or {}, default=_json_default, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: meta is not JSON-serialisable ({e})") from None
    entries = {}
    for name, a in arrays.items():
        if name.startswith("__"):
            raise CheckpointError(f"{path}: array name {name!r} is reserved (starts with '__')")
        a = np.asarray(to_numpy(a))
        if a.dtype.hasobject:
            raise CheckpointError(f"{path}: array {name!r} has dtype object; store numbers only")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(
                f"{path}: refusing to save: {name!r} holds {_count_nonfinite(a)} NaN or "
                f"infinite values (of {a.size}); the file on disk is left as it was")
        entries[name] = a
    entries[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    entries[FORMAT_KEY] = np.array(FORMAT_VERSION, dtype=np.int64)
    with atomic_write(path) as f:
        np.savez(f, **entries)
    return path


def _count_nonfinite(a):
    return int(a.size - np.count_nonzero(np.isfinite(a)))


# ---------------------------------------------------------------- reading
# What reading one zip member can raise when the file is damaged or crafted
# (NotImplementedError: a compression method zipfile does not know).
_MEMBER_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error,
                  NotImplementedError, RuntimeError)

class _Stored:
    """An entry as its .npy header describes it; its data not read yet."""

    def __init__(self, info, shape, dtype):
        self.info, self.shape, self.dtype = info, shape, dtype


def _what_is(path, head):
    """Why a file that is not a zip is not a checkpoint, from its first bytes."""
    if head.startswith(b"\x93NUMPY"):
        return "not a checkpoint (a single .npy array, not an .npz)"
    if head.startswith(b"PK"):
        return "corrupt or truncated checkpoint (its zip directory is damaged or missing)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("holds pickled Python objects; refusing to load (checkpoints hold plain "
                "arrays only)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file, not a checkpoint (an .npz written by minialexnet)"
    return "not a checkpoint (not an .npz file)"


class _Reader:
    """An opened checkpoint: the zip directory, each entry's header, and meta.

    Opening reads only the directory, the headers and the small meta entry."""

    def __init__(self, path):
        self.path = path = os.fspath(path)
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                what = ("a broken symlink (what it points to does not exist)"
                        if os.path.islink(path) else "checkpoint file not found")
                raise CheckpointError(f"{path}: {what}") from None
            raise CheckpointError(f"{path}: cannot read the checkpoint "
                                  f"({describe_os_error(e)})") from None
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file, not a checkpoint")
        if st.st_size == 0:
            raise CheckpointError(f"{path}: is empty (0 bytes), not a checkpoint")
        try:
            self.file = open(path, "rb")
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read the checkpoint "
                                  f"({describe_os_error(e)})") from None
        try:
            head = self.file.read(512)
            self.file.seek(0)
            try:
                self.zip = zipfile.ZipFile(self.file)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read the checkpoint "
                                      f"({describe_os_error(e)})") from None
            except _MEMBER_ERRORS + (zipfile.LargeZipFile,):
                raise CheckpointError(f"{path}: {_what_is(path, head)}") from None
            self.infos = self._directory()
            if META_KEY not in self.infos or FORMAT_KEY not in self.infos:
                raise CheckpointError(f"{path}: an .npz but not a minialexnet checkpoint "
                                      f"(no {META_KEY} entry)")
            self.meta = self._meta()
        except BaseException:
            self.close()
            raise

    def close(self):
        if getattr(self, "zip", None) is not None:
            self.zip.close()
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _corrupt(self, detail):
        return CheckpointError(f"{self.path}: corrupt or truncated checkpoint ({detail})")

    def _damaged(self, name, e):
        if isinstance(e, zipfile.BadZipFile):      # a CRC mismatch: the bytes changed
            return self._corrupt(f"entry {name!r} is damaged: {e}")
        if isinstance(e, OSError) and e.errno is not None:    # the disk, not the file
            return CheckpointError(f"{self.path}: cannot read entry {name!r} "
                                   f"({describe_os_error(e)})")
        return self._corrupt(f"entry {name!r}: {type(e).__name__}: {e}")

    def _directory(self):
        infos = {}
        for info in self.zip.infolist():
            name = info.filename
            if not name.endswith(".npy") or info.is_dir():
                raise CheckpointError(f"{self.path}: not a minialexnet checkpoint (member "
                                      f"{name[:80]!r} is not an array)")
            if name[:-4] in infos:
                raise self._corrupt(f"entry {name[:-4]!r} appears twice")
            infos[name[:-4]] = info
        return infos

    def stored(self, name):
        """The shape and dtype ``name``'s header declares, checked against the size
        the zip directory declares for it (no data read)."""
        info = self.infos[name]
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                header = f.tell()
        except _MEMBER_ERRORS as e:
            raise self._damaged(name, e) from None
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: holds pickled Python objects (entry "
                                  f"{name!r}); refusing to load (checkpoints hold plain "
                                  "arrays only)")
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise self._corrupt(f"entry {name!r} declares shape {shape} of {dtype} "
                                f"({nbytes:,} bytes) but holds {info.file_size - header:,}")
        return _Stored(info, tuple(shape), dtype)

    def read(self, name, stored=None):
        """The array ``name``, its CRC checked."""
        s = stored or self.stored(name)
        try:
            with self.zip.open(s.info) as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
                if f.read(1):               # also makes zipfile check the CRC
                    raise ValueError("data after the array")
        except _MEMBER_ERRORS as e:
            raise self._damaged(name, e) from None
        return a

    def _meta(self):
        s = self.stored(META_KEY)
        if s.dtype != np.uint8 or len(s.shape) != 1:
            raise self._corrupt(f"{META_KEY} is {s.dtype} {s.shape}, not uint8 bytes")
        if s.info.file_size > MAX_META_BYTES:
            raise CheckpointError(f"{self.path}: its metadata is {s.info.file_size:,} bytes, "
                                  f"far more than any run writes (at most {MAX_META_BYTES:,}): "
                                  "a crafted or damaged file; refusing to read it")
        try:
            meta = json.loads(self.read(META_KEY, s).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{self.path}: corrupt metadata ({e})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{self.path}: corrupt metadata (a JSON "
                                  f"{type(meta).__name__}, not an object)")
        f = self.stored(FORMAT_KEY)
        if f.dtype.kind not in "iu" or f.shape != ():
            raise self._corrupt(f"{FORMAT_KEY} is {f.dtype} {f.shape}, not an integer")
        version = int(self.read(FORMAT_KEY, f))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: checkpoint format {version} is newer than "
                                  f"this minialexnet understands ({FORMAT_VERSION})")
        return meta

    def names(self):
        return [k for k in self.infos if k not in (META_KEY, FORMAT_KEY)]


def read_meta(path):
    """Only the ``meta`` dict of a checkpoint (its arrays are not read)."""
    with _Reader(path) as r:
        return r.meta


def load_checkpoint(path, expected=None, model_arch=None):
    """Read a checkpoint written by ``save_checkpoint``: returns (arrays, meta).

    arrays: {name: NumPy array}; meta: the dict given at save time.
    expected: None reads every array.  {name: shape} (e.g. a model's parameters)
        reads only those, and only after ``check_compatible`` passed on the shapes
        and dtypes their headers declare: entries nobody asked for are never
        decompressed, so a crafted gigabyte costs nothing.  Their values must then
        be finite.  ``model_arch`` names the model in the messages.
    Raises CheckpointError for a missing or unreadable file, a corrupt, truncated or
    damaged file, a file holding pickled objects, a file that is not a minialexnet
    checkpoint, and (with ``expected``) arrays that do not fit.
    """
    with _Reader(path) as r:
        path = r.path
        if expected is None:
            return {k: r.read(k) for k in r.names()}, r.meta
        stored = {k: r.stored(k) for k in expected if k in r.infos}
        check_compatible(stored, expected, path, saved_arch=_describe(r.meta),
                         model_arch=model_arch)
        arrays = {k: r.read(k, stored[k]) for k in expected}
        check_compatible(arrays, expected, path, saved_arch=_describe(r.meta),
                         model_arch=model_arch)
        return arrays, r.meta


def _describe(meta):
    from .models import describe
    config = meta.get("model_config")
    return describe(config) if isinstance(config, dict) else None


def check_compatible(arrays, expected, path="checkpoint", saved_arch=None, model_arch=None):
    """Check that ``arrays`` holds every parameter of ``expected`` ({name: shape}) with
    the same shape, a floating-point dtype and (for arrays already read) only finite
    values.  Extra arrays (optimiser state, ...) are ignored.

    Raises CheckpointError naming the first missing, mismatching or broken parameter:
    "checkpoint X was saved for architecture A, this model is B: ...".
    """
    def fail(detail):
        a = f" for architecture {saved_arch}" if saved_arch else " for another architecture"
        b = f", this model is {model_arch}" if model_arch else ""
        raise CheckpointError(f"checkpoint {path} was saved{a}{b}: {detail}")

    for name, shape in expected.items():
        if name not in arrays:
            fail(f"parameter {name!r} is missing from the checkpoint")
        a = arrays[name]
        got = tuple(np.shape(a))
        if got != tuple(shape):
            fail(f"parameter {name!r} has shape {got} in the checkpoint, {tuple(shape)} in the model")
        dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
        if dtype.kind != "f":
            raise CheckpointError(f"checkpoint {path}: {name!r} has dtype {dtype}; weights "
                                  "must be floating point (float16, float32 or float64)")
        if isinstance(a, np.ndarray) and not np.isfinite(a).all():
            raise CheckpointError(
                f"checkpoint {path}: {name!r} holds {_count_nonfinite(a)} NaN or infinite "
                f"values (of {a.size}): its weights are broken (saved by a run that "
                "diverged?); use another checkpoint")


def _is_int(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_training_meta(meta, path):
    """Check the parts of a ``train.Trainer`` checkpoint's meta that the tools use
    (config, model_config, class_names, epoch: see ``Trainer.state``), so a crafted
    or damaged file gets one line, not a KeyError deep inside.  Returns ``meta``."""
    def bad(what):
        raise CheckpointError(f"{path}: damaged or crafted metadata: {what}")

    cfg, mc = meta.get("config"), meta.get("model_config")
    if not isinstance(cfg, dict) or not isinstance(mc, dict) or not mc:
        raise CheckpointError(f"{path}: not a training checkpoint of minialexnet.train "
                              "(no config in its metadata)")
    for key in ("dataset", "model"):
        if not isinstance(cfg.get(key), str):
            bad(f"config[{key!r}] is {cfg.get(key)!r}, not a name")
    for key in ("image_size", "crop"):
        if not _is_int(cfg.get(key), 1):
            bad(f"config[{key!r}] is {cfg.get(key)!r}, not a positive integer")
    if cfg["crop"] > cfg["image_size"]:
        bad(f"crop {cfg['crop']} is larger than image_size {cfg['image_size']}")
    if cfg.get("data_dir") is not None and not isinstance(cfg["data_dir"], str):
        bad(f"config['data_dir'] is {cfg['data_dir']!r}, not a path")
    if not isinstance(mc.get("name"), str):
        bad(f"model_config['name'] is {mc.get('name')!r}, not a model name")
    devices = mc.get("devices")
    if not isinstance(devices, list) or not devices or not all(_is_int(d) for d in devices):
        bad(f"model_config['devices'] is {devices!r}, not a list of device numbers")
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        bad("class_names is not a list of class names")
    if not _is_int(meta.get("epoch")):
        bad(f"epoch is {meta.get('epoch')!r}, not a count")
    return meta


def generator_state(rng):
    """A NumPy Generator's state as a JSON-able dict (for ``meta``)."""
    return rng.bit_generator.state


def set_generator_state(rng, state):
    """Restore a state from ``generator_state`` into ``rng`` (same bit generator kind)."""
    if not isinstance(state, dict) or state.get("bit_generator") != type(rng.bit_generator).__name__:
        got = state.get("bit_generator") if isinstance(state, dict) else state
        raise CheckpointError(f"RNG state is for {got!r}, "
                              f"not {type(rng.bit_generator).__name__}")
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"RNG state is damaged ({type(e).__name__}: {e})") from None
    return rng
