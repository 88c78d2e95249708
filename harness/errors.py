"""Error types that the CLI shows as a message instead of a traceback."""


class HarnessError(Exception):
    """A problem with the user's input or environment, worded for the user."""


class ConfigError(HarnessError):
    """An invalid protocol file, override or option value."""


class EvaluationError(HarnessError):
    """Embeddings or labels that cannot be evaluated."""


class TrainingFailed(Exception):
    """A run that failed during training, such as a non-finite loss."""
