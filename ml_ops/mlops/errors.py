"""The one exception hierarchy of the MLOps wheel.

I/O boundaries wrap foreign errors once, with ``raise ... from``.
"""


class MlopsError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(MlopsError, ValueError):
    """A parameter is unknown, malformed or missing; ``field`` names it when known."""

    def __init__(self, message: str = "", field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(MlopsError):
    """Input data is missing, has the wrong schema, or is empty."""


class NotebookError(MlopsError):
    """A notebook cell failed when run by the local runtime."""


class JobError(MlopsError):
    """A job file is invalid or one of its tasks failed."""


class RegistryError(MlopsError):
    """A model registry or tracking-server call failed or was refused."""


class ValidationFailed(MlopsError):
    """A model version failed one or more validation checks."""


class PublishError(MlopsError):
    """Publishing results to blob storage failed."""


class StageFailed(MlopsError):
    """A pipeline stage failed; names the stage and keeps the cause."""

    def __init__(self, stage, cause):
        self.stage = stage
        self.cause = cause
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")


MAX_CHAIN_DEPTH = 16


def exception_chain(error) -> list:
    """``error`` and the exceptions it was raised from or while handling, nearest first.

    Follows ``__cause__``, else ``__context__`` unless suppressed (``raise ... from None``);
    stops at a cycle or after :data:`MAX_CHAIN_DEPTH` links.
    """
    chain = []
    while error is not None and len(chain) < MAX_CHAIN_DEPTH and not any(error is seen for seen in chain):
        chain.append(error)
        if error.__cause__ is not None:
            error = error.__cause__
        else:
            error = None if error.__suppress_context__ else error.__context__
    return chain
