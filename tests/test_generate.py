"""The SQL-vocabulary head must hold every spelling of the prompt's words that SQL can use."""
import types

import pytest


@pytest.fixture(scope="module")
def tokenizer(settings):
    from transformers import AutoTokenizer

    from nl2sql.model import bundled_checkpoint
    return AutoTokenizer.from_pretrained(str(bundled_checkpoint(settings.cache_dir)))


def test_word_tokens_cover_sql_spellings(tokenizer):
    from nl2sql.generate import SqlGenerator
    fake = types.SimpleNamespace(loaded=types.SimpleNamespace(tokenizer=tokenizer))
    got = SqlGenerator._word_tokens.__wrapped__(fake, "poker_player(Earnings number, Final_Table_Made number)\n"
                                                      "-- Question: Which abbreviation is Jetblue Airways?")
    for spelled in ("(Earnings", ".Earnings", "Final_Table_Made", "'Jetblue Airways'", "EARNINGS", " earnings"):
        ids = tokenizer(spelled, add_special_tokens=False)["input_ids"]
        pieces = [t for t in ids if tokenizer.decode([t]).strip(" .('\"") ]  # the word's own pieces
        assert set(pieces) <= got, (spelled, [tokenizer.decode([t]) for t in set(pieces) - got])
