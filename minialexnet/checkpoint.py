"""Checkpoints: atomic saving, pickle-free loading, and a check that a checkpoint fits
the model it is loaded into.

File format: an ordinary ``.npz`` (``np.savez``).  Every array (weights, momentum
buffers, anything array-valued) is one entry under its own name; the JSON-able
``meta`` (config, epoch, step, learning-rate schedule, RNG states...) is stored as the
UTF-8 bytes of a JSON string in the uint8 entry ``__meta__``.  So ``np.load(...,
allow_pickle=False)`` reads everything: loading a checkpoint can never run code.

Saving is atomic: write a temp file in the same directory, flush and fsync it, then
``os.replace`` it over the old file.  A crash (or Ctrl-C, or a full disk) in the
middle leaves the previous checkpoint untouched and no half-written file under the
real name.
"""

import json
import os
import tempfile
import zipfile

from .backend import np, to_numpy
from .errors import CheckpointError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_compatible",
           "generator_state", "set_generator_state"]

META_KEY = "__meta__"
FORMAT_KEY = "__minialexnet_checkpoint__"
FORMAT_VERSION = 1


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
    refused (they would need pickle to load).
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
        if a.dtype == object:
            raise CheckpointError(f"{path}: array {name!r} has dtype object; store numbers only")
        entries[name] = a
    entries[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    entries[FORMAT_KEY] = np.array(FORMAT_VERSION, dtype=np.int64)

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())       # the bytes are on disk before the rename says "done"
        os.replace(tmp, path)          # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:                               # make the rename itself durable (POSIX only)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint``: returns (arrays, meta).

    arrays: {name: NumPy array}; meta: the dict given at save time.
    Raises CheckpointError for a missing file, a corrupt or truncated file, a file
    holding pickled objects, or a file that is not a minialexnet checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):        # a plain .npy gives an array, not an NpzFile
            raise CheckpointError(f"{path}: not a checkpoint (a single .npy array, not an .npz)")
        with z:
            entries = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise CheckpointError(f"{path}: holds pickled Python objects; refusing to load "
                                  "(checkpoints hold plain arrays only)") from None
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(e).__name__}: {e})") from None
    if META_KEY not in entries or FORMAT_KEY not in entries:
        raise CheckpointError(f"{path}: an .npz but not a minialexnet checkpoint "
                              f"(no {META_KEY} entry)")
    try:
        meta = json.loads(entries.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    version = int(entries.pop(FORMAT_KEY))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this "
                              f"minialexnet understands ({FORMAT_VERSION})")
    return entries, meta


def check_compatible(arrays, expected, path="checkpoint", saved_arch=None, model_arch=None):
    """Check that ``arrays`` holds every parameter of ``expected`` ({name: shape}) with
    the same shape.  Extra arrays (optimiser state, ...) are ignored.

    Raises CheckpointError naming the first missing or mismatching parameter:
    "checkpoint X was saved for architecture A, this model is B: ...".
    """
    def fail(detail):
        a = f" for architecture {saved_arch}" if saved_arch else " for another architecture"
        b = f", this model is {model_arch}" if model_arch else ""
        raise CheckpointError(f"checkpoint {path} was saved{a}{b}: {detail}")

    for name, shape in expected.items():
        if name not in arrays:
            fail(f"parameter {name!r} is missing from the checkpoint")
        got = tuple(np.shape(arrays[name]))
        if got != tuple(shape):
            fail(f"parameter {name!r} has shape {got} in the checkpoint, {tuple(shape)} in the model")


def generator_state(rng):
    """A NumPy Generator's state as a JSON-able dict (for ``meta``)."""
    return rng.bit_generator.state


def set_generator_state(rng, state):
    """Restore a state from ``generator_state`` into ``rng`` (same bit generator kind)."""
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise CheckpointError(f"RNG state is for {state.get('bit_generator')}, "
                              f"not {type(rng.bit_generator).__name__}")
    rng.bit_generator.state = state
    return rng
