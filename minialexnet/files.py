"""Writing files so that a crash, a full disk or a Ctrl-C never leaves a half-written
file under the real name: every file a run writes (checkpoint, metrics, curves,
caches) goes through ``atomic_write`` here.

How: the bytes go to a temp file in the target's own directory,
``.<name>.<pid>.<random>.tmp``, which is flushed and fsynced and then renamed over
the target with ``os.replace`` (atomic on one file system: a reader sees the old
file or the new one, never a mixture).  So:

* A failure (ENOSPC, EACCES, an exception while the bytes are made, Ctrl-C) removes
  the temp file and leaves the old file untouched.
* A symlink at the target is *replaced* by the new file, never followed: writing
  ``metrics.jsonl`` cannot overwrite whatever file a link there points to.
* A process killed mid-write (SIGKILL, power cut) leaves its temp file behind; the
  next write of the same file removes every such temp whose process is gone, or
  whose pid is this process's own but which this process is not writing (a killed
  run restarted in a container often gets the same pid), or which has not been
  touched for ``STALE_AFTER_S`` (its pid reused by some unrelated process).
* OSErrors become ``WriteError`` with one line naming the file and the reason
  ("the disk is full", "permission denied"); ``describe_os_error`` words them.
"""

import contextlib
import errno
import os
import secrets
import threading
import time

from .errors import MinialexnetError

__all__ = ["WriteError", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "atomic_savefig", "remove_stale_temps", "describe_os_error"]


class WriteError(MinialexnetError, OSError):
    """A file could not be written (disk full, permission denied, read-only file
    system, ...).  The message names the file and the reason; the old file is intact."""


_REASONS = {getattr(errno, code): text for code, text in [
    ("ENOSPC", "the disk is full (no space left on device)"),
    ("EDQUOT", "the disk quota is exceeded"),
    ("EACCES", "permission denied"),
    ("EPERM", "operation not permitted"),
    ("EROFS", "the file system is read-only"),
    ("ENOENT", "no such file or directory"),
    ("ENOTDIR", "a part of the path is not a directory"),
    ("EISDIR", "it is a directory"),
    ("ELOOP", "too many levels of symbolic links (a symlink loop?)"),
    ("ENAMETOOLONG", "the file name is too long"),
    ("EIO", "an input/output error (a failing disk or network file system?)"),
] if hasattr(errno, code)}


def describe_os_error(e):
    """A short phrase for an OSError: "the disk is full (no space left on device)"."""
    return _REASONS.get(e.errno) or (e.strerror or str(e) or type(e).__name__).rstrip(".")


# A temp untouched this long is nobody's write in progress, whatever its pid says.
STALE_AFTER_S = 24 * 3600

# The temps this process is writing right now (any thread): the only ones with our
# pid that are not stale.
_writing = set()
_writing_lock = threading.Lock()


def _temp_prefix(path):
    return f".{os.path.basename(path)}."


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: it exists, it is someone else's
        return True
    return True


def remove_stale_temps(path):
    """Remove temp files of ``path`` left by writes whose process is gone (killed
    mid-save).  Temps of running processes (another writer now) are kept."""
    d = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            full = os.path.join(d, name)
            if _is_stale(full, name[len(prefix):-len(".tmp")].split(".")[0]):
                with contextlib.suppress(OSError):
                    os.remove(full)


def _is_stale(full, pid):
    """Whether temp ``full`` (written by process ``pid``, a string) is a dead write."""
    with _writing_lock:
        if full in _writing:                  # this process is writing it now
            return False
    # Names without a pid are from before pids were written: stale.  Our own pid but
    # not in _writing: an earlier process that had our pid.
    if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
        return True
    try:
        return time.time() - os.stat(full).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _fsync_dir(d):
    # Makes the rename itself durable (POSIX); not possible everywhere, never fatal.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f: f.write(...)``: a binary file object whose bytes
    replace ``path`` only when the block ends without an exception.

    Raises WriteError (one line) when the file cannot be written; any other
    exception from the block (KeyboardInterrupt included) propagates unchanged.
    Either way the temp file is gone and ``path`` is as it was.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(path)
    tmp = os.path.join(d, f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with _writing_lock:
        _writing.add(tmp)
    try:
        try:
            # O_EXCL: never opens an existing file or follows a planted link; mode
            # 0o666 minus the umask, like any file the user's programs make.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise WriteError(f"{path}: cannot write ({describe_os_error(e)})") from None
        with os.fdopen(fd, "wb") as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())      # the bytes are on disk before the rename
            except OSError as e:
                raise WriteError(f"{path}: cannot write ({describe_os_error(e)})") from None
        try:
            os.replace(tmp, path)         # atomic; replaces a symlink, never follows it
        except OSError as e:
            raise WriteError(f"{path}: cannot write ({describe_os_error(e)})") from None
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            # An OSError from the caller's block (e.g. f.write on a full disk).
            raise WriteError(f"{path}: cannot write ({describe_os_error(e)})") from None
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp)
    _fsync_dir(d)


def atomic_write_bytes(path, data):
    """Replace ``path`` by ``data`` (bytes) atomically.  Returns ``path``."""
    with atomic_write(path) as f:
        f.write(data)
    return path


def atomic_write_text(path, text):
    """Replace ``path`` by ``text`` (written as UTF-8) atomically.  Returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig, path, **kwargs):
    """``fig.savefig(path, **kwargs)``, atomically: a full disk never leaves a broken
    image under the real name.  The format comes from the extension (default png)."""
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    kwargs.setdefault("format", ext)
    with atomic_write(path) as f:
        fig.savefig(f, **kwargs)
    return path
