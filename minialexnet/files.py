"""Files a run writes, written so that a crash, a full disk or Ctrl-C never leaves a
half-written one: write a temporary file in the same folder, then rename it over the
target (``os.replace`` is atomic, and replaces a symlink rather than writing
through it)."""

import os
import tempfile

__all__ = ["atomic_write_text"]


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically; the temporary file goes on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
