"""The library's own errors: what a user's mistake raises, never a programming error.

Every error that bad input can cause (missing data, a corrupt checkpoint, a GPU that
is not there, a model that cannot be built, an input of the wrong shape) is a
``MinialexnetError``.  The command-line tools print those as one line, ``error: ...``,
with exit code 2; anything else (a ValueError from a broadcasting bug, say) is a bug
in minialexnet and keeps its traceback.

Each class keeps the built-in base it has always had (ValueError, RuntimeError) as
a second base, so ``except ValueError`` in older code still catches it.  The classes
are defined here and re-exported where they belong (``data.DataError``,
``checkpoint.CheckpointError``, ``backend.BackendError``, ``layers.ShapeError``,
``models.StateDictError``, ``train.TrainingDiverged``).
"""

__all__ = ["MinialexnetError", "ConfigError", "DataError", "CheckpointError",
           "BackendError", "ShapeError", "StateDictError", "TrainingDiverged"]


class MinialexnetError(Exception):
    """Base class of every error a user's input can cause (see the module docstring)."""


class ConfigError(MinialexnetError, ValueError):
    """Settings that cannot work together: an unknown model or keyword, a width not
    divisible by the towers, an input too small for the net, a crop larger than the
    images, a batch larger than the dataset."""


class DataError(MinialexnetError, ValueError):
    """Bad or missing data.  The message names the file and says what is wrong."""


class CheckpointError(MinialexnetError, ValueError):
    """A checkpoint is missing, corrupt, not a checkpoint, or for another model.
    The message names the file and the problem."""


class BackendError(MinialexnetError, RuntimeError):
    """A backend was asked for that cannot work on this machine."""


class ShapeError(MinialexnetError, ValueError):
    """An input of the wrong rank, size or channel count, or labels out of range."""


class StateDictError(MinialexnetError, ValueError):
    """A state dict that does not fit the model (missing, extra or mis-shaped parameter)."""


class TrainingDiverged(MinialexnetError, RuntimeError):
    """The loss became NaN or infinite."""
