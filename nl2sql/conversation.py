"""Follow-up questions: the previous question and its SQL become a worked example in the prompt, so "now only
for 2024" is read against the answer it refers to. The prompt itself is still build_prompt's."""
from __future__ import annotations

from .validate import to_model_dialect


def context_examples(question: str | None, sql: str | None, dialect: str | None) -> list[tuple[str, str]]:
    """[(question, SQL in the model's dialect)] for Pipeline.ask(examples=...); [] when there is nothing to follow.

    >>> context_examples("Revenue per month?", 'SELECT "month" FROM t', "duckdb")
    [('Revenue per month?', 'SELECT "month" FROM t')]
    >>> context_examples("Why?", None, "duckdb")
    []
    """
    if not question or not sql:
        return []
    return [(question, to_model_dialect(sql, dialect))]
