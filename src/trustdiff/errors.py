"""The error types a user can see.

Every error a user can cause (a wrong path, a malformed file, a tensor of the wrong shape) is a
:class:`TrustdiffError`. The CLI prints its message as one line and exits with code 2; nothing on
disk is changed by a failed call.
"""


class TrustdiffError(Exception):
    """Base class: a problem with what the user gave, reported in one line."""


class InputError(TrustdiffError, ValueError):
    """An argument, tensor, file or data set is not what was expected.

    The message says what was expected and what came, e.g.
    ``images: expected values in [0, 1], got min -0.5 max 1.0``.
    """


class CheckpointError(TrustdiffError):
    """A checkpoint folder is missing, incomplete, corrupted, or of another architecture."""


class UnsafeFileError(CheckpointError):
    """A pickle file was given without the explicit unsafe flag."""


class TrainingDiverged(TrustdiffError):
    """Training met K non-finite steps in a row; the last good checkpoint is intact."""
