"""One exception hierarchy. Each error carries a message that says what to do next.

Errors hold structured fields; the CLI and the app turn them into words, nothing else prints.
"""
from __future__ import annotations


class Nl2SqlError(Exception):
    """Base of every error nl2sql raises on purpose. `str(err)` is a one-line, user-facing message."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


class ConfigError(Nl2SqlError):
    """A setting has a value we cannot use."""


class InputError(Nl2SqlError):
    """The question (or other user input) is unusable: empty, too long, not text."""


class ConnectionError_(Nl2SqlError):
    """The database could not be opened or reached."""


ConnectError = ConnectionError_


class SchemaError(Nl2SqlError):
    """The database has nothing we can query (no tables) or a schema we cannot render."""


class ModelError(Nl2SqlError):
    """The model or adapter could not be loaded, or generation failed."""


class ValidationError(Nl2SqlError):
    """The SQL was rejected before it reached the database (not read-only, unknown names, unparsable)."""


class UnsafeSQLError(ValidationError):
    """The SQL tried something other than reading: writes, DDL, file or network access, settings."""


class ExecutionError(Nl2SqlError):
    """The database refused or failed the query."""


class QueryTimeout(ExecutionError):
    """The query ran past the statement timeout and was stopped."""


class ResourceLimitError(ExecutionError):
    """The query ran past a memory or result-size limit and was stopped."""


class TrainingError(Nl2SqlError):
    """Training data or a training run is unusable."""
