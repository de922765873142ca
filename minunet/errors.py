"""The package's exception types, here so that configs and models raise them without importing a loader."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and what is wrong."""


class NonFiniteError(RuntimeError):
    """A model produced NaN or Inf (A1111's NansException): a black image is never returned instead."""
