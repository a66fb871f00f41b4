"""Repair: a failed answer is decoded again from the runner-up at the least certain step of the failing name.

The model here is scripted (one character per token, so ids are readable); validation and execution are real
(Spider's concert_singer in SQLite)."""
import math

import pytest

from nl2sql.generate import Generation, ScriptedGenerator
from nl2sql.repair import blamed_name, next_branch

WRONG = "SELECT T1.Name FROM concert AS T1 JOIN singer AS T2 ON T1.concert_ID = T2.Singer_ID"
RIGHT = "SELECT T2.Name FROM concert AS T1 JOIN singer AS T2 ON T1.concert_ID = T2.Singer_ID"


def decode(ids, skip_special_tokens=True):
    return "".join(map(chr, ids))


def generation(text, doubts):
    """doubts: {character index: (margin, runner-up character)}; every other step was a sure thing."""
    ids = [ord(c) for c in text]
    margins = [doubts[i][0] if i in doubts else 50.0 for i in range(len(text))]
    runners = [ord(doubts[i][1]) if i in doubts else ord("x") for i in range(len(text))]
    return Generation(text, len(ids), 0.0, True, ids, margins, runners)


def test_branch_is_taken_inside_the_blamed_name_at_its_least_certain_step():
    doubts = {WRONG.index("T1.Name") + 1: (0.4, "2"), WRONG.index("concert AS"): (0.1, "s")}  # the 2nd is elsewhere
    gen = generation(WRONG, doubts)
    tried = set()
    msg = "The SQL names something the schema lacks: Column 'name' could not be resolved."
    assert decode(next_branch(gen, msg, decode, tried)) == "SELECT T2"
    # the same branch is never tried twice: the next one is the least certain step anywhere
    assert decode(next_branch(gen, msg, decode, tried)) == WRONG[:WRONG.index("concert AS")] + "s"
    forced_only = Generation(WRONG, 1, 0.0, True, [ord("S")], [math.inf], [-1])
    assert next_branch(forced_only, msg, decode, set()) is None  # nothing left to try


@pytest.mark.parametrize("message,name", [
    ("The SQL names something the schema lacks: Unknown column: fname", "fname"),
    ("The database refused the query: no such column: T2.Sex", "Sex"),
    ('column "pet_age" does not exist', "pet_age"),
    ("The SQL does not parse: Invalid expression", None),
])
def test_blamed_name(message, name):
    assert blamed_name(message) == name


class BranchingModel(ScriptedGenerator):
    """First call: WRONG; a call with forced ids continues them into RIGHT's remainder (as a model would)."""

    def __init__(self):
        super().__init__([])
        self.calls = []

    def generate(self, prompt, grammar, max_new_tokens, prefix=None, forced=(), binder=None):
        self.calls.append(decode(forced))
        if not forced:
            return generation(WRONG, {WRONG.index("T1.Name") + 1: (0.3, "2")})
        text = decode(forced) + RIGHT[len(forced):]
        return generation(text, {})

    def candidates(self, prompt, grammar, max_new_tokens, *, prefix=None, n=1, binder=None, seed=0,
                   temperature=0.7, forced=()):
        return [self.generate(prompt, grammar, max_new_tokens, prefix=prefix, forced=forced, binder=binder)]


def _pipeline(settings, attempts):
    from nl2sql.api import Pipeline
    return Pipeline(settings.replace(repair_attempts=attempts), generator=BranchingModel())


def test_ask_repairs_a_wrong_table_column(settings, sqlite_db):
    p = _pipeline(settings, 2)
    a = p.ask("Name the singers", str(sqlite_db))
    assert a.ok and a.attempts == 2 and a.sql.startswith("SELECT T2.Name")
    assert p.generator.calls == ["", "SELECT T2"]
    assert len(a.df) > 0


def test_no_repair_when_switched_off_or_unsafe(settings, sqlite_db, fake_pipeline):
    a = _pipeline(settings, 0).ask("Name the singers", str(sqlite_db))
    assert not a.ok and a.attempts == 1 and ("could not be resolved" in a.error or "Unknown column" in a.error)
    p = fake_pipeline("DELETE FROM singer")
    p.settings = p.settings.replace(repair_attempts=3)
    a = p.ask("Remove singers", str(sqlite_db))
    assert not a.ok and a.attempts == 1 and a.error_type == "UnsafeSQLError"
