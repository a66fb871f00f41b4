"""nl2sql: ask a question in words, get read-only SQL and a DataFrame from your warehouse.

    >>> import nl2sql
    >>> a = nl2sql.ask("How many customers are there?")   # doctest: +SKIP
    >>> a.sql, a.df, a.error                              # doctest: +SKIP

The pipeline stages live in their own modules (schema, prompt, grammar, model, generate, validate, execute);
`ask` only composes them. Heavy imports are deferred so `import nl2sql` stays fast.
"""
from .errors import (ConfigError, ConnectError, ExecutionError, InputError, ModelError, Nl2SqlError, QueryTimeout,
                     ResourceLimitError, SchemaError, TrainingError, UnsafeSQLError, ValidationError)
from .config import Settings

__all__ = ["ask", "execute", "Answer", "Settings", "Nl2SqlError", "ConfigError", "ConnectError", "ExecutionError",
           "InputError", "ModelError", "QueryTimeout", "ResourceLimitError", "SchemaError", "TrainingError",
           "UnsafeSQLError", "ValidationError"]


def ask(question, db=None, *, execute=True, settings=None, **overrides):
    """Answer a question with SQL and its result; see nl2sql.api.ask."""
    from .api import ask as _ask
    return _ask(question, db, execute=execute, settings=settings, **overrides)


def execute(sql, db=None, *, settings=None):
    """Run one read-only query through the guarded executor; see nl2sql.executor.execute."""
    from .executor import execute as _execute
    return _execute(sql, db, settings=settings)


def __getattr__(name):
    if name in ("Answer", "Pipeline"):
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
